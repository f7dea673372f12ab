//! The scheme fuzzer's campaign (`make fuzz`, and its short version in
//! `make test`): hostile clients on every scheme, then checks that they
//! changed nothing they had no right to.
//!
//! One VM: the usual services, a virtio-blk disk on a host file of a known
//! pattern (read-only to the fuzzer: the check disk), a second one as
//! scratch (root's workers write it), and an e1000 and a virtio-net on one
//! hub. Each round runs `scheme-fuzz` (tools/fuzz) in the guest with its
//! own seed, bounded; the fuzzer checks every read of the check disk (its
//! content is the fuzzer's own `rng::pattern`), of `/scheme/zero` and of
//! `/scheme/null` as it goes. Then:
//!
//! - every service has the pid, state, restart and hang counts it had
//!   before the first round (`/scheme/init/services`), and init reported no
//!   end, hang or failure on the console, nor did the kernel an oops;
//! - every scheme answers a simple request within a bound (a FIFO round
//!   trip, a read of each of null, zero, rand, a table, an AML value, the
//!   clock, a function's summary, both NICs passing frames, the scratch
//!   disk's size);
//! - the check disk, read whole through its scheme, has the host file's
//!   md5;
//! - each daemon holds as many files as before (a leak shows there).
//!
//! After the last round, the ordinary user tries what it has no right to
//! (write and read the check disk, write `/scheme/init/control`, open a
//! PCI channel, power off, open a NIC's frames) and must get `EACCES`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::{frames_summary, md5_hex, pattern, Config, Vm};

const DISK: &str = "/scheme/disk.pci-0000-00-04.0_virtio_blk";
const SCRATCH: &str = "/scheme/disk.pci-0000-00-07.0_virtio_blk";
const E1000: &str = "/scheme/network.pci-0000-00-05.0_e1000";
const VIRTIO: &str = "/scheme/network.pci-0000-00-06.0_virtio_net";
const DISK_MIB: usize = 8;
/// A check after the fuzzer that takes longer than this failed.
const CHECK_BOUND: Duration = Duration::from_secs(30);

/// What a campaign is asked to do.
#[derive(Debug, Clone)]
pub struct Campaign {
    /// The scenario's name (console log and disk images under `target/lab/`).
    pub name: String,
    /// Round `r` runs the fuzzer with seed `seed + r`.
    pub seed: u64,
    pub rounds: usize,
    /// Workers per round, half root, half the ordinary user.
    pub procs: usize,
    /// Calls per worker.
    pub ops: usize,
    /// How long one round's fuzzer may take.
    pub round_bound: Duration,
    /// A call the fuzzer sees answered later than this is a hang.
    pub call_bound: Duration,
    /// A guest command run just before the last round's fuzzer starts
    /// (`… &` to run beside it): how a test shows that the checks catch a
    /// daemon that stops answering.
    pub sabotage: Option<String>,
}

/// What a campaign saw.
#[derive(Debug, Default)]
pub struct Report {
    pub rounds: usize,
    pub requests: u64,
    pub procs: u64,
    pub forks: u64,
    pub seeds: Vec<String>,
    /// Calls answered later than the fuzzer's bound, or never.
    pub hangs: u64,
    /// Fuzzer processes killed by a signal.
    pub crashes: u64,
    /// Reads that returned other bytes than the file holds (the check
    /// disk, `/scheme/zero`, `/scheme/null`).
    pub wrong: u64,
    /// Reads whose bytes the fuzzer checked.
    pub checked: u64,
    pub errors: u64,
    pub errnos: BTreeMap<String, u64>,
    /// Requests and errors per scheme.
    pub schemes: BTreeMap<String, (u64, u64)>,
    /// The fuzzer's HANG and CRASH lines, and rounds that did not end.
    pub incidents: Vec<String>,
    /// A service that changed (pid, state, restarts, hangs), or init's or
    /// the kernel's report of something ending.
    pub service_changes: Vec<String>,
    /// Schemes that did not answer a simple request afterwards.
    pub unanswered: Vec<String>,
    /// Daemons holding more files than before.
    pub fd_leaks: Vec<String>,
    /// Rounds after which the check disk's md5 was wrong.
    pub disk_changed: Vec<usize>,
    /// What the ordinary user could do that it must not.
    pub user_allowed: Vec<String>,
    /// Each daemon's resident memory before the first round and after
    /// each, in KiB.
    pub memory: BTreeMap<String, Vec<u64>>,
    /// FIFOs fifod holds at the end (any name opened makes one).
    pub fifos: usize,
    pub fuzz_seconds: f64,
}

impl Report {
    /// True when nothing went wrong.
    pub fn clean(&self) -> bool {
        self.hangs == 0
            && self.crashes == 0
            && self.wrong == 0
            && self.incidents.is_empty()
            && self.service_changes.is_empty()
            && self.unanswered.is_empty()
            && self.fd_leaks.is_empty()
            && self.disk_changed.is_empty()
            && self.user_allowed.is_empty()
    }

    pub fn print(&self) {
        println!(
            "fuzz campaign: {} rounds, {:.0} s of fuzzing",
            self.rounds, self.fuzz_seconds
        );
        println!("  requests             {}", self.requests);
        println!(
            "  processes            {} workers, {} forked children",
            self.procs, self.forks
        );
        println!("  seeds                {}", self.seeds.len());
        println!("  hangs                {}", self.hangs);
        println!("  crashes              {}", self.crashes);
        println!(
            "  wrong answers        {} (of {} reads checked)",
            self.wrong, self.checked
        );
        println!("  errors returned      {}", self.errors);
        let mut errnos: Vec<_> = self.errnos.iter().collect();
        errnos.sort_by(|a, b| b.1.cmp(a.1));
        for (name, n) in errnos {
            println!("    {name:<16} {n}");
        }
        for (name, (req, err)) in &self.schemes {
            println!("  scheme {name:<9} requests {req:>8} errors {err:>8}");
        }
        for (name, rss) in &self.memory {
            let steps: Vec<String> = rss.iter().map(u64::to_string).collect();
            println!("  memory {name:<32} {} KiB", steps.join(" -> "));
        }
        println!("  FIFOs left in fifod  {}", self.fifos);
        let lists = [
            ("incident", &self.incidents),
            ("service changed", &self.service_changes),
            ("no answer", &self.unanswered),
            ("fd leak", &self.fd_leaks),
            ("user allowed", &self.user_allowed),
        ];
        for (what, list) in lists {
            for line in list {
                println!("  {what}: {line}");
            }
        }
        println!(
            "  check disk md5       {}",
            if self.disk_changed.is_empty() {
                "unchanged".to_owned()
            } else {
                format!("CHANGED after rounds {:?}", self.disk_changed)
            }
        );
        println!(
            "  ordinary user        {}",
            if self.user_allowed.is_empty() {
                "refused everywhere (EACCES)"
            } else {
                "ALLOWED something"
            }
        );
    }
}

/// One service as `/scheme/init/services` shows it: state, pid, restarts,
/// hangs.
type ServiceRow = (String, String, String, String);

fn services(vm: &mut Vm) -> crate::Result<BTreeMap<String, ServiceRow>> {
    let table = vm.ok("dd if=/scheme/init/services bs=64k 2>/dev/null")?;
    Ok(table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            let row = (
                w.get(1)?.to_string(),
                w.get(2)?.to_string(),
                w.get(3)?.to_string(),
                w.get(4)?.to_string(),
            );
            Some((w.first()?.to_string(), row))
        })
        .collect())
}

/// Each running service's open files and resident memory (KiB).
fn daemon_usage(
    vm: &mut Vm,
    table: &BTreeMap<String, ServiceRow>,
) -> crate::Result<BTreeMap<String, (u64, u64)>> {
    let mut out = BTreeMap::new();
    for (name, (_, pid, _, _)) in table {
        if pid.parse::<u32>().is_err() {
            continue;
        }
        let text = vm.ok(&format!(
            "ls /proc/{pid}/fd | wc -l; grep VmRSS /proc/{pid}/status | tr -s ' ' | cut -d' ' -f2"
        ))?;
        let mut nums = text.split_whitespace().filter_map(|w| w.parse().ok());
        if let (Some(fds), Some(rss)) = (nums.next(), nums.next()) {
            out.insert(name.clone(), (fds, rss));
        }
    }
    Ok(out)
}

/// The fuzzer's `fuzz: …` lines, the prefix removed.
fn fuzz_lines(out: &str) -> Vec<&str> {
    out.lines()
        .filter_map(|l| l.strip_prefix("fuzz: "))
        .collect()
}

/// Adds one round's output to the report.
fn take_round(report: &mut Report, out: &str) -> crate::Result<()> {
    let lines = fuzz_lines(out);
    let totals = frames_summary(&lines.join("\n"), "requests")
        .ok_or_else(|| format!("the fuzzer printed no totals:\n{out}"))?;
    let get = |k: &str| totals.get(k).copied().unwrap_or(0);
    report.requests += get("requests");
    report.procs += get("procs");
    report.forks += get("forks");
    report.hangs += get("hangs");
    report.crashes += get("crashes");
    report.wrong += get("wrong");
    report.checked += get("checked");
    report.errors += get("errors");
    for l in &lines {
        let w: Vec<&str> = l.split_whitespace().collect();
        match w.as_slice() {
            ["errno", name, n] => {
                *report.errnos.entry((*name).to_owned()).or_default() += n.parse().unwrap_or(0);
            }
            ["scheme", name, "requests", r, "errors", e] => {
                let s = report.schemes.entry((*name).to_owned()).or_default();
                s.0 += r.parse().unwrap_or(0);
                s.1 += e.parse().unwrap_or(0);
            }
            ["worker", _, "seed", seed, "uid", ..] => report.seeds.push((*seed).to_owned()),
            ["HANG", ..] | ["CRASH", ..] | ["WRONG", ..] => report.incidents.push((*l).to_owned()),
            _ => {}
        }
    }
    Ok(())
}

/// Console lines since byte `from` in which init reports a service
/// ending, hanging, failing or coming back, or the kernel an oops.
fn endings(console: &str, from: usize) -> Vec<String> {
    // The kernel's lines start with its timestamp, `[    12.345678] `;
    // a daemon's with its name, `[acpid] `.
    let kernel = |l: &str| {
        l.strip_prefix('[')
            .is_some_and(|r| r.trim_start().starts_with(|c: char| c.is_ascii_digit()))
    };
    console
        .get(from..)
        .unwrap_or("")
        .lines()
        .filter(|l| {
            (l.starts_with("init: ")
                && ["service ", "exited", "hung", "killing"]
                    .iter()
                    .any(|w| l.contains(w)))
                || (kernel(l)
                    && [
                        "Oops",
                        "BUG:",
                        "Kernel panic",
                        "segfault",
                        "general protection",
                    ]
                    .iter()
                    .any(|w| l.contains(w)))
        })
        .map(str::to_owned)
        .collect()
}

/// Whether a check's output is right.
type Judge = Box<dyn Fn(&str) -> bool>;

/// Each scheme asked one simple thing, bounded: the names that did not
/// answer right.
fn unanswered(vm: &mut Vm, round: usize) -> Vec<String> {
    let zeros = md5_hex(&[0u8; 4096]);
    let hello: String = b"hello".iter().map(|b| format!("{b:02x}")).collect();
    let checks: Vec<(&str, String, Judge)> = vec![
        (
            "null",
            "dd if=/dev/zero of=/scheme/null bs=4k count=4 2>/dev/null && dd if=/scheme/null bs=4k 2>/dev/null | wc -c".into(),
            Box::new(|o| o.trim() == "0"),
        ),
        (
            "zero",
            "dd if=/scheme/zero bs=4k count=1 2>/dev/null | md5sum".into(),
            Box::new(move |o| o.starts_with(&zeros)),
        ),
        (
            "rand",
            "dd if=/scheme/rand bs=16 count=1 2>/dev/null | wc -c".into(),
            Box::new(|o| o.trim() == "16"),
        ),
        (
            "fifo",
            format!("probe write /scheme/fifo/check{round} hello >/dev/null && probe read /scheme/fifo/check{round} 5"),
            Box::new(move |o| o.trim().ends_with(&hello)),
        ),
        (
            "disk (scratch)",
            format!("probe ioctl-u64 {SCRATCH}/0 0x80081272"),
            Box::new(|o| o.trim() == format!("ok 0 {}", DISK_MIB << 20)),
        ),
        (
            "network",
            format!("frames pair {E1000} {VIRTIO} --count 50 --size 100 --seed {round} --window 8 --timeout-ms 10000 2>&1"),
            Box::new(|o| {
                frames_summary(o, "received")
                    .is_some_and(|r| r.get("received") == Some(&50) && r.get("bad") == Some(&0))
            }),
        ),
        (
            "pci",
            "dd if=/scheme/pci/pci-0000-00-04.0/summary bs=64k 2>/dev/null".into(),
            Box::new(|o| o.contains("virtio")),
        ),
        (
            "acpi (tables)",
            "dd if=/scheme/acpi/tables/index.txt bs=64k 2>/dev/null".into(),
            Box::new(|o| o.contains("DSDT")),
        ),
        (
            "acpi (AML)",
            "dd if=/scheme/acpi/symbols/_SB/PCI0/SF8/RTC/_HID bs=4k 2>/dev/null".into(),
            Box::new(|o| o.contains("PNP0B00")),
        ),
        (
            "time",
            "dd if=/scheme/time/now bs=4k 2>/dev/null".into(),
            Box::new(|o| o.split_whitespace().next().is_some_and(|s| s.parse::<u64>().is_ok())),
        ),
        (
            "init",
            "dd if=/scheme/init/services bs=64k 2>/dev/null".into(),
            Box::new(|o| o.starts_with("service")),
        ),
    ];
    let mut failed = Vec::new();
    for (name, script, ok) in checks {
        match vm.sh_timeout(&script, CHECK_BOUND) {
            Ok(out) if out.success() && ok(&out.stdout_str()) => {}
            Ok(out) => failed.push(format!(
                "{name}: {}{}{}",
                if out.timed_out { "timed out; " } else { "" },
                out.stdout_str().trim(),
                out.stderr_str().trim()
            )),
            Err(e) => failed.push(format!("{name}: {e}")),
        }
    }
    failed
}

/// What the ordinary user must not do: each must be refused with EACCES.
fn user_allowed(vm: &mut Vm) -> crate::Result<Vec<String>> {
    let tries = [
        format!("probe write {DISK}/0 x"),
        format!("probe open {DISK}/0 r"),
        "probe write /scheme/init/control 'stop fifod'".to_owned(),
        "probe open /scheme/pci/pci-0000-00-04.0/channel rw".to_owned(),
        "probe write /scheme/acpi/power poweroff".to_owned(),
        format!("probe open {E1000}/frames rw"),
    ];
    let mut allowed = Vec::new();
    for t in tries {
        let out = vm.sh(&format!("su user -c \"{t}\""))?;
        let said = out.stdout_str();
        if said.trim() != "err EACCES" {
            allowed.push(format!("{t}: {}{}", said.trim(), out.stderr_str().trim()));
        }
    }
    Ok(allowed)
}

/// Runs `c` and returns its report.
pub fn run(c: &Campaign) -> crate::Result<Report> {
    let dir = crate::workspace_root().join("target/lab");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let disk_path = dir.join(format!("{}.img", c.name));
    let scratch_path = dir.join(format!("{}-scratch.img", c.name));
    let mut disk = vec![0u8; DISK_MIB << 20];
    scheme_fuzz::rng::pattern(c.seed, 0, &mut disk);
    std::fs::write(&disk_path, &disk).map_err(|e| e.to_string())?;
    std::fs::write(&scratch_path, pattern(c.seed + 1, DISK_MIB << 20))
        .map_err(|e| e.to_string())?;
    let disk_sum = md5_hex(&disk);
    let cfg = Config::new(&c.name)
        .args(crate::virtio_blk_args("a", &disk_path, "04.0"))
        .args(crate::virtio_blk_args("b", &scratch_path, "07.0"))
        .args(crate::nic_pair_on_hub(0, "05.0", "06.0"));
    let mut vm = Vm::boot(cfg)?;
    vm.ok(&format!(
        "for i in $(seq 600); do [ -e {DISK}/0 ] && [ -e {SCRATCH}/0 ] && \
           [ \"$(cat {E1000}/link 2>/dev/null)\" = up ] && \
           [ \"$(cat {VIRTIO}/link 2>/dev/null)\" = up ] && exit 0; sleep 0.1; done; \
         ls /scheme; exit 1"
    ))?;
    let before = services(&mut vm)?;
    let usage_before = daemon_usage(&mut vm, &before)?;
    let mut report = Report::default();
    for round in 0..c.rounds {
        report.rounds = round + 1;
        let seed = c.seed + round as u64;
        let mark = vm.console().len();
        let started = Instant::now();
        let sabotage = match &c.sabotage {
            Some(cmd) if round + 1 == c.rounds => format!("{cmd}\n"),
            _ => String::new(),
        };
        let out = vm.sh_timeout(
            &format!(
                "echo 'fuzz: round {round}: seed {seed}' > /dev/console; {sabotage}\
                 scheme-fuzz --seed {seed} --procs {} --ops {} --bound-s {} \
                   --write-disk {SCRATCH} --check-disk {DISK}/0:{} 2>&1",
                c.procs,
                c.ops,
                c.call_bound.as_secs(),
                c.seed
            ),
            c.round_bound,
        )?;
        report.fuzz_seconds += started.elapsed().as_secs_f64();
        if out.timed_out {
            report.incidents.push(format!(
                "round {round} (seed {seed}) did not end within {:?}",
                c.round_bound
            ));
        }
        take_round(&mut report, &out.stdout_str())?;
        eprintln!(
            "fuzz: round {} (seed {seed}): {:.0} s, {} requests so far",
            round + 1,
            started.elapsed().as_secs_f64(),
            report.requests
        );

        // Every scheme asked first: a call on a daemon that stopped waits
        // here for init to catch the hang and its successor to answer, so
        // the service table below sees what happened.
        report.unanswered.extend(
            unanswered(&mut vm, round)
                .into_iter()
                .map(|l| format!("round {round}: {l}")),
        );
        let after = services(&mut vm)?;
        for (name, row) in &after {
            if before.get(name) != Some(row) {
                report.service_changes.push(format!(
                    "round {round}: {name}: {:?} -> {row:?}",
                    before.get(name)
                ));
            }
        }
        report.service_changes.extend(
            endings(&vm.console(), mark)
                .into_iter()
                .map(|l| format!("round {round}: {l}")),
        );
        let sum = vm.ok(&format!("dd if={DISK}/0 bs=1M 2>/dev/null | md5sum"))?;
        if !sum.starts_with(&disk_sum) {
            report.disk_changed.push(round);
        }
        let usage = daemon_usage(&mut vm, &after)?;
        for (name, (fds, rss)) in &usage {
            let Some((fds_before, rss_before)) = usage_before.get(name) else {
                continue;
            };
            if fds > fds_before {
                report.fd_leaks.push(format!(
                    "round {round}: {name}: {fds_before} -> {fds} open files"
                ));
            }
            report
                .memory
                .entry(name.clone())
                .or_insert_with(|| vec![*rss_before])
                .push(*rss);
        }
    }
    report.fifos = vm
        .ok("ls /scheme/fifo | wc -l")?
        .trim()
        .parse()
        .unwrap_or(0);
    report.user_allowed = user_allowed(&mut vm)?;
    let _ = vm.poweroff(Duration::from_secs(60));
    Ok(report)
}
