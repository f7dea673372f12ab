//! ahcid end to end, in one boot: two QEMU `ahci` HBAs, each behind its
//! own PCIe root port. The first has ATA disks on ports 0, 2, 4 and 5
//! (ports 1 and 3 empty: skipped): port 0 a pattern, port 2 a GPT made by
//! sgdisk, port 4 blank for a file system, port 5 behind QEMU's blkdebug,
//! which fails every read of one sector. The second has one disk, so a
//! second ahcid serves it. pcid binds both HBAs to vfio-pci and has init
//! start one unprivileged ahcid each; q35's own AHCI at 00:1f.2, which
//! shares its IOMMU group with the LPC bridge, is left alone. Every byte
//! is checked against the host's backing files, before and after
//! poweroff; the file system with the host's `e2fsck -fn`.
//!
//! Run: `make image`, then
//! `flock /tmp/qemu.lock cargo test --release -p lab --test ahci -- --include-ignored`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use lab::md5_hex;
use lab::{pattern, Config, Vm};

const HBA_A: &str = "0000:01:00.0";
const HBA_B: &str = "0000:02:00.0";
const DISKS_A: &str = "/scheme/disk.pci-0000-01-00.0_ahci";
const DISKS_B: &str = "/scheme/disk.pci-0000-02-00.0_ahci";
const SIZE_0: usize = 8 << 20;
const SIZE_2: usize = 16 << 20;
const SIZE_4: u64 = 32 << 20;
const SIZE_5: usize = 4 << 20;
const SIZE_B: usize = 4 << 20;
/// GPT partitions on port 2, in sectors (first, last).
const PARTS_2: [(u64, u64); 2] = [(2048, 10239), (10240, 22527)];
/// The sector of port 5 whose reads fail.
const BAD_SECTOR: u64 = 1000;
/// Writers running at once on port 0, and the region they share.
const WRITERS: usize = 4;
const WRITE_REGION: (usize, usize) = (1 << 20, 3 << 20);
/// Files written on port 4's file system.
const FILES: usize = 12;
/// ahcid's uid and gid (initfs/etc/passwd).
const AHCID_ID: u32 = 205;
/// Linux's own AHCI stack, which must never have been loaded.
const LINUX_AHCI: [&str; 3] = ["ahci", "libahci", "libata"];

fn scratch(name: &str) -> PathBuf {
    let dir = lab::workspace_root().join("target/lab");
    let _ = std::fs::create_dir_all(&dir);
    dir.join(name)
}

/// A blkdebug drive: reads touching `BAD_SECTOR` fail with EIO, every time.
fn blkdebug_args(id: &str, image: &Path, conf: &Path) -> lab::Result<Vec<String>> {
    std::fs::write(
        conf,
        format!(
            "[inject-error]\nevent = \"read_aio\"\nerrno = \"5\"\nsector = \"{BAD_SECTOR}\"\nonce = \"off\"\n"
        ),
    )
    .map_err(|e| e.to_string())?;
    Ok(vec![
        "-drive".into(),
        format!(
            "file=blkdebug:{}:{},if=none,id={id},format=raw,rerror=report,werror=report",
            conf.display(),
            image.display()
        ),
        "-device".into(),
        format!("ide-hd,bus=ahci0.5,drive={id}"),
    ])
}

#[test]
#[ignore = "boots QEMU: run through `make test`"]
fn ahci_disks_through_the_scheme() -> lab::Result<()> {
    let started = Instant::now();
    let path_0 = scratch("ahci-0.img");
    let path_2 = scratch("ahci-2.img");
    let path_4 = scratch("ahci-4.img");
    let path_5 = scratch("ahci-5.img");
    let path_b = scratch("ahci-b0.img");
    let disk_0 = pattern(11, SIZE_0);
    std::fs::write(&path_0, &disk_0).map_err(|e| e.to_string())?;
    let disk_2 = lab::disks::gpt_disk(&path_2, 12, SIZE_2, &PARTS_2)?;
    let f = std::fs::File::create(&path_4).map_err(|e| e.to_string())?;
    f.set_len(SIZE_4).map_err(|e| e.to_string())?;
    drop(f);
    let disk_5 = pattern(15, SIZE_5);
    std::fs::write(&path_5, &disk_5).map_err(|e| e.to_string())?;
    let disk_b = pattern(16, SIZE_B);
    std::fs::write(&path_b, &disk_b).map_err(|e| e.to_string())?;
    let (plans, expected_0) = lab::disks::write_plans(&disk_0, WRITERS, WRITE_REGION);

    let mut cfg = Config::new("ahci")
        .args(lab::root_port_args(2))
        .args(lab::ahci_args(
            "ahci0",
            "rp1",
            &[(0, &path_0), (2, &path_2), (4, &path_4)],
        ))
        .args(blkdebug_args(
            "ahci0p5",
            &path_5,
            &scratch("ahci-5.blkdebug"),
        )?)
        .args(lab::ahci_args("ahci1", "rp2", &[(0, &path_b)]));
    for (p, plan) in plans.iter().enumerate() {
        cfg = cfg.file(&format!("/root/plan{p}"), plan.as_bytes(), 0o644);
    }
    let mut vm = Vm::boot(cfg)?;
    println!("booted in {:?}", started.elapsed());

    // Two HBAs, two daemons, two schemes.
    let pids = lab::disks::daemons(&mut vm, "ahcid", &[DISKS_A, DISKS_B])?;
    unprivileged_and_bound(&mut vm, &pids)?;
    q35_ahci_left_alone(&mut vm)?;
    ports_and_names(&mut vm)?;
    whole_disk_reads(&mut vm, &disk_0, &disk_b)?;
    gpt_partitions(&mut vm, &disk_2)?;
    // Four writers at unaligned offsets and four whole-disk readers at once.
    lab::disks::concurrent_writes(
        &mut vm,
        &format!("{DISKS_A}/0"),
        WRITERS,
        WRITE_REGION,
        &expected_0,
        &format!("for r in 1 2 3 4; do dd if={DISKS_A}/0 of=/dev/null bs=128k 2>/dev/null & done;"),
    )?;
    bad_inputs(&mut vm)?;
    device_errors(&mut vm, &disk_5)?;
    let sums = file_system(&mut vm)?;
    let log = vm.ok("cat /var/log/ahcid@pci-0000-01-00.0.log")?;
    let depth = log
        .lines()
        .filter_map(|l| l.split("port 0: ").nth(1))
        .filter_map(|l| l.split(" commands in flight at once").next())
        .filter_map(|n| n.parse::<u32>().ok())
        .max()
        .unwrap_or(0);
    println!("port 0: at most {depth} NCQ commands in flight at once");
    assert!(depth >= 4, "several commands at once on port 0:\n{log}");
    memlock_fits(&mut vm, &pids, &log)?;

    lab::disks::still_running(&mut vm, "ahcid", &pids)?;
    restart_after_kill(&mut vm, &disk_b)?;

    let status = vm.poweroff(Duration::from_secs(60))?;
    assert!(status.success(), "qemu: {status}");
    lab::disks::host_file_is(&path_0, &expected_0, "port 0 (what the guest wrote)")?;
    lab::disks::host_file_is(&path_2, &disk_2, "port 2 (nothing wrote to it)")?;
    // The host's e2fsck finds it clean; every file reads back the same.
    lab::disks::host_files(&path_4, &sums)?;
    println!("ahci scenario: {:?}", started.elapsed());
    Ok(())
}

/// What the kernel counts as pinned for HBA A's daemon (four disks) is
/// what ahcid logs, and below its unit's RLIMIT_MEMLOCK.
fn memlock_fits(vm: &mut Vm, pids: &[String], log: &str) -> lab::Result<()> {
    let logged_kib: u64 = log
        .lines()
        .find_map(|l| l.split(" disk(s), ").nth(1))
        .and_then(|l| l.split(" KiB").next())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("no pinned line in the log:\n{log}"))?;
    let mut most = 0;
    for pid in pids {
        let kib: u64 = vm
            .ok(&format!(
                "awk '/^VmLck|^VmPin/ {{ s += $2 }} END {{ print s }}' /proc/{pid}/status"
            ))?
            .trim()
            .parse()
            .map_err(|e| format!("VmPin of {pid}: {e}"))?;
        let limit: u64 = vm
            .ok(&format!("grep 'Max locked memory' /proc/{pid}/limits"))?
            .split_whitespace()
            .nth(3)
            .and_then(|v| v.parse().ok())
            .ok_or("no memlock limit")?;
        assert_eq!(limit, 13 << 20, "the unit's memlock");
        assert!(kib * 1024 <= limit, "{pid} pins {kib} KiB over {limit}");
        most = most.max(kib);
    }
    println!("ahcid with four disks: {most} KiB pinned, {logged_kib} KiB logged");
    assert!(
        most >= logged_kib && most <= logged_kib + 64,
        "pinned {most} KiB, logged {logged_kib} KiB"
    );
    Ok(())
}

/// HBA B's daemon killed: the supervisor starts a new one, which resets
/// the HBA through VFIO (a secondary bus reset, the only reset of a
/// conventional PCI function behind a root port) and serves the disk again.
fn restart_after_kill(vm: &mut Vm, disk_b: &[u8]) -> lab::Result<()> {
    const UNIT: &str = "ahcid@pci-0000-02-00.0";
    let from = vm.console().len();
    // init's service table: name, state, pid, ...
    vm.ok(&format!(
        "kill -9 $(dd if=/scheme/init/services bs=4k 2>/dev/null | awk '$1 == \"{UNIT}\" {{ print $3 }}')"
    ))?;
    vm.wait_console_after(from, &format!("{UNIT} is ready"), Duration::from_secs(60))?;
    let log = vm.ok(&format!("cat /var/log/{UNIT}.log"))?;
    assert!(
        log.matches("function reset through VFIO").count() >= 2,
        "both instances reset the HBA:\n{log}"
    );
    let got = md5_of(vm, &format!("dd if={DISKS_B}/0 bs=1M 2>/dev/null | md5sum"))?;
    assert_eq!(got, md5_hex(disk_b), "the new instance serves the disk");
    Ok(())
}

fn unprivileged_and_bound(vm: &mut Vm, pids: &[String]) -> lab::Result<()> {
    for pid in pids {
        vm.check_driver_privileges(pid, AHCID_ID)?;
    }
    for addr in [HBA_A, HBA_B] {
        vm.check_vfio_bound(addr, &LINUX_AHCI)?;
    }
    Ok(())
}

/// q35's own AHCI (00:1f.2) shares IOMMU group with the LPC bridge and the
/// SMBus: pcid says so and binds none of them; the machine goes on.
fn q35_ahci_left_alone(vm: &mut Vm) -> lab::Result<()> {
    let pcid = vm.ok("cat /var/log/pcid.log")?;
    assert!(
        pcid.lines().any(|l| l.contains("pci-0000-00-1f.2")
            && l.contains("shares its IOMMU group with 0000:00:1f.0")
            && l.contains("not claimed")),
        "{pcid}"
    );
    for f in ["1f.0", "1f.2", "1f.3"] {
        let out = vm.ok(&format!(
            "d=/sys/bus/pci/devices/0000:00:{f}; readlink $d/driver || echo none; cat $d/driver_override"
        ))?;
        assert!(!out.contains("vfio-pci"), "00:{f}: {out}");
    }
    let summary = vm.ok("cat /scheme/pci/pci-0000-00-1f.2/summary")?;
    assert!(summary.contains("owner      none"), "{summary}");
    Ok(())
}

/// Disks are named by port; empty ports are skipped with a log line.
fn ports_and_names(vm: &mut Vm) -> lab::Result<()> {
    let names = vm.ok(&format!("ls {DISKS_A}"))?;
    let names: Vec<&str> = names.split_whitespace().collect();
    assert_eq!(names, ["0", "2", "2p1", "2p2", "4", "5"]);
    let names = vm.ok(&format!("ls {DISKS_B}"))?;
    assert_eq!(names.split_whitespace().collect::<Vec<_>>(), ["0"]);
    let log = vm.ok("cat /var/log/ahcid@pci-0000-01-00.0.log")?;
    for p in [1, 3] {
        assert!(log.contains(&format!("port {p}: no device")), "{log}");
    }
    assert!(log.contains("port 0: \"QEMU HARDDISK\""), "{log}");
    assert!(log.contains("NCQ depth 32"), "{log}");
    assert!(log.contains("MSI"), "{log}");
    for (disk, size) in [(0, SIZE_0 as u64), (2, SIZE_2 as u64), (4, SIZE_4)] {
        let got = vm.ok(&format!("stat -c %s {DISKS_A}/{disk}"))?;
        assert_eq!(got.trim(), size.to_string(), "disk {disk}");
    }
    Ok(())
}

fn md5_of(vm: &mut Vm, script: &str) -> lab::Result<String> {
    let out = vm.ok(script)?;
    Ok(out.split_whitespace().next().unwrap_or("").to_owned())
}

fn whole_disk_reads(vm: &mut Vm, disk_0: &[u8], disk_b: &[u8]) -> lab::Result<()> {
    let want = md5_hex(disk_0);
    for bs in ["1M", "3333"] {
        let got = md5_of(
            vm,
            &format!("dd if={DISKS_A}/0 bs={bs} 2>/dev/null | md5sum"),
        )?;
        assert_eq!(got, want, "bs={bs}");
    }
    let got = md5_of(vm, &format!("dd if={DISKS_B}/0 bs=1M 2>/dev/null | md5sum"))?;
    assert_eq!(got, md5_hex(disk_b), "second HBA");
    let out = vm.ok(&format!("probe pread {DISKS_A}/0 1000001 37"))?;
    let hex: String = disk_0[1000001..1000038]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(out.trim(), format!("ok 37 {hex}"));
    Ok(())
}

fn gpt_partitions(vm: &mut Vm, disk_2: &[u8]) -> lab::Result<()> {
    for (n, (first, last)) in PARTS_2.iter().enumerate() {
        let (lo, hi) = (*first as usize * 512, (*last as usize + 1) * 512);
        let path = format!("{DISKS_A}/2p{}", n + 1);
        let size = vm.ok(&format!("stat -c %s {path}"))?;
        assert_eq!(size.trim(), (hi - lo).to_string(), "{path}");
        let got = md5_of(vm, &format!("dd if={path} bs=64k 2>/dev/null | md5sum"))?;
        assert_eq!(got, md5_hex(&disk_2[lo..hi]), "{path}");
    }
    Ok(())
}

fn probe(vm: &mut Vm, args: &str) -> lab::Result<String> {
    Ok(vm
        .sh(&format!("probe {args}"))?
        .stdout_str()
        .trim()
        .to_owned())
}

fn bad_inputs(vm: &mut Vm) -> lab::Result<()> {
    for bad in ["1", "3", "6", "0p1", "2p3", "00", "zz"] {
        assert_eq!(
            probe(vm, &format!("open {DISKS_A}/{bad} r"))?,
            "err ENOENT",
            "{bad}"
        );
    }
    let d = format!("{DISKS_A}/0");
    assert_eq!(probe(vm, &format!("pread {d} {SIZE_0} 16"))?, "ok 0");
    assert_eq!(
        probe(vm, &format!("pread {d} {} 4096", SIZE_0 - 3))?,
        format!("ok 3 {}", {
            let tail = &pattern(11, SIZE_0)[SIZE_0 - 3..];
            tail.iter().map(|b| format!("{b:02x}")).collect::<String>()
        })
    );
    assert_eq!(probe(vm, &format!("pwrite {d} {SIZE_0} 00"))?, "err ENOSPC");
    for cmd in ["0x1234", "0xc0ffee00", "0"] {
        assert_eq!(
            probe(vm, &format!("ioctl {d} {cmd}"))?,
            "err ENOTTY",
            "{cmd}"
        );
    }
    assert_eq!(
        probe(vm, &format!("ioctl-u64 {d} 0x80081272"))?,
        format!("ok 0 {SIZE_0}")
    );
    // ahcid does not discard (no ATA TRIM).
    assert_eq!(
        probe(vm, &format!("ioctl-range {d} 0x40101277 0 4096"))?,
        "err EOPNOTSUPP"
    );
    Ok(())
}

/// Reads of port 5's bad sector fail with EIO (the port stops, is reset
/// and the read retried once, logged); reads around it and later still work.
fn device_errors(vm: &mut Vm, disk_5: &[u8]) -> lab::Result<()> {
    let d = format!("{DISKS_A}/5");
    let at = BAD_SECTOR * 512;
    assert_eq!(probe(vm, &format!("pread {d} {at} 512"))?, "err EIO");
    let hex = |r: std::ops::Range<usize>| -> String {
        disk_5[r].iter().map(|b| format!("{b:02x}")).collect()
    };
    let before = (at - 512) as usize;
    assert_eq!(
        probe(vm, &format!("pread {d} {before} 512"))?,
        format!("ok 512 {}", hex(before..before + 512))
    );
    // Once more, with neighbours in flight.
    let out = vm.ok(&format!(
        "probe pread {d} {at} 4096 > /tmp/bad & probe pread {d} 0 4096 > /tmp/good & wait; cat /tmp/bad /tmp/good"
    ))?;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "err EIO", "{out}");
    assert_eq!(lines[1], format!("ok 4096 {}", hex(0..4096)), "{out}");
    let log = vm.ok("cat /var/log/ahcid@pci-0000-01-00.0.log")?;
    assert!(
        log.contains("port 5: error: PxIS") && log.contains("recovering"),
        "{log}"
    );
    // Everything past the bad sector (which lies in the eighth 64 KiB).
    let got = md5_of(vm, &format!("dd if={d} bs=64k skip=8 2>/dev/null | md5sum"))?;
    assert_eq!(got, md5_hex(&disk_5[8 << 16..]), "the port still serves");
    Ok(())
}

/// ext2 on port 4 through a loop device, files written and read back in
/// the guest; their checksums, for the host to compare.
fn file_system(vm: &mut Vm) -> lab::Result<Vec<(String, String)>> {
    vm.ok(
        "for m in loop crc16 mbcache jbd2 crc32c_generic ext4; do insmod /lib/modules/$m.ko || exit 1; done",
    )?;
    vm.ok(&format!(
        "losetup /dev/loop0 {DISKS_A}/4 && mke2fs -q /dev/loop0 >/dev/null && mkdir -p /tmp/mnt && \
         mount -t ext4 /dev/loop0 /tmp/mnt"
    ))?;
    let out = vm.sh_timeout(
        &format!(
            "for i in $(seq {FILES}); do dd if=/dev/urandom of=/tmp/mnt/f$i bs=64k count=5 2>/dev/null || exit 1; done; \
             sync; echo 3 > /proc/sys/vm/drop_caches; cd /tmp/mnt && md5sum f*"
        ),
        Duration::from_secs(300),
    )?;
    assert!(out.success(), "{}{}", out.stdout_str(), out.stderr_str());
    let sums = lab::disks::md5_lines(&out.stdout_str());
    assert_eq!(sums.len(), FILES, "{}", out.stdout_str());
    vm.ok("umount /tmp/mnt && losetup -d /dev/loop0")?;
    Ok(sums)
}
