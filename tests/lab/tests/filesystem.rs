//! A file system on a scheme disk, its driver killed under it: the
//! strongest client a disk has. The guest puts ext2 (busybox `mke2fs`) on
//! `/scheme/disk…/0` through a loop device, mounts it with Linux's ext4
//! driver (`-o sync`, so every write reaches the disk at once), writes many
//! files, and the disk's driver is `kill -9`ed in the middle; the write load goes on, `umount` succeeds, and after poweroff
//! the host's `e2fsck -fn` finds the file system clean and `debugfs` reads
//! back every file with the checksum the guest computed.

use std::time::Duration;

use lab::{Config, Vm};

const DISK: &str = "/scheme/disk.pci-0000-00-04.0_virtio_blk/0";
const FILES: usize = 40;

#[test]
#[ignore = "boots QEMU: run through `make test`"]
fn a_file_system_survives_its_disk_driver_being_killed() -> lab::Result<()> {
    let dir = lab::workspace_root().join("target/lab");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let path = dir.join("filesystem.img");
    let f = std::fs::File::create(&path).map_err(|e| e.to_string())?;
    f.set_len(32 << 20).map_err(|e| e.to_string())?;
    drop(f);
    let mut vm =
        Vm::boot(Config::new("filesystem").args(lab::virtio_blk_args("a", &path, "04.0")))?;
    let sums = lab::storage::ext2_under_a_kill(
        &mut vm,
        DISK,
        FILES,
        "kill -9 $(pidof virtio-blkd)",
        "virtio-blkd@pci-0000-00-04.0",
    )?;
    let status = vm.poweroff(Duration::from_secs(60))?;
    assert!(status.success(), "qemu: {status}");

    lab::storage::fsck_and_files(&path, &sums)?;
    Ok(())
}
