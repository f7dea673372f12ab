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
//! - Add/remove cycles of the same disk (twenty with ACPI hotplug): the
//!   same scheme name, the right data, and pcid's and init's fd counts,
//!   the number of processes and (within 256 KiB) pcid's and init's
//!   memory the same after as before; a removal during the driver's
//!   start-up and a synthetic uevent are survived; a disk present from
//!   boot reads right throughout.
//! - Hot-added e1000 and virtio-net on one QEMU hub get their drivers
//!   (named after their root ports' buses) and exchange checked frames
//!   both ways; removed, both instances are stopped.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use lab::md5_hex;
use lab::{pattern, Config, Vm};
use serde_json::{json, Value};

/// From `device_add` to the scheme serving, and from `device_del` to
/// `DEVICE_DELETED`: generous for TCG and pciehp's 5 s button wait.
const BOUND: Duration = Duration::from_secs(45);
const DISK_MIB: usize = 8;
/// Add/remove cycles before memory is measured.
const WARM_UP: usize = 5;

fn config(name: &str, native: bool) -> Config {
    // Two hub ports with no NIC yet, for the NICs to be hot-added.
    let mut cfg = Config::new(name).args(lab::root_port_args(4)).arg(&[
        "-netdev",
        "hubport,id=h0,hubid=0",
        "-netdev",
        "hubport,id=h1,hubid=0",
    ]);
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

/// QMP: `image` as block node `n<id>`, and a virtio-blk `id` on it in
/// root port `port`.
fn plug_disk(vm: &mut Vm, id: &str, port: &str, image: &std::path::Path) -> lab::Result<()> {
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
    Ok(())
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
    plug_disk(vm, id, port, image)?;
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

/// `device_del`, then QEMU's `DEVICE_DELETED`; how long it took. With
/// pciehp, QEMU refuses the request while the slot's power indicator
/// still blinks from the add (the guest is busy): asked again until then.
fn remove(vm: &mut Vm, id: &str, and_drive: bool) -> lab::Result<Duration> {
    let t = Instant::now();
    loop {
        match vm.qmp("device_del", json!({"id": id})) {
            Ok(_) => break,
            Err(e) if e.contains("guest is busy") && t.elapsed() < BOUND => {
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => return Err(e),
        }
    }
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

/// Resident memory of pcid and init, KiB.
fn rss(vm: &mut Vm) -> lab::Result<(u64, u64)> {
    let out = vm.ok("grep VmRSS /proc/$(pidof pcid)/status /proc/1/status")?;
    let kib: Vec<u64> = out
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1)?.parse().ok())
        .collect();
    match kib.as_slice() {
        [p, i] => Ok((*p, *i)),
        _ => Err(format!("rss: {out:?}")),
    }
}

/// Open fds of pcid and init, and the user processes by name (without the
/// shell tools this very command runs).
fn census(vm: &mut Vm) -> lab::Result<(usize, usize, Vec<String>)> {
    let fds = vm.ok("ls /proc/$(pidof pcid)/fd | wc -l; ls /proc/1/fd | wc -l")?;
    let n: Vec<usize> = fds
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    let [pcid, init] = n.as_slice() else {
        return Err(format!("census: {fds:?}"));
    };
    // Kernel threads have an empty command line.
    let names = vm.ok(
        "for p in /proc/[0-9]*; do [ -s $p/cmdline ] || [ -n \"$(head -c1 $p/cmdline 2>/dev/null)\" ] && cat $p/comm 2>/dev/null; done; true",
    )?;
    const TOOLS: [&str; 6] = ["sh", "head", "cat", "ls", "wc", "sleep"];
    let mut procs: Vec<String> = names
        .lines()
        .map(str::trim)
        .filter(|n| !n.is_empty() && !TOOLS.contains(n))
        .map(str::to_owned)
        .collect();
    procs.sort();
    Ok((*pcid, *init, procs))
}

fn disks(name: &str, native: bool, cycles: usize, with_nics: bool) -> lab::Result<()> {
    let dir = lab::workspace_root().join("target/lab");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let image = dir.join(format!("{name}.img"));
    let data = pattern(21, DISK_MIB << 20);
    std::fs::write(&image, &data).map_err(|e| e.to_string())?;
    let want = md5_hex(&data);
    // A disk present from boot, which must not notice the others' comings
    // and goings.
    let base = dir.join(format!("{name}-base.img"));
    let base_data = pattern(23, 2 << 20);
    std::fs::write(&base, &base_data).map_err(|e| e.to_string())?;
    let base_sum = md5_hex(&base_data);
    let mut vm = Vm::boot(config(name, native).args(lab::virtio_blk_args("base", &base, "04.0")))?;
    pci_matches_qemu(&mut vm, "at boot")?;
    let base_reads = |vm: &mut Vm, step: &str| -> lab::Result<()> {
        let sum =
            vm.ok("dd if=/scheme/disk.pci-0000-00-04.0_virtio_blk/0 bs=64k 2>/dev/null | md5sum")?;
        if sum.split_whitespace().next() == Some(base_sum.as_str()) {
            Ok(())
        } else {
            Err(format!("{step}: the boot disk reads {sum}"))
        }
    };

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
    base_reads(&mut vm, "after the removal under a reader")?;
    let listed = vm.ok("ls /scheme")?;
    assert!(
        !listed.split_whitespace().any(|s| s == scheme),
        "{scheme} is still there: {listed}"
    );
    pci_matches_qemu(&mut vm, "after the removal")?;

    // A uevent that changes nothing (synthetic, for a function pcid
    // knows): a rescan, nothing else.
    vm.ok("echo change > /sys/bus/pci/devices/0000:00:04.0/uevent")?;
    pci_matches_qemu(&mut vm, "after synthetic uevents")?;

    // Removed while its driver is still starting.
    plug_disk(&mut vm, "d1", "rp1", &image)?;
    let took = remove(&mut vm, "d1", true)?;
    eprintln!(
        "{name}: device_del right after device_add: {:.2} s",
        took.as_secs_f64()
    );
    pci_matches_qemu(&mut vm, "after a removal during start-up")?;
    let s = state(&mut vm, &service)?;
    assert_ne!(s, "failed", "a removal during start-up failed the service");

    // Cycles: the same name, the right data, nothing left behind.
    let before = census(&mut vm)?;
    let mut rss_before = rss(&mut vm)?;
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
        if c + 1 == WARM_UP && cycles > WARM_UP {
            // Memory is compared from here: the first cycles grow the
            // allocators' pools to their working size.
            rss_before = rss(&mut vm)?;
        }
    }
    let after = census(&mut vm)?;
    let rss_after = rss(&mut vm)?;
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    eprintln!(
        "{name}: {cycles} cycles: add→serving median {:.2} s max {:.2} s, del→DEVICE_DELETED median {:.2} s max {:.2} s; \
         (pcid fds, init fds, processes) {before:?} → {after:?}; RSS KiB (pcid, init) {rss_before:?} → {rss_after:?}",
        median(&mut adds.clone()),
        adds.iter().copied().fold(0.0, f64::max),
        median(&mut dels.clone()),
        dels.iter().copied().fold(0.0, f64::max),
    );
    assert_eq!(before, after, "fds or processes left behind");
    // Memory: after the warm-up, no growth beyond allocator noise (a
    // leak of a stand-in or a record per cycle would be ~10 KiB each).
    if cycles > WARM_UP {
        assert!(
            rss_after.0 <= rss_before.0 + 64 && rss_after.1 <= rss_before.1 + 64,
            "memory grew over {} cycles: {rss_before:?} → {rss_after:?} KiB",
            cycles - WARM_UP
        );
    }
    base_reads(&mut vm, "after the cycles")?;

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
    if with_nics {
        nics(&mut vm)?;
    }
    base_reads(&mut vm, "at the end")?;
    vm.poweroff(Duration::from_secs(60))?;
    Ok(())
}

/// `frames pair FROM TO`: every frame arrives, none damaged or repeated.
fn frames(vm: &mut Vm, from: &str, to: &str) -> lab::Result<()> {
    let out = vm.sh_timeout(
        &format!("frames pair {from} {to} --count 300 --size 300 --seed 5 --window 32 --timeout-ms 20000"),
        Duration::from_secs(300),
    )?;
    let text = out.stdout_str();
    let r = lab::frames_summary(&text, "received")
        .ok_or_else(|| format!("{from} -> {to}: {text}{}", out.stderr_str()))?;
    assert_eq!(r.get("received"), Some(&300), "{from} -> {to}: {text}");
    for k in ["bad", "lost", "dup"] {
        assert_eq!(r.get(k), Some(&0), "{k}, {from} -> {to}: {text}");
    }
    assert!(out.success(), "{text}");
    Ok(())
}

fn nics(vm: &mut Vm) -> lab::Result<()> {
    const E1000: &str = "/scheme/network.pci-0000-03-00.0_e1000";
    const VIRTIO: &str = "/scheme/network.pci-0000-04-00.0_virtio_net";
    let t = Instant::now();
    vm.qmp(
        "device_add",
        json!({"driver": "e1000", "id": "n0", "netdev": "h0", "bus": "rp3",
               "mac": "52:54:00:12:34:30"}),
    )?;
    vm.qmp(
        "device_add",
        json!({"driver": "virtio-net-pci", "id": "n1", "netdev": "h1", "bus": "rp4",
               "mac": "52:54:00:12:34:40", "disable-legacy": "on", "iommu_platform": "on"}),
    )?;
    vm.ok(&format!(
        "for i in $(seq {}); do [ \"$(cat {E1000}/link 2>/dev/null)\" = up ] && \
           [ \"$(cat {VIRTIO}/link 2>/dev/null)\" = up ] && exit 0; sleep 0.1; done; exit 1",
        BOUND.as_millis() / 100
    ))
    .map_err(|e| format!("hot-added NICs never came up: {e}"))?;
    eprintln!("hot-added NICs up in {:.2} s", t.elapsed().as_secs_f64());
    pci_matches_qemu(vm, "after the NICs came")?;
    frames(vm, E1000, VIRTIO)?;
    frames(vm, VIRTIO, E1000)?;
    for id in ["n0", "n1"] {
        remove(vm, id, false)?;
    }
    stopped(vm, "e1000d@pci-0000-03-00.0")?;
    stopped(vm, "virtio-netd@pci-0000-04-00.0")?;
    pci_matches_qemu(vm, "after the NICs went")?;
    Ok(())
}

#[test]
#[ignore = "boots QEMU: run through `make test`"]
fn devices_come_and_go_acpi_hotplug() -> lab::Result<()> {
    disks("hotplug-acpi", false, 20, true)
}

#[test]
#[ignore = "boots QEMU: run through `make test`"]
fn disks_come_and_go_native_pciehp() -> lab::Result<()> {
    disks("hotplug-pciehp", true, 2, false)
}

/// A function no rule matches stays unclaimed; a rule written at run time
/// and `SIGHUP` to pcid give it its driver, leaving the others alone.
#[test]
#[ignore = "boots QEMU: run through `make test`"]
fn rules_are_read_again_on_sighup() -> lab::Result<()> {
    let rule_path = lab::workspace_root().join("initfs/etc/pcid.d/virtio-blk.toml");
    let rule = std::fs::read_to_string(&rule_path).map_err(|e| e.to_string())?;
    let dir = lab::workspace_root().join("target/lab");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let image = dir.join("hotplug-rules.img");
    let data = pattern(22, 1 << 20);
    std::fs::write(&image, &data).map_err(|e| e.to_string())?;
    // The image's virtio-blk rule, emptied for this boot.
    let mut vm =
        Vm::boot(config("hotplug-rules", false).file("/etc/pcid.d/virtio-blk.toml", b"", 0o644))?;
    plug_disk(&mut vm, "d1", "rp1", &image)?;
    const F: &str = "pci-0000-01-00.0";
    vm.ok(&format!(
        "for i in $(seq 300); do [ -e /scheme/pci/{F} ] && exit 0; sleep 0.1; done; exit 1"
    ))
    .map_err(|e| format!("pcid never listed the new function: {e}"))?;
    let summary = vm.ok(&format!("cat /scheme/pci/{F}/summary"))?;
    assert!(
        summary
            .lines()
            .any(|l| l.starts_with("owner") && l.ends_with("none")),
        "claimed with no rule: {summary}"
    );
    let pcid_before = vm.ok("pidof pcid")?;
    // The rule back, and the reload.
    vm.ok(&format!(
        "printf '%s' '{}' > /etc/pcid.d/virtio-blk.toml && kill -HUP $(pidof pcid)",
        rule.replace('\'', "'\\''")
    ))?;
    let disk = format!("/scheme/disk.{F}_virtio_blk/0");
    vm.ok(&format!(
        "for i in $(seq 300); do [ -e {disk} ] && exit 0; sleep 0.1; done; exit 1"
    ))
    .map_err(|e| format!("the reloaded rule started no driver: {e}"))?;
    let sum = vm.ok(&format!("dd if={disk} bs=64k 2>/dev/null | md5sum"))?;
    assert_eq!(sum.split_whitespace().next(), Some(md5_hex(&data).as_str()));
    assert_eq!(vm.ok("pidof pcid")?, pcid_before, "pcid was restarted");
    vm.poweroff(Duration::from_secs(60))?;
    Ok(())
}
