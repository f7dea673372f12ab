//! Host-side test helpers (feature `test-util`): heap memory standing in
//! for DMA memory and a simulated device that consumes the avail ring and
//! produces used entries, written from the spec.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::ptr::NonNull;

use crate::ring::{RingLayout, RingMemory, SplitRing};
use crate::spec::ring::{AVAIL_F_NO_INTERRUPT, DESC_F_NEXT, DESC_F_WRITE, USED_F_NO_NOTIFY};

/// Page-aligned heap memory standing in for DMA memory; its "IOVA" is a
/// made-up constant so tests can tell addresses apart.
pub struct HostMem {
    ptr: NonNull<u8>,
    layout: Layout,
}

pub const FAKE_IOVA: u64 = 0x7000_0000;

impl HostMem {
    pub fn new(len: usize) -> HostMem {
        let layout = Layout::from_size_align(len, 4096).unwrap();
        // SAFETY: non-zero size (every ring has at least one entry).
        let ptr = NonNull::new(unsafe { alloc_zeroed(layout) }).unwrap();
        HostMem { ptr, layout }
    }
}

impl Drop for HostMem {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

// SAFETY: heap memory, stable across moves of HostMem, referenced by
// no one else.
unsafe impl RingMemory for HostMem {
    fn base(&mut self) -> NonNull<u8> {
        self.ptr
    }
    fn byte_len(&self) -> usize {
        self.layout.size()
    }
    fn iova(&self) -> u64 {
        FAKE_IOVA
    }
}

/// A ring of `size` entries in fresh host memory.
pub fn ring(size: u16) -> SplitRing<HostMem> {
    let layout = RingLayout::new(size).unwrap();
    SplitRing::new(HostMem::new(layout.total), size).unwrap()
}

/// The device's side of the ring, written from the spec, over the same
/// memory: takes chains off the avail ring and puts heads on the used
/// ring in whatever order the test wants.
pub struct SimDevice {
    base: *mut u8,
    layout: RingLayout,
    last_avail: u16,
    used_idx: u16,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Desc {
    pub addr: u64,
    pub len: u32,
    pub writable: bool,
}

impl SimDevice {
    pub fn new<M: RingMemory>(ring: &SplitRing<M>) -> SimDevice {
        SimDevice {
            base: ring.base_ptr(),
            layout: ring.layout(),
            last_avail: 0,
            used_idx: 0,
        }
    }

    fn r16(&self, off: usize) -> u16 {
        // SAFETY: offsets from the layout, inside the ring's memory,
        // which outlives the simulated device in every test.
        unsafe { self.base.add(off).cast::<u16>().read_volatile() }
    }
    fn r32(&self, off: usize) -> u32 {
        // SAFETY: as in r16.
        unsafe { self.base.add(off).cast::<u32>().read_volatile() }
    }
    fn r64(&self, off: usize) -> u64 {
        // SAFETY: as in r16.
        unsafe { self.base.add(off).cast::<u64>().read_volatile() }
    }
    fn w16(&self, off: usize, v: u16) {
        // SAFETY: as in r16.
        unsafe { self.base.add(off).cast::<u16>().write_volatile(v) }
    }
    fn w32(&self, off: usize, v: u32) {
        // SAFETY: as in r16.
        unsafe { self.base.add(off).cast::<u32>().write_volatile(v) }
    }

    /// Whether the driver wants interrupts (`VIRTQ_AVAIL_F_NO_INTERRUPT`
    /// clear).
    pub fn interrupts_wanted(&self) -> bool {
        self.r16(self.layout.avail) & AVAIL_F_NO_INTERRUPT == 0
    }

    pub fn avail_idx(&self) -> u16 {
        self.r16(self.layout.avail + 2)
    }

    /// Every chain made available since the last call, as (head, descs).
    pub fn fetch(&mut self) -> Vec<(u16, Vec<Desc>)> {
        let mut out = Vec::new();
        let size = self.layout.size;
        while self.last_avail != self.avail_idx() {
            let slot = usize::from(self.last_avail % size);
            let head = self.r16(self.layout.avail + 4 + 2 * slot);
            let mut descs = Vec::new();
            let mut i = head;
            loop {
                assert!(i < size, "descriptor index {i} out of range");
                assert!(descs.len() < usize::from(size), "descriptor loop");
                let off = self.layout.desc + 16 * usize::from(i);
                let flags = self.r16(off + 12);
                descs.push(Desc {
                    addr: self.r64(off),
                    len: self.r32(off + 8),
                    writable: flags & DESC_F_WRITE != 0,
                });
                if flags & DESC_F_NEXT == 0 {
                    break;
                }
                i = self.r16(off + 14);
            }
            out.push((head, descs));
            self.last_avail = self.last_avail.wrapping_add(1);
        }
        out
    }

    /// Puts `id` on the used ring with `len` bytes written.
    pub fn complete(&mut self, id: u32, len: u32) {
        let slot = usize::from(self.used_idx % self.layout.size);
        let entry = self.layout.used + 4 + 8 * slot;
        self.w32(entry, id);
        self.w32(entry + 4, len);
        self.used_idx = self.used_idx.wrapping_add(1);
        self.w16(self.layout.used + 2, self.used_idx);
    }

    /// Sets used.idx without writing entries (a misbehaving device).
    pub fn force_used_idx(&mut self, idx: u16) {
        self.used_idx = idx;
        self.w16(self.layout.used + 2, idx);
    }

    pub fn set_no_notify(&self, on: bool) {
        self.w16(self.layout.used, if on { USED_F_NO_NOTIFY } else { 0 });
    }
}
