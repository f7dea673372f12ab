//! Checks the storage scenarios share (block.rs, nvme.rs, filesystem.rs,
//! sandbox.rs): the probe tool's answer, a daemon's memlock against
//! what it pins, and an ext2 file system written while its disk's driver
//! is killed, checked on the host afterwards.

use std::path::Path;
use std::time::Duration;

use crate::{Result, Vm};

/// Bytes of each file [`ext2_under_a_kill`] writes.
pub const FS_FILE_BYTES: usize = 256 * 1024;

/// What `probe ARGS` printed in the guest (`ok …` or `err ENAME`).
pub fn probe(vm: &mut Vm, args: &str) -> Result<String> {
    Ok(vm
        .sh(&format!("probe {args}"))?
        .stdout_str()
        .trim()
        .to_owned())
}

/// Guest process `pid`'s RLIMIT_MEMLOCK and the memory it pins (VFIO
/// type1 accounts pinned DMA pages in VmLck / VmPin), in bytes.
pub fn memlock(vm: &mut Vm, pid: &str) -> Result<(u64, u64)> {
    let status = vm.ok(&format!("cat /proc/{pid}/status"))?;
    let kb = |name: &str| -> Result<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .ok_or_else(|| format!("pid {pid}: no {name} in its status"))
    };
    let pinned = (kb("VmLck:")? + kb("VmPin:")?) * 1024;
    let limits = vm.ok(&format!("grep 'Max locked memory' /proc/{pid}/limits"))?;
    let limit = limits
        .split_whitespace()
        .nth(3)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("pid {pid}: limits line {limits:?}"))?;
    Ok((limit, pinned))
}

/// Puts ext2 on `disk` through a loop device, mounts it with `-o sync`,
/// writes `files` files of [`FS_FILE_BYTES`] and runs `kill` (a shell
/// command) once a quarter of them are written; checks the load finished
/// after the kill and that init saw `unit` killed, unmounts, and returns
/// (md5, name) of every file as the guest read it back.
pub fn ext2_under_a_kill(
    vm: &mut Vm,
    disk: &str,
    files: usize,
    kill: &str,
    unit: &str,
) -> Result<Vec<(String, String)>> {
    // loop, ext4 and what they need (crc32c_generic is ext4's soft
    // dependency), from the image's optional modules.
    vm.ok(
        "for m in loop crc16 mbcache jbd2 crc32c_generic ext4; do insmod /lib/modules/$m.ko || exit 1; done",
    )?;
    vm.ok(&format!(
        "losetup /dev/loop0 {disk} && mke2fs -q /dev/loop0 >/dev/null && mkdir -p /tmp/mnt && \
         mount -t ext4 -o sync /dev/loop0 /tmp/mnt"
    ))?;
    let trigger = (files / 4).max(1);
    let out = vm.sh_timeout(
        &format!(
            "(for i in $(seq {files}); do dd if=/dev/urandom of=/tmp/mnt/f$i bs=64k count={} 2>/dev/null || exit 1; done; sync) & \
             w=$!; while [ ! -e /tmp/mnt/f{trigger} ]; do sleep 0.05; done; [ -e /tmp/mnt/f{files} ] && echo LATE; \
             {kill} || exit 9; wait $w || exit 8; \
             cd /tmp/mnt && md5sum f*",
            FS_FILE_BYTES / 65536
        ),
        Duration::from_secs(600),
    )?;
    if !out.success() {
        return Err(format!(
            "the load failed: {}{}",
            out.stdout_str(),
            out.stderr_str()
        ));
    }
    if out.stdout_str().contains("LATE") {
        return Err("the load ended before the kill".into());
    }
    let sums = crate::disks::md5_lines(&out.stdout_str());
    if sums.len() != files {
        return Err(format!(
            "{} of {files} files: {}",
            sums.len(),
            out.stdout_str()
        ));
    }
    if !vm
        .console()
        .contains(&format!("service {unit} exited: killed by signal 9"))
    {
        return Err(format!("{unit} was not killed under the load"));
    }
    vm.ok("umount /tmp/mnt && losetup -d /dev/loop0")?;
    Ok(sums)
}

/// After poweroff: the host's `e2fsck -fn` finds the file system in
/// `image` clean, and `debugfs` reads every file of `sums` back whole,
/// with the guest's checksum.
pub fn fsck_and_files(image: &Path, sums: &[(String, String)]) -> Result<()> {
    let files = crate::disks::host_files(image, sums)?;
    for ((_, name), data) in sums.iter().zip(&files) {
        if data.len() != FS_FILE_BYTES {
            return Err(format!("{name} on the host is {} bytes", data.len()));
        }
    }
    Ok(())
}
