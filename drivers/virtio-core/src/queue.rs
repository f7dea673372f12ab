//! A virtqueue on a PCI transport: a [`SplitRing`] in DMA memory plus its
//! doorbell.

use std::io;
use std::ptr::NonNull;

use common::barrier::wmb;
use common::dma::Dma;

use crate::pci::VirtioPci;
use crate::ring::{RingMemory, SplitRing};

/// Ring memory from the function's DmaSpace (page-aligned, zeroed,
/// mapped in the IOMMU; unmapped when dropped).
pub struct DmaRing {
    mem: Dma<[u8]>,
    base: NonNull<u8>,
    len: usize,
}

impl DmaRing {
    pub fn new(mut mem: Dma<[u8]>) -> io::Result<DmaRing> {
        // Length and address taken once here: later we touch the memory
        // only through volatile raw-pointer accesses.
        let len = mem.len();
        let base = NonNull::new(mem.as_mut_ptr().cast::<u8>())
            .ok_or_else(|| io::Error::other("DMA allocation returned a null pointer"))?;
        Ok(DmaRing { mem, base, len })
    }
}

// SAFETY: a Dma allocation is an mmap that neither moves with the Dma
// value nor is referenced by anyone else while the ring owns it.
unsafe impl RingMemory for DmaRing {
    fn base(&mut self) -> NonNull<u8> {
        self.base
    }
    fn byte_len(&self) -> usize {
        self.len
    }
    fn iova(&self) -> u64 {
        self.mem.iova()
    }
}

/// One enabled virtqueue. Many requests may be in flight; completions are
/// collected with [`VirtQueue::pop_used`] when its interrupt fires.
pub struct VirtQueue {
    index: u16,
    ring: SplitRing<DmaRing>,
    /// Byte offset of this queue's doorbell in the notify BAR.
    doorbell: usize,
    /// A chain fault injection sent to a foreign address: it must not come
    /// back as done (`common::fault::dma`).
    watched: Option<u16>,
}

impl VirtQueue {
    pub(crate) fn new(index: u16, ring: SplitRing<DmaRing>, doorbell: usize) -> VirtQueue {
        VirtQueue {
            index,
            ring,
            doorbell,
            watched: None,
        }
    }

    pub fn index(&self) -> u16 {
        self.index
    }

    /// Entries in the ring (descriptors).
    pub fn size(&self) -> u16 {
        self.ring.size()
    }

    /// See [`SplitRing::add`]: queues a chain of `(iova, len,
    /// device_writes)` buffers and returns its token; `WouldBlock` when
    /// full. The device learns of it at the next [`VirtQueue::notify`].
    pub fn add(&mut self, bufs: &[(u64, u32, bool)]) -> io::Result<u16> {
        // Fault injection (`make faults`, the isolation tests): an address
        // this driver never mapped.
        if let Some(rewrite) = common::fault::dma_chain("virtqueue", bufs) {
            let token = self.ring.add(&rewrite.chain)?;
            if rewrite.watch {
                self.watched = Some(token);
            }
            return Ok(token);
        }
        self.ring.add(bufs)
    }

    /// See [`SplitRing::pop_used`]: `(token, bytes written by the device)`.
    pub fn pop_used(&mut self) -> Option<(u16, u32)> {
        let done = self.ring.pop_used();
        if let (Some((token, _)), Some(watched)) = (done, self.watched) {
            if token == watched {
                common::fault::watched_chain_returned("virtqueue");
            }
        }
        done
    }

    /// See [`SplitRing::set_interrupts`].
    pub fn set_interrupts(&mut self, on: bool) {
        self.ring.set_interrupts(on)
    }

    pub fn free_count(&self) -> u16 {
        self.ring.free_count()
    }

    pub fn in_flight(&self) -> u16 {
        self.ring.in_flight()
    }

    pub fn bad_completions(&self) -> u64 {
        self.ring.bad_completions()
    }

    /// Rings the doorbell (unless the device asked not to be notified).
    pub fn notify(&self, transport: &mut VirtioPci) {
        if self.ring.needs_notify() {
            // Everything the device will read must be visible before the
            // doorbell write reaches it.
            wmb();
            transport.ring_doorbell(self.doorbell, self.index);
        }
    }
}
