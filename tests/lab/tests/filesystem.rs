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
    // loop, ext4 and what they need (crc32c_generic is ext4's soft
    // dependency), from the image's optional modules.
    vm.ok(
        "for m in loop crc16 mbcache jbd2 crc32c_generic ext4; do insmod /lib/modules/$m.ko || exit 1; done",
    )?;
    vm.ok(&format!(
        "losetup /dev/loop0 {DISK} && mke2fs -q /dev/loop0 >/dev/null && mkdir -p /tmp/mnt && \
         mount -t ext4 -o sync /dev/loop0 /tmp/mnt"
    ))?;
    let out = vm.sh_timeout(
        &format!(
            "(for i in $(seq {FILES}); do dd if=/dev/urandom of=/tmp/mnt/f$i bs=64k count=4 2>/dev/null || exit 1; done; sync) & \
             w=$!; while [ ! -e /tmp/mnt/f10 ]; do sleep 0.05; done; [ -e /tmp/mnt/f{FILES} ] && echo LATE; \
             kill -9 $(pidof virtio-blkd) || exit 9; wait $w || exit 8; \
             cd /tmp/mnt && md5sum f*"
        ),
        Duration::from_secs(600),
    )?;
    assert!(out.success(), "{}{}", out.stdout_str(), out.stderr_str());
    let sums = lab::disks::md5_lines(&out.stdout_str());
    assert!(
        !out.stdout_str().contains("LATE"),
        "the load ended before the kill"
    );
    assert_eq!(sums.len(), FILES, "{}", out.stdout_str());
    let console = vm.console();
    assert!(
        console.contains("service virtio-blkd@pci-0000-00-04.0 exited: killed by signal 9"),
        "the driver was not killed under the load"
    );
    vm.ok("umount /tmp/mnt && losetup -d /dev/loop0")?;
    let status = vm.poweroff(Duration::from_secs(60))?;
    assert!(status.success(), "qemu: {status}");

    let files = lab::disks::host_files(&path, &sums)?;
    for ((_, name), data) in sums.iter().zip(&files) {
        assert_eq!(data.len(), 256 * 1024, "{name}");
    }
    Ok(())
}
