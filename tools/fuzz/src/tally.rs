//! What the workers count, in memory shared with the parent (an anonymous
//! `MAP_SHARED` mapping made before the first fork), so the parent sees a
//! worker's counts and the call it is in even when the worker is stuck in
//! the kernel or was killed.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering::Relaxed};

use crate::ops::{Op, OPS};
use crate::targets::{Kind, KINDS};

/// errno values counted one by one (Linux's are below 134); index 0 holds
/// anything larger.
pub const ERRNOS: usize = 134;
/// Bytes of the description of the call under way.
const DESC: usize = 240;

/// One worker's counters and the call it is in.
#[repr(C)]
pub struct Slot {
    pub seed: AtomicU64,
    /// The op under way, 1-based (0: between ops).
    op: AtomicU64,
    /// When it began, CLOCK_MONOTONIC milliseconds.
    op_since_ms: AtomicU64,
    desc_len: AtomicU64,
    desc: [AtomicU8; DESC],
    pub requests: AtomicU64,
    pub errors: AtomicU64,
    /// Calls answered, but later than the bound.
    pub slow: AtomicU64,
    pub forks: AtomicU64,
    /// Forked children killed by a signal (a crash of the fuzzer).
    pub crashes: AtomicU64,
    /// Reads whose bytes were checked ([`Slot::wrong`] those that differed).
    pub checked: AtomicU64,
    /// Reads that returned other bytes than the file holds.
    pub wrong: AtomicU64,
    pub errno: [AtomicU64; ERRNOS],
    /// Requests and errors per scheme.
    pub by_kind: [[AtomicU64; 2]; KINDS.len()],
    /// Requests and errors per operation.
    pub by_op: [[AtomicU64; 2]; OPS.len()],
}

impl Slot {
    /// Marks op `index` (0-based) as under way.
    pub fn begin(&self, index: usize, desc: &str) {
        let bytes = desc.as_bytes();
        let n = bytes.len().min(DESC);
        for (cell, b) in self.desc.iter().zip(&bytes[..n]) {
            cell.store(*b, Relaxed);
        }
        self.desc_len.store(n as u64, Relaxed);
        self.op_since_ms.store(now_ms(), Relaxed);
        self.op.store(index as u64 + 1, Relaxed);
    }

    pub fn end(&self) {
        self.op.store(0, Relaxed);
    }

    /// The op under way (0-based), how long it has been, and what it is.
    pub fn current(&self) -> Option<(u64, u64, String)> {
        let op = self.op.load(Relaxed).checked_sub(1)?;
        let since = now_ms().saturating_sub(self.op_since_ms.load(Relaxed));
        let n = (self.desc_len.load(Relaxed) as usize).min(DESC);
        let desc: Vec<u8> = self.desc[..n].iter().map(|c| c.load(Relaxed)).collect();
        Some((op, since, String::from_utf8_lossy(&desc).into_owned()))
    }

    /// Counts one request of `op` on a `kind` file, answered `result`.
    pub fn count(&self, op: Op, kind: Kind, result: Result<(), nix::errno::Errno>) {
        self.requests.fetch_add(1, Relaxed);
        self.by_kind[kind as usize][0].fetch_add(1, Relaxed);
        self.by_op[op as usize][0].fetch_add(1, Relaxed);
        if let Err(e) = result {
            self.errors.fetch_add(1, Relaxed);
            self.by_kind[kind as usize][1].fetch_add(1, Relaxed);
            self.by_op[op as usize][1].fetch_add(1, Relaxed);
            let i = usize::try_from(e as i32)
                .ok()
                .filter(|&i| i < ERRNOS)
                .unwrap_or(0);
            self.errno[i].fetch_add(1, Relaxed);
        }
    }
}

/// CLOCK_MONOTONIC in milliseconds (the same clock in every process).
pub fn now_ms() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1000 + t.tv_nsec() as u64 / 1_000_000)
        .unwrap_or(0)
}

/// `n` slots shared by the parent and every process it forks. Lives as
/// long as the process (it is never unmapped).
pub struct Shared {
    slots: &'static [Slot],
}

impl Shared {
    pub fn new(n: usize) -> std::io::Result<Shared> {
        let len = (n.max(1) * std::mem::size_of::<Slot>()).next_multiple_of(4096);
        // SAFETY: a fresh anonymous mapping at an address the kernel picks;
        // it aliases nothing.
        let ptr = unsafe {
            rustix::mm::mmap_anonymous(
                std::ptr::null_mut(),
                len,
                rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE,
                rustix::mm::MapFlags::SHARED,
            )
        }?;
        // SAFETY: the mapping is `len` bytes, page-aligned (so aligned for
        // `Slot`), zero-filled (a valid value of every atomic in a `Slot`),
        // holds at least `n` slots and is never unmapped, so `'static` is
        // right. Other processes write it only through atomics too.
        let slots = unsafe { std::slice::from_raw_parts(ptr.cast::<Slot>(), n) };
        Ok(Shared { slots })
    }

    pub fn slot(&self, i: usize) -> Option<&'static Slot> {
        self.slots.get(i)
    }

    pub fn slots(&self) -> &'static [Slot] {
        self.slots
    }
}
