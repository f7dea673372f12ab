//! nvmed end to end, in one boot: two QEMU `nvme` controllers on the root
//! bus. The first has two namespaces (nsid 1: a pattern; nsid 2: a GPT
//! made by sgdisk), so one nvmed serves `/1`, `/2`, `/2p1`, `/2p2`; the
//! second has `mdts=2` (16 KiB per command) and one namespace, so a second
//! nvmed serves it and 1 MiB reads are split by the disk scheme; its second
//! namespace gets an ext2 file system (through a loop device, mounted with
//! `-o sync`) while its nvmed is `kill -9`ed under the write load: the
//! restarted daemon resets the controller and serves on, and after
//! poweroff the host's `e2fsck -fn` finds the file system clean and
//! `debugfs` reads back every file. `/health` is the SMART log, whose data
//! units read move by what was read. Discard (`BLKDISCARD`, Dataset
//! Management deallocate): controller A's drives have `discard=unmap`, so
//! a discarded range of namespace 1 and of partition 2p1 reads back zeros
//! in the guest and is zeros (a hole) in the host file; misaligned,
//! empty and out-of-range discards are `EINVAL` and change nothing;
//! controller B keeps QEMU's default `discard=ignore`, and what a discard
//! there reads back is reported. pcid binds both controllers to
//! vfio-pci and init starts one unprivileged nvmed each; Linux's nvme
//! driver is never loaded. Every byte is checked against the host's backing
//! files, before and after poweroff.
//!
//! Run: `make image`, then
//! `flock /tmp/qemu.lock cargo test --release -p lab --test nvme -- --include-ignored`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use lab::md5_hex;
use lab::{pattern, Config, Vm};

const CTRL_A: &str = "0000:00:06.0";
const CTRL_B: &str = "0000:00:07.0";
const DISKS_A: &str = "/scheme/disk.pci-0000-00-06.0_nvme";
const DISKS_B: &str = "/scheme/disk.pci-0000-00-07.0_nvme";
const SIZE_1: usize = 8 << 20;
const SIZE_2: usize = 16 << 20;
const SIZE_B: usize = 4 << 20;
const SIZE_FS: u64 = 32 << 20;
/// Files written on controller B's namespace 2.
const FILES: usize = 24;
/// GPT partitions on namespace 2, in sectors (first, last).
const PARTS_2: [(u64, u64); 2] = [(2048, 10239), (10240, 22527)];
/// Writers running at once on namespace 1, and the region they share.
const WRITERS: usize = 4;
const WRITE_REGION: (usize, usize) = (1 << 20, 3 << 20);
/// The most the unit's memlock may exceed what a daemon pins.
const HEADROOM: u64 = 3 << 19;
/// nvmed's uid and gid (initfs/etc/passwd).
const NVMED_ID: u32 = 206;
/// The scheme's discard ioctl, `_IOW(0x12, 119, 16)`, and Linux's own
/// `_IO(0x12, 119)`, whose range FUSE does not carry.
const BLKDISCARD: &str = "0x40101277";
const BLKDISCARD_LINUX: &str = "0x1277";
/// Discarded: 128 KiB at 5 MiB of A's namespace 1 (outside the writers'
/// region), 64 KiB at the start of partition 2p1, 64 KiB at 1 MiB of B's
/// namespace 1.
const DISCARD_1: (usize, usize) = (5 << 20, 128 << 10);
const DISCARD_2P1: (usize, usize) = (0, 64 << 10);
const DISCARD_B: (usize, usize) = (1 << 20, 64 << 10);
/// Linux's own NVMe stack, which must never have been loaded.
const LINUX_NVME: [&str; 2] = ["nvme", "nvme_core"];

fn scratch(name: &str) -> PathBuf {
    let dir = lab::workspace_root().join("target/lab");
    let _ = std::fs::create_dir_all(&dir);
    dir.join(name)
}

fn md5_of(vm: &mut Vm, path: &str, bs: &str) -> lab::Result<String> {
    let out = vm.ok(&format!("dd if={path} bs={bs} 2>/dev/null | md5sum"))?;
    Ok(out.split_whitespace().next().unwrap_or_default().to_owned())
}

#[test]
#[ignore = "boots QEMU: run through `make test`"]
fn nvme_namespaces_through_the_scheme() -> lab::Result<()> {
    let started = Instant::now();
    let path_1 = scratch("nvme-a1.img");
    let path_2 = scratch("nvme-a2.img");
    let path_b = scratch("nvme-b1.img");
    let disk_1 = pattern(11, SIZE_1);
    std::fs::write(&path_1, &disk_1).map_err(|e| e.to_string())?;
    let disk_2 = lab::disks::gpt_disk(&path_2, 12, SIZE_2, &PARTS_2)?;
    let mut disk_b = pattern(13, SIZE_B);
    std::fs::write(&path_b, &disk_b).map_err(|e| e.to_string())?;
    let path_fs = scratch("nvme-b2.img");
    let f = std::fs::File::create(&path_fs).map_err(|e| e.to_string())?;
    f.set_len(SIZE_FS).map_err(|e| e.to_string())?;
    drop(f);
    let (plans, mut expected_1) = lab::disks::write_plans(&disk_1, WRITERS, WRITE_REGION);

    let mut cfg = Config::new("nvme")
        .args(lab::nvme_args_with(
            "c0",
            "06.0",
            "",
            ",discard=unmap",
            &[(1, &path_1), (2, &path_2)],
        ))
        .args(lab::nvme_args(
            "c1",
            "07.0",
            ",mdts=2",
            &[(1, &path_b), (2, &path_fs)],
        ));
    for (p, plan) in plans.iter().enumerate() {
        cfg = cfg.file(&format!("/root/plan{p}"), plan.as_bytes(), 0o644);
    }
    let mut vm = Vm::boot(cfg)?;

    // Two controllers, two daemons, two schemes; one disk per namespace.
    let pids: Vec<String> = vm
        .ok("pidof nvmed")?
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    assert_eq!(pids.len(), 2, "expected two nvmed: {pids:?}");
    for pid in &pids {
        vm.check_driver_privileges(pid, NVMED_ID)?;
    }
    for addr in [CTRL_A, CTRL_B] {
        vm.check_vfio_bound(addr, &LINUX_NVME)?;
    }
    let list = vm.ok(&format!("ls {DISKS_A}"))?;
    let names: Vec<&str> = list.split_whitespace().collect();
    assert_eq!(names, ["1", "2", "2p1", "2p2", "health"], "{list}");
    let list = vm.ok(&format!("ls {DISKS_B}"))?;
    assert_eq!(
        list.split_whitespace().collect::<Vec<_>>(),
        ["1", "2", "health"],
        "{list}"
    );

    // Whole namespaces, sizes, partitions.
    for (path, data) in [
        (format!("{DISKS_A}/1"), &disk_1),
        (format!("{DISKS_A}/2"), &disk_2),
    ] {
        assert_eq!(md5_of(&mut vm, &path, "1M")?, md5_hex(data), "{path}");
        let size = vm.ok(&format!("stat -c %s {path}"))?;
        assert_eq!(size.trim(), data.len().to_string(), "{path}");
    }
    // Odd block sizes cross sector boundaries in every request.
    assert_eq!(
        md5_of(&mut vm, &format!("{DISKS_A}/1"), "3333")?,
        md5_hex(&disk_1)
    );
    for (n, (first, last)) in PARTS_2.iter().enumerate() {
        let part = &disk_2[*first as usize * 512..(*last as usize + 1) * 512];
        let path = format!("{DISKS_A}/2p{}", n + 1);
        assert_eq!(md5_of(&mut vm, &path, "64k")?, md5_hex(part), "{path}");
        let size = vm.ok(&format!("stat -c %s {path}"))?;
        assert_eq!(size.trim(), part.len().to_string(), "{path}");
    }

    // MDTS 2: 16 KiB per command, so each 1 MiB read is 64 commands.
    assert_eq!(
        md5_of(&mut vm, &format!("{DISKS_B}/1"), "1M")?,
        md5_hex(&disk_b)
    );
    let log = vm.ok("cat /var/log/nvmed@pci-0000-00-07.0.log")?;
    assert!(log.contains("up to 16 KiB"), "{log}");

    lab::disks::concurrent_writes(
        &mut vm,
        &format!("{DISKS_A}/1"),
        WRITERS,
        WRITE_REGION,
        &expected_1,
        "",
    )?;
    bad_inputs(&mut vm)?;
    every_queue_has_its_vector(&mut vm)?;
    memlock_fits(&mut vm)?;
    health_counts_reads(&mut vm, SIZE_2)?;
    let discard_started = Instant::now();
    discards(&mut vm, &expected_1)?;
    let (at, len) = DISCARD_1;
    expected_1[at..at + len].fill(0);
    let mut disk_2 = disk_2;
    let at = PARTS_2[0].0 as usize * 512 + DISCARD_2P1.0;
    disk_2[at..at + DISCARD_2P1.1].fill(0);
    if discard_ignored(&mut vm, &disk_b)? {
        println!("nvme: discard=ignore: QEMU left the deallocated range's data in place");
    } else {
        println!("nvme: discard=ignore: the deallocated range reads back zeros");
        disk_b[DISCARD_B.0..DISCARD_B.0 + DISCARD_B.1].fill(0);
    }
    println!("nvme: discard checks took {:?}", discard_started.elapsed());

    // Nothing above took a daemon down.
    let after = vm.ok("pidof nvmed")?;
    for pid in &pids {
        assert!(
            after.split_whitespace().any(|p| p == pid),
            "{pid} gone: {after}"
        );
    }
    let console = vm.console();
    assert!(!console.contains("exited unexpectedly"), "{console}");

    // ext2 on controller B's namespace 2, its daemon killed under the
    // load; the restarted one resets the controller and serves on.
    let unit = "nvmed@pci-0000-00-07.0";
    let sums = lab::storage::ext2_under_a_kill(
        &mut vm,
        &format!("{DISKS_B}/2"),
        FILES,
        &format!("kill -9 $(dd if=/scheme/init/{unit} bs=4k 2>/dev/null | sed -n 's/^pid: //p')"),
        unit,
    )?;
    let state = vm.ok(&format!("dd if=/scheme/init/{unit} bs=4k 2>/dev/null"))?;
    assert!(
        state.contains("restarts: 1\n") && state.contains("state: running"),
        "{state}"
    );
    // The restarted daemon serves the other namespace as before.
    assert_eq!(
        md5_of(&mut vm, &format!("{DISKS_B}/1"), "1M")?,
        md5_hex(&disk_b)
    );

    let status = vm.poweroff(Duration::from_secs(60))?;
    assert!(status.success(), "qemu: {status}");
    let host_1 = std::fs::read(&path_1).map_err(|e| e.to_string())?;
    assert!(
        host_1 == expected_1,
        "namespace 1 on the host differs from what the guest wrote"
    );
    let host_2 = std::fs::read(&path_2).map_err(|e| e.to_string())?;
    assert!(host_2 == disk_2, "namespace 2 changed although unwritten");
    let host_b = std::fs::read(&path_b).map_err(|e| e.to_string())?;
    assert!(host_b == disk_b, "controller B's namespace changed");
    lab::storage::fsck_and_files(&path_fs, &sums)?;
    eprintln!("nvme scenario: {:?}", started.elapsed());
    Ok(())
}

/// md5 of `len` bytes at `at` of `path`, read in 64 KiB blocks.
fn md5_range(vm: &mut Vm, path: &str, (at, len): (usize, usize)) -> lab::Result<String> {
    let bs = 64 << 10;
    let out = vm.ok(&format!(
        "dd if={path} bs={bs} skip={} count={} 2>/dev/null | md5sum",
        at / bs,
        len / bs
    ))?;
    Ok(out.split_whitespace().next().unwrap_or_default().to_owned())
}

/// Discards on controller A (`discard=unmap`): namespace 1 and partition
/// 2p1 read back zeros there and their neighbours unchanged (`disk_1`:
/// namespace 1 as written so far); bad ranges are refused.
fn discards(vm: &mut Vm, disk_1: &[u8]) -> lab::Result<()> {
    let probe = lab::storage::probe;
    let (log, dlfeat) = nvmed_log(vm, CTRL_A)?;
    assert!(log.contains("Dataset Management (discard)"), "{log}");
    println!("nvme: discard=unmap drive: {dlfeat}");
    let d1 = format!("{DISKS_A}/1");
    let (at, len) = DISCARD_1;
    assert!(discard_then_zeros(vm, &d1, DISCARD_1)?, "{d1}: not zeros");
    for around in [(at - len, len), (at + len, len)] {
        let want = md5_hex(&disk_1[around.0..around.0 + around.1]);
        assert_eq!(md5_range(vm, &d1, around)?, want, "{around:?}");
    }
    let p1 = format!("{DISKS_A}/2p1");
    assert!(discard_then_zeros(vm, &p1, DISCARD_2P1)?, "{p1}: not zeros");
    // Misaligned, empty, past the end (of the disk and of the partition),
    // and Linux's encoding: EINVAL; the host check after poweroff shows
    // nothing changed.
    let p1_size = (PARTS_2[0].1 - PARTS_2[0].0 + 1) * 512;
    for (path, offset, length) in [
        (&d1, 4096 + 1, 4096u64),
        (&d1, 4096, 1000),
        (&d1, 4096, 0),
        (&d1, SIZE_1 as u64 - 512, 1024),
        (&d1, SIZE_1 as u64, 512),
        (&p1, p1_size - 512, 1024),
    ] {
        assert_eq!(
            probe(
                vm,
                &format!("ioctl-range {path} {BLKDISCARD} {offset} {length}")
            )?,
            "err EINVAL",
            "{length} at {offset} of {path}"
        );
    }
    assert_eq!(
        probe(vm, &format!("ioctl-range {d1} {BLKDISCARD_LINUX} 0 4096"))?,
        "err EINVAL"
    );
    Ok(())
}

/// The log of the nvmed serving `ctrl`, and its line on what namespace
/// 1's deallocated blocks read back (DLFEAT).
fn nvmed_log(vm: &mut Vm, ctrl: &str) -> lab::Result<(String, String)> {
    let log = vm.ok(&format!("cat /var/log/nvmed@{}.log", pcid_name(ctrl)))?;
    let dlfeat = log
        .lines()
        .find(|l| l.contains("namespace 1: deallocated blocks read back"))
        .unwrap_or("no DLFEAT line")
        .to_owned();
    Ok((log, dlfeat))
}

/// A discard on controller B (QEMU's default `discard=ignore`): true if
/// the range still holds its data afterwards, false if it reads zeros.
fn discard_ignored(vm: &mut Vm, disk_b: &[u8]) -> lab::Result<bool> {
    let b1 = format!("{DISKS_B}/1");
    let (at, len) = DISCARD_B;
    let (_, dlfeat) = nvmed_log(vm, CTRL_B)?;
    println!("nvme: discard=ignore drive: {dlfeat}");
    if discard_then_zeros(vm, &b1, DISCARD_B)? {
        return Ok(false);
    }
    let same = md5_range(vm, &b1, DISCARD_B)? == md5_hex(&disk_b[at..at + len]);
    assert!(same, "{b1}: neither its data nor zeros after a discard");
    Ok(true)
}

/// Discards the range of `path` (which must succeed); true if it then
/// reads back zeros.
fn discard_then_zeros(vm: &mut Vm, path: &str, (at, len): (usize, usize)) -> lab::Result<bool> {
    let answer = lab::storage::probe(vm, &format!("ioctl-range {path} {BLKDISCARD} {at} {len}"))?;
    assert_eq!(answer, "ok 0", "discard of {len} at {at} of {path}");
    Ok(md5_range(vm, path, (at, len))? == md5_hex(&vec![0u8; len]))
}

fn bad_inputs(vm: &mut Vm) -> lab::Result<()> {
    let probe = lab::storage::probe;
    // Namespace ids start at 1; 3 does not exist; 1 has no partitions.
    for bad in ["0", "3", "1p1", "01", "zz"] {
        assert_eq!(
            probe(vm, &format!("open {DISKS_A}/{bad} r"))?,
            "err ENOENT",
            "{bad}"
        );
    }
    let d1 = format!("{DISKS_A}/1");
    assert_eq!(probe(vm, &format!("pread {d1} {SIZE_1} 16"))?, "ok 0");
    assert_eq!(
        probe(vm, &format!("pwrite {d1} {SIZE_1} 00"))?,
        "err ENOSPC"
    );
    assert_eq!(
        probe(vm, &format!("pwrite {d1} {} 00", 1u64 << 40))?,
        "err ENOSPC"
    );
    assert_eq!(probe(vm, &format!("ioctl {d1} 0x1234"))?, "err ENOTTY");
    assert_eq!(probe(vm, &format!("ioctl {d1} 0xc0ffee00"))?, "err ENOTTY");
    assert_eq!(
        probe(vm, &format!("ioctl-u64 {d1} 0x80081272"))?,
        format!("ok 0 {SIZE_1}")
    );
    Ok(())
}

/// Both I/O completion queues of controller A raised their own MSI-X
/// vector (1 and 2; 0 is the admin queue's) during the load above.
fn every_queue_has_its_vector(vm: &mut Vm) -> lab::Result<()> {
    let table = vm.ok("cat /proc/interrupts")?;
    for vector in [1, 2] {
        let name = format!("vfio-msix[{vector}]({CTRL_A})");
        let line = table
            .lines()
            .find(|l| l.contains(&name))
            .ok_or_else(|| format!("no {name} in /proc/interrupts:\n{table}"))?;
        let count: u64 = line
            .split_whitespace()
            .skip(1)
            .map_while(|w| w.parse::<u64>().ok())
            .sum();
        println!("nvme: {name}: {count} interrupts");
        assert!(count > 0, "{line}");
    }
    Ok(())
}

/// Each daemon's RLIMIT_MEMLOCK is above the DMA it pins; controller
/// A's, with QEMU's default MDTS (the largest bounce buffers we use), only
/// just: the unit's limit is sized for it. B's (MDTS 2) pins far less.
fn memlock_fits(vm: &mut Vm) -> lab::Result<()> {
    for ctrl in [CTRL_A, CTRL_B] {
        let unit = format!("nvmed@{}", pcid_name(ctrl));
        let pid = vm.ok(&format!(
            "dd if=/scheme/init/{unit} bs=4k 2>/dev/null | sed -n 's/^pid: //p'"
        ))?;
        let (limit, pinned) = lab::storage::memlock(vm, pid.trim())?;
        println!("nvme: {unit}: memlock {limit}, pinned {pinned}");
        assert!(pinned > 0 && pinned <= limit, "{unit}: {pinned} of {limit}");
        if ctrl == CTRL_A {
            assert!(
                limit - pinned <= HEADROOM,
                "{unit}: memlock {limit} more than {HEADROOM} above the {pinned} pinned"
            );
        }
    }
    Ok(())
}

/// `0000:00:06.0` -> `pci-0000-00-06.0`.
fn pcid_name(addr: &str) -> String {
    format!("pci-{}", addr.replace(':', "-"))
}

/// `data_units_read` of controller A's SMART log, from `/health`.
fn data_units_read(vm: &mut Vm) -> lab::Result<u64> {
    let text = vm.ok(&format!("cat {DISKS_A}/health"))?;
    for want in [
        "temperature",
        "percentage_used",
        "data_units_written",
        "media_errors",
    ] {
        assert!(text.contains(want), "{want} missing: {text}");
    }
    text.lines()
        .find_map(|l| l.strip_prefix("data_units_read"))
        .and_then(|v| v.trim_start_matches([' ', ':']).trim().parse().ok())
        .ok_or_else(|| format!("no data_units_read in {text}"))
}

/// Reading `bytes` moves "data units read" (thousands of 512-byte units,
/// rounded up) by bytes / 512 / 1000, give or take the rounding.
fn health_counts_reads(vm: &mut Vm, bytes: usize) -> lab::Result<()> {
    let before = data_units_read(vm)?;
    md5_of(vm, &format!("{DISKS_A}/2"), "1M")?;
    let after = data_units_read(vm)?;
    let units = (bytes / 512 / 1000) as u64;
    println!("nvme: data units read {before} -> {after} for {bytes} bytes");
    assert!(
        (units..=units + 1).contains(&(after - before)),
        "data units read moved {before} -> {after} for {bytes} bytes"
    );
    Ok(())
}
