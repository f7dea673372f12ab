//! Disk images and write loads shared by the storage scenarios (block.rs,
//! ahci.rs): a GPT made by `sgdisk`, and disjoint unaligned writes dealt to
//! several guest writers.

use std::path::Path;
use std::process::Command;

use crate::{pattern, Result};

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
