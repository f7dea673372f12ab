//! portprobe: the lab's stand-in platform driver for proving that a port
//! grant is exact (`tests/lab/tests/platform.rs`).
//!
//! The lab installs a rule that makes acpid start `portprobe` for the CMOS
//! clock instead of rtcd, so init starts it exactly as it starts rtcd: the
//! clock's `_CRS` ports granted with `ioperm`, then uid rtcd, no
//! capabilities. It then executes raw `in` instructions, with no software
//! check in between, so only the kernel's I/O permission bitmap decides:
//! - it reads the first and last granted ports itself and prints them;
//! - for each PORT argument it runs a child (fork + exec of itself, which
//!   keeps the bitmap) that first reads a granted port, then PORT, and
//!   reports how the child ended (a refused port: `SIGSEGV`);
//! - finally it reads the first PORT itself, so init reports that the very
//!   process it started died of `SIGSEGV`.
//!
//! Usage: `portprobe PORT…` (hex, e.g. `0x80`), or internally
//! `portprobe --child GRANTED PORT`.

use std::os::unix::process::ExitStatusExt;
use std::process::{Command, ExitCode};

use common::port::{inb, PortGrant};

/// One port, hex (`0x80`), with the kit's parser.
fn port(word: &str) -> Option<u16> {
    daemon::ports::parse_range(word)
        .ok()
        .filter(|r| r.start() == r.end())
        .map(|r| *r.start())
}

/// One raw port read, announced first so the log shows what was tried
/// even when it kills the process.
fn read(who: &str, p: u16) -> u8 {
    println!("{who}: reading {p:#x}");
    // SAFETY: deliberately unchecked: the probe's purpose is to let the
    // kernel's I/O permission bitmap decide. The ports read are the RTC's
    // (index/data, no effect on read) and unassigned or status ports.
    let v = unsafe { inb(p) };
    println!("{who}: {p:#x} = {v:#04x}");
    v
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [flag, granted, target] = args.as_slice() {
        if flag == "--child" {
            let (Some(g), Some(t)) = (port(granted), port(target)) else {
                return ExitCode::from(2);
            };
            read(&format!("child {t:#x}"), g);
            read(&format!("child {t:#x}"), t);
            println!("child {t:#x}: NOT REFUSED");
            return ExitCode::SUCCESS;
        }
    }
    let targets: Option<Vec<u16>> = args.iter().map(|a| port(a)).collect();
    let Some(targets) = targets else {
        eprintln!("usage: portprobe PORT… (hex)");
        return ExitCode::from(2);
    };
    let grant = match PortGrant::from_env() {
        Ok(g) => g,
        Err(e) => {
            eprintln!("portprobe: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "grant {}",
        std::env::var(daemon::ports::IOPORTS_ENV).unwrap_or_default()
    );
    let (Some(first), Some(last)) = (grant.ranges().first(), grant.ranges().last()) else {
        eprintln!("portprobe: no ports were granted");
        return ExitCode::FAILURE;
    };
    let (first, last) = (*first.start(), *last.end());
    read("in", first.saturating_add(1));
    read("in", last);

    for &t in &targets {
        let status = Command::new("/proc/self/exe")
            .arg("--child")
            .arg(format!("{:#x}", first.saturating_add(1)))
            .arg(format!("{t:#x}"))
            .status();
        match status {
            Ok(s) => match (s.code(), s.signal()) {
                (_, Some(sig)) => println!("out {t:#x}: killed by signal {sig}"),
                (Some(c), _) => println!("out {t:#x}: exit status {c}"),
                _ => println!("out {t:#x}: {s}"),
            },
            Err(e) => println!("out {t:#x}: cannot run the child: {e}"),
        }
    }
    if let Some(&t) = targets.first() {
        read("self", t);
        println!("self: NOT REFUSED");
    }
    ExitCode::SUCCESS
}
