//! `probe canary GO_FILE TIMEOUT_S`: one page of known bytes that belongs
//! to this process, the victim of the classic DMA attack (a device told
//! to write to a physical address; tests/lab/tests/isolation.rs).
//!
//! As root: maps a page, fills it with a pattern (not zeros), locks it in
//! memory and finds its guest physical address in `/proc/self/pagemap`
//! (only root sees frame numbers there), then prints
//! `canary: page at physical 0x…`. It checks the page every 100 ms until
//! `GO_FILE` exists or `TIMEOUT_S` seconds passed, then prints `canary:
//! intact` (exit 0) or `canary: changed at offset K (0xAA, expected 0xBB)`
//! (exit 1). mlock keeps the page resident; the kernel could still migrate
//! it (compaction), which a test of seconds does not meet.

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use rustix::mm::{MapFlags, ProtFlags};

const PAGE: usize = 4096;
/// pagemap entry (Documentation/admin-guide/mm/pagemap.rst): bit 63
/// present, bits 0-54 the page frame number.
const PRESENT: u64 = 1 << 63;
const PFN_MASK: u64 = (1 << 55) - 1;

fn pattern(i: usize) -> u8 {
    ((i as u8) ^ 0x5a)
        .wrapping_mul(13)
        .wrapping_add((i >> 8) as u8)
}

/// Runs the subcommand; the process's exit code.
pub fn run(args: &[String]) -> i32 {
    let (Some(go), Some(timeout)) = (
        args.first(),
        args.get(1).and_then(|s| s.parse::<u64>().ok()),
    ) else {
        eprintln!("usage: probe canary GO_FILE TIMEOUT_S");
        return 2;
    };
    match watch(go, Duration::from_secs(timeout)) {
        Ok(code) => code,
        Err(e) => {
            println!("canary: error: {e}");
            2
        }
    }
}

fn watch(go: &str, timeout: Duration) -> std::io::Result<i32> {
    // SAFETY: a fresh private anonymous mapping at an address the kernel
    // picks; nothing else refers to it, and it is never unmapped (the
    // process exits).
    let ptr = unsafe {
        rustix::mm::mmap_anonymous(
            std::ptr::null_mut(),
            PAGE,
            ProtFlags::READ | ProtFlags::WRITE,
            MapFlags::PRIVATE,
        )
    }?
    .cast::<u8>();
    for i in 0..PAGE {
        // SAFETY: inside the page just mapped read-write.
        unsafe { ptr.add(i).write_volatile(pattern(i)) };
    }
    // SAFETY: the range is the page mapped above.
    unsafe { rustix::mm::mlock(ptr.cast(), PAGE) }?;
    let pagemap = std::fs::File::open("/proc/self/pagemap")?;
    let mut entry = [0u8; 8];
    pagemap.read_exact_at(&mut entry, (ptr as u64 / PAGE as u64) * 8)?;
    let entry = u64::from_le_bytes(entry);
    let pfn = entry & PFN_MASK;
    if entry & PRESENT == 0 || pfn == 0 {
        return Err(std::io::Error::other(format!(
            "no frame number in pagemap ({entry:#x}): not root?"
        )));
    }
    println!(
        "canary: page at physical {:#x} (pid {})",
        pfn * PAGE as u64,
        std::process::id()
    );
    std::io::stdout().flush()?;
    let first_change = || {
        (0..PAGE).find_map(|i| {
            // SAFETY: inside the locked page; volatile because the attack
            // would write it behind the compiler's back.
            let b = unsafe { ptr.add(i).read_volatile() };
            (b != pattern(i)).then_some((i, b))
        })
    };
    let deadline = Instant::now() + timeout;
    let mut change = None;
    while change.is_none() && Instant::now() < deadline {
        if std::path::Path::new(go).exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        change = first_change();
    }
    if Instant::now() >= deadline {
        println!("canary: {go} never appeared within {} s", timeout.as_secs());
    }
    match change.or_else(first_change) {
        None => {
            println!("canary: intact");
            Ok(0)
        }
        Some((at, b)) => {
            println!(
                "canary: changed at offset {at} ({b:#04x}, expected {:#04x})",
                pattern(at)
            );
            Ok(1)
        }
    }
}
