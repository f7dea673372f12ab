//! Split virtqueue (spec 2.6): descriptor table, available ring and used
//! ring in memory the device reaches by DMA.
//!
//! This module is only the ring logic. It knows nothing of PCI or MMIO: the
//! doorbell is the transport's job ([`crate::queue::VirtQueue::notify`]),
//! and the memory is anything implementing [`RingMemory`]. That keeps it
//! testable on the host over plain memory, with a simulated device.
//!
//! The driver's bookkeeping (free list, chain lengths, its copy of the
//! avail index) is private memory, never read back from the shared ring: a
//! device writing garbage into the descriptor table cannot corrupt our free
//! list, and a bogus used entry is detected and skipped.

use std::io;
use std::ptr::NonNull;

use common::barrier::{mb, rmb, wmb};

use crate::spec::ring::{
    AVAIL_F_NO_INTERRUPT, DESC_F_NEXT, DESC_F_WRITE, MAX_SIZE, USED_F_NO_NOTIFY,
};

/// Memory that holds one ring.
///
/// # Safety
/// `base()` must point to at least `byte_len()` bytes that stay valid, at the
/// same address, for as long as the value lives, even when the value itself
/// is moved (heap or `mmap` memory, not an inline array), and nothing else
/// may create Rust references into those bytes while the ring owns them.
pub unsafe trait RingMemory {
    fn base(&mut self) -> NonNull<u8>;
    fn byte_len(&self) -> usize;
    /// The address the device uses for `base()`.
    fn iova(&self) -> u64;
}

/// Byte offsets of the three parts of a split ring of `size` entries,
/// placed one after another in one allocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingLayout {
    pub size: u16,
    /// Descriptor table: 16 bytes per entry, 16-byte aligned.
    pub desc: usize,
    /// Available ring: flags, idx, `ring[size]`, used_event (2-byte aligned).
    pub avail: usize,
    /// Used ring: flags, idx, `ring[size]` of (id u32, len u32), avail_event
    /// (4-byte aligned).
    pub used: usize,
    pub total: usize,
}

const DESC_SIZE: usize = 16;

impl RingLayout {
    /// `None` unless `size` is a power of two in 1..=32768 (split rings
    /// require it, and it makes `idx % size` agree across the u16 wrap).
    pub fn new(size: u16) -> Option<RingLayout> {
        if size == 0 || !size.is_power_of_two() || size > MAX_SIZE {
            return None;
        }
        let n = usize::from(size);
        let desc = 0;
        let avail = desc + DESC_SIZE * n;
        let used = (avail + 6 + 2 * n).next_multiple_of(4);
        let total = used + 6 + 8 * n;
        Some(RingLayout {
            size,
            desc,
            avail,
            used,
            total,
        })
    }
}

/// One split virtqueue's driver side.
pub struct SplitRing<M: RingMemory> {
    mem: M,
    base: NonNull<u8>,
    layout: RingLayout,
    /// Free descriptors form a list through `next`; a chain handed to the
    /// device keeps the links it had on the free list.
    next: Box<[u16]>,
    /// For each head in flight, the length of its chain; 0 when not in
    /// flight (how bogus used entries are recognised).
    chain_len: Box<[u16]>,
    free_head: u16,
    num_free: u16,
    in_flight: u16,
    /// Our copy of avail.idx (we are its only writer).
    avail_idx: u16,
    /// Next used.idx value we have not consumed yet.
    last_used: u16,
    bad_completions: u64,
}

// SAFETY: `base` points into memory owned by `mem` (RingMemory contract: it
// does not move with the value), so moving the ring to another thread moves
// the sole owner of that memory with it.
unsafe impl<M: RingMemory + Send> Send for SplitRing<M> {}

impl<M: RingMemory> SplitRing<M> {
    /// Takes `mem` (zeroed by us here, before the device learns of it) and
    /// lays out a ring of `size` entries in it.
    pub fn new(mut mem: M, size: u16) -> io::Result<SplitRing<M>> {
        let layout = RingLayout::new(size).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("virtqueue size {size} is not a power of two in 1..=32768"),
            )
        })?;
        let base = mem.base();
        if mem.byte_len() < layout.total {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "virtqueue memory of {} bytes is too small for {} entries ({} bytes)",
                    mem.byte_len(),
                    size,
                    layout.total
                ),
            ));
        }
        if !(base.as_ptr() as usize).is_multiple_of(DESC_SIZE)
            || !mem.iova().is_multiple_of(DESC_SIZE as u64)
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "virtqueue memory is not 16-byte aligned",
            ));
        }
        // SAFETY: the RingMemory contract gives us `byte_len() >= total` bytes at
        // `base`, which nobody else references.
        unsafe { std::ptr::write_bytes(base.as_ptr(), 0, layout.total) };
        let n = usize::from(size);
        let next: Box<[u16]> = (0..n).map(|i| ((i + 1) % n) as u16).collect();
        Ok(SplitRing {
            mem,
            base,
            layout,
            next,
            chain_len: vec![0; n].into_boxed_slice(),
            free_head: 0,
            num_free: size,
            in_flight: 0,
            avail_idx: 0,
            last_used: 0,
            bad_completions: 0,
        })
    }

    pub fn size(&self) -> u16 {
        self.layout.size
    }

    pub fn layout(&self) -> RingLayout {
        self.layout
    }

    /// Free descriptors.
    pub fn free_count(&self) -> u16 {
        self.num_free
    }

    /// Chains handed to the device and not yet returned.
    pub fn in_flight(&self) -> u16 {
        self.in_flight
    }

    /// Used entries the device returned that named no chain in flight.
    pub fn bad_completions(&self) -> u64 {
        self.bad_completions
    }

    pub fn desc_iova(&self) -> u64 {
        self.mem.iova() + self.layout.desc as u64
    }

    pub fn avail_iova(&self) -> u64 {
        self.mem.iova() + self.layout.avail as u64
    }

    pub fn used_iova(&self) -> u64 {
        self.mem.iova() + self.layout.used as u64
    }

    /// Queues one request: a chain of buffers `(iova, len, device_writes)`,
    /// device-readable ones first by convention. Returns the chain's head,
    /// the token [`SplitRing::pop_used`] gives back when the device is done.
    /// Fails with `WouldBlock` when too few descriptors are free (nothing is
    /// changed then), `InvalidInput` for an empty chain, a zero length or a
    /// chain longer than the ring.
    pub fn add(&mut self, bufs: &[(u64, u32, bool)]) -> io::Result<u16> {
        if bufs.is_empty() || bufs.len() > usize::from(self.layout.size) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "a chain of {} buffers does not fit a ring of {}",
                    bufs.len(),
                    self.layout.size
                ),
            ));
        }
        if bufs.iter().any(|&(_, len, _)| len == 0) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "zero-length virtqueue buffer",
            ));
        }
        if bufs.len() > usize::from(self.num_free) {
            return Err(io::Error::new(io::ErrorKind::WouldBlock, "virtqueue full"));
        }
        let head = self.free_head;
        let mut idx = head;
        for (i, &(addr, len, device_writes)) in bufs.iter().enumerate() {
            let last = i + 1 == bufs.len();
            let mut flags = if device_writes { DESC_F_WRITE } else { 0 };
            let link = self.next[usize::from(idx)];
            if !last {
                flags |= DESC_F_NEXT;
            }
            self.write_desc(idx, addr, len, flags, if last { 0 } else { link });
            if !last {
                idx = link;
            }
        }
        self.free_head = self.next[usize::from(idx)];
        // bufs.len() <= num_free <= size <= 32768: fits u16.
        let n = bufs.len() as u16;
        self.num_free -= n;
        self.chain_len[usize::from(head)] = n;
        self.in_flight += 1;

        let slot = usize::from(self.avail_idx % self.layout.size);
        self.w16(self.layout.avail + 4 + 2 * slot, head);
        // Descriptors and the ring entry must be visible before the index
        // that hands them to the device.
        wmb();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.w16(self.layout.avail + 2, self.avail_idx);
        Ok(head)
    }

    /// Whether the device wants a doorbell for what was just added (it may
    /// set `VIRTQ_USED_F_NO_NOTIFY` while it is polling anyway).
    pub fn needs_notify(&self) -> bool {
        // Our avail.idx store must be ordered before the flags load, or we
        // could miss a device that just went to sleep.
        mb();
        self.r16(self.layout.used) & USED_F_NO_NOTIFY == 0
    }

    /// Asks the device to interrupt (`true`, the default) or not (`false`,
    /// `VIRTQ_AVAIL_F_NO_INTERRUPT`) when it returns buffers on this queue.
    /// Only a hint: the device may interrupt anyway. After turning
    /// interrupts back on, look at the used ring once more: what the device
    /// returned before it saw the flag raises no interrupt.
    pub fn set_interrupts(&mut self, on: bool) {
        self.w16(self.layout.avail, if on { 0 } else { AVAIL_F_NO_INTERRUPT });
        // The flag store must be ordered before the caller's next load of
        // used.idx, or a completion could be missed by both sides.
        mb();
    }

    /// Takes one finished request off the used ring: its head token and the
    /// number of bytes the device wrote into its device-writable buffers.
    /// Entries naming no chain in flight are logged, counted and skipped.
    pub fn pop_used(&mut self) -> Option<(u16, u32)> {
        loop {
            let used_idx = self.r16(self.layout.used + 2);
            if used_idx == self.last_used {
                return None;
            }
            let pending = used_idx.wrapping_sub(self.last_used);
            if pending > self.in_flight {
                // More completions than requests: the index is garbage.
                // Consuming it would walk entries the device never wrote.
                if self.bad_completions == 0 {
                    log::error!(
                        "virtqueue: device used.idx {} is {} ahead of {} but only {} in flight",
                        used_idx,
                        pending,
                        self.last_used,
                        self.in_flight
                    );
                }
                self.bad_completions += 1;
                return None;
            }
            // The index was read before the entries it covers.
            rmb();
            let slot = usize::from(self.last_used % self.layout.size);
            let entry = self.layout.used + 4 + 8 * slot;
            let id = self.r32(entry);
            let len = self.r32(entry + 4);
            self.last_used = self.last_used.wrapping_add(1);
            let chain = usize::try_from(id)
                .ok()
                .and_then(|i| self.chain_len.get(i).copied())
                .unwrap_or(0);
            if chain == 0 {
                self.bad_completions += 1;
                log::warn!("virtqueue: device returned id {id}, which is not in flight; skipped");
                continue;
            }
            // id < size here (it indexed chain_len).
            let head = id as u16;
            self.free_chain(head, chain);
            return Some((head, len));
        }
    }

    fn free_chain(&mut self, head: u16, len: u16) {
        let mut tail = head;
        for _ in 1..len {
            tail = self.next[usize::from(tail)];
        }
        // The chain's links are still the free-list links it was taken
        // with, so it goes back whole, in front of the free list.
        self.next[usize::from(tail)] = self.free_head;
        self.free_head = head;
        self.num_free += len;
        self.chain_len[usize::from(head)] = 0;
        self.in_flight -= 1;
    }

    fn write_desc(&self, idx: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let off = self.layout.desc + DESC_SIZE * usize::from(idx);
        self.w64(off, addr);
        self.w32(off + 8, len);
        self.w16(off + 12, flags);
        self.w16(off + 14, next);
    }

    // Volatile accessors. Every offset passed is computed from `layout`
    // for an index below `size`, so it lies inside `total` bytes, and is
    // naturally aligned (base is 16-byte aligned; see `new`).

    fn w16(&self, off: usize, v: u16) {
        debug_assert!(off + 2 <= self.layout.total);
        // SAFETY: in bounds and aligned (see above); the memory is ours.
        unsafe {
            self.base
                .as_ptr()
                .add(off)
                .cast::<u16>()
                .write_volatile(v.to_le())
        }
    }

    fn w32(&self, off: usize, v: u32) {
        debug_assert!(off + 4 <= self.layout.total);
        // SAFETY: in bounds and aligned (see above); the memory is ours.
        unsafe {
            self.base
                .as_ptr()
                .add(off)
                .cast::<u32>()
                .write_volatile(v.to_le())
        }
    }

    fn w64(&self, off: usize, v: u64) {
        debug_assert!(off + 8 <= self.layout.total);
        // SAFETY: in bounds and aligned (see above); the memory is ours.
        unsafe {
            self.base
                .as_ptr()
                .add(off)
                .cast::<u64>()
                .write_volatile(v.to_le())
        }
    }

    fn r16(&self, off: usize) -> u16 {
        debug_assert!(off + 2 <= self.layout.total);
        // SAFETY: in bounds and aligned (see above); the device may write
        // it concurrently, hence volatile.
        u16::from_le(unsafe { self.base.as_ptr().add(off).cast::<u16>().read_volatile() })
    }

    fn r32(&self, off: usize) -> u32 {
        debug_assert!(off + 4 <= self.layout.total);
        // SAFETY: as in r16.
        u32::from_le(unsafe { self.base.as_ptr().add(off).cast::<u32>().read_volatile() })
    }

    /// Where the ring lives in our address space (for the simulated
    /// device of [`crate::testing`]).
    #[cfg(any(test, feature = "test-util"))]
    pub fn base_ptr(&self) -> *mut u8 {
        self.base.as_ptr()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{ring, Desc, HostMem, SimDevice, FAKE_IOVA};

    #[test]
    fn layout_follows_the_spec() {
        let l = RingLayout::new(256).unwrap();
        assert_eq!(l.desc, 0);
        assert_eq!(l.avail, 4096);
        // avail: 2 + 2 + 2*256 + 2 = 518 bytes -> ends at 4614, used at 4616.
        assert_eq!(l.used, 4616);
        assert_eq!(l.total, 4616 + 6 + 8 * 256);
        let l = RingLayout::new(1).unwrap();
        assert_eq!((l.avail, l.used, l.total), (16, 24, 38));
        assert_eq!(RingLayout::new(0), None);
        assert_eq!(RingLayout::new(3), None);
        assert_eq!(RingLayout::new(32768).unwrap().size, 32768);
        assert_eq!(RingLayout::new(65535), None);
    }

    #[test]
    fn memory_too_small_or_misaligned_is_refused() {
        let l = RingLayout::new(8).unwrap();
        assert!(SplitRing::new(HostMem::new(l.total - 1), 8).is_err());
        assert!(SplitRing::new(HostMem::new(l.total), 6).is_err());
        assert_eq!(ring(8).layout(), l);
    }

    #[test]
    fn a_chain_reaches_the_device_and_comes_back() {
        let mut r = ring(8);
        let mut dev = SimDevice::new(&r);
        assert_eq!(r.free_count(), 8);
        let head = r
            .add(&[(0x1000, 16, false), (0x2000, 512, true), (0x3000, 1, true)])
            .unwrap();
        assert_eq!(r.free_count(), 5);
        assert_eq!(r.in_flight(), 1);
        let got = dev.fetch();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, head);
        assert_eq!(
            got[0].1,
            vec![
                Desc {
                    addr: 0x1000,
                    len: 16,
                    writable: false
                },
                Desc {
                    addr: 0x2000,
                    len: 512,
                    writable: true
                },
                Desc {
                    addr: 0x3000,
                    len: 1,
                    writable: true
                },
            ]
        );
        assert_eq!(r.pop_used(), None);
        dev.complete(u32::from(head), 513);
        assert_eq!(r.pop_used(), Some((head, 513)));
        assert_eq!(r.pop_used(), None);
        assert_eq!(r.free_count(), 8);
        assert_eq!(r.in_flight(), 0);
        assert_eq!(r.bad_completions(), 0);
        assert_eq!(r.desc_iova(), FAKE_IOVA);
        assert_eq!(r.avail_iova(), FAKE_IOVA + 128);
    }

    #[test]
    fn full_queue_fails_cleanly_and_recovers() {
        let mut r = ring(4);
        let mut dev = SimDevice::new(&r);
        let a = r.add(&[(1, 1, false), (2, 1, true)]).unwrap();
        let _b = r.add(&[(3, 1, false)]).unwrap();
        let e = r.add(&[(4, 1, false), (5, 1, true)]).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        // The failed add changed nothing: one descriptor is still usable.
        assert_eq!(r.free_count(), 1);
        assert_eq!(dev.fetch().len(), 2);
        let c = r.add(&[(6, 1, false)]).unwrap();
        assert_eq!(r.free_count(), 0);
        assert_eq!(
            r.add(&[(7, 1, false)]).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        dev.complete(u32::from(a), 0);
        assert_eq!(r.pop_used(), Some((a, 0)));
        assert_eq!(r.free_count(), 2);
        let d = r.add(&[(8, 1, false), (9, 1, true)]).unwrap();
        let fetched = dev.fetch();
        assert_eq!(fetched.iter().map(|f| f.0).collect::<Vec<_>>(), vec![c, d]);
        assert_eq!(fetched[1].1[1].addr, 9);
    }

    #[test]
    fn bad_chains_are_refused() {
        let mut r = ring(4);
        assert_eq!(r.add(&[]).unwrap_err().kind(), io::ErrorKind::InvalidInput);
        assert_eq!(
            r.add(&[(1, 0, false)]).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
        let five = [(1, 1, false); 5];
        assert_eq!(
            r.add(&five).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
        assert_eq!(r.free_count(), 4);
    }

    #[test]
    fn out_of_order_completion() {
        let mut r = ring(16);
        let mut dev = SimDevice::new(&r);
        // Five chains of 3 descriptors, each tagged by its address.
        let mut heads = Vec::new();
        for i in 0..5u64 {
            heads.push(
                r.add(&[
                    (i << 20, 16, false),
                    ((i << 20) + 16, 4096, true),
                    ((i << 20) + 8192, 1, true),
                ])
                .unwrap(),
            );
        }
        assert_eq!(r.free_count(), 1);
        let fetched = dev.fetch();
        assert_eq!(fetched.len(), 5);
        // Complete 3, 0, 4, 1, 2.
        for &k in &[3usize, 0, 4, 1, 2] {
            let (head, descs) = &fetched[k];
            assert_eq!(descs[0].addr, (k as u64) << 20);
            dev.complete(u32::from(*head), 4097);
        }
        let mut popped = Vec::new();
        while let Some((h, len)) = r.pop_used() {
            assert_eq!(len, 4097);
            popped.push(h);
        }
        assert_eq!(
            popped,
            vec![heads[3], heads[0], heads[4], heads[1], heads[2]]
        );
        assert_eq!(r.free_count(), 16);
        // The free list survived the shuffle: the whole ring is usable again
        // and every descriptor index appears exactly once.
        for i in 0..16u64 {
            r.add(&[(i, 1, false)]).unwrap();
        }
        let mut seen: Vec<u16> = dev.fetch().iter().map(|f| f.0).collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..16).collect::<Vec<u16>>());
    }

    /// Drives more than 65536 requests through a small ring so both 16-bit
    /// indices wrap several times, with varying chain lengths and
    /// completions out of order, checking every request's identity.
    #[test]
    fn indices_wrap_around() {
        let mut r = ring(8);
        let mut dev = SimDevice::new(&r);
        let mut next_id: u64 = 0;
        // head -> request id (from the address we gave it)
        let mut outstanding: std::collections::HashMap<u16, u64> = Default::default();
        let mut completed: u64 = 0;
        let mut rng: u32 = 0x1234_5678;
        let mut step = || {
            rng ^= rng << 13;
            rng ^= rng >> 17;
            rng ^= rng << 5;
            rng
        };
        let mut device_queue: Vec<(u16, Vec<Desc>)> = Vec::new();
        while completed < 200_000 {
            // Submit while there is room.
            loop {
                let chain = 1 + (step() % 3) as usize;
                let bufs: Vec<(u64, u32, bool)> = (0..chain)
                    .map(|k| ((next_id << 8) | k as u64, 1 + k as u32, k > 0))
                    .collect();
                match r.add(&bufs) {
                    Ok(h) => {
                        assert!(
                            outstanding.insert(h, next_id).is_none(),
                            "head {h} reused while in flight"
                        );
                        next_id += 1;
                    }
                    Err(e) => {
                        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
                        break;
                    }
                }
            }
            device_queue.extend(dev.fetch());
            // Complete a random non-empty subset, in random order.
            let n = 1 + (step() as usize % device_queue.len());
            for _ in 0..n {
                let k = step() as usize % device_queue.len();
                let (head, descs) = device_queue.swap_remove(k);
                let id = descs[0].addr >> 8;
                assert_eq!(outstanding.get(&head), Some(&id));
                for (j, d) in descs.iter().enumerate() {
                    assert_eq!(d.addr, (id << 8) | j as u64);
                    assert_eq!(d.writable, j > 0);
                }
                dev.complete(u32::from(head), descs.len() as u32);
            }
            while let Some((head, len)) = r.pop_used() {
                assert!(outstanding.remove(&head).is_some());
                assert!((1..=3).contains(&len));
                completed += 1;
            }
        }
        assert!(next_id > 3 * 65536, "indices wrapped several times");
        assert_eq!(r.bad_completions(), 0);
        assert_eq!(usize::from(r.in_flight()), outstanding.len());
    }

    #[test]
    fn misbehaving_device_is_contained() {
        let mut r = ring(4);
        let mut dev = SimDevice::new(&r);
        let a = r.add(&[(1, 1, false)]).unwrap();
        let b = r.add(&[(2, 1, false)]).unwrap();
        dev.fetch();
        // An id out of range, and a descriptor index that is free.
        dev.complete(99, 0);
        let free_idx = (0..4u16).find(|i| *i != a && *i != b).unwrap();
        dev.complete(u32::from(free_idx), 0);
        assert_eq!(r.pop_used(), None);
        assert_eq!(r.bad_completions(), 2);
        assert_eq!(r.in_flight(), 2);
        dev.complete(u32::from(b), 7);
        assert_eq!(r.pop_used(), Some((b, 7)));
        // b again: no longer in flight.
        dev.complete(u32::from(b), 7);
        assert_eq!(r.pop_used(), None);
        assert_eq!(r.bad_completions(), 3);
        // used.idx jumping far ahead of what is in flight is not consumed.
        let before = r.free_count();
        dev.force_used_idx(1000);
        assert_eq!(r.pop_used(), None);
        assert_eq!(r.bad_completions(), 4);
        assert_eq!(r.free_count(), before);
        assert_eq!(r.in_flight(), 1);
        // a is still completable once the device behaves again.
        dev.force_used_idx(4);
        dev.complete(u32::from(a), 1);
        assert_eq!(r.pop_used(), Some((a, 1)));
        assert_eq!(r.free_count(), 4);
    }

    #[test]
    fn interrupt_suppression_is_published() {
        let mut r = ring(4);
        let dev = SimDevice::new(&r);
        assert!(dev.interrupts_wanted());
        r.set_interrupts(false);
        assert!(!dev.interrupts_wanted());
        // Adding buffers leaves the flag alone.
        r.add(&[(1, 1, false)]).unwrap();
        assert!(!dev.interrupts_wanted());
        r.set_interrupts(true);
        assert!(dev.interrupts_wanted());
    }

    #[test]
    fn notification_suppression_is_honoured() {
        let mut r = ring(4);
        let dev = SimDevice::new(&r);
        r.add(&[(1, 1, false)]).unwrap();
        assert!(r.needs_notify());
        dev.set_no_notify(true);
        assert!(!r.needs_notify());
        dev.set_no_notify(false);
        assert!(r.needs_notify());
    }
}
