//! virtio-blkd in the guest, started by pcid through init: a disk read and
//! written through its scheme (whole, concurrently, unaligned, with fsync)
//! and checked against the host file; and a device without
//! `iommu_platform=on` refused with a clear message.

use std::time::Duration;

use lab::{pattern, Config, Vm};

const SIZE: usize = 4 << 20;
const DISK: &str = "/scheme/disk.pci-0000-00-04.0_virtio_blk";
/// The device options virtio-blkd needs: a modern-only device whose DMA
/// goes through the (virtual) IOMMU.
const DEVICE: &str = "virtio-blk-pci,drive=d0,addr=04.0,disable-legacy=on,iommu_platform=on";

fn scratch(name: &str) -> std::path::PathBuf {
    let dir = lab::workspace_root().join("target/lab");
    let _ = std::fs::create_dir_all(&dir);
    dir.join(name)
}

#[test]
#[ignore = "boots QEMU: run through `make test`"]
fn virtio_blkd_serves_a_disk() -> lab::Result<()> {
    let path = scratch("virtio-blkd-guest.img");
    let mut expected = pattern(7, SIZE);
    std::fs::write(&path, &expected).map_err(|e| e.to_string())?;
    let chunk = pattern(8, 256 << 10);
    let small = pattern(9, 5000);
    let cfg = Config::new("virtio-blkd-guest")
        .file("/root/expect", &expected, 0o644)
        .file("/root/chunk", &chunk, 0o644)
        .file("/root/small", &small, 0o644)
        .arg(&[
            "-drive",
            &format!(
                "file={},if=none,id=d0,format=raw,cache=writeback",
                path.display()
            ),
            "-device",
            &format!("{DEVICE},serial=h4-serial"),
        ]);
    let mut vm = Vm::boot(cfg)?;
    let log = vm.ok("cat /var/log/virtio-blkd*.log")?;
    assert!(log.contains("serial \"h4-serial\""), "{log}");
    assert!(log.contains("8192 blocks of 512 bytes"), "{log}");

    // Whole disk, in several request sizes, and four readers at once.
    vm.ok(&format!("cmp {DISK}/0 /root/expect"))?;
    vm.ok(&format!(
        "dd if={DISK}/0 bs=3333 2>/dev/null | cmp - /root/expect"
    ))?;
    vm.ok(&format!(
        "for i in 1 2 3 4; do cmp {DISK}/0 /root/expect & done; \
         fail=0; for j in 1 2 3 4; do wait -n || fail=1; done; [ $fail = 0 ]"
    ))?;

    // An aligned write at 1 MiB and an unaligned one at 3,001,000, then
    // fsync (VIRTIO_BLK_T_FLUSH: the device has a write cache).
    vm.ok(&format!(
        "dd if=/root/chunk of={DISK}/0 bs=64k seek=16 conv=notrunc,fsync 2>/dev/null"
    ))?;
    vm.ok(&format!(
        "dd if=/root/small of={DISK}/0 bs=1000 seek=3001 conv=notrunc,fsync 2>/dev/null"
    ))?;
    expected[1 << 20..(1 << 20) + chunk.len()].copy_from_slice(&chunk);
    expected[3_001_000..3_001_000 + small.len()].copy_from_slice(&small);
    vm.ok(&format!(
        "dd if={DISK}/0 bs=64k skip=16 count=4 2>/dev/null | cmp - /root/chunk"
    ))?;
    let size = vm.ok(&format!("stat -c %s {DISK}/0"))?;
    assert_eq!(size.trim(), SIZE.to_string());
    // Out of range: a read at the end gives EOF, a write past it fails.
    let tail = vm.ok(&format!(
        "dd if={DISK}/0 bs=512 skip=8192 2>/dev/null | wc -c"
    ))?;
    assert_eq!(tail.trim(), "0");
    let out = vm.sh(&format!(
        "dd if=/root/small of={DISK}/0 bs=512 seek=8192 count=1 conv=notrunc"
    ))?;
    assert!(!out.success(), "write past the end succeeded");

    let pid = vm.ok("pidof virtio-blkd")?;
    assert!(!pid.trim().is_empty());
    let status = vm.poweroff(Duration::from_secs(60))?;
    assert!(status.success(), "qemu: {status}");
    let host = std::fs::read(&path).map_err(|e| e.to_string())?;
    assert!(
        host == expected,
        "host file differs from what the guest wrote"
    );
    Ok(())
}

#[test]
#[ignore = "boots QEMU: run through `make test`"]
fn device_bypassing_the_iommu_is_refused() -> lab::Result<()> {
    let path = scratch("virtio-blkd-noiommu.img");
    std::fs::write(&path, pattern(3, 1 << 20)).map_err(|e| e.to_string())?;
    let cfg = Config::new("virtio-blkd-noiommu").arg(&[
        "-drive",
        &format!("file={},if=none,id=d0,format=raw", path.display()),
        "-device",
        "virtio-blk-pci,drive=d0,addr=04.0,disable-legacy=on",
    ]);
    let mut vm = Vm::boot(cfg)?;
    let log = vm.ok("cat /var/log/virtio-blkd*.log")?;
    assert!(log.contains("VIRTIO_F_ACCESS_PLATFORM"), "{log}");
    let schemes = vm.ok("ls /scheme")?;
    assert!(!schemes.contains("disk."), "{schemes}");
    vm.poweroff(Duration::from_secs(60))?;
    Ok(())
}
