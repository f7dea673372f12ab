//! Fault injection: a daemon failing on purpose, at random points drawn
//! from a seeded generator, so the supervisor's recovery can be tested
//! against the faults MINIX's campaigns used (`make faults`).
//!
//! Off unless the environment says `FAULT_INJECT=seed=S,rate=N,kinds=K+K…`
//! at start: then each injection point fires with probability 1/N, and
//! does one of the listed kinds:
//!
//! | kind | what the daemon does |
//! | --- | --- |
//! | `panic` | panics (a Rust bug) |
//! | `abort` | aborts (SIGABRT) |
//! | `hang` | spins forever in its event loop (the heartbeat finds it) |
//! | `stop` | stops itself (SIGSTOP: hung, and the heartbeat finds it) |
//! | `badlen` | hands the scheme a read result longer than was asked for |
//! | `baddma` | programs its device with a DMA address it never mapped |
//! | `stale` | see below: not drawn at random |
//!
//! `stale` proves that a dead instance's IOMMU mappings are gone from its
//! successor's device. An instance with an even start number maps one
//! page, the first IOVA of its space, and keeps it until it dies (`fault:
//! canary page mapped at IOVA X`); one with an odd number leaves that IOVA
//! unmapped and programs it into its first descriptor (`fault: injecting
//! Stale …`). The access must fault in the IOMMU at X.
//!
//! The generator is seeded with `S` and the instance's start number
//! (`INIT_START`, from init), so each instance draws the same sequence on
//! every run and a restart does not repeat its predecessor's fault; which
//! request a draw lands on still depends on timing, so a campaign repeats
//! its kinds and rates, not its exact schedule. Every fault is logged before it
//! is done (`fault: injecting KIND at POINT`), so a campaign can count them.
//! Off, every point costs one load of an initialised `OnceLock`.

use std::sync::{Mutex, OnceLock};

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
            _ => return None,
        })
    }

    /// Faults that end or freeze the process: done where it runs.
    fn is_fatal(self) -> bool {
        matches!(self, Kind::Panic | Kind::Abort | Kind::Hang | Kind::Stop)
    }
}

/// The injector's settings, as parsed from [`ENV`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub seed: u64,
    /// One point in `rate` fires.
    pub rate: u64,
    pub kinds: Vec<Kind>,
}

impl Plan {
    /// `seed=S,rate=N,kinds=K+K…`; `None` for anything else (and said so).
    pub fn parse(text: &str) -> Option<Plan> {
        let (mut seed, mut rate, mut kinds) = (None, None, None);
        for part in text.split(',') {
            let (k, v) = part.split_once('=')?;
            match k {
                "seed" => seed = v.parse().ok(),
                "rate" => rate = v.parse().ok().filter(|&r: &u64| r > 0),
                "kinds" => kinds = v.split('+').map(Kind::parse).collect::<Option<Vec<_>>>(),
                _ => return None,
            }
        }
        let kinds = kinds.filter(|k| !k.is_empty())?;
        Some(Plan {
            seed: seed?,
            rate: rate?,
            kinds,
        })
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
            .filter(|&k| allowed(k))
            .collect();
        if kinds.is_empty() || !self.next().is_multiple_of(self.plan.rate) {
            return None;
        }
        Some(kinds[(self.next() % kinds.len() as u64) as usize])
    }
}

fn injector() -> Option<&'static Mutex<Injector>> {
    static INJECTOR: OnceLock<Option<Mutex<Injector>>> = OnceLock::new();
    INJECTOR
        .get_or_init(|| {
            let text = std::env::var(ENV).ok()?;
            let Some(plan) = Plan::parse(&text) else {
                log::error!("{ENV}={text:?} is not seed=S,rate=N,kinds=K+K…; no faults");
                return None;
            };
            let start = start_number();
            log::warn!("fault injection on: {plan:?}, start {start}");
            let state = (plan.seed ^ start.wrapping_mul(0x9e37_79b9_7f4a_7c15)) | 1;
            Some(Mutex::new(Injector { plan, state }))
        })
        .as_ref()
}

fn draw(allowed: impl Fn(Kind) -> bool) -> Option<Kind> {
    let inj = injector()?;
    let mut g = inj.lock().unwrap_or_else(|p| p.into_inner());
    g.draw(allowed)
}

/// A point in the event loop: may panic, abort, hang or stop the process.
pub fn at_event(point: &str) {
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
        Kind::BadLen | Kind::BadDma | Kind::Stale => {}
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

/// The IOVA a `stale` instance programs once, in place of a real one.
static STALE: Mutex<Option<u64>> = Mutex::new(None);

fn start_number() -> u64 {
    std::env::var("INIT_START")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// A function's DMA space was just opened, before anything was mapped in
/// it: the `stale` kind's canary page, or its reserved stale IOVA.
pub fn dma_space_opened(space: &std::sync::Arc<crate::dma::DmaSpace>) {
    let Some(inj) = injector() else {
        return;
    };
    let stale = {
        let g = inj.lock().unwrap_or_else(|p| p.into_inner());
        g.plan.kinds.contains(&Kind::Stale)
    };
    if !stale {
        return;
    }
    if start_number().is_multiple_of(2) {
        match crate::dma::Dma::<[u8; 4096]>::zeroed(space) {
            Ok(page) => {
                log::warn!("fault: canary page mapped at IOVA {:#x}", page.iova());
                // Mapped until the process dies: that is the point.
                std::mem::forget(page);
            }
            Err(e) => log::error!("fault: mapping the canary page failed: {e}"),
        }
    } else {
        match space.reserve_iova(4096) {
            Some(iova) => {
                log::warn!("fault: IOVA {iova:#x} left unmapped for the stale access");
                *STALE.lock().unwrap_or_else(|p| p.into_inner()) = Some(iova);
            }
            None => log::error!("fault: no IOVA to leave unmapped"),
        }
    }
}

/// A DMA address about to be given to the device: may be moved far past
/// anything mapped (the IOMMU must stop the device's access), or, once,
/// to the stale IOVA.
pub fn dma_address(point: &str, iova: u64) -> u64 {
    if injector().is_some() {
        if let Some(stale) = STALE.lock().unwrap_or_else(|p| p.into_inner()).take() {
            log::warn!("fault: injecting Stale at {point}: IOVA {stale:#x}");
            return stale;
        }
    }
    match draw(|k| k == Kind::BadDma) {
        Some(_) => {
            let bad = iova ^ (1 << 46);
            log::warn!("fault: injecting BadDma at {point}: IOVA {bad:#x}");
            bad
        }
        None => iova,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_parse_and_bad_ones_do_not() {
        assert_eq!(
            Plan::parse("seed=7,rate=50,kinds=panic+hang"),
            Some(Plan {
                seed: 7,
                rate: 50,
                kinds: vec![Kind::Panic, Kind::Hang]
            })
        );
        for bad in [
            "",
            "seed=1",
            "seed=1,rate=0,kinds=panic",
            "seed=1,rate=5,kinds=nope",
            "x=1,seed=1,rate=5,kinds=abort",
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
    fn off_by_default() {
        // The test binary runs without FAULT_INJECT.
        assert_eq!(read_len("test", 10), 10);
        assert_eq!(dma_address("test", 0x1000), 0x1000);
        at_event("test");
    }
}
