//! Device registers (MMIO).
//!
//! A BAR is mapped once ([`MmioRegion`], usually from
//! [`crate::vfio::Device::map_region`]) and then read and written only through
//! volatile accesses, so the compiler never merges, splits, elides or
//! reorders them relative to each other.
//!
//! Two ways in:
//! - `read32(off)` / `write32(off, v)` and friends: checked on every call.
//!   A bad offset is a driver bug, not a reason to crash a daemon in the
//!   middle of serving requests: it is logged once, the read returns all
//!   ones (what a PCI read of a missing device returns) and the write is
//!   dropped.
//! - [`MmioRegion::block`]: a typed view of a register block, a
//!   `#[repr(C)]` struct whose fields are all [`Mmio<_>`] (or arrays of
//!   them). Bounds and alignment are checked once, when the view is made.
//!   `T` must consist only of `Mmio` fields: a plain field would be read
//!   with ordinary (non-volatile) loads.

use std::cell::{Cell, UnsafeCell};
use std::io;
use std::os::fd::AsFd;
use std::ptr::NonNull;

use rustix::mm::{MapFlags, ProtFlags};

use crate::{err, os_err, page_round_up};

/// One register of type `T` (`u8`, `u16`, `u32`, `u64`) inside mapped
/// device memory; volatile access only.
///
/// The `UnsafeCell` tells the compiler the value can change behind a shared
/// reference (the device writes it).
#[repr(transparent)]
pub struct Mmio<T> {
    value: UnsafeCell<T>,
}

impl<T: Copy> Mmio<T> {
    /// One volatile load.
    #[inline]
    pub fn read(&self) -> T {
        // SAFETY: `self` is a reference into a live mapping (made by
        // `MmioRegion::block`, which checked bounds and alignment), so the
        // pointer is valid and aligned for `T`.
        unsafe { self.value.get().read_volatile() }
    }

    /// One volatile store.
    #[inline]
    pub fn write(&mut self, v: T) {
        // SAFETY: as in `read`; `&mut self` gives exclusive access.
        unsafe { self.value.get().write_volatile(v) }
    }
}

/// Marker for the register widths the offset accessors accept.
trait Width: Copy {
    const ONES: Self;
}
impl Width for u8 {
    const ONES: u8 = u8::MAX;
}
impl Width for u16 {
    const ONES: u16 = u16::MAX;
}
impl Width for u32 {
    const ONES: u32 = u32::MAX;
}
impl Width for u64 {
    const ONES: u64 = u64::MAX;
}

/// A mapped BAR (or any MMIO window). Unmapped on drop.
///
/// `Send` (a driver may set up on one thread and serve on another) but not
/// `Sync`: register writes need `&mut self`, and the "logged once" flag is a
/// plain `Cell`.
pub struct MmioRegion {
    ptr: NonNull<u8>,
    /// Usable length (the region's size), checked by every accessor.
    len: usize,
    /// Length actually mapped (page-rounded), for `munmap`.
    map_len: usize,
    /// Set after the first bad access has been logged.
    complained: Cell<bool>,
}

// SAFETY: the region owns its mapping exclusively; moving that ownership to
// another thread is fine. Accesses from several threads at once are
// prevented by `MmioRegion` not being `Sync`.
unsafe impl Send for MmioRegion {}

impl MmioRegion {
    /// Maps `len` bytes of `fd` at `offset`, read-write and shared (what a
    /// VFIO region mmap needs).
    pub(crate) fn map_shared(fd: impl AsFd, offset: u64, len: usize) -> io::Result<MmioRegion> {
        let map_len = Self::map_len(len)?;
        // SAFETY: a fresh mapping at an address of the kernel's choosing
        // (null hint), so no existing memory is affected.
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                map_len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                fd,
                offset,
            )
        }
        .map_err(|e| os_err("mmap of device region", e))?;
        Self::from_mapping(ptr, len, map_len)
    }

    /// The whole pages a window of `len` bytes needs (never 0).
    fn map_len(len: usize) -> io::Result<usize> {
        if len == 0 {
            return Err(err(
                io::ErrorKind::InvalidInput,
                "cannot map an empty region",
            ));
        }
        page_round_up(len).ok_or_else(|| err(io::ErrorKind::InvalidInput, "region too large"))
    }

    /// An MMIO window backed by ordinary zeroed memory instead of a device,
    /// so register-level code can be unit-tested on the host.
    pub fn anonymous(len: usize) -> io::Result<MmioRegion> {
        let map_len = Self::map_len(len)?;
        // SAFETY: a fresh private anonymous mapping; nothing else is touched.
        let ptr = unsafe {
            rustix::mm::mmap_anonymous(
                std::ptr::null_mut(),
                map_len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::PRIVATE,
            )
        }
        .map_err(|e| os_err("mmap", e))?;
        Self::from_mapping(ptr, len, map_len)
    }

    fn from_mapping(
        ptr: *mut std::ffi::c_void,
        len: usize,
        map_len: usize,
    ) -> io::Result<MmioRegion> {
        let ptr = NonNull::new(ptr.cast::<u8>())
            .ok_or_else(|| err(io::ErrorKind::Other, "mmap returned a null pointer"))?;
        Ok(MmioRegion {
            ptr,
            len,
            map_len,
            complained: Cell::new(false),
        })
    }

    /// The region's size in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: an empty region cannot be mapped.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The start of the mapping (for diagnostics and for code that must
    /// hand the address on; prefer the checked accessors).
    pub fn as_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }

    /// Checks that `size` bytes at `offset` lie inside the region and that
    /// the address is aligned to `align`.
    fn check(&self, offset: usize, size: usize, align: usize) -> io::Result<()> {
        let end = offset.checked_add(size);
        if end.is_none_or(|end| end > self.len) {
            return Err(err(
                io::ErrorKind::InvalidInput,
                format!(
                    "MMIO access of {size} bytes at {offset:#x} is outside the {:#x}-byte region",
                    self.len
                ),
            ));
        }
        if !(self.ptr.as_ptr() as usize)
            .wrapping_add(offset)
            .is_multiple_of(align)
        {
            return Err(err(
                io::ErrorKind::InvalidInput,
                format!("MMIO access at {offset:#x} is not {align}-byte aligned"),
            ));
        }
        Ok(())
    }

    /// Bounds- and alignment-checked typed view of a register block at
    /// `offset` (`T` is a `#[repr(C)]` struct of `Mmio<_>` fields).
    pub fn block<T>(&self, offset: usize) -> io::Result<&T> {
        self.check(offset, size_of::<T>(), align_of::<T>())?;
        // SAFETY: `check` proved `offset..offset + size_of::<T>()` lies in
        // the live mapping and the address is aligned for `T`; the
        // reference borrows `self`, so it cannot outlive the mapping. Every
        // bit pattern is a valid register block (fields are `Mmio` of
        // integers).
        Ok(unsafe { &*self.ptr.as_ptr().add(offset).cast::<T>() })
    }

    /// Mutable variant of [`MmioRegion::block`].
    pub fn block_mut<T>(&mut self, offset: usize) -> io::Result<&mut T> {
        self.check(offset, size_of::<T>(), align_of::<T>())?;
        // SAFETY: as in `block`; `&mut self` makes the view exclusive.
        Ok(unsafe { &mut *self.ptr.as_ptr().add(offset).cast::<T>() })
    }

    fn complain(&self, e: &io::Error) {
        if !self.complained.replace(true) {
            log::error!("{e} (further bad MMIO accesses are not logged)");
        }
    }

    fn read<T: Width>(&self, off: usize) -> T {
        match self.check(off, size_of::<T>(), size_of::<T>()) {
            // SAFETY: checked in bounds and naturally aligned.
            Ok(()) => unsafe { self.ptr.as_ptr().add(off).cast::<T>().read_volatile() },
            Err(e) => {
                self.complain(&e);
                T::ONES
            }
        }
    }

    fn write<T: Width>(&mut self, off: usize, v: T) {
        match self.check(off, size_of::<T>(), size_of::<T>()) {
            // SAFETY: checked in bounds and naturally aligned; `&mut self`.
            Ok(()) => unsafe { self.ptr.as_ptr().add(off).cast::<T>().write_volatile(v) },
            Err(e) => self.complain(&e),
        }
    }

    pub fn read8(&self, off: usize) -> u8 {
        self.read(off)
    }
    pub fn read16(&self, off: usize) -> u16 {
        self.read(off)
    }
    pub fn read32(&self, off: usize) -> u32 {
        self.read(off)
    }
    pub fn read64(&self, off: usize) -> u64 {
        self.read(off)
    }
    pub fn write8(&mut self, off: usize, v: u8) {
        self.write(off, v)
    }
    pub fn write16(&mut self, off: usize, v: u16) {
        self.write(off, v)
    }
    pub fn write32(&mut self, off: usize, v: u32) {
        self.write(off, v)
    }
    pub fn write64(&mut self, off: usize, v: u64) {
        self.write(off, v)
    }
}

impl Drop for MmioRegion {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`map_len` describe the mapping this value created
        // and owns; all borrows of it ended before drop.
        if let Err(e) = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.map_len) } {
            log::error!("munmap of MMIO region failed: {e}");
        }
    }
}

impl std::fmt::Debug for MmioRegion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmioRegion")
            .field("ptr", &self.ptr)
            .field("len", &self.len)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[repr(C)]
    struct Regs {
        a: Mmio<u32>,
        b: Mmio<u16>,
        c: Mmio<u8>,
        d: Mmio<u8>,
        e: Mmio<u64>,
    }

    #[test]
    fn offset_accessors_roundtrip_little_endian() {
        let mut r = MmioRegion::anonymous(64).unwrap();
        r.write32(0, 0x1122_3344);
        assert_eq!(r.read8(0), 0x44);
        assert_eq!(r.read16(2), 0x1122);
        r.write64(8, 0xdead_beef_0000_0001);
        assert_eq!(r.read32(8), 1);
        assert_eq!(r.read32(12), 0xdead_beef);
        r.write8(63, 7);
        assert_eq!(r.read8(63), 7);
    }

    #[test]
    fn bad_offsets_read_ones_and_drop_writes() {
        let mut r = MmioRegion::anonymous(16).unwrap();
        assert_eq!(r.read32(16), u32::MAX, "past the end");
        assert_eq!(r.read32(14), u32::MAX, "straddles the end");
        assert_eq!(r.read32(2), u32::MAX, "misaligned");
        assert_eq!(r.read64(usize::MAX - 3), u64::MAX, "offset overflow");
        r.write32(2, 0xffff_ffff); // misaligned: dropped
        r.write8(16, 0xff); // out of range: dropped
        for off in 0..16 {
            assert_eq!(r.read8(off), 0, "byte {off} changed by a dropped write");
        }
    }

    #[test]
    fn block_views_are_checked_once() {
        let mut r = MmioRegion::anonymous(4096).unwrap();
        assert_eq!(size_of::<Regs>(), 16);
        {
            let regs: &mut Regs = r.block_mut(0x100).unwrap();
            regs.a.write(0xaabb_ccdd);
            regs.b.write(0x1234);
            regs.c.write(5);
            regs.d.write(6);
            regs.e.write(u64::MAX - 1);
        }
        assert_eq!(r.read32(0x100), 0xaabb_ccdd);
        assert_eq!(r.read16(0x104), 0x1234);
        assert_eq!(r.read8(0x106), 5);
        assert_eq!(r.read8(0x107), 6);
        assert_eq!(r.read64(0x108), u64::MAX - 1);
        let regs: &Regs = r.block(0x100).unwrap();
        assert_eq!(regs.e.read(), u64::MAX - 1);

        assert!(r.block::<Regs>(4096 - 8).is_err(), "runs past the end");
        assert!(r.block::<Regs>(4).is_err(), "misaligned for u64");
        assert!(r.block::<Regs>(4096 - 16).is_ok());
        assert!(r.block::<Regs>(usize::MAX).is_err());
    }

    #[test]
    fn len_is_the_requested_size_not_the_page() {
        let r = MmioRegion::anonymous(100).unwrap();
        assert_eq!(r.len(), 100);
        assert_eq!(r.read32(100), u32::MAX);
        assert_eq!(r.read32(96), 0);
    }
}
