//! blkbench: the block workloads of `make bench`, run in the guest against
//! one path, so our scheme (`/scheme/disk…/0`) and Linux's own driver
//! (`/dev/vdX`, opened with `--direct`) get the very same code.
//!
//!   blkbench PATH [--direct] [--mib N] [--ops N]
//!
//! Prints one JSON object: sequential 1 MiB reads and writes in MB/s over
//! the first N MiB, and 4 KiB random reads (aligned, within those N MiB) as
//! IOPS at queue depth 1 (one thread) and 32 (32 threads, one request each
//! in flight). Only ratios between two runs mean anything under TCG.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Instant;

use rustix::fs::{open, Mode, OFlags};

/// A page-aligned buffer: O_DIRECT needs one.
struct Buf {
    ptr: *mut u8,
    layout: Layout,
}

impl Buf {
    fn new(len: usize) -> Buf {
        let Ok(layout) = Layout::from_size_align(len, 4096) else {
            fail("bad buffer layout")
        };
        // SAFETY: the layout has a non-zero size (every caller asks for at
        // least 4 KiB) and a valid alignment.
        let ptr = unsafe { alloc_zeroed(layout) };
        if ptr.is_null() {
            fail("out of memory");
        }
        for i in 0..len {
            // SAFETY: i < len, inside the allocation.
            unsafe { ptr.add(i).write((i * 7 + 3) as u8) };
        }
        Buf { ptr, layout }
    }

    fn slice(&mut self) -> &mut [u8] {
        // SAFETY: ptr/len describe our own live allocation, borrowed mutably.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.layout.size()) }
    }
}

impl Drop for Buf {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this very layout.
        unsafe { dealloc(self.ptr, self.layout) };
    }
}

fn fail(msg: &str) -> ! {
    eprintln!("blkbench: {msg}");
    std::process::exit(1);
}

fn open_dev(path: &str, direct: bool, write: bool) -> OwnedFd {
    let mut flags = if write { OFlags::RDWR } else { OFlags::RDONLY };
    if direct {
        flags |= OFlags::DIRECT;
    }
    open(path, flags | OFlags::CLOEXEC, Mode::empty())
        .unwrap_or_else(|e| fail(&format!("cannot open {path}: {e}")))
}

/// xorshift: a cheap, repeatable offset generator.
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

fn sequential(path: &str, direct: bool, mib: u64, write: bool) -> f64 {
    let fd = open_dev(path, direct, write);
    let mut buf = Buf::new(1 << 20);
    let start = Instant::now();
    for i in 0..mib {
        let off = i << 20;
        let n = if write {
            rustix::io::pwrite(&fd, buf.slice(), off)
        } else {
            rustix::io::pread(&fd, buf.slice(), off)
        }
        .unwrap_or_else(|e| fail(&format!("{path} at {off}: {e}")));
        if n != 1 << 20 {
            fail(&format!("{path}: short transfer {n} at {off}"));
        }
    }
    if write {
        rustix::fs::fsync(&fd).unwrap_or_else(|e| fail(&format!("fsync {path}: {e}")));
    }
    mib as f64 / start.elapsed().as_secs_f64() * 1.048576
}

fn random_reads(path: &str, direct: bool, mib: u64, ops: u64, depth: u64) -> f64 {
    let fd = Arc::new(open_dev(path, direct, false));
    let blocks = (mib << 20) / 4096;
    let start = Instant::now();
    let threads: Vec<_> = (0..depth)
        .map(|t| {
            let fd = Arc::clone(&fd);
            let path = path.to_owned();
            std::thread::spawn(move || {
                let mut buf = Buf::new(4096);
                let mut seed = 0x9e37_79b9_7f4a_7c15 ^ (t + 1);
                for _ in 0..ops / depth {
                    let off = (next(&mut seed) % blocks) * 4096;
                    match rustix::io::pread(&*fd, buf.slice(), off) {
                        Ok(4096) => {}
                        Ok(n) => fail(&format!("{path}: short read {n} at {off}")),
                        Err(e) => fail(&format!("{path} at {off}: {e}")),
                    }
                }
            })
        })
        .collect();
    for t in threads {
        if t.join().is_err() {
            fail("a reader thread failed");
        }
    }
    (ops / depth * depth) as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(path) = args.first() else {
        fail("usage: blkbench PATH [--direct] [--mib N] [--ops N]")
    };
    let direct = args.iter().any(|a| a == "--direct");
    let value = |name: &str, default: u64| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .map(|v| v.parse().unwrap_or_else(|_| fail(&format!("bad {name}"))))
            .unwrap_or(default)
    };
    let mib = value("--mib", 32);
    let ops = value("--ops", 2048);
    let seq_write = sequential(path, direct, mib, true);
    let seq_read = sequential(path, direct, mib, false);
    let qd1 = random_reads(path, direct, mib, ops / 4, 1);
    let qd32 = random_reads(path, direct, mib, ops, 32);
    println!(
        "{{\"seq_read_mbs\":{seq_read:.2},\"seq_write_mbs\":{seq_write:.2},\"rand4k_qd1_iops\":{qd1:.1},\"rand4k_qd32_iops\":{qd32:.1}}}"
    );
}
