//! The supervisor, end to end: drivers and schemes killed or hung under
//! load come back, and their clients do not notice. One boot:
//!
//! - `kill -9` of virtio-blkd three times during a whole-disk read: the
//!   read ends well and its md5 is the host file's; the same for a write of
//!   a pattern over the whole disk, checked on the host after poweroff.
//! - A stopped (`SIGSTOP`) driver is a hang: found by the heartbeat, killed
//!   and replaced within the bound, and the blocked read carries on.
//! - A FIFO handle opened before fifod dies works after it.
//! - A service that fails at every start reaches the limit, is marked
//!   failed, and `/scheme/init` says so; the disk keeps working.
//! - `/scheme/init` counts what happened; stop and start by hand work,
//!   a stopped scheme answers `ENODEV`, and an ordinary user cannot use
//!   the controls.
//! - The new instance's device is a fresh claim: a new VFIO container, so
//!   nothing the dead instance mapped is reachable by the device.

use std::time::Duration;

use lab::md5_hex;
use lab::{pattern, Config, Vm};

const DISK: &str = "/scheme/disk.pci-0000-00-04.0_virtio_blk";
const BLKD: &str = "virtio-blkd@pci-0000-00-04.0";
const SIZE: usize = 16 << 20;
/// From SIGSTOP to the kill: 3 missed heartbeats 1 s apart, checked each
/// second, with room for TCG.
const HANG_BOUND: Duration = Duration::from_secs(15);

/// One service's `/scheme/init/<name>` as key → value.
fn service(vm: &mut Vm, name: &str) -> lab::Result<std::collections::BTreeMap<String, String>> {
    let text = vm.ok(&format!("dd if=/scheme/init/{name} bs=4k 2>/dev/null"))?;
    Ok(text
        .lines()
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect())
}

/// Waits (bounded) until `/scheme/init` shows `name` running.
fn running(vm: &mut Vm, name: &str) -> lab::Result<()> {
    vm.ok(&format!(
        "for i in $(seq 300); do dd if=/scheme/init/{name} bs=4k 2>/dev/null | grep -q 'state: running' && exit 0; sleep 0.1; done; exit 1"
    ))
    .map(drop)
    .map_err(|e| format!("{name} is not running again: {e}"))
}

/// Kills the driver `times` times, `every` apart, while `script` runs in
/// the background; returns what the script printed.
fn under_kills(vm: &mut Vm, script: &str, times: usize, every: f32) -> lab::Result<String> {
    // Each kill waits for the instance before it to be up and serving.
    let kills = format!(
        "for i in $(seq {times}); do sleep {every}; \
         for j in $(seq 300); do dd if=/scheme/init/{BLKD} bs=4k 2>/dev/null | grep -q 'state: running' && break; sleep 0.1; done; \
         kill -9 $(pidof virtio-blkd) || exit 9; done"
    );
    let out = vm.sh_timeout(
        &format!("( {script} ) > /tmp/out 2>&1 & {kills}; wait; cat /tmp/out"),
        Duration::from_secs(300),
    )?;
    if !out.success() {
        return Err(format!(
            "{script}: {}{}",
            out.stdout_str(),
            out.stderr_str()
        ));
    }
    Ok(out.stdout_str())
}

#[test]
#[ignore = "boots QEMU: run through `make test`"]
fn crashed_and_hung_services_come_back_and_clients_do_not_notice() -> lab::Result<()> {
    let dir = lab::workspace_root().join("target/lab");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let path = dir.join("restart.img");
    let disk = pattern(7, SIZE);
    std::fs::write(&path, &disk).map_err(|e| e.to_string())?;
    let cfg = Config::new("restart")
        .args(lab::virtio_blk_args("a", &path, "04.0"))
        // Fails at every start, forever.
        .file(
            "/etc/init.d/crashloop.toml",
            b"command = \"/bin/sh\"\nargs = [\"-c\", \"exit 1\"]\ntype = \"notify\"\n\
              restart = \"always\"\nheartbeat = false\n",
            0o644,
        );
    let mut vm = Vm::boot(cfg)?;
    let first_pid = vm.ok("pidof virtio-blkd")?.trim().to_owned();
    let mark = vm.console().len();

    // Reads: a whole-disk dd in 4 KiB requests through three kills.
    let out = under_kills(
        &mut vm,
        &format!("dd if={DISK}/0 bs=1k 2>/dev/null | md5sum"),
        3,
        1.5,
    )?;
    assert_eq!(
        out.split_whitespace().next(),
        Some(md5_hex(&disk).as_str()),
        "read through restarts: {out}"
    );
    running(&mut vm, BLKD)?;
    let rec = service(&mut vm, BLKD)?;
    assert_eq!(rec["restarts"], "3", "{rec:?}");
    assert_eq!(rec["state"], "running", "{rec:?}");
    assert!(rec["last_exit"].contains("SIGKILL"), "{rec:?}");

    // Each restart is a fresh claim by pcid (a new VFIO container, so a
    // new IOMMU domain), and the new daemon is as unprivileged as the first.
    let pid = vm.ok("pidof virtio-blkd")?.trim().to_owned();
    assert_ne!(pid, first_pid);
    vm.check_driver_privileges(&pid, 200)?;
    let console = vm.console();
    let claims = console[mark..]
        .matches("pci-0000-00-04.0: starting virtio-blkd again, on a fresh claim")
        .count();
    assert_eq!(claims, 3, "{}", &console[mark..]);
    assert_eq!(
        console[mark..]
            .matches("scheme disk.pci-0000-00-04.0_virtio_blk taken over")
            .count(),
        3
    );

    // Writes: a pattern over the whole disk through three kills.
    let sum =
        vm.ok("dd if=/dev/urandom of=/tmp/pat bs=1M count=16 2>/dev/null; md5sum < /tmp/pat")?;
    let pat_sum = sum.split_whitespace().next().unwrap_or_default().to_owned();
    under_kills(
        &mut vm,
        &format!("dd if=/tmp/pat of={DISK}/0 bs=1k conv=notrunc 2>&1 | tail -1"),
        3,
        1.5,
    )?;
    running(&mut vm, BLKD)?;
    vm.ok(&format!("probe fsync {DISK}/0"))?;
    let back = vm.ok(&format!("dd if={DISK}/0 bs=1M 2>/dev/null | md5sum"))?;
    assert_eq!(back.split_whitespace().next(), Some(pat_sum.as_str()));

    // A hang: SIGSTOP during a read; the heartbeat finds it.
    let hangs_before = service(&mut vm, BLKD)?["hangs"].parse::<u32>().unwrap_or(0);
    let out = vm.sh_timeout(
        &format!(
            "(dd if={DISK}/0 bs=4k 2>/dev/null | md5sum > /tmp/hung) & sleep 1; \
             kill -STOP $(pidof virtio-blkd); cut -d' ' -f1 /proc/uptime > /tmp/stopped; \
             wait; cat /tmp/stopped /tmp/hung"
        ),
        Duration::from_secs(120),
    )?;
    assert!(out.success(), "{}", out.stderr_str());
    let text = out.stdout_str();
    let mut lines = text.lines();
    let stopped: f64 = lines
        .next()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or(f64::NAN);
    assert_eq!(
        lines.next().and_then(|l| l.split_whitespace().next()),
        Some(pat_sum.as_str()),
        "read across a hang: {text}"
    );
    let rec = service(&mut vm, BLKD)?;
    assert_eq!(
        rec["hangs"].parse::<u32>().unwrap_or(0),
        hangs_before + 1,
        "{rec:?}"
    );
    assert!(rec["last_exit"].contains("hung"), "{rec:?}");
    let killed: f64 = rec["last_exit_at"].parse().unwrap_or(f64::NAN);
    let detected = killed - stopped;
    assert!(
        detected > 0.0 && detected < HANG_BOUND.as_secs_f64(),
        "hang found {detected:.2} s after the stop"
    );
    eprintln!("restart: hang detected {detected:.2} s after SIGSTOP");

    // A FIFO handle outlives fifod.
    let out = vm.ok(
        "exec 5<>/scheme/fifo/kept; kill -9 $(pidof fifod); \
         for i in $(seq 100); do [ \"$(dd if=/scheme/init/fifo bs=4k 2>/dev/null | grep ^state)\" = 'state: running' ] && break; sleep 0.1; done; \
         echo after >&5; dd bs=100 count=1 <&5 2>/dev/null",
    )?;
    assert_eq!(out.trim(), "after");

    // Stop and start by hand; ordinary users may not.
    let denied = vm.sh("su user -c 'echo stop fifo > /scheme/init/control'")?;
    assert!(!denied.success());
    vm.ok("echo stop fifo > /scheme/init/control")?;
    vm.ok("for i in $(seq 100); do dd if=/scheme/init/fifo bs=4k 2>/dev/null | grep -q 'state: stopped' && exit 0; sleep 0.1; done; exit 1")?;
    assert_eq!(
        vm.sh("probe open /scheme/fifo/new r")?.stdout_str().trim(),
        "err ENODEV"
    );
    vm.ok("echo start fifo > /scheme/init/control")?;
    vm.ok("for i in $(seq 100); do probe open /scheme/fifo/new r | grep -q ^ok && exit 0; sleep 0.1; done; exit 1")?;

    // The service that crashes at every start gave up, and nothing else did.
    vm.ok("for i in $(seq 600); do dd if=/scheme/init/crashloop bs=4k 2>/dev/null | grep -q 'state: failed' && exit 0; sleep 0.1; done; exit 1")
        .map_err(|e| format!("crashloop never failed: {e}"))?;
    let rec = service(&mut vm, "crashloop")?;
    assert!(rec["reason"].contains("not restarted"), "{rec:?}");
    assert_eq!(rec["restarts"], "5", "{rec:?}");
    let table = vm.ok("dd if=/scheme/init/services bs=4k 2>/dev/null")?;
    for line in table.lines().skip(1) {
        let name = line.split_whitespace().next().unwrap_or_default();
        if name != "crashloop" && name != "lab-agent" {
            assert!(line.contains("running"), "{line}\n{table}");
        }
    }
    let sum = vm.ok(&format!("dd if={DISK}/0 bs=1M 2>/dev/null | md5sum"))?;
    assert_eq!(sum.split_whitespace().next(), Some(pat_sum.as_str()));

    let status = vm.poweroff(Duration::from_secs(60))?;
    assert!(status.success(), "qemu: {status}");
    let host = std::fs::read(&path).map_err(|e| e.to_string())?;
    assert_eq!(
        md5_hex(&host),
        pat_sum,
        "the host file is the pattern written"
    );
    Ok(())
}
