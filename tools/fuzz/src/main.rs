//! scheme-fuzz: hostile clients for every scheme, run in the guest.
//!
//! Forks `--procs` workers; even-numbered ones stay root, odd-numbered ones
//! become the ordinary user (`--user UID:GID`, supplementary groups
//! dropped). Each makes `--ops` random calls (open, read, pread, write,
//! pwrite, ioctl, poll, lseek, ftruncate, close, dup, fork-and-exit with
//! files open, fstat, getdents, fsync, fcntl) on the paths found under
//! `--root` and on names nothing serves, drawn from its own seed, which it
//! prints. A call answered later than `--bound-s` is a HANG; a call never
//! answered is found by this parent (the op under way is in shared
//! memory), reported and its worker killed; a worker killed by a signal is
//! a CRASH of the fuzzer. Reads whose answer is known are checked: EOF
//! from `/scheme/null`, zeros from `/scheme/zero`, the check disk's
//! pattern (`--check-disk FILE:SEED`, `rng::pattern`) at the offset read;
//! a difference is WRONG. Each comes with the seed that replays it:
//! `scheme-fuzz --replay SEED` runs that one worker again, as the same user.
//!
//! What root does not do on purpose (targets.rs): write the disks not
//! named by `--write-disk`, write `/scheme/time`, write `start`, `stop`,
//! `restart`, `poweroff` or `reboot` to `/scheme/init` or `/scheme/acpi`,
//! create files in the `/scheme` directory itself.
//!
//! The last lines are the totals, for scripts:
//!
//! ```text
//! fuzz: requests R procs P forks F seeds S hangs H crashes C wrong W checked V stuck K errors E elapsed_ms T
//! fuzz: errno ENAME N            (each errno seen, most frequent first)
//! fuzz: scheme NAME requests N errors E
//! fuzz: op NAME requests N errors E
//! ```
//!
//! Exit status 0 only with no hang, no crash and no wrong answer.

mod ops;
mod tally;
mod targets;
mod worker;

use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{ForkResult, Gid, Pid, Uid};

use scheme_fuzz::rng::{is_user_seed, worker_seed};
use tally::{Shared, Slot, ERRNOS};
use targets::{discover, Rules, KINDS};
use worker::{say, Setup, Worker};

const USAGE: &str = "usage: scheme-fuzz [--seed S] [--procs N] [--ops M] [--user UID[:GID]] \
[--bound-s B] [--alarm-ms A] [--write-disk PATH]... [--check-disk FILE:SEED] [--root DIR] \
[--per-scheme N] [--depth D] [--replay SEED]";

struct Args {
    seed: u64,
    procs: usize,
    ops: usize,
    uid: u32,
    gid: u32,
    bound: Duration,
    alarm: Duration,
    writable: Vec<PathBuf>,
    root: PathBuf,
    per_scheme: usize,
    depth: usize,
    replay: Option<u64>,
    check_disk: Option<(PathBuf, u64)>,
}

fn parse_num(s: &str) -> Option<u64> {
    match s.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

fn parse_args(argv: &[String]) -> Result<Args, String> {
    let mut a = Args {
        seed: 1,
        procs: 6,
        ops: 1000,
        uid: 1000,
        gid: 1000,
        bound: Duration::from_secs(10),
        alarm: Duration::from_millis(500),
        writable: Vec::new(),
        root: PathBuf::from("/scheme"),
        per_scheme: 400,
        depth: 6,
        replay: None,
        check_disk: None,
    };
    let mut it = argv.iter();
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let num = || parse_num(value).ok_or_else(|| format!("{flag}: not a number: {value}"));
        match flag.as_str() {
            "--seed" => a.seed = num()?,
            "--procs" => a.procs = num()?.clamp(1, 64) as usize,
            "--ops" => a.ops = num()? as usize,
            "--bound-s" => a.bound = Duration::from_secs(num()?.max(1)),
            "--alarm-ms" => a.alarm = Duration::from_millis(num()?.max(1)),
            "--per-scheme" => a.per_scheme = num()?.max(1) as usize,
            "--depth" => a.depth = num()? as usize,
            "--replay" => a.replay = Some(num()?),
            "--write-disk" => a.writable.push(PathBuf::from(value)),
            "--root" => a.root = PathBuf::from(value),
            "--check-disk" => {
                let (path, seed) = value.rsplit_once(':').ok_or("--check-disk: PATH:SEED")?;
                let seed = parse_num(seed).ok_or("--check-disk: not a seed")?;
                a.check_disk = Some((PathBuf::from(path), seed));
            }
            "--user" => {
                let (u, g) = value.split_once(':').unwrap_or((value, value));
                a.uid = parse_num(u).ok_or("--user: not a uid")? as u32;
                a.gid = parse_num(g).ok_or("--user: not a gid")? as u32;
            }
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    Ok(a)
}

/// One worker as the parent tracks it.
struct Running {
    index: usize,
    seed: u64,
    pid: Pid,
    /// When the parent found it stuck and killed it.
    killed_at: Option<Instant>,
    done: bool,
}

fn main() {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let args = match parse_args(&argv) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("scheme-fuzz: {e}\n{USAGE}");
            std::process::exit(2);
        }
    };
    match run(&args) {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("scheme-fuzz: {e}");
            std::process::exit(2);
        }
    }
}

/// Runs the campaign; `Ok(true)` when nothing hung or crashed.
fn run(args: &Args) -> Result<bool, String> {
    let targets = discover(&args.root, args.per_scheme, args.depth);
    let rules = Rules {
        writable_disks: args.writable.clone(),
    };
    let setup = Setup {
        root: &args.root,
        targets: &targets,
        rules: &rules,
        ops: args.ops,
        bound: args.bound,
        alarm: args.alarm,
        check_disk: args.check_disk.clone(),
    };
    let seeds: Vec<u64> = match args.replay {
        Some(s) => vec![s],
        None => (0..args.procs).map(|i| worker_seed(args.seed, i)).collect(),
    };
    let per_kind: Vec<String> = KINDS
        .iter()
        .map(|k| {
            let n = targets.iter().filter(|t| t.kind == *k).count();
            format!("{} {n}", k.name())
        })
        .collect();
    say(&format!(
        "seed {:#x} procs {} ops {} bound {} s alarm {} ms targets {} ({})",
        args.seed,
        seeds.len(),
        args.ops,
        args.bound.as_secs(),
        args.alarm.as_millis(),
        targets.len(),
        per_kind.join(", ")
    ));
    let shared = Shared::new(seeds.len()).map_err(|e| format!("mmap: {e}"))?;
    let started = Instant::now();
    let mut running = Vec::new();
    for (index, &seed) in seeds.iter().enumerate() {
        let slot = shared.slot(index).ok_or("no slot")?;
        slot.seed.store(seed, Relaxed);
        let user = is_user_seed(seed);
        let _ = std::io::Write::flush(&mut std::io::stdout());
        // SAFETY: single-threaded here, so the child may run any code; it
        // leaves with `exit` without returning into this loop.
        match unsafe { nix::unistd::fork() } {
            Ok(ForkResult::Child) => {
                let code = match become_worker(args, user) {
                    Ok(()) => match Worker::new(&setup, index, seed, !user, slot).run() {
                        Ok(()) => 0,
                        Err(e) => {
                            say(&format!("worker {index}: {e}"));
                            3
                        }
                    },
                    Err(e) => {
                        say(&format!(
                            "worker {index}: cannot become uid {}: {e}",
                            args.uid
                        ));
                        3
                    }
                };
                let _ = std::io::Write::flush(&mut std::io::stdout());
                std::process::exit(code);
            }
            Ok(ForkResult::Parent { child }) => {
                say(&format!(
                    "worker {index} seed {seed:#x} uid {} pid {child}",
                    if user { args.uid } else { 0 }
                ));
                running.push(Running {
                    index,
                    seed,
                    pid: child,
                    killed_at: None,
                    done: false,
                });
            }
            Err(e) => return Err(format!("fork: {e}")),
        }
    }
    let (crashes, stuck) = supervise(&mut running, &shared, args.bound);
    Ok(summary(
        &shared,
        &running,
        crashes,
        stuck,
        started.elapsed(),
    ))
}

/// Drops root for a user worker: no supplementary groups, then the gid,
/// then the uid.
fn become_worker(args: &Args, user: bool) -> nix::Result<()> {
    if user {
        nix::unistd::setgroups(&[])?;
        nix::unistd::setgid(Gid::from_raw(args.gid))?;
        nix::unistd::setuid(Uid::from_raw(args.uid))?;
    }
    Ok(())
}

/// Reaps the workers, and kills one whose call has gone unanswered for
/// twice the bound (it is reported STUCK: a request the scheme never
/// answered). Returns the crashes and the stuck workers.
fn supervise(running: &mut [Running], shared: &Shared, bound: Duration) -> (u64, u64) {
    let mut crashes = 0;
    let mut stuck = 0;
    while running.iter().any(|r| !r.done) {
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(status) => {
                    let Some(r) = running.iter_mut().find(|r| Some(r.pid) == status.pid()) else {
                        continue;
                    };
                    r.done = true;
                    let slot = shared.slot(r.index);
                    let doing = slot
                        .and_then(Slot::current)
                        .map(|(op, _, desc)| format!(" in op {op}: {desc}"))
                        .unwrap_or_default();
                    let how = match status {
                        WaitStatus::Exited(_, 0) => None,
                        WaitStatus::Signaled(_, Signal::SIGKILL, _) if r.killed_at.is_some() => {
                            None
                        }
                        WaitStatus::Exited(_, code) => Some(format!("exited with status {code}")),
                        WaitStatus::Signaled(_, sig, _) => Some(format!("killed by {sig:?}")),
                        other => Some(format!("ended: {other:?}")),
                    };
                    if let Some(how) = how {
                        crashes += 1;
                        say(&format!(
                            "CRASH worker {} seed {:#x}: {how}{doing} (replay: scheme-fuzz --replay {:#x})",
                            r.index, r.seed, r.seed
                        ));
                    }
                }
            }
        }
        for r in running.iter_mut().filter(|r| !r.done) {
            match r.killed_at {
                None => {
                    let Some((op, since, desc)) = shared.slot(r.index).and_then(Slot::current)
                    else {
                        continue;
                    };
                    if since > 2 * bound.as_millis() as u64 {
                        stuck += 1;
                        say(&format!(
                            "HANG worker {} seed {:#x} op {op}: {desc}: no answer for {:.1} s; killing it (replay: scheme-fuzz --replay {:#x})",
                            r.index,
                            r.seed,
                            since as f64 / 1000.0,
                            r.seed
                        ));
                        let _ = kill(r.pid, Signal::SIGKILL);
                        r.killed_at = Some(Instant::now());
                    }
                }
                // A process waiting for a FUSE reply the daemon has read
                // cannot be killed: give up on it.
                Some(at) if at.elapsed() > bound => {
                    say(&format!(
                        "worker {} pid {} still there {} s after SIGKILL: left behind",
                        r.index,
                        r.pid,
                        bound.as_secs()
                    ));
                    r.done = true;
                }
                Some(_) => {}
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    (crashes, stuck)
}

/// Prints the totals; true when nothing hung or crashed.
fn summary(
    shared: &Shared,
    running: &[Running],
    crashes: u64,
    stuck: u64,
    elapsed: Duration,
) -> bool {
    let slots = shared.slots();
    let sum = |f: &dyn Fn(&Slot) -> u64| slots.iter().map(f).sum::<u64>();
    for r in running {
        if let Some(s) = shared.slot(r.index) {
            say(&format!(
                "worker {} seed {:#x} requests {} errors {} hangs {}",
                r.index,
                r.seed,
                s.requests.load(Relaxed),
                s.errors.load(Relaxed),
                s.slow.load(Relaxed)
            ));
        }
    }
    let requests = sum(&|s| s.requests.load(Relaxed));
    let hangs = sum(&|s| s.slow.load(Relaxed)) + stuck;
    let crashes = crashes + sum(&|s| s.crashes.load(Relaxed));
    let wrong = sum(&|s| s.wrong.load(Relaxed));
    say(&format!(
        "requests {requests} procs {} forks {} seeds {} hangs {hangs} crashes {crashes} wrong {wrong} checked {} stuck {stuck} errors {} elapsed_ms {}",
        running.len(),
        sum(&|s| s.forks.load(Relaxed)),
        running.len(),
        sum(&|s| s.checked.load(Relaxed)),
        sum(&|s| s.errors.load(Relaxed)),
        elapsed.as_millis()
    ));
    let mut errnos: Vec<(u64, String)> = (0..ERRNOS)
        .map(|i| {
            let n = sum(&|s| s.errno[i].load(Relaxed));
            let name = if i == 0 {
                "E_OTHER".to_owned()
            } else {
                format!("{:?}", nix::errno::Errno::from_raw(i as i32))
            };
            (n, name)
        })
        .filter(|(n, _)| *n > 0)
        .collect();
    errnos.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    for (n, name) in errnos {
        say(&format!("errno {name} {n}"));
    }
    for k in KINDS {
        let at = k as usize;
        say(&format!(
            "scheme {} requests {} errors {}",
            k.name(),
            sum(&|s| s.by_kind[at][0].load(Relaxed)),
            sum(&|s| s.by_kind[at][1].load(Relaxed))
        ));
    }
    for (op, _) in ops::OPS {
        let at = op as usize;
        say(&format!(
            "op {} requests {} errors {}",
            op.name(),
            sum(&|s| s.by_op[at][0].load(Relaxed)),
            sum(&|s| s.by_op[at][1].load(Relaxed))
        ));
    }
    hangs == 0 && crashes == 0 && wrong == 0
}
