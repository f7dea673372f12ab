//! The first real driver, end to end: pcid finds two virtio-blk functions,
//! binds them to vfio-pci and has init start one unprivileged virtio-blkd
//! each; applications read and write the disks through /scheme/disk.*.
//! Every byte is checked against the host's backing files, before and after
//! the guest powers off.

use std::path::PathBuf;
use std::time::Duration;

use lab::md5_hex;
use lab::{pattern, Config, Vm};

const DISK_A: &str = "/scheme/disk.pci-0000-00-04.0_virtio_blk";
const DISK_B: &str = "/scheme/disk.pci-0000-00-05.0_virtio_blk";
const SIZE_A: usize = 8 << 20;
const SIZE_B: usize = 16 << 20;
/// GPT partitions on disk B, in 512-byte sectors (first, last), as given to sgdisk.
const PARTS_B: [(u64, u64); 2] = [(2048, 10239), (10240, 22527)];
/// Writers running at once, and the region of disk A they share.
const WRITERS: usize = 4;
const WRITE_REGION: (usize, usize) = (1 << 20, 3 << 20);

fn scratch(name: &str) -> PathBuf {
    let dir = lab::workspace_root().join("target/lab");
    let _ = std::fs::create_dir_all(&dir);
    dir.join(name)
}

#[test]
#[ignore = "boots QEMU: run through `make test`"]
fn virtio_blk_disks_through_the_scheme() -> lab::Result<()> {
    let path_a = scratch("block-a.img");
    let path_b = scratch("block-b.img");
    let disk_a = pattern(1, SIZE_A);
    std::fs::write(&path_a, &disk_a).map_err(|e| e.to_string())?;
    let disk_b = lab::disks::gpt_disk(&path_b, 2, SIZE_B, &PARTS_B)?;
    let (plans, mut expected_a) = lab::disks::write_plans(&disk_a, WRITERS, WRITE_REGION);

    let mut cfg = Config::new("block")
        .args(lab::virtio_blk_args("a", &path_a, "04.0"))
        .args(lab::virtio_blk_args("b", &path_b, "05.0"));
    for (p, plan) in plans.iter().enumerate() {
        cfg = cfg.file(&format!("/root/plan{p}"), plan.as_bytes(), 0o644);
    }
    let mut vm = Vm::boot(cfg)?;

    // Two functions, two daemons, two schemes.
    let pids = lab::disks::daemons(&mut vm, "virtio-blkd", &[DISK_A, DISK_B])?;

    unprivileged_and_bound(&mut vm, &pids)?;
    whole_disk_reads(&mut vm, &disk_a)?;
    gpt_partitions(&mut vm, &disk_b)?;
    lab::disks::concurrent_writes(
        &mut vm,
        &format!("{DISK_A}/0"),
        WRITERS,
        WRITE_REGION,
        &expected_a,
        "",
    )?;
    writes_to_one_disk_are_in_flight_together(&mut vm, &mut expected_a)?;
    bad_inputs(&mut vm)?;
    pci_scheme(&mut vm)?;

    lab::disks::still_running(&mut vm, "virtio-blkd", &pids)?;

    // The host file agrees once QEMU has flushed and exited.
    let status = vm.poweroff(Duration::from_secs(60))?;
    assert!(status.success(), "qemu: {status}");
    lab::disks::host_file_is(&path_a, &expected_a, "disk A (what the guest wrote)")?;
    lab::disks::host_file_is(&path_b, &disk_b, "disk B (nothing wrote to it)")?;
    Ok(())
}

/// The daemons run as their own uid with no capabilities under seccomp; the
/// functions are bound to vfio-pci and Linux's virtio drivers never loaded.
fn unprivileged_and_bound(vm: &mut Vm, pids: &[String]) -> lab::Result<()> {
    for pid in pids {
        vm.check_driver_privileges(pid, 200)?;
    }
    for addr in ["0000:00:04.0", "0000:00:05.0"] {
        vm.check_vfio_bound(addr, &["virtio_pci", "virtio_blk", "virtio"])?;
    }
    Ok(())
}

fn whole_disk_reads(vm: &mut Vm, disk_a: &[u8]) -> lab::Result<()> {
    let sum = vm.ok(&format!("dd if={DISK_A}/0 bs=1M 2>/dev/null | md5sum"))?;
    assert_eq!(
        sum.split_whitespace().next(),
        Some(md5_hex(disk_a).as_str())
    );
    // Odd block sizes cross sector boundaries in every request.
    let sum = vm.ok(&format!("dd if={DISK_A}/0 bs=3333 2>/dev/null | md5sum"))?;
    assert_eq!(
        sum.split_whitespace().next(),
        Some(md5_hex(disk_a).as_str())
    );
    let size = vm.ok(&format!("stat -c %s {DISK_A}/0"))?;
    assert_eq!(size.trim(), SIZE_A.to_string());
    // An unaligned read in the middle.
    let out = vm.ok(&format!("probe pread {DISK_A}/0 1000001 37"))?;
    let hex: String = disk_a[1000001..1000038]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(out.trim(), format!("ok 37 {hex}"));
    Ok(())
}

fn gpt_partitions(vm: &mut Vm, disk_b: &[u8]) -> lab::Result<()> {
    let list = vm.ok(&format!("ls {DISK_B}"))?;
    let names: Vec<&str> = list.split_whitespace().collect();
    assert_eq!(names, ["0", "0p1", "0p2"], "{list}");
    let sum = vm.ok(&format!("dd if={DISK_B}/0 bs=1M 2>/dev/null | md5sum"))?;
    assert_eq!(
        sum.split_whitespace().next(),
        Some(md5_hex(disk_b).as_str())
    );
    for (n, (first, last)) in PARTS_B.iter().enumerate() {
        let part = &disk_b[*first as usize * 512..(*last as usize + 1) * 512];
        let path = format!("{DISK_B}/0p{}", n + 1);
        let sum = vm.ok(&format!("dd if={path} bs=64k 2>/dev/null | md5sum"))?;
        assert_eq!(
            sum.split_whitespace().next(),
            Some(md5_hex(part).as_str()),
            "{path}"
        );
        let size = vm.ok(&format!("stat -c %s {path}"))?;
        assert_eq!(size.trim(), part.len().to_string(), "{path}");
    }
    Ok(())
}

/// Linux 6.2+ honours `FOPEN_PARALLEL_DIRECT_WRITES`, which the runtime
/// gives every seekable file: two writes to one disk inside its size reach
/// the daemon together instead of the second waiting for the first in the
/// inode lock. Shown with the daemons stopped: both writes must then sit in
/// the connection's queue at once (fusectl's `waiting` counts them), where
/// a serialised second writer would leave it at 1.
fn writes_to_one_disk_are_in_flight_together(
    vm: &mut Vm,
    expected_a: &mut [u8],
) -> lab::Result<()> {
    // Two sectors outside the concurrent writers' region.
    let (p, q) = (8u64, 12288u64);
    let script = format!(
        "D={DISK_A}/0; \
         grep -q fusectl /proc/mounts || mount -t fusectl fusectl /sys/fs/fuse/connections || exit 1; \
         W=/sys/fs/fuse/connections/$(stat -c %d $D)/waiting; \
         rm -f /tmp/p1 /tmp/p2; mkfifo /tmp/p1 /tmp/p2; exec 7<>/tmp/p1 8<>/tmp/p2; \
         dd of=$D bs=512 seek={p} count=1 conv=notrunc <&7 2>/tmp/dd1 & a=$!; \
         dd of=$D bs=512 seek={q} count=1 conv=notrunc <&8 2>/tmp/dd2 & b=$!; \
         for i in $(seq 200); do [ $(ls -l /proc/$a/fd /proc/$b/fd 2>/dev/null | grep -c scheme/disk) = 2 ] && break; sleep 0.05; done; \
         d=$(pidof virtio-blkd); kill -STOP $d; before=$(cat $W); \
         head -c 512 /dev/zero | tr '\\0' P >&7; head -c 512 /dev/zero | tr '\\0' Q >&8; \
         n=0; for i in $(seq 100); do n=$(cat $W); [ $n -ge 2 ] && break; sleep 0.05; done; \
         kill -CONT $d; wait $a $b; echo \"before $before waiting $n\"; cat /tmp/dd1 /tmp/dd2"
    );
    let out = vm.ok(&script)?;
    assert!(out.contains("before 0 waiting 2"), "{out}");
    assert_eq!(out.matches("1+0 records out").count(), 2, "{out}");
    for (sector, byte) in [(p, b'P'), (q, b'Q')] {
        let at = sector as usize * 512;
        expected_a[at..at + 512].fill(byte);
        let got = vm.ok(&format!("probe pread {DISK_A}/0 {at} 512"))?;
        let hex: String = std::iter::repeat_n(format!("{byte:02x}"), 512).collect();
        assert_eq!(got.trim(), format!("ok 512 {hex}"), "sector {sector}");
    }
    Ok(())
}

fn bad_inputs(vm: &mut Vm) -> lab::Result<()> {
    let probe = lab::storage::probe;
    assert_eq!(probe(vm, &format!("open {DISK_A}/7 r"))?, "err ENOENT");
    assert_eq!(probe(vm, &format!("open {DISK_A}/0p1 r"))?, "err ENOENT");
    assert_eq!(probe(vm, &format!("open {DISK_A}/zz r"))?, "err ENOENT");
    assert_eq!(probe(vm, &format!("pread {DISK_A}/0 {SIZE_A} 16"))?, "ok 0");
    assert_eq!(
        probe(vm, &format!("pread {DISK_A}/0 {} 4096", SIZE_A - 3))?,
        format!("ok 3 {}", {
            let tail = &pattern(1, SIZE_A)[SIZE_A - 3..];
            tail.iter().map(|b| format!("{b:02x}")).collect::<String>()
        })
    );
    assert_eq!(
        probe(vm, &format!("pwrite {DISK_A}/0 {SIZE_A} 00"))?,
        "err ENOSPC"
    );
    assert_eq!(
        probe(vm, &format!("ioctl {DISK_A}/0 0x1234"))?,
        "err ENOTTY"
    );
    assert_eq!(
        probe(vm, &format!("ioctl {DISK_A}/0 0xc0ffee00"))?,
        "err ENOTTY"
    );
    // BLKGETSIZE64 answers the size.
    assert_eq!(
        probe(vm, &format!("ioctl-u64 {DISK_A}/0 0x80081272"))?,
        format!("ok 0 {SIZE_A}")
    );
    // virtio-blkd does not discard (VIRTIO_BLK_F_DISCARD is not used).
    assert_eq!(
        probe(vm, &format!("ioctl-range {DISK_A}/0 0x40101277 0 4096"))?,
        "err EOPNOTSUPP"
    );
    assert_eq!(probe(vm, "open /scheme/disk.nope/0 r")?, "err ENOENT");
    Ok(())
}

/// pcid's own scheme shows the functions and who owns them; a claimed
/// function's channel cannot be opened a second time.
fn pci_scheme(vm: &mut Vm) -> lab::Result<()> {
    let list = vm.ok("ls /scheme/pci")?;
    for f in ["pci-0000-00-04.0", "pci-0000-00-05.0"] {
        assert!(list.contains(f), "{f} missing: {list}");
    }
    let summary = vm.ok("cat /scheme/pci/pci-0000-00-04.0/summary")?;
    assert!(summary.contains("1af4"), "{summary}");
    assert!(
        summary.contains("virtio-blkd@pci-0000-00-04.0"),
        "{summary}"
    );
    let config = vm.ok("od -An -tx1 -N4 /scheme/pci/pci-0000-00-04.0/config")?;
    assert_eq!(
        config.split_whitespace().collect::<Vec<_>>(),
        ["f4", "1a", "42", "10"]
    );
    let out = vm.sh("probe open /scheme/pci/pci-0000-00-04.0/channel rw")?;
    assert_eq!(out.stdout_str().trim(), "err EBUSY");
    Ok(())
}
