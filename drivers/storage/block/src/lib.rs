//! The `disk.*` scheme shared by every storage driver.
//!
//! This crate owns everything between a storage driver's hardware queue and
//! the files applications open under `/scheme/disk.<name>/`: the namespace
//! (`/` lists disks and partitions, `/N` is disk N, `/NpM` partition M of it),
//! partition tables (MBR, GPT), byte-granular I/O on block devices (splitting
//! at `max_transfer`, read-modify-write of partial sectors, ordering of
//! overlapping writes and discards), discard (`BLKDISCARD`), the device queue (depth, resubmission after `EAGAIN`)
//! and asynchronous completion through the runtime's deferred replies.
//!
//! A driver implements [`BlockDevice`] (submit an operation, collect finished
//! ones after an interrupt), wraps its disks in a [`DiskScheme`], serves that
//! with `scheme::Server`, and after each interrupt calls
//! [`DiskScheme::on_irq`] and then `Server::wake()`.

pub mod partition;
mod request;
mod scheme;
#[cfg(any(test, feature = "test-util"))]
pub mod testing;

pub use crate::scheme::{
    DiskScheme, FileSource, BLKDISCARD, BLKDISCARD_LINUX, BLKGETSIZE64, BLKSSZGET,
};

/// What a device reports about one disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskInfo {
    /// Logical block size in bytes (a power of two, at least 512).
    pub block_size: u32,
    /// Number of logical blocks.
    pub blocks: u64,
    /// Largest single transfer in bytes (a multiple of `block_size`).
    pub max_transfer: usize,
    /// Operations the device accepts at once.
    pub queue_depth: usize,
    pub read_only: bool,
    /// The device has a volatile write cache that `Flush` empties.
    pub can_flush: bool,
    /// Most blocks one `Discard` may name; 0: the device cannot discard.
    pub max_discard: u64,
}

impl DiskInfo {
    /// The device takes `Op::Discard`.
    pub fn can_discard(&self) -> bool {
        self.max_discard > 0
    }
}

/// One operation for the device. `Write` data is only borrowed for the
/// `submit` call: the device copies it into its own (DMA) buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op<'a> {
    Read {
        lba: u64,
        blocks: u32,
    },
    Write {
        lba: u64,
        data: &'a [u8],
    },
    Flush,
    /// The blocks' contents are no longer needed (NVMe deallocate, ATA
    /// TRIM, virtio-blk discard). Only sent when `DiskInfo::max_discard`
    /// allows it; what they read back afterwards is the device's business.
    Discard {
        lba: u64,
        blocks: u64,
    },
}

/// A finished operation, named by the tag it was submitted with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Done {
    pub tag: u64,
    /// The data for reads (`blocks * block_size` bytes), empty otherwise.
    pub result: Result<Vec<u8>, syscall::Error>,
}

/// A storage device's queue, as the scheme sees it.
pub trait BlockDevice {
    fn info(&self) -> DiskInfo;
    /// Queues an operation; `Err(EAGAIN)` when the queue is full (the scheme
    /// retries after a completion). Any other error fails the operation.
    fn submit(&mut self, tag: u64, op: Op<'_>) -> syscall::Result<()>;
    /// Collects finished operations (called after the device's IRQ fired).
    fn complete(&mut self, done: &mut Vec<Done>);
}
