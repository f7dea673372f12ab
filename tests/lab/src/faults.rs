//! The fault campaign (`make faults`, and its short version in `make
//! test`): drivers fail on purpose while clients run real load, and the
//! campaign counts what the clients saw.
//!
//! Faults come two ways, both from one seed: inside virtio-blkd, e1000d and
//! virtio-netd through the kit's injector (`FAULT_INJECT` in their units:
//! panic, abort, hang, stop, a bad read length, a bad DMA address), and
//! from outside, between load steps, on those drivers and on fifod
//! (`kill -9`, `SIGABRT`, `SIGSTOP`). The load, each round: a whole-disk
//! read checked against the host file's md5; a pattern written over the
//! disk and read back; checked frames between the two NICs on a hub; FIFO
//! traffic checked byte for byte.
//!
//! Counted: faults injected by kind (the injector logs each one before it
//! acts; outside ones are counted as sent), restarts and hangs
//! (`/scheme/init`), client-visible errors (a load step that failed with an
//! error), data mismatches (a step that succeeded with wrong data, or a
//! damaged or duplicated frame), lost requests (a step that never ended
//! within its bound), system crashes (the guest stopped answering), and
//! recovery times (init's "back N ms after it ended": from a daemon's end
//! to its successor serving, guest time).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::{md5_hex, pattern, Config, Vm};

const DISK: &str = "/scheme/disk.pci-0000-00-04.0_virtio_blk/0";
const E1000: &str = "/scheme/network.pci-0000-00-05.0_e1000";
const VIRTIO: &str = "/scheme/network.pci-0000-00-06.0_virtio_net";
const DISK_MIB: usize = 8;
/// A load step that takes longer than this lost a request.
const STEP_BOUND: Duration = Duration::from_secs(180);
/// The drivers injecting faults themselves, and their unit files.
const INJECTING: [&str; 3] = ["virtio-blkd", "e1000d", "virtio-netd"];

/// What a campaign is asked to do.
#[derive(Debug, Clone)]
pub struct Campaign {
    /// The scenario's name: its console log and disk image under
    /// `target/lab/` are named after it.
    pub name: String,
    pub seed: u64,
    /// Stop once this many faults were injected (or `rounds` ran).
    pub faults: usize,
    pub rounds: usize,
    /// One injection point in `rate` fires, in the drivers.
    pub rate: u64,
    /// The injector's kinds, `+`-separated (see `common::fault`).
    pub kinds: String,
    /// Also signal a daemon from outside each round.
    pub outside: bool,
}

/// The kinds the system recovers from with nothing lost: the campaign's
/// default. A bad DMA address (`baddma`) is not among them: the IOMMU
/// stops the access, but QEMU's virtio models then read the blocked
/// buffer as zeros and carry on (a virtio-blk header of zeros is a read
/// of sector 0, answered OK), so that one request's data is wrong and no
/// driver can tell. `--kinds …+baddma` adds it; the report then counts the
/// DMA faults the IOMMU stopped.
pub const LOSSLESS_KINDS: &str = "panic+abort+hang+stop+badlen";

/// What a campaign saw.
#[derive(Debug, Default)]
pub struct Report {
    pub rounds: usize,
    pub injected: BTreeMap<String, usize>,
    pub restarts: u64,
    pub hangs: u64,
    pub client_errors: usize,
    pub mismatches: usize,
    pub lost: usize,
    pub crashes: usize,
    /// Times a service reached the supervisor's failure limit and was
    /// started again by hand (as an operator would), so the campaign goes
    /// on covering it.
    pub gave_up: usize,
    /// Device accesses the IOMMU stopped (the guest kernel's DMAR fault
    /// reports), by PCI function.
    pub dma_faults: BTreeMap<String, usize>,
    /// The addresses of those faults, and the bad addresses injected.
    pub dma_fault_addrs: Vec<String>,
    pub bad_dma_addrs: Vec<String>,
    /// Recovery times, ms of guest time, sorted.
    pub recoveries: Vec<u64>,
    pub notes: Vec<String>,
}

impl Report {
    pub fn faults(&self) -> usize {
        self.injected.values().sum()
    }

    fn percentile(&self, p: f64) -> Option<u64> {
        let n = self.recoveries.len();
        (n > 0).then(|| self.recoveries[((n as f64 - 1.0) * p).round() as usize])
    }

    pub fn print(&self) {
        println!(
            "fault campaign: {} rounds, {} faults",
            self.rounds,
            self.faults()
        );
        for (kind, n) in &self.injected {
            println!("  injected {kind:<14} {n}");
        }
        println!("  restarts             {}", self.restarts);
        println!("  hangs detected       {}", self.hangs);
        println!("  client-visible errors {}", self.client_errors);
        println!("  data mismatches      {}", self.mismatches);
        println!("  lost requests        {}", self.lost);
        println!("  system crashes       {}", self.crashes);
        println!(
            "  failure limit reached {} (started again by hand)",
            self.gave_up
        );
        for (function, n) in &self.dma_faults {
            println!("  DMA faults stopped by the IOMMU, {function}: {n}");
        }
        match (
            self.percentile(0.5),
            self.percentile(0.99),
            self.recoveries.last(),
        ) {
            (Some(m), Some(p99), Some(max)) => println!(
                "  recovery (guest ms)  median {m} p99 {p99} max {max} over {}",
                self.recoveries.len()
            ),
            _ => println!("  recovery (guest ms)  none measured"),
        }
        for n in &self.notes {
            println!("  note: {n}");
        }
    }
}

fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// The unit file of `driver` from the image's tree, injecting faults.
pub fn unit_with_faults(driver: &str, plan: &str) -> crate::Result<Vec<u8>> {
    let path = crate::workspace_root().join(format!("initfs/etc/init.d/{driver}.toml"));
    let mut text =
        std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    text.push_str(&format!("env = {{ FAULT_INJECT = \"{plan}\" }}\n"));
    Ok(text.into_bytes())
}

/// What a finished step's output says.
enum Verdict {
    Right,
    /// The client was told something failed (an error, not wrong data).
    Failed,
    Wrong,
}

impl From<bool> for Verdict {
    fn from(right: bool) -> Verdict {
        if right {
            Verdict::Right
        } else {
            Verdict::Wrong
        }
    }
}

/// Runs one step; sorts its outcome into the report. `check` judges the
/// output of a step that exited 0.
fn step<V: Into<Verdict>>(
    vm: &mut Vm,
    report: &mut Report,
    what: &str,
    script: &str,
    check: impl Fn(&str) -> V,
) -> crate::Result<()> {
    let what = format!("round {}: {what}", report.rounds);
    // A mark in the guest's log, so the console shows which step each
    // fault and restart fell into.
    let script = format!("echo 'faults: {what}' > /dev/console; {script}");
    let out = match vm.sh_timeout(&script, STEP_BOUND) {
        Ok(o) => o,
        Err(e) => {
            report.crashes += 1;
            return Err(format!("{what}: the guest stopped answering: {e}"));
        }
    };
    if out.timed_out {
        report.lost += 1;
        report.notes.push(format!("{what}: never ended"));
    } else if !out.success() {
        report.client_errors += 1;
    } else {
        match check(&out.stdout_str()).into() {
            Verdict::Right => {}
            Verdict::Failed => report.client_errors += 1,
            Verdict::Wrong => {
                report.mismatches += 1;
                report
                    .notes
                    .push(format!("{what}: wrong data: {}", out.stdout_str().trim()));
            }
        }
    }
    Ok(())
}

/// One round of load: each step's outcome goes into `report`; an error
/// only when the guest stopped answering.
fn load(
    vm: &mut Vm,
    report: &mut Report,
    read_sum: &str,
    round: usize,
    seed: u64,
) -> crate::Result<()> {
    let half = DISK_MIB * 128; // 4 KiB blocks in half the disk
    step(
        vm,
        report,
        "disk read",
        // Into a file first: a pipe would report md5sum's status, not dd's.
        &format!(
            "dd if={DISK} of=/tmp/r bs=4k count={half} 2>/dev/null && md5sum < /tmp/r && wc -c < /tmp/r"
        ),
        |o| o.split_whitespace().next() == Some(read_sum),
    )?;
    step(
        vm,
        report,
        "disk write",
        &format!(
            "dd if=/dev/urandom of=/tmp/p bs=64k count=16 2>/dev/null && \
             dd if=/tmp/p of={DISK} bs=4k seek={half} conv=notrunc 2>/dev/null && \
             [ \"$(dd if={DISK} bs=4k skip={half} count=256 2>/dev/null | md5sum)\" = \"$(md5sum < /tmp/p)\" ] && echo same"
        ),
        |o| o.trim() == "same",
    )?;
    step(
        vm,
        report,
        "frames",
        &format!(
            "frames pair {E1000} {VIRTIO} --count 300 --size 200 --seed {seed} --window 32 --timeout-ms 10000 2>&1; true"
        ),
        // Frames lost while a NIC's driver restarts are expected (and
        // counted by it); a damaged or duplicated frame never is.
        |o| match crate::frames_summary(o, "received") {
            Some(r) => Verdict::from(r.get("bad") == Some(&0) && r.get("dup") == Some(&0)),
            None => Verdict::Failed,
        },
    )?;
    let want: String = format!("r{seed}")
        .bytes()
        .map(|b| format!("{b:02x}"))
        .collect();
    step(
        vm,
        report,
        "fifo",
        &format!("probe write /scheme/fifo/c{round} r{seed} >/dev/null && probe read /scheme/fifo/c{round} 64"),
        |o| o.trim().ends_with(&want),
    )
}

/// Runs `c` and returns its report (also when the guest died: then
/// `crashes` says so).
pub fn run(c: &Campaign) -> crate::Result<Report> {
    let dir = crate::workspace_root().join("target/lab");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let path: PathBuf = dir.join(format!("{}.img", c.name));
    let disk = pattern(c.seed, DISK_MIB << 20);
    std::fs::write(&path, &disk).map_err(|e| e.to_string())?;
    // The first half is read and checked each round; the second is written.
    let read_sum = md5_hex(&disk[..(DISK_MIB << 20) / 2]);
    let plan = format!("seed={},rate={},kinds={}", c.seed, c.rate, c.kinds);
    let mut cfg = Config::new(&c.name)
        .args(crate::virtio_blk_args("a", &path, "04.0"))
        .args(crate::nic_pair_on_hub(0, "05.0", "06.0"));
    for d in INJECTING {
        cfg = cfg.file(
            &format!("/etc/init.d/{d}.toml"),
            &unit_with_faults(d, &plan)?,
            0o644,
        );
    }
    let mut vm = Vm::boot(cfg)?;
    let mut report = Report::default();
    let mut rng = c.seed | 1;
    let started = Instant::now();
    let outside = ["virtio-blkd", "e1000d", "virtio-netd", "fifod"];
    let signals = ["KILL", "ABRT", "STOP"];
    for round in 0..c.rounds {
        report.rounds = round + 1;
        // One fault from outside per round, on a random daemon.
        let target = outside[(next(&mut rng) % outside.len() as u64) as usize];
        let sig = signals[(next(&mut rng) % signals.len() as u64) as usize];
        if c.outside {
            let _ = vm.sh(&format!(
                "echo 'faults: round {}: kill -{sig} {target}' > /dev/console; kill -{sig} $(pidof {target}) 2>/dev/null",
                round + 1
            ));
            *report.injected.entry(format!("outside-{sig}")).or_default() += 1;
        }

        if let Err(e) = load(
            &mut vm,
            &mut report,
            &read_sum,
            round,
            next(&mut rng) % 1_000_000,
        ) {
            report.notes.push(e);
            break;
        }
        // A service past the failure limit stays failed (its schemes
        // answered by init); start it again, as an operator would.
        if let Ok(table) = vm.ok("dd if=/scheme/init/services bs=4k 2>/dev/null") {
            for line in table.lines().skip(1) {
                let w: Vec<&str> = line.split_whitespace().collect();
                if let (Some(name), Some(&"failed")) = (w.first(), w.get(1)) {
                    report.gave_up += 1;
                    report.notes.push(format!(
                        "round {}: {name} reached the failure limit",
                        round + 1
                    ));
                    let _ = vm.sh(&format!("echo start {name} > /scheme/init/control"));
                }
            }
        }
        let console = vm.console();
        report.injected.retain(|k, _| k.starts_with("outside"));
        for line in console.lines().filter(|l| l.contains("fault: injecting ")) {
            let kind = line
                .split("fault: injecting ")
                .nth(1)
                .and_then(|r| r.split_whitespace().next())
                .unwrap_or("?");
            *report.injected.entry(kind.to_owned()).or_default() += 1;
        }
        if report.faults() >= c.faults {
            break;
        }
        eprintln!(
            "faults: round {} ({:.0} s): {} faults so far",
            round + 1,
            started.elapsed().as_secs_f64(),
            report.faults()
        );
    }
    // The supervisor's own counts, and recovery times from init's log.
    if let Ok(table) = vm.ok("dd if=/scheme/init/services bs=4k 2>/dev/null") {
        for line in table.lines().skip(1) {
            let w: Vec<&str> = line.split_whitespace().collect();
            if let (Some(r), Some(h)) = (w.get(3), w.get(4)) {
                report.restarts += r.parse::<u64>().unwrap_or(0);
                report.hangs += h.parse::<u64>().unwrap_or(0);
            }
        }
    }
    let console = vm.console();
    report.recoveries = console
        .lines()
        .filter_map(|l| {
            let rest = l.split(" back ").nth(1)?;
            rest.strip_suffix(" ms after it ended")?.parse().ok()
        })
        .collect();
    report.recoveries.sort_unstable();
    for fault in crate::dma_faults(&console) {
        *report.dma_faults.entry(fault.function).or_default() += 1;
        report.dma_fault_addrs.push(fault.addr);
    }
    for line in console.lines() {
        if let Some(rest) = line.split("fault: injecting BadDma at ").nth(1) {
            if let Some(addr) = rest
                .split("IOVA ")
                .nth(1)
                .and_then(|r| r.split_whitespace().next())
            {
                report.bad_dma_addrs.push(addr.to_owned());
            }
        }
    }
    if report.crashes == 0 {
        let _ = vm.poweroff(Duration::from_secs(60));
    }
    Ok(report)
}
