//! Memory the device may reach, in the function's own IOMMU domain.
//!
//! A [`DmaSpace`] owns the function's VFIO container, i.e. its IOMMU
//! address space, and hands out IO virtual addresses (IOVAs). A [`Dma<T>`]
//! is page-aligned, zero-filled anonymous memory mapped into that space
//! with `VFIO_IOMMU_MAP_DMA`, which pins it (it counts against the
//! process's RLIMIT_MEMLOCK; init raises that limit for drivers). The device
//! sees it at [`Dma::iova`] and nowhere else: everything the driver did not
//! map stays unreachable.
//!
//! IOVA allocation: the usable ranges come from the kernel
//! ([`Container::iova_ranges`]); on x86 they have a hole at the MSI window
//! 0xfee00000..=0xfeefffff, which we also cut out ourselves in case a
//! kernel does not report it. Page 0 is never handed out, so a zero IOVA in
//! a descriptor is always a bug. Within the ranges a bump pointer moves up;
//! freed blocks go to a sorted free list (adjacent blocks merge) that is
//! searched first-fit before the bump pointer moves. Drivers allocate a few
//! long-lived rings and buffer pools, so this stays small.
//!
//! Memory the device writes is read through `ptr::read_volatile` (or after
//! [`crate::rmb`]), see [`crate::barrier`].

use std::io;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;
use std::sync::{Arc, Mutex};

use rustix::mm::{MapFlags, ProtFlags};

use crate::vfio::Container;
use crate::{err, os_err, page_round_up, PAGE_SIZE};

/// The x86 interrupt (MSI) address window; DMA there would be an interrupt.
const MSI_WINDOW: (u64, u64) = (0xfee0_0000, 0xfeef_ffff);

/// Used only if the kernel reports no IOVA ranges (very old kernels): the
/// low 4 GiB below the MSI window, which every x86 IOMMU can translate.
const FALLBACK_RANGES: [(u64, u64); 1] = [(0, 0xfedf_ffff)];

/// The IOVA allocator described in the module docs. Pure bookkeeping, no
/// syscalls, so it is unit-tested on its own.
#[derive(Debug)]
pub(crate) struct IovaAllocator {
    /// Usable ranges as half-open `[start, end)`, page aligned, sorted.
    ranges: Vec<(u64, u64)>,
    /// Index into `ranges` of the bump pointer.
    range: usize,
    /// Next never-used IOVA in `ranges[range]`.
    next: u64,
    /// Freed blocks `(iova, len)`, sorted by iova, merged when adjacent.
    free: Vec<(u64, u64)>,
    align: u64,
}

impl IovaAllocator {
    /// `ranges` are inclusive `[start, end]` as the kernel reports them.
    pub(crate) fn new(ranges: &[(u64, u64)], align: u64) -> IovaAllocator {
        let align = align.max(PAGE_SIZE as u64);
        let mut usable = Vec::new();
        for &(start, end) in ranges {
            // Inclusive -> half-open, saturating at the top of the space.
            let end_excl = end.saturating_add(1);
            // Never page 0; cut out the MSI window.
            let start = start.max(align);
            let pieces = [
                (start, end_excl.min(MSI_WINDOW.0)),
                (start.max(MSI_WINDOW.1 + 1), end_excl),
            ];
            for (s, e) in pieces {
                let s = s.checked_next_multiple_of(align).unwrap_or(u64::MAX);
                let e = e / align * align;
                if s < e {
                    usable.push((s, e));
                }
            }
        }
        usable.sort_unstable();
        usable.dedup();
        let next = usable.first().map(|r| r.0).unwrap_or(0);
        IovaAllocator {
            ranges: usable,
            range: 0,
            next,
            free: Vec::new(),
            align,
        }
    }

    /// Allocates `len` bytes (rounded up to the alignment).
    pub(crate) fn alloc(&mut self, len: u64) -> Option<u64> {
        let len = len.max(1).checked_next_multiple_of(self.align)?;
        // First fit in the free list.
        if let Some(i) = self.free.iter().position(|&(_, l)| l >= len) {
            let (iova, l) = self.free[i];
            if l == len {
                self.free.remove(i);
            } else {
                self.free[i] = (iova + len, l - len);
            }
            return Some(iova);
        }
        // Bump, moving to the next range when this one is too small. The
        // skipped tail of a range is put on the free list, not lost.
        while let Some(&(_, end)) = self.ranges.get(self.range) {
            if end - self.next >= len {
                let iova = self.next;
                self.next += len;
                return Some(iova);
            }
            if self.next < end {
                let tail = (self.next, end - self.next);
                self.next = end;
                self.insert_free(tail);
            }
            self.range += 1;
            if let Some(&(start, _)) = self.ranges.get(self.range) {
                self.next = start;
            }
        }
        None
    }

    /// Whether `iova` lies in a block handed out and not freed.
    pub(crate) fn in_use(&self, iova: u64) -> bool {
        let handed = self.ranges.iter().enumerate().any(|(i, &(start, end))| {
            (start..end).contains(&iova)
                && (i < self.range || (i == self.range && iova < self.next))
        });
        handed && !self.free.iter().any(|&(a, l)| (a..a + l).contains(&iova))
    }

    /// Returns a block from [`IovaAllocator::alloc`].
    pub(crate) fn free(&mut self, iova: u64, len: u64) {
        let Some(len) = len.max(1).checked_next_multiple_of(self.align) else {
            return;
        };
        self.insert_free((iova, len));
    }

    fn insert_free(&mut self, (iova, len): (u64, u64)) {
        let i = self.free.partition_point(|&(a, _)| a < iova);
        self.free.insert(i, (iova, len));
        // Merge with the following block, then with the preceding one.
        if i + 1 < self.free.len() && self.free[i].0 + self.free[i].1 == self.free[i + 1].0 {
            self.free[i].1 += self.free[i + 1].1;
            self.free.remove(i + 1);
        }
        if i > 0 && self.free[i - 1].0 + self.free[i - 1].1 == self.free[i].0 {
            self.free[i - 1].1 += self.free[i].1;
            self.free.remove(i);
        }
    }
}

/// One function's IOMMU address space: the VFIO container and the IOVA
/// allocator. Shared (`Arc`) by every [`Dma`] buffer mapped in it, so it
/// outlives them.
#[derive(Debug)]
pub struct DmaSpace {
    container: Container,
    iovas: Mutex<IovaAllocator>,
}

impl DmaSpace {
    /// Takes the function's container (IOMMU already set by pcid) and reads
    /// its usable IOVA ranges and page sizes.
    pub fn new(container: Container) -> io::Result<Arc<DmaSpace>> {
        let ranges = match container.iova_ranges() {
            Ok(r) if !r.is_empty() => r,
            Ok(_) => {
                log::warn!("IOMMU reports no usable IOVA range; using the low 4 GiB");
                FALLBACK_RANGES.to_vec()
            }
            Err(e) => {
                log::warn!("cannot read IOVA ranges ({e}); using the low 4 GiB");
                FALLBACK_RANGES.to_vec()
            }
        };
        // The smallest IOMMU page the host page size can use.
        let align = match container.iova_pgsizes() {
            Ok(sizes) => {
                let usable = sizes & !(PAGE_SIZE as u64 - 1);
                if usable == 0 {
                    return Err(err(
                        io::ErrorKind::Unsupported,
                        format!("IOMMU page sizes {sizes:#x} include none >= 4 KiB"),
                    ));
                }
                1u64 << usable.trailing_zeros()
            }
            Err(_) => PAGE_SIZE as u64,
        };
        let iovas = IovaAllocator::new(&ranges, align);
        log::debug!(
            "DMA space: IOVA ranges {:x?}, alignment {align:#x}",
            iovas.ranges
        );
        let space = Arc::new(DmaSpace {
            container,
            iovas: Mutex::new(iovas),
        });
        crate::fault::dma_space_opened(&space);
        Ok(space)
    }

    /// Takes `len` bytes of IOVA space out of use without mapping anything
    /// there (fault injection's stale address).
    pub(crate) fn reserve_iova(&self, len: u64) -> Option<u64> {
        self.lock().alloc(len)
    }

    /// Whether `iova` is in use in this space (fault injection: an address
    /// chosen to be foreign must not be one of ours).
    pub(crate) fn is_allocated(&self, iova: u64) -> bool {
        self.lock().in_use(iova)
    }

    /// The container (for callers that map memory themselves).
    pub fn container(&self) -> &Container {
        &self.container
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, IovaAllocator> {
        // The allocator's state stays consistent even if a holder panicked
        // (every method finishes its update before it could), so a poisoned
        // lock is simply taken over.
        self.iovas.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Maps fresh zeroed memory of `len` bytes; returns the mapping, its
    /// page-rounded length and its IOVA.
    fn map(&self, len: usize) -> io::Result<(NonNull<u8>, usize, u64)> {
        let map_len = page_round_up(len.max(1))
            .ok_or_else(|| err(io::ErrorKind::InvalidInput, "DMA buffer too large"))?;
        // SAFETY: a fresh private anonymous mapping at an address the kernel
        // picks; it is zero-filled and page aligned.
        let ptr = unsafe {
            rustix::mm::mmap_anonymous(
                std::ptr::null_mut(),
                map_len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::PRIVATE,
            )
        }
        .map_err(|e| os_err(&format!("mmap of {map_len} bytes for DMA"), e))?;
        let unmap = |ptr: *mut std::ffi::c_void| {
            // SAFETY: the mapping made just above, not yet shared.
            if let Err(e) = unsafe { rustix::mm::munmap(ptr, map_len) } {
                log::error!("munmap of DMA memory failed: {e}");
            }
        };
        let Some(nn) = NonNull::new(ptr.cast::<u8>()) else {
            return Err(err(io::ErrorKind::Other, "mmap returned null"));
        };
        let Some(iova) = self.lock().alloc(map_len as u64) else {
            unmap(ptr);
            return Err(err(
                io::ErrorKind::OutOfMemory,
                format!("no free IOVA space for {map_len} bytes"),
            ));
        };
        if let Err(e) = self.container.map_dma(ptr as usize, iova, map_len, true) {
            self.lock().free(iova, map_len as u64);
            unmap(ptr);
            return Err(e);
        }
        Ok((nn, map_len, iova))
    }

    /// Undoes [`DmaSpace::map`]. Errors are logged: this runs in `Drop`.
    fn unmap(&self, ptr: NonNull<u8>, map_len: usize, iova: u64) {
        match self.container.unmap_dma(iova, map_len) {
            Ok(()) => self.lock().free(iova, map_len as u64),
            // The IOVA may still be mapped: never hand it out again.
            Err(e) => log::error!("DMA unmap failed, leaking IOVA {iova:#x}: {e}"),
        }
        // SAFETY: the mapping created in `map`, owned by the `Dma` being
        // dropped; the device can no longer reach it (or, if unmap failed,
        // the pinned pages stay pinned by the IOMMU mapping, not by us).
        if let Err(e) = unsafe { rustix::mm::munmap(ptr.as_ptr().cast(), map_len) } {
            log::error!("munmap of DMA memory failed: {e}");
        }
    }
}

/// Page-aligned, zeroed, locked host memory mapped for the device; unmapped
/// and freed on drop.
pub struct Dma<T: ?Sized> {
    ptr: NonNull<T>,
    map_len: usize,
    iova: u64,
    space: Arc<DmaSpace>,
    _owns: PhantomData<T>,
}

// SAFETY: `Dma<T>` owns its memory like a `Box<T>` does; the shared
// `DmaSpace` is itself Send + Sync.
unsafe impl<T: ?Sized + Send> Send for Dma<T> {}
// SAFETY: shared access only hands out `&T`.
unsafe impl<T: ?Sized + Sync> Sync for Dma<T> {}

impl<T: zerocopy::FromZeros> Dma<T> {
    /// One zeroed `T` in DMA memory.
    pub fn zeroed(space: &Arc<DmaSpace>) -> io::Result<Dma<T>> {
        if align_of::<T>() > PAGE_SIZE {
            return Err(err(io::ErrorKind::InvalidInput, "alignment above a page"));
        }
        let (ptr, map_len, iova) = space.map(size_of::<T>())?;
        Ok(Dma {
            // Zero bytes are a valid T (FromZeros) and the mapping is page
            // aligned, so at least as aligned as T.
            ptr: ptr.cast::<T>(),
            map_len,
            iova,
            space: space.clone(),
            _owns: PhantomData,
        })
    }
}

impl<T: zerocopy::FromZeros> Dma<[T]> {
    /// `len` zeroed `T`s in DMA memory.
    pub fn zeroed_slice(space: &Arc<DmaSpace>, len: usize) -> io::Result<Dma<[T]>> {
        if align_of::<T>() > PAGE_SIZE {
            return Err(err(io::ErrorKind::InvalidInput, "alignment above a page"));
        }
        let bytes = size_of::<T>()
            .checked_mul(len)
            .ok_or_else(|| err(io::ErrorKind::InvalidInput, "DMA buffer too large"))?;
        let (ptr, map_len, iova) = space.map(bytes)?;
        Ok(Dma {
            ptr: NonNull::slice_from_raw_parts(ptr.cast::<T>(), len),
            map_len,
            iova,
            space: space.clone(),
            _owns: PhantomData,
        })
    }
}

impl<T: ?Sized> Dma<T> {
    /// Where the device sees this memory.
    pub fn iova(&self) -> u64 {
        self.iova
    }

    /// Bytes mapped (a whole number of pages).
    pub fn mapped_len(&self) -> usize {
        self.map_len
    }

    pub fn as_ptr(&self) -> *const T {
        self.ptr.as_ptr()
    }

    pub fn as_mut_ptr(&mut self) -> *mut T {
        self.ptr.as_ptr()
    }
}

impl<T: ?Sized> Deref for Dma<T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the mapping is live for as long as `self`, initialised
        // (zeroed, valid for T by FromZeros) and aligned.
        unsafe { self.ptr.as_ref() }
    }
}

impl<T: ?Sized> DerefMut for Dma<T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`; `&mut self` makes the borrow exclusive.
        unsafe { self.ptr.as_mut() }
    }
}

impl<T: ?Sized> Drop for Dma<T> {
    fn drop(&mut self) {
        self.space
            .unmap(self.ptr.cast::<u8>(), self.map_len, self.iova);
    }
}

/// Memory a device reads or writes at `iova()`: a driver's bounce, receive
/// or transmit buffer. `Dma<[u8]>` in a daemon; drivers' host tests give a
/// heap buffer at a made-up IOVA (`virtio_core::testing::TestBuf`), so the
/// ring and queue logic runs without a device.
pub trait Buffer {
    fn iova(&self) -> u64;
    fn bytes(&mut self) -> &mut [u8];
}

impl Buffer for Dma<[u8]> {
    fn iova(&self) -> u64 {
        Dma::iova(self)
    }
    fn bytes(&mut self) -> &mut [u8] {
        self
    }
}

impl<T: ?Sized> std::fmt::Debug for Dma<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dma")
            .field("iova", &format_args!("{:#x}", self.iova))
            .field("len", &self.map_len)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: u64 = PAGE_SIZE as u64;

    /// Ranges as Linux reports them for an Intel IOMMU with 39-bit
    /// addresses: everything but the MSI window.
    fn intel() -> IovaAllocator {
        IovaAllocator::new(&[(0, 0xfedf_ffff), (0xfef0_0000, 0x7f_ffff_ffff)], P)
    }

    #[test]
    fn never_zero_never_in_msi_window() {
        let mut a = intel();
        let first = a.alloc(1).unwrap();
        assert_eq!(first, P, "page 0 is skipped");
        // Walk through the whole low range in 1 GiB steps; no allocation
        // may touch the MSI window.
        let mut last = first;
        for _ in 0..8 {
            let Some(x) = a.alloc(1 << 30) else { break };
            assert!(x + (1 << 30) <= MSI_WINDOW.0 || x > MSI_WINDOW.1, "{x:#x}");
            last = x;
        }
        assert!(last > MSI_WINDOW.1, "allocation continued above the window");
    }

    #[test]
    fn msi_window_is_cut_even_if_not_reported() {
        let mut a = IovaAllocator::new(&[(0, 0xffff_ffff)], P);
        assert_eq!(
            a.ranges,
            vec![(P, 0xfee0_0000), (0xfef0_0000, 0x1_0000_0000)]
        );
        a.next = 0xfee0_0000 - P;
        assert_eq!(a.alloc(P), Some(0xfee0_0000 - P));
        // The next block does not fit below the window: it lands above.
        assert_eq!(a.alloc(2 * P), Some(0xfef0_0000));
    }

    #[test]
    fn sizes_round_up_to_pages_and_blocks_do_not_overlap() {
        let mut a = intel();
        let x = a.alloc(100).unwrap();
        let y = a.alloc(P + 1).unwrap();
        let z = a.alloc(P).unwrap();
        assert_eq!(y, x + P);
        assert_eq!(z, y + 2 * P);
    }

    #[test]
    fn freed_blocks_are_reused_first_fit_and_merged() {
        let mut a = intel();
        let b: Vec<u64> = (0..4).map(|_| a.alloc(P).unwrap()).collect();
        let top = a.alloc(P).unwrap();
        a.free(b[1], P);
        a.free(b[2], P);
        assert_eq!(a.free, vec![(b[1], 2 * P)], "adjacent blocks merged");
        // A two-page block fits exactly into the merged hole.
        assert_eq!(a.alloc(2 * P), Some(b[1]));
        assert!(a.free.is_empty());
        a.free(b[0], P);
        a.free(b[3], P);
        // Too big for either hole: bump.
        assert_eq!(a.alloc(2 * P), Some(top + P));
        // One page comes from the first hole.
        assert_eq!(a.alloc(P), Some(b[0]));
        a.free(b[0], P);
        a.free(b[1], 2 * P);
        assert_eq!(a.free, vec![(b[0], 4 * P)], "merged across both sides");
    }

    #[test]
    fn in_use_is_what_was_handed_out_and_not_freed() {
        let mut a = intel();
        assert!(!a.in_use(P), "nothing handed out yet");
        let x = a.alloc(2 * P).unwrap();
        let y = a.alloc(P).unwrap();
        assert!(a.in_use(x) && a.in_use(x + P + 5) && a.in_use(y));
        assert!(!a.in_use(y + P), "past the bump pointer");
        assert!(!a.in_use(0), "page 0 is never handed out");
        a.free(x, 2 * P);
        assert!(!a.in_use(x + P) && a.in_use(y));
        assert!(!a.in_use(0x1_0000_0000), "another range, not reached yet");
    }

    #[test]
    fn exhaustion_is_reported_and_tails_are_kept() {
        let mut a = IovaAllocator::new(&[(0, 4 * P - 1), (8 * P, 10 * P - 1)], P);
        // usable: [P, 4P) and [8P, 10P)
        assert_eq!(a.alloc(2 * P), Some(P));
        // 3 pages fit nowhere; the 1-page tail of the first range must
        // not be lost when the bump pointer moves on.
        assert_eq!(a.alloc(3 * P), None);
        assert_eq!(a.alloc(P), Some(3 * P));
        assert_eq!(a.alloc(2 * P), Some(8 * P));
        assert_eq!(a.alloc(P), None);
    }

    #[test]
    fn larger_iommu_pages_align_everything() {
        let mut a = IovaAllocator::new(&[(0, 0xfedf_ffff)], 0x20_0000);
        assert_eq!(a.alloc(1), Some(0x20_0000));
        assert_eq!(a.alloc(1), Some(0x40_0000));
    }

    #[test]
    fn empty_ranges_allocate_nothing() {
        let mut a = IovaAllocator::new(&[(0, 0xfff)], P);
        assert_eq!(a.alloc(1), None);
    }
}
