//! Hostile peers on the channels: a driver that attacks init's control
//! channel and pcid's channel (`hostile-peer`, started by pcid for QEMU's
//! `pci-testdev` as any driver is, holding what a driver holds) with
//! garbage, cut and oversized packets, requests it has no right to make,
//! fds it should not pass and a flood it never reads the answers to.
//!
//! Afterwards: init and pcid have the same pids and the same open fds
//! (counted while the peer still holds its channels), every other service
//! has its pid and no restart or hang (a flooded init still ran every
//! heartbeat), the disk serves the host file's bytes, pcid refused both
//! config writes and still answers the peer's `Info`, and init's
//! complaints about the peer were rate-limited on the console. Last the
//! peer floods its output: the console shows a bounded share of it and
//! its log keeps two generations of at most 1 MiB.

use std::collections::BTreeMap;
use std::time::Duration;

use lab::{md5_hex, pattern, Config, Vm};

const PEER: &str = "hostile-peer@pci-0000-00-09.0";
const DISK: &str = "/scheme/disk.pci-0000-00-04.0_virtio_blk";

/// The services table without the columns that change by themselves
/// (uptime): name → (state, pid, restarts, hangs).
fn services(vm: &mut Vm) -> lab::Result<BTreeMap<String, Vec<String>>> {
    let table = vm.ok("dd if=/scheme/init/services bs=4k 2>/dev/null")?;
    Ok(table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            (w.len() >= 5).then(|| {
                (
                    w[0].to_owned(),
                    w[1..5].iter().map(|s| s.to_string()).collect(),
                )
            })
        })
        .collect())
}

/// Open fds and resident memory (KiB) of a process.
fn census(vm: &mut Vm, pid: &str) -> lab::Result<(usize, u64)> {
    let fds = vm.ok(&format!("ls /proc/{pid}/fd | wc -l"))?;
    let rss = vm.ok(&format!("grep VmRSS /proc/{pid}/status"))?;
    let fds = fds
        .trim()
        .parse()
        .map_err(|e| format!("fd count {fds:?}: {e}"))?;
    let rss = rss
        .split_whitespace()
        .nth(1)
        .and_then(|k| k.parse().ok())
        .ok_or_else(|| format!("VmRSS {rss:?}"))?;
    Ok((fds, rss))
}

#[test]
#[ignore = "boots QEMU: run through `make test`"]
fn init_and_pcid_survive_a_hostile_driver() -> lab::Result<()> {
    let dir = lab::workspace_root().join("target/lab");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let path = dir.join("peers.img");
    let disk = pattern(23, 4 << 20);
    std::fs::write(&path, &disk).map_err(|e| e.to_string())?;
    let rule = "[[drivers]]\nname = \"lab hostile peer\"\nids = { 0x1b36 = [0x0005] }\n\
                command = [\"hostile-peer\", \"--seed\", \"5\", \"--packets\", \"3000\", \"--output\", \"1600000\", \
                \"--go\", \"/tmp/peer-go\", \"--stop\", \"/tmp/peer-stop\"]\n";
    // An ordinary user's process, as a compromised driver's would be.
    let unit = "command = \"/bin/hostile-peer\"\ntype = \"simple\"\ntemplate = true\n\
                spawned_by = [\"pcid\"]\nuser = \"user\"\nrestart = \"never\"\nmemlock = \"1M\"\n";
    let cfg = Config::new("peers")
        .args(lab::virtio_blk_args("a", &path, "04.0"))
        .arg(&["-device", "pci-testdev,addr=09.0"])
        .file("/etc/pcid.d/00-hostile.toml", rule.as_bytes(), 0o644)
        .file("/etc/init.d/hostile-peer.toml", unit.as_bytes(), 0o644);
    let mut vm = Vm::boot(cfg)?;
    vm.ok(&format!(
        "for i in $(seq 600); do grep -q waiting /var/log/{PEER}.log 2>/dev/null && exit 0; sleep 0.1; done; exit 1"
    ))
    .map_err(|e| format!("the peer never started: {e}"))?;

    let pcid = vm.ok("pidof pcid")?.trim().to_owned();
    let before = services(&mut vm)?;
    let (init_fds, init_rss) = census(&mut vm, "1")?;
    let (pcid_fds, pcid_rss) = census(&mut vm, &pcid)?;
    let mark = vm.console().len();

    vm.ok("touch /tmp/peer-go")?;
    // The peer's log rotated once under its output flood: its first lines
    // are in the older generation.
    let out = vm.sh_timeout(
        &format!(
            "for i in $(seq 3000); do grep -q 'hostile: done' /var/log/{PEER}.log 2>/dev/null && break; sleep 0.1; done; \
             cat /var/log/{PEER}.log.1 /var/log/{PEER}.log | grep -v '^flood '"
        ),
        Duration::from_secs(400),
    )?;
    let log = out.stdout_str();
    println!("{log}");
    let sizes = vm.ok(&format!(
        "wc -c < /var/log/{PEER}.log.1; wc -c < /var/log/{PEER}.log"
    ))?;
    let sizes: Vec<u64> = sizes
        .split_whitespace()
        .filter_map(|n| n.parse().ok())
        .collect();
    println!("the peer's log generations: {sizes:?} bytes");
    assert!(
        sizes.len() == 2 && sizes.iter().all(|&n| n <= 1 << 20) && sizes[0] > 512 << 10,
        "log generations {sizes:?}"
    );
    assert!(
        log.contains("hostile: done"),
        "the attack never ended:\n{log}"
    );
    for channel in ["control", "pcid"] {
        let line = log
            .lines()
            .find(|l| l.starts_with(&format!("hostile: {channel} sent ")))
            .ok_or(format!("no {channel} totals:\n{log}"))?;
        let sent: u64 = line
            .split_whitespace()
            .nth(3)
            .and_then(|n| n.parse().ok())
            .ok_or(format!("bad totals: {line}"))?;
        assert!(
            sent >= 2500,
            "only {sent} packets reached {channel}: {line}"
        );
    }
    // Both config-write forms refused with a reason, and pcid still answers.
    assert_eq!(
        log.lines()
            .filter(|l| l.starts_with("hostile: pcid refused {"))
            .count(),
        2,
        "{log}"
    );
    assert!(!log.contains("DID NOT refuse"), "{log}");
    assert!(
        log.contains("hostile: pcid still answers: 1b36:0005 at 0000:00:09.0"),
        "{log}"
    );

    // Nothing leaked or grew in init and pcid while the peer still holds
    // its channels; nobody else was touched.
    let after = services(&mut vm)?;
    let (init_fds2, init_rss2) = census(&mut vm, "1")?;
    let (pcid_fds2, pcid_rss2) = census(&mut vm, &pcid)?;
    println!("init: fds {init_fds} -> {init_fds2}, RSS {init_rss} -> {init_rss2} KiB");
    println!("pcid: fds {pcid_fds} -> {pcid_fds2}, RSS {pcid_rss} -> {pcid_rss2} KiB");
    assert_eq!(init_fds2, init_fds, "init's fds");
    assert_eq!(pcid_fds2, pcid_fds, "pcid's fds");
    assert!(
        init_rss2 < init_rss + 1024,
        "init grew {init_rss} -> {init_rss2} KiB"
    );
    assert!(
        pcid_rss2 < pcid_rss + 1024,
        "pcid grew {pcid_rss} -> {pcid_rss2} KiB"
    );
    assert_eq!(vm.ok("pidof pcid")?.trim(), pcid, "pcid was restarted");
    assert_eq!(after, before, "a service changed under the attack");

    // init said what was wrong, within its quota, and then how much it
    // kept back (said once the burst's second is over).
    vm.wait_console_after(
        mark,
        "more complaints about its requests not shown",
        Duration::from_secs(20),
    )
    .map_err(|e| format!("the complaints were not limited: {e}"))?;
    vm.wait_console_after(
        mark,
        "more lines not shown on the console",
        Duration::from_secs(20),
    )
    .map_err(|e| format!("the output flood was not limited: {e}"))?;
    let console = vm.console()[mark..].to_owned();
    let complaints = console
        .lines()
        .filter(|l| l.starts_with(&format!("init: {PEER}")))
        .count();
    println!("init's lines about the peer on the console: {complaints}");
    assert!(
        console.contains(&format!("init: {PEER}: bad control message")),
        "init did not complain"
    );
    assert!(
        complaints < 600,
        "{complaints} complaint lines on the console"
    );

    // The system serves as before: the disk's bytes, init's and pcid's schemes.
    let sum = vm.ok(&format!("dd if={DISK}/0 bs=64k 2>/dev/null | md5sum"))?;
    assert_eq!(sum.split_whitespace().next(), Some(md5_hex(&disk).as_str()));
    vm.ok("cat /scheme/pci/pci-0000-00-04.0/summary >/dev/null")?;

    // The peer ends; init reports it and pcid releases its function.
    vm.ok("touch /tmp/peer-stop")?;
    vm.wait_console_after(mark, &format!("{PEER} exited"), Duration::from_secs(60))?;
    let (init_fds3, _) = census(&mut vm, "1")?;
    assert!(
        init_fds3 < init_fds,
        "init kept the peer's channels: {init_fds3}"
    );

    let status = vm.poweroff(Duration::from_secs(60))?;
    assert!(status.success(), "qemu: {status}");
    Ok(())
}
