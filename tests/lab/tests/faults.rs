//! Faults on purpose (`lab::faults`; `make faults` is the long campaign).
//!
//! - The short campaign: a few dozen faults inside and outside the drivers
//!   while clients run disk, network and FIFO load. It must end with no
//!   data mismatch, no lost request and no system crash, and the
//!   supervisor must have restarted what was killed.
//! - Bad DMA addresses are stopped by the IOMMU (the guest kernel reports
//!   DMAR faults for that function and no other, at the addresses
//!   injected), and the system stays up.
//! - A new instance gets a reset device and none of its predecessor's
//!   mappings: the dead instance's last device status is found and reset
//!   to 0, and a descriptor pointing at a page the dead instance had
//!   mapped faults in the IOMMU at exactly that address.

use std::time::Duration;

use lab::faults::{run, unit_with_faults, Campaign, LOSSLESS_KINDS};
use lab::{Config, Vm};

/// One VM at a time: the campaign measures recovery and hang detection,
/// which a second guest on the same two cores would distort.
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    ONE.lock().unwrap_or_else(|p| p.into_inner())
}

#[test]
#[ignore = "boots QEMU: run through `make test`"]
fn a_few_dozen_faults_lose_nothing() -> lab::Result<()> {
    let _one = one_at_a_time();
    let report = run(&Campaign {
        name: "faults-short".to_owned(),
        seed: 42,
        faults: 30,
        rounds: 40,
        rate: 20_000,
        kinds: LOSSLESS_KINDS.to_owned(),
        outside: true,
    })?;
    report.print();
    assert_eq!(report.crashes, 0, "system crashes");
    assert_eq!(report.mismatches, 0, "data mismatches");
    assert_eq!(report.lost, 0, "lost requests");
    assert!(report.faults() >= 30, "only {} faults", report.faults());
    assert!(report.restarts >= 20, "only {} restarts", report.restarts);
    Ok(())
}

#[test]
#[ignore = "boots QEMU: run through `make test`"]
fn bad_dma_addresses_are_stopped_by_the_iommu() -> lab::Result<()> {
    let _one = one_at_a_time();
    let report = run(&Campaign {
        name: "faults-baddma".to_owned(),
        seed: 7,
        faults: 4,
        rounds: 6,
        rate: 300,
        kinds: "baddma".to_owned(),
        outside: false,
    })?;
    report.print();
    assert_eq!(report.crashes, 0, "system crashes");
    assert_eq!(report.lost, 0, "lost requests");
    let injected = report.injected.get("BadDma").copied().unwrap_or(0);
    assert!(injected >= 1, "no bad DMA address was injected");
    // Only the virtio functions have the injection point (in the queue).
    let stopped: usize = report.dma_faults.values().sum();
    assert!(
        report
            .dma_faults
            .keys()
            .all(|f| f == "00:04.0" || f == "00:06.0"),
        "a DMA fault from a function with no injected fault: {:?}",
        report.dma_faults
    );
    // QEMU's IOMMU has one fault-recording register (faults that come
    // while it is full overflow, as the VT-d spec allows), so not every
    // access has its own report; but some do, each at an address injected.
    assert!(
        stopped >= 1,
        "{injected} bad addresses, none stopped by the IOMMU"
    );
    for addr in &report.dma_fault_addrs {
        assert!(
            report.bad_dma_addrs.contains(addr),
            "a DMA fault at {addr}, which was never injected ({:?})",
            report.bad_dma_addrs
        );
    }
    Ok(())
}

#[test]
#[ignore = "boots QEMU: run through `make test`"]
fn a_new_instance_has_a_reset_device_and_none_of_the_old_mappings() -> lab::Result<()> {
    let _one = one_at_a_time();
    const BLKD: &str = "virtio-blkd@pci-0000-00-04.0";
    let path = lab::workspace_root().join("target/lab/stale.img");
    let disk = lab::pattern(11, 4 << 20);
    std::fs::write(&path, &disk).map_err(|e| e.to_string())?;
    let unit = unit_with_faults("virtio-blkd", "seed=1,rate=1000000000,kinds=stale")?;
    let mut vm = Vm::boot(
        Config::new("stale")
            .args(lab::virtio_blk_args("a", &path, "04.0"))
            .file("/etc/init.d/virtio-blkd.toml", &unit, 0o644),
    )?;
    vm.wait_console(&format!("{BLKD} is ready"), Duration::from_secs(60))?;
    let console = vm.console();
    // Start 0 maps its canary page and keeps it until it dies.
    let canary = console
        .lines()
        .find_map(|l| l.split("fault: canary page mapped at IOVA ").nth(1))
        .map(|s| s.trim().to_owned())
        .ok_or("the first instance mapped no canary page")?;
    let from = console.len();
    vm.ok("kill -9 $(pidof virtio-blkd)")?;
    vm.wait_console_after(from, &format!("{BLKD} is ready"), Duration::from_secs(60))?;
    vm.wait_console_after(from, "DMAR: [DMA", Duration::from_secs(30))?;
    let after = vm.console()[from..].to_owned();
    // The device was found as the dead instance left it (running) and was
    // reset before anything else.
    let found = after
        .lines()
        .find_map(|l| l.split("virtio: device status ").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .ok_or("the new instance did not report the device it found")?;
    assert_ne!(found, "0x0", "the dead instance's device was not running");
    assert!(after.contains(&format!(
        "fault: injecting Stale at virtqueue: IOVA {canary}"
    )));
    // The successor pointed the device at the canary's IOVA; the IOMMU
    // refused it: the dead instance's mapping is gone.
    let fault = after
        .lines()
        .find(|l| l.contains("DMAR: [DMA") && l.contains("[00:04.0]"))
        .ok_or("no DMA fault for 00:04.0")?;
    assert!(
        fault.contains(&format!("fault addr {canary} ")),
        "the fault is not at the canary {canary}: {fault}"
    );
    // And the new instance serves the disk.
    let sum =
        vm.ok("dd if=/scheme/disk.pci-0000-00-04.0_virtio_blk/0 bs=64k 2>/dev/null | md5sum")?;
    let want = lab::md5_hex(&disk);
    assert_eq!(sum.split_whitespace().next(), Some(want.as_str()));
    vm.poweroff(Duration::from_secs(60))?;
    Ok(())
}
