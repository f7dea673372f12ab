//! Fault injection: a daemon failing on purpose, so the supervisor's
//! recovery and the isolation around a driver can be tested against the
//! faults MINIX's campaigns used (`make faults`) and against a driver
//! attacking its neighbours (`tests/lab/tests/isolation.rs`).
//!
//! Off unless the environment says `FAULT_INJECT=KEY=VALUE,…` at start:
//!
//! | key | meaning |
//! | --- | --- |
//! | `kinds=K+K…` | the kinds below (required) |
//! | `seed=S` | seeds the random draws (default 0) |
//! | `rate=N` | one random point in N fires (required if a random kind is listed) |
//! | `function=0000:00:04.0` | only the driver of this PCI function injects |
//! | `start=N` | only the instance with this start number (`INIT_START`) injects |
//! | `addr=0x…` or `addr=/path` | `foreign`'s target, or a file holding it (read at start) |
//! | `neighbour=0000:00:06.0` | `configwrite`'s victim, whose BARs it writes into its own |
//!
//! Random kinds: each injection point fires with probability 1/N, and does
//! one of the listed kinds:
//!
//! | kind | what the daemon does |
//! | --- | --- |
//! | `panic` | panics (a Rust bug) |
//! | `abort` | aborts (SIGABRT) |
//! | `hang` | spins forever in its event loop (the heartbeat finds it) |
//! | `stop` | stops itself (SIGSTOP: hung, and the heartbeat finds it) |
//! | `badlen` | hands the scheme a read result longer than was asked for |
//! | `baddma` | programs its device with a DMA address it never mapped |
//!
//! Deliberate kinds, never drawn: they happen once, where the point is
//! ([`dma`] and [`config`] say how):
//!
//! | kind | what the daemon does |
//! | --- | --- |
//! | `stale` | even start: keeps a canary page at its first IOVA; odd start: points its first descriptor at that IOVA, left unmapped |
//! | `canary` | keeps a page of known bytes at its first IOVA and checks it about once a second (`intact` / `CHANGED`) |
//! | `foreign` | once serving, sends one device-written buffer to its first IOVA, left unmapped (another driver's canary has that number in its own domain), or to `addr` |
//! | `configwrite` | once serving, writes its BARs, ROM BAR, command register, capability pointers and MSI-X registers through VFIO, logging what VFIO reads back |
//!
//! The generator is seeded with `S` and the instance's start number
//! (`INIT_START`, from init), so each instance draws the same sequence on
//! every run and a restart does not repeat its predecessor's fault; which
//! request a draw lands on still depends on timing, so a campaign repeats
//! its kinds and rates, not its exact schedule. Every fault is logged before it
//! is done (`fault: injecting KIND at POINT`), so a campaign can count them.
//! Off, every point costs one load of an initialised `OnceLock`.

use std::sync::{Mutex, OnceLock};

pub mod config;
pub mod dma;

pub use dma::{dma_chain, dma_space_opened, watched_chain_returned, Rewrite};

/// The environment variable that turns injection on.
pub const ENV: &str = "FAULT_INJECT";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Panic,
    Abort,
    Hang,
    Stop,
    BadLen,
    BadDma,
    Stale,
    Canary,
    Foreign,
    ConfigWrite,
}

impl Kind {
    fn parse(word: &str) -> Option<Kind> {
        Some(match word {
            "panic" => Kind::Panic,
            "abort" => Kind::Abort,
            "hang" => Kind::Hang,
            "stop" => Kind::Stop,
            "badlen" => Kind::BadLen,
            "baddma" => Kind::BadDma,
            "stale" => Kind::Stale,
            "canary" => Kind::Canary,
            "foreign" => Kind::Foreign,
            "configwrite" => Kind::ConfigWrite,
            _ => return None,
        })
    }

    /// Faults that end or freeze the process: done where it runs.
    fn is_fatal(self) -> bool {
        matches!(self, Kind::Panic | Kind::Abort | Kind::Hang | Kind::Stop)
    }

    /// Kinds drawn at random (one point in `rate`).
    fn is_random(self) -> bool {
        self.is_fatal() || matches!(self, Kind::BadLen | Kind::BadDma)
    }
}

/// Where `foreign` sends its buffer, when not to its own first IOVA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Address(u64),
    /// A file holding the address (`0x…`), read once at start: for an
    /// address known only after boot (a page of another process).
    File(String),
}

/// The injector's settings, as parsed from [`ENV`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub seed: u64,
    /// One random point in `rate` fires.
    pub rate: u64,
    pub kinds: Vec<Kind>,
    /// Only the driver of this function (`0000:00:04.0`) injects.
    pub function: Option<String>,
    /// Only the instance with this start number injects.
    pub start: Option<u64>,
    pub addr: Option<Target>,
    pub neighbour: Option<String>,
}

/// `0x…` hexadecimal or decimal.
pub(crate) fn parse_u64(text: &str) -> Option<u64> {
    let text = text.trim();
    match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}

impl Plan {
    /// `KEY=VALUE,…` as in the module docs; `None` for anything else.
    pub fn parse(text: &str) -> Option<Plan> {
        let mut plan = Plan {
            seed: 0,
            rate: 0,
            kinds: Vec::new(),
            function: None,
            start: None,
            addr: None,
            neighbour: None,
        };
        let mut rate = None;
        for part in text.split(',') {
            let (k, v) = part.split_once('=')?;
            match k {
                "seed" => plan.seed = v.parse().ok()?,
                "rate" => rate = Some(v.parse().ok().filter(|&r: &u64| r > 0)?),
                "kinds" => {
                    plan.kinds = v.split('+').map(Kind::parse).collect::<Option<Vec<_>>>()?
                }
                "function" if !v.is_empty() => plan.function = Some(v.to_owned()),
                "start" => plan.start = Some(v.parse().ok()?),
                "addr" if v.starts_with('/') => plan.addr = Some(Target::File(v.to_owned())),
                "addr" => plan.addr = Some(Target::Address(parse_u64(v)?)),
                "neighbour" if !v.is_empty() => plan.neighbour = Some(v.to_owned()),
                _ => return None,
            }
        }
        if plan.kinds.is_empty() {
            return None;
        }
        match rate {
            Some(r) => plan.rate = r,
            // Nothing is drawn at random without a rate.
            None if plan.kinds.iter().any(|k| k.is_random()) => return None,
            None => plan.rate = u64::MAX,
        }
        Some(plan)
    }

    pub fn has(&self, kind: Kind) -> bool {
        self.kinds.contains(&kind)
    }
}

struct Injector {
    plan: Plan,
    state: u64,
}

impl Injector {
    /// xorshift64*: small, seeded, good enough to pick points.
    fn next(&mut self) -> u64 {
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        self.state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Draws at a point that can do any of `allowed`: a kind, or none.
    fn draw(&mut self, allowed: impl Fn(Kind) -> bool) -> Option<Kind> {
        let kinds: Vec<Kind> = self
            .plan
            .kinds
            .iter()
            .copied()
            .filter(|&k| k.is_random() && allowed(k))
            .collect();
        if kinds.is_empty() || !self.next().is_multiple_of(self.plan.rate) {
            return None;
        }
        Some(kinds[(self.next() % kinds.len() as u64) as usize])
    }
}

/// The PCI function this driver serves (`0000:00:04.0`), once known.
static FUNCTION: OnceLock<String> = OnceLock::new();

/// Tells the injector which function this driver serves, so a plan's
/// `function=` can tell whether it applies here. Called by the PCI handle
/// before it opens the DMA space and the device.
pub fn set_function(address: &str) {
    let _ = FUNCTION.set(address.to_owned());
}

fn injector() -> Option<&'static Mutex<Injector>> {
    static INJECTOR: OnceLock<Option<Mutex<Injector>>> = OnceLock::new();
    let inj = INJECTOR
        .get_or_init(|| {
            let text = std::env::var(ENV).ok()?;
            let Some(plan) = Plan::parse(&text) else {
                log::error!("{ENV}={text:?} is not a fault plan (see common::fault); no faults");
                return None;
            };
            let start = start_number();
            let here = if applies_here(&plan) {
                "applies to this instance"
            } else {
                "not for this instance"
            };
            log::warn!("fault injection on: {plan:?}, start {start}: {here}");
            let state = (plan.seed ^ start.wrapping_mul(0x9e37_79b9_7f4a_7c15)) | 1;
            Some(Mutex::new(Injector { plan, state }))
        })
        .as_ref()?;
    applies_here(&lock(inj).plan).then_some(inj)
}

/// Whether a plan's `function=` and `start=` name this instance.
fn applies_here(plan: &Plan) -> bool {
    let function = plan
        .function
        .as_ref()
        .is_none_or(|f| FUNCTION.get() == Some(f));
    function && plan.start.is_none_or(|s| s == start_number())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every holder finishes its update before it could panic.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// This instance's plan, if injection is on here.
fn plan() -> Option<Plan> {
    injector().map(|inj| lock(inj).plan.clone())
}

fn draw(allowed: impl Fn(Kind) -> bool) -> Option<Kind> {
    let inj = injector()?;
    let mut g = lock(inj);
    g.draw(allowed)
}

/// A point in the event loop: may panic, abort, hang or stop the process;
/// runs the deliberate kinds' steps that wait for the driver to serve
/// (the canary's check, `foreign`'s arming, `configwrite`'s writes).
pub fn at_event(point: &str) {
    if injector().is_none() {
        return;
    }
    dma::serving();
    config::serving();
    let Some(kind) = draw(Kind::is_fatal) else {
        return;
    };
    log::warn!("fault: injecting {kind:?} at {point}");
    match kind {
        Kind::Panic => panic!("injected fault at {point}"),
        Kind::Abort => std::process::abort(),
        Kind::Hang => loop {
            std::hint::spin_loop();
        },
        Kind::Stop => {
            // SAFETY: raise only sends this thread a signal (tgkill, which
            // the driver sandbox allows); SIGSTOP has no handler to run.
            unsafe {
                libc::raise(libc::SIGSTOP);
            }
        }
        _ => {}
    }
}

/// A read result on its way to the scheme: may be made one byte longer
/// than was asked for (the runtime must refuse it with `EIO`).
pub fn read_len(point: &str, len: usize) -> usize {
    match draw(|k| k == Kind::BadLen) {
        Some(_) => {
            log::warn!("fault: injecting BadLen at {point}");
            len + 1
        }
        None => len,
    }
}

fn start_number() -> u64 {
    static START: OnceLock<u64> = OnceLock::new();
    *START.get_or_init(|| {
        std::env::var("INIT_START")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(seed: u64, rate: u64, kinds: Vec<Kind>) -> Plan {
        Plan {
            seed,
            rate,
            kinds,
            function: None,
            start: None,
            addr: None,
            neighbour: None,
        }
    }

    #[test]
    fn plans_parse_and_bad_ones_do_not() {
        assert_eq!(
            Plan::parse("seed=7,rate=50,kinds=panic+hang"),
            Some(plan(7, 50, vec![Kind::Panic, Kind::Hang]))
        );
        assert_eq!(
            Plan::parse("kinds=foreign,function=0000:00:04.0,start=1,addr=/tmp/target"),
            Some(Plan {
                function: Some("0000:00:04.0".into()),
                start: Some(1),
                addr: Some(Target::File("/tmp/target".into())),
                ..plan(0, u64::MAX, vec![Kind::Foreign])
            })
        );
        assert_eq!(
            Plan::parse("kinds=foreign+configwrite,addr=0x1234000,neighbour=0000:00:06.0")
                .map(|p| (p.addr, p.neighbour)),
            Some((
                Some(Target::Address(0x123_4000)),
                Some("0000:00:06.0".into())
            ))
        );
        for bad in [
            "",
            "seed=1",
            "seed=1,rate=0,kinds=panic",
            "seed=1,rate=5,kinds=nope",
            "x=1,seed=1,rate=5,kinds=abort",
            // A random kind needs a rate.
            "kinds=canary+panic",
            "kinds=foreign,addr=12x",
            "kinds=canary,start=first",
        ] {
            assert_eq!(Plan::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_same_seed_and_start_draw_the_same_faults() {
        let run = |seed: u64| {
            let mut i = Injector {
                plan: Plan::parse(&format!("seed={seed},rate=4,kinds=panic+badlen")).unwrap(),
                state: seed | 1,
            };
            (0..200).map(|_| i.draw(|_| true)).collect::<Vec<_>>()
        };
        assert_eq!(run(3), run(3));
        assert_ne!(run(3), run(5));
        let fired = run(3).iter().filter(|k| k.is_some()).count();
        assert!((25..=75).contains(&fired), "1 in 4 of 200: {fired}");
        // A point that only takes some kinds never draws the others.
        let mut i = Injector {
            plan: Plan::parse("seed=9,rate=1,kinds=panic+badlen").unwrap(),
            state: 9,
        };
        for _ in 0..50 {
            assert_eq!(i.draw(|k| k == Kind::BadLen), Some(Kind::BadLen));
        }
    }

    #[test]
    fn deliberate_kinds_are_never_drawn() {
        let mut i = Injector {
            plan: Plan::parse("rate=1,kinds=canary+foreign+configwrite+stale").unwrap(),
            state: 5,
        };
        for _ in 0..50 {
            assert_eq!(i.draw(|_| true), None);
        }
    }

    #[test]
    fn a_plan_for_another_function_or_start_does_not_apply() {
        // The test binary runs with no function set and INIT_START unset (0).
        let mut p = plan(0, u64::MAX, vec![Kind::Canary]);
        assert!(applies_here(&p));
        p.start = Some(1);
        assert!(!applies_here(&p));
        p.start = Some(0);
        assert!(applies_here(&p));
        p.function = Some("0000:00:04.0".into());
        assert!(!applies_here(&p), "no function known yet");
    }

    #[test]
    fn off_by_default() {
        // The test binary runs without FAULT_INJECT.
        assert_eq!(read_len("test", 10), 10);
        assert_eq!(dma_chain("test", &[(0x1000, 16, false)]), None);
        at_event("test");
    }
}
