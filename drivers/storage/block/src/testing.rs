//! Test double: an in-memory [`BlockDevice`] that completes asynchronously.
//!
//! `submit` only records an operation (checking it the way a device would:
//! in range, whole blocks, within `max_transfer` or `max_discard`, queue
//! not full). A discard zeroes its blocks when carried out. Nothing
//! happens until the test *fires an interrupt* through [`MemDiskCtl`]: then
//! the recorded operations are carried out against the backing bytes, in the
//! order the test asks for (possibly out of order), their results become
//! available to `complete`, and, if an interrupt socket is set, one byte is
//! written to it so a served scheme's loop calls `on_irq`.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use syscall::error::{Error, EAGAIN, EINVAL, EIO};

use crate::{BlockDevice, DiskInfo, Done, Op};

/// An operation the device accepted and has not carried out yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pending {
    Read { lba: u64, blocks: u32 },
    Write { lba: u64, data: Vec<u8> },
    Flush,
    Discard { lba: u64, blocks: u64 },
}

/// Everything the device and the test share.
#[derive(Debug)]
pub struct MemState {
    pub info: DiskInfo,
    /// The disk's bytes.
    pub data: Vec<u8>,
    /// Accepted, not yet carried out, in submission order.
    pub pending: Vec<(u64, Pending)>,
    /// Carried out, waiting for `complete`.
    pub done: Vec<Done>,
    /// Operations carried out, by kind.
    pub reads: usize,
    pub writes: usize,
    pub flushes: usize,
    pub discards: usize,
    /// Most operations pending at once.
    pub max_pending: usize,
    /// Most write operations pending at once.
    pub max_pending_writes: usize,
    /// Operations a correct scheme never submits (out of range, partial
    /// blocks, too large, a full queue, a read-only disk).
    pub bad_ops: Vec<String>,
    /// `submit` calls refused with EAGAIN (queue full).
    pub refused: usize,
    /// Pending operations the device really takes (starts at
    /// `info.queue_depth`; set lower to see the scheme handle EAGAIN).
    pub limit: usize,
    /// Operations touching this LBA complete with EIO.
    pub fail_lba: Option<u64>,
    irq: Option<UnixStream>,
}

impl MemState {
    fn lock(state: &Mutex<MemState>) -> MutexGuard<'_, MemState> {
        // A test that panicked while holding the lock already failed.
        state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn range(&self, lba: u64, blocks: u64) -> Option<std::ops::Range<usize>> {
        let bs = u64::from(self.info.block_size);
        let end = lba.checked_add(blocks)?;
        if end > self.info.blocks {
            return None;
        }
        Some((lba * bs) as usize..(end * bs) as usize)
    }

    fn touches_fail(&self, lba: u64, blocks: u64) -> bool {
        self.fail_lba.is_some_and(|f| f >= lba && f < lba + blocks)
    }

    /// Carries out one pending operation.
    fn execute(&mut self, tag: u64, op: Pending) {
        let result = match op {
            Pending::Read { lba, blocks } => {
                self.reads += 1;
                match self.range(lba, u64::from(blocks)) {
                    _ if self.touches_fail(lba, u64::from(blocks)) => Err(Error::new(EIO)),
                    Some(r) => Ok(self.data[r].to_vec()),
                    None => Err(Error::new(EIO)),
                }
            }
            Pending::Write { lba, data } => {
                self.writes += 1;
                let blocks = (data.len() / self.info.block_size as usize) as u64;
                match self.range(lba, blocks) {
                    _ if self.touches_fail(lba, blocks) => Err(Error::new(EIO)),
                    Some(r) => {
                        self.data[r].copy_from_slice(&data);
                        Ok(Vec::new())
                    }
                    None => Err(Error::new(EIO)),
                }
            }
            Pending::Flush => {
                self.flushes += 1;
                Ok(Vec::new())
            }
            Pending::Discard { lba, blocks } => {
                self.discards += 1;
                match self.range(lba, blocks) {
                    _ if self.touches_fail(lba, blocks) => Err(Error::new(EIO)),
                    Some(r) => {
                        self.data[r].fill(0);
                        Ok(Vec::new())
                    }
                    None => Err(Error::new(EIO)),
                }
            }
        };
        self.done.push(Done { tag, result });
    }
}

/// The device half (moved into the scheme).
pub struct MemDisk {
    state: Arc<Mutex<MemState>>,
}

/// The test's half: inspect the device and fire interrupts.
#[derive(Clone)]
pub struct MemDiskCtl {
    state: Arc<Mutex<MemState>>,
}

/// In which order one interrupt carries out the pending operations.
#[derive(Debug, Clone, Copy)]
pub enum Order {
    Submitted,
    Reversed,
    /// Shuffled with this seed.
    Shuffled(u64),
}

/// A 512-byte-block disk holding `data` (whose length must be a multiple of
/// 512), with the given transfer limit and queue depth, discarding up to
/// 64 blocks per operation.
pub fn mem_disk(data: Vec<u8>, max_transfer: usize, queue_depth: usize) -> (MemDisk, MemDiskCtl) {
    let info = DiskInfo {
        block_size: 512,
        blocks: (data.len() / 512) as u64,
        max_transfer,
        queue_depth,
        read_only: false,
        can_flush: true,
        max_discard: 64,
    };
    mem_disk_with(data, info)
}

/// A disk with an explicit `DiskInfo` (`data` should be `blocks *
/// block_size` bytes).
pub fn mem_disk_with(data: Vec<u8>, info: DiskInfo) -> (MemDisk, MemDiskCtl) {
    let state = Arc::new(Mutex::new(MemState {
        info,
        data,
        pending: Vec::new(),
        done: Vec::new(),
        reads: 0,
        writes: 0,
        flushes: 0,
        discards: 0,
        max_pending: 0,
        max_pending_writes: 0,
        bad_ops: Vec::new(),
        refused: 0,
        limit: info.queue_depth,
        fail_lba: None,
        irq: None,
    }));
    (
        MemDisk {
            state: state.clone(),
        },
        MemDiskCtl { state },
    )
}

impl BlockDevice for MemDisk {
    fn info(&self) -> DiskInfo {
        MemState::lock(&self.state).info
    }

    fn submit(&mut self, tag: u64, op: Op<'_>) -> syscall::Result<()> {
        let mut s = MemState::lock(&self.state);
        let bs = s.info.block_size as usize;
        if s.pending.len() >= s.limit {
            s.refused += 1;
            return Err(Error::new(EAGAIN));
        }
        let pending = match op {
            Op::Read { lba, blocks } => {
                let bytes = blocks as usize * bs;
                if blocks == 0
                    || bytes > s.info.max_transfer
                    || s.range(lba, blocks.into()).is_none()
                {
                    s.bad_ops.push(format!("read {lba}+{blocks}"));
                    return Err(Error::new(EINVAL));
                }
                Pending::Read { lba, blocks }
            }
            Op::Write { lba, data } => {
                let blocks = (data.len() / bs) as u64;
                if data.is_empty()
                    || data.len() % bs != 0
                    || data.len() > s.info.max_transfer
                    || s.range(lba, blocks).is_none()
                    || s.info.read_only
                {
                    s.bad_ops.push(format!("write {lba} len {}", data.len()));
                    return Err(Error::new(EINVAL));
                }
                Pending::Write {
                    lba,
                    data: data.to_vec(),
                }
            }
            Op::Flush => Pending::Flush,
            Op::Discard { lba, blocks } => {
                if blocks == 0
                    || blocks > s.info.max_discard
                    || s.range(lba, blocks).is_none()
                    || s.info.read_only
                {
                    s.bad_ops.push(format!("discard {lba}+{blocks}"));
                    return Err(Error::new(EINVAL));
                }
                Pending::Discard { lba, blocks }
            }
        };
        s.pending.push((tag, pending));
        s.max_pending = s.max_pending.max(s.pending.len());
        let w = s
            .pending
            .iter()
            .filter(|(_, p)| matches!(p, Pending::Write { .. } | Pending::Discard { .. }))
            .count();
        s.max_pending_writes = s.max_pending_writes.max(w);
        Ok(())
    }

    fn complete(&mut self, done: &mut Vec<Done>) {
        done.append(&mut MemState::lock(&self.state).done);
    }
}

impl MemDiskCtl {
    /// Locked view of the device (for inspection and setup).
    pub fn state(&self) -> MutexGuard<'_, MemState> {
        MemState::lock(&self.state)
    }

    /// The socket `fire` writes a byte to (give its peer to
    /// `TestMount::with_irq`).
    pub fn set_irq(&self, irq: UnixStream) {
        self.state().irq = Some(irq);
    }

    /// Pending operations.
    pub fn pending(&self) -> Vec<(u64, Pending)> {
        self.state().pending.clone()
    }

    /// Carries out every pending operation in `order` and raises the
    /// interrupt. Returns how many were carried out.
    pub fn fire(&self, order: Order) -> usize {
        self.fire_some(usize::MAX, order)
    }

    /// Carries out at most `n` pending operations, picked in `order`.
    pub fn fire_some(&self, n: usize, order: Order) -> usize {
        let mut s = self.state();
        let mut ops = std::mem::take(&mut s.pending);
        match order {
            Order::Submitted => {}
            Order::Reversed => ops.reverse(),
            Order::Shuffled(seed) => shuffle(&mut ops, seed),
        }
        let rest = ops.split_off(n.min(ops.len()));
        let count = ops.len();
        for (tag, op) in ops {
            s.execute(tag, op);
        }
        s.pending = rest;
        if count > 0 {
            if let Some(irq) = s.irq.as_mut() {
                // Only the wake-up matters; a full socket is already readable.
                let _ = irq.write(&[1]);
            }
        }
        count
    }

    /// Fires every `interval` on a thread, in shuffled order, until the
    /// returned guard is dropped.
    pub fn fire_periodically(&self, interval: Duration, seed: u64) -> Firing {
        let ctl = self.clone();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut seed = seed;
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                seed = next_random(seed);
                ctl.fire(Order::Shuffled(seed));
                std::thread::sleep(interval);
            }
        });
        Firing {
            stop,
            thread: Some(thread),
        }
    }
}

/// Stops a [`MemDiskCtl::fire_periodically`] thread when dropped.
pub struct Firing {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Firing {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// xorshift64*: enough randomness for test orders and data.
pub fn next_random(x: u64) -> u64 {
    let mut x = x | 1;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    x.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

fn shuffle<T>(v: &mut [T], seed: u64) {
    let mut r = seed;
    for i in (1..v.len()).rev() {
        r = next_random(r);
        v.swap(i, (r % (i as u64 + 1)) as usize);
    }
}
