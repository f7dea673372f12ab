//! Fixtures shared by the block tests.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;

/// An 8 MiB GPT disk image made by `sgdisk` (Debian package `gdisk`):
/// partition 1 at LBA 2048 (1 MiB), partition 3 at LBA 4096 (2 MiB), slot 2
/// unused. Filled with a pattern first, so data reads are checkable. Made
/// once per test binary (sgdisk takes a second), then copied.
pub fn sgdisk_image() -> Vec<u8> {
    static IMG: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    IMG.get_or_init(|| {
        let path: PathBuf =
            std::env::temp_dir().join(format!("block-gpt-{}.img", std::process::id()));
        std::fs::write(&path, pattern(8 << 20, 0x6770)).expect("write image");
        let out = Command::new("sgdisk")
            .args(["-o", "-n", "1:2048:+1M", "-n", "3:0:+2M"])
            .arg(&path)
            .output()
            .expect("sgdisk not found: apt-get install gdisk");
        assert!(
            out.status.success(),
            "sgdisk failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let img = std::fs::read(&path).expect("read image");
        let _ = std::fs::remove_file(&path);
        img
    })
    .clone()
}

/// Bytes that differ at every offset (so misplaced data shows).
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut r = seed;
    (0..len)
        .map(|_| {
            r = block::testing::next_random(r);
            (r >> 56) as u8
        })
        .collect()
}

/// A hand-built MBR over `img`: slot 1 at LBA 64 (100 blocks), slot 2
/// empty, slot 3 at LBA 200 (50 blocks), slot 4 empty.
pub fn with_mbr(mut img: Vec<u8>) -> Vec<u8> {
    img[446..510].fill(0);
    for (slot, start, count) in [(0usize, 64u32, 100u32), (2, 200, 50)] {
        let e = 446 + slot * 16;
        img[e + 4] = 0x83;
        img[e + 8..e + 12].copy_from_slice(&start.to_le_bytes());
        img[e + 12..e + 16].copy_from_slice(&count.to_le_bytes());
    }
    img[510] = 0x55;
    img[511] = 0xaa;
    img
}
