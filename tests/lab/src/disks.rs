//! Disk images, write loads and checks shared by the storage scenarios
//! (block.rs, ahci.rs, filesystem.rs): a GPT made by `sgdisk`, disjoint
//! unaligned writes dealt to several guest writers, the daemons' survival,
//! and a guest's file system checked on the host.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::{md5_hex, pattern, Result, Vm};

/// A disk of `size` bytes at `path`: `pattern(seed)`, then a real GPT
/// written by sgdisk (an independent implementation) with partitions
/// `parts` (first, last sector, 512-byte sectors), whose headers and
/// backup overwrite parts of it. Returns the bytes as the guest will see
/// them.
pub fn gpt_disk(path: &Path, seed: u64, size: usize, parts: &[(u64, u64)]) -> Result<Vec<u8>> {
    std::fs::write(path, pattern(seed, size)).map_err(|e| e.to_string())?;
    let mut cmd = Command::new("sgdisk");
    for (n, (first, last)) in parts.iter().enumerate() {
        cmd.arg(format!("--new={}:{first}:{last}", n + 1));
    }
    let out = cmd
        .arg(path)
        .output()
        .map_err(|e| format!("cannot run sgdisk (apt-get install gdisk): {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "sgdisk failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    std::fs::read(path).map_err(|e| e.to_string())
}

/// Random disjoint byte ranges in `region` of `base` with gaps of 0..600
/// bytes, so neighbours written by different processes share sectors and
/// the driver's read-modify-write must not lose either. Dealt round-robin
/// to `writers` writers, each in shuffled order, as `probe writes` plans
/// (`offset hex` lines). Returns (plan per writer, expected disk).
pub fn write_plans(base: &[u8], writers: usize, region: (usize, usize)) -> (Vec<String>, Vec<u8>) {
    let mut rng = 0x5eed_u64;
    let mut next = |m: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % m
    };
    let mut expected = base.to_vec();
    let mut plans: Vec<Vec<(usize, Vec<u8>)>> = vec![Vec::new(); writers];
    let mut at = region.0;
    let mut k = 0;
    loop {
        let start = at + next(600) as usize;
        let len = 1 + next(3000) as usize;
        if start + len > region.1 {
            break;
        }
        let data = pattern(1000 + k as u64, len);
        expected[start..start + len].copy_from_slice(&data);
        plans[k % writers].push((start, data));
        at = start + len;
        k += 1;
    }
    let text = plans
        .into_iter()
        .map(|mut p| {
            for i in (1..p.len()).rev() {
                p.swap(i, next(i as u64 + 1) as usize);
            }
            p.iter()
                .map(|(off, data)| {
                    let hex: String = data.iter().map(|b| format!("{b:02x}")).collect();
                    format!("{off} {hex}\n")
                })
                .collect()
        })
        .collect();
    (text, expected)
}

/// Fails unless every pid in `pids` is still a running `daemon` and no
/// service exited unexpectedly: nothing the scenario did took one down.
pub fn still_running(vm: &mut Vm, daemon: &str, pids: &[String]) -> Result<()> {
    let after = vm.ok(&format!("pidof {daemon}"))?;
    for pid in pids {
        if !after.split_whitespace().any(|p| p == pid) {
            return Err(format!("{daemon} {pid} gone: {after}"));
        }
    }
    let console = vm.console();
    if console.contains("exited unexpectedly") {
        return Err(format!("a service exited unexpectedly:\n{console}"));
    }
    Ok(())
}

/// `md5sum`'s output as (sum, name) pairs.
pub fn md5_lines(out: &str) -> Vec<(String, String)> {
    out.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            Some((w.next()?.to_owned(), w.next()?.to_owned()))
        })
        .collect()
}

/// After poweroff: the host's `e2fsck -fn` finds the ext2/3/4 image at
/// `path` clean, and `debugfs` reads every file of `sums` (from the root
/// directory) back with the guest's checksum. Returns the files' bytes.
pub fn host_files(path: &Path, sums: &[(String, String)]) -> Result<Vec<Vec<u8>>> {
    let fsck = Command::new("e2fsck")
        .arg("-fn")
        .arg(path)
        .output()
        .map_err(|e| format!("cannot run e2fsck (apt-get install e2fsprogs): {e}"))?;
    if !fsck.status.success() {
        return Err(format!(
            "e2fsck: {}{}",
            String::from_utf8_lossy(&fsck.stdout),
            String::from_utf8_lossy(&fsck.stderr)
        ));
    }
    let mut files = Vec::new();
    for (sum, name) in sums {
        let cat = Command::new("debugfs")
            .arg("-R")
            .arg(format!("cat /{name}"))
            .arg(path)
            .output()
            .map_err(|e| format!("cannot run debugfs: {e}"))?;
        if &md5_hex(&cat.stdout) != sum {
            return Err(format!("{name} on the host differs from the guest's"));
        }
        files.push(cat.stdout);
    }
    Ok(files)
}

/// After poweroff: fails unless the host's file at `path` holds exactly
/// `expected`; `what` names it in the error.
pub fn host_file_is(path: &Path, expected: &[u8], what: &str) -> Result<()> {
    let got = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if got != expected {
        return Err(format!(
            "{what}: the host file differs from what was expected"
        ));
    }
    Ok(())
}

/// One running `daemon` per scheme in `schemes` (`/scheme/…` paths): every
/// scheme is mounted and as many daemons run. Returns their pids.
pub fn daemons(vm: &mut Vm, daemon: &str, schemes: &[&str]) -> Result<Vec<String>> {
    let mounted = vm.ok("ls /scheme")?;
    for d in schemes {
        let name = d.trim_start_matches("/scheme/");
        if !mounted.split_whitespace().any(|m| m == name) {
            return Err(format!("{name} missing: {mounted}"));
        }
    }
    let pids: Vec<String> = vm
        .ok(&format!("pidof {daemon}"))?
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    if pids.len() != schemes.len() {
        return Err(format!(
            "expected {} {daemon}, found pids {pids:?}",
            schemes.len()
        ));
    }
    Ok(pids)
}

/// Runs the plans of [`write_plans`] (booted as `/root/plan0` …) from
/// `writers` guest processes at once on `disk` (`/scheme/…/N`), with
/// `beside` (shell commands ending in `&`, or empty) running alongside;
/// then fsyncs and checks the guest reads back `expected` over `region`.
pub fn concurrent_writes(
    vm: &mut Vm,
    disk: &str,
    writers: usize,
    region: (usize, usize),
    expected: &[u8],
    beside: &str,
) -> Result<()> {
    let script = format!(
        "for p in $(seq 0 {last}); do probe writes {disk} /root/plan$p > /tmp/wrote$p 2>&1 & done; \
         {beside} wait; cat /tmp/wrote*",
        last = writers - 1
    );
    let out = vm.sh_timeout(&script, Duration::from_secs(300))?;
    let text = out.stdout_str();
    if text.lines().filter(|l| l.starts_with("ok ")).count() != writers {
        return Err(format!("writers: {text}"));
    }
    vm.ok(&format!("probe fsync {disk}"))?;
    // The guest reads back what the host will find.
    let (lo, hi) = region;
    let sum = vm.ok(&format!(
        "dd if={disk} bs=1M skip={} count={} 2>/dev/null | md5sum",
        lo >> 20,
        (hi - lo) >> 20
    ))?;
    if sum.split_whitespace().next() != Some(md5_hex(&expected[lo..hi]).as_str()) {
        return Err(format!("{disk}: the written region reads back wrong"));
    }
    Ok(())
}
