//! The seam between a virtio driver's device logic and its transport.
//!
//! A driver's `device.rs` (virtio-blkd's `VirtioBlk`, virtio-netd's
//! `VirtioNet`) is generic over [`Port`]: its queues by index, the
//! negotiated features, the device-specific configuration and the device
//! status. [`PciPort`] is the real one (the PCI transport and the started
//! queues); `testing::TestPort` is the host tests' (rings in heap memory
//! driven by `testing::SimDevice`). One trait, so every driver gets every
//! check (a device asking for a reset, refused completions) the same way.

use std::io;

use log::warn;

use crate::pci::{DeviceConfig, VirtioPci};
use crate::queue::VirtQueue;
use crate::spec::status;

/// What a driver's device logic asks of its virtio device. Queues are
/// numbered as in the device type's spec section (virtio-blk: 0 is the
/// request queue; virtio-net: 0 receive, 1 transmit). A queue index the
/// device does not have is a driver bug: `add` fails with `InvalidInput`,
/// the other queue calls do nothing or report an empty queue.
pub trait Port {
    /// The device type's configuration, as the driver decodes it.
    type Config;

    /// Queues a chain of `(iova, len, device_writes)` buffers on `queue`;
    /// returns its token, `WouldBlock` when the ring is full. The device
    /// learns of it at the next [`Port::kick`].
    fn add(&mut self, queue: usize, bufs: &[(u64, u32, bool)]) -> io::Result<u16>;
    /// A finished chain of `queue`: `(token, bytes the device wrote)`.
    fn pop_used(&mut self, queue: usize) -> Option<(u16, u32)>;
    /// Tells the device new chains are available on `queue`.
    fn kick(&mut self, queue: usize);
    /// Entries in `queue`'s ring.
    fn queue_size(&self, queue: usize) -> u16;
    /// Used entries `queue`'s ring refused (naming nothing in flight).
    fn bad_completions(&self, queue: usize) -> u64;
    /// Asks for interrupts from `queue` or not (a hint; includes a full
    /// barrier, see `SplitRing::set_interrupts`).
    fn set_interrupts(&mut self, queue: usize, on: bool);
    fn features(&self) -> u64;
    /// Reads the configuration (consistently: generation-checked).
    fn read_config(&self) -> io::Result<Self::Config>;
    /// The device set DEVICE_NEEDS_RESET: it has stopped working, and the
    /// driver should exit so the supervisor restarts it on a reset device.
    fn needs_reset(&self) -> bool;
}

/// The real port: a started PCI transport and its queues.
pub struct PciPort<C> {
    // First, so it is dropped first: resetting the device stops its DMA
    // before the queues' rings are unmapped.
    transport: VirtioPci,
    queues: Vec<VirtQueue>,
    read: fn(&DeviceConfig<'_>, u64) -> io::Result<C>,
}

impl<C> PciPort<C> {
    /// `read` decodes the device-specific configuration, given the
    /// negotiated features.
    pub fn new(
        transport: VirtioPci,
        queues: Vec<VirtQueue>,
        read: fn(&DeviceConfig<'_>, u64) -> io::Result<C>,
    ) -> PciPort<C> {
        PciPort {
            transport,
            queues,
            read,
        }
    }
}

fn no_queue(queue: usize) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("the device has no queue {queue}"),
    )
}

impl<C> Port for PciPort<C> {
    type Config = C;

    fn add(&mut self, queue: usize, bufs: &[(u64, u32, bool)]) -> io::Result<u16> {
        self.queues
            .get_mut(queue)
            .ok_or_else(|| no_queue(queue))?
            .add(bufs)
    }
    fn pop_used(&mut self, queue: usize) -> Option<(u16, u32)> {
        self.queues.get_mut(queue)?.pop_used()
    }
    fn kick(&mut self, queue: usize) {
        if let Some(q) = self.queues.get(queue) {
            q.notify(&mut self.transport)
        }
    }
    fn queue_size(&self, queue: usize) -> u16 {
        self.queues.get(queue).map_or(0, VirtQueue::size)
    }
    fn bad_completions(&self, queue: usize) -> u64 {
        self.queues.get(queue).map_or(0, VirtQueue::bad_completions)
    }
    fn set_interrupts(&mut self, queue: usize, on: bool) {
        if let Some(q) = self.queues.get_mut(queue) {
            q.set_interrupts(on)
        }
    }
    fn features(&self) -> u64 {
        self.transport.features()
    }
    fn read_config(&self) -> io::Result<C> {
        let features = self.transport.features();
        self.transport.read_config(|c| (self.read)(c, features))
    }
    fn needs_reset(&self) -> bool {
        match self.transport.status() {
            Ok(s) => s & status::DEVICE_NEEDS_RESET != 0,
            Err(e) => {
                warn!("virtio: reading the device status failed: {e}");
                false
            }
        }
    }
}
