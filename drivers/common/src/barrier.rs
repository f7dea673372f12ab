//! Memory barriers between CPU accesses to DMA memory and device registers.
//!
//! The rule, for every driver:
//! - **Descriptors before doorbell.** Fill descriptors and buffers in DMA
//!   memory, then [`wmb()`], then write the doorbell / tail register. The
//!   device must never see the doorbell before the data it announces.
//! - **Index before entries.** Read an index (or status/ownership bit) the
//!   device wrote, then [`rmb()`], then read the entries it covers. Otherwise
//!   the CPU may use entry contents loaded before the device finished them.
//! - [`mb()`] orders everything against everything: use it when a write must
//!   be visible before a following read (e.g. re-enabling notifications,
//!   then re-checking the ring for work that raced in).
//!
//! On x86-64 the hardware already gives most of this: MMIO is uncached (UC)
//! and DMA memory is coherent write-back, stores are not reordered with older
//! stores, loads not with older loads. What would break it is the compiler,
//! which may move ordinary loads/stores of DMA memory across the volatile
//! register access. The fences below stop the compiler and also issue the
//! real instruction (`sfence`/`lfence`/`mfence`), which costs little next to
//! an MMIO access and keeps the code right for non-temporal stores and for
//! readers who port it.

use std::sync::atomic::{fence, Ordering};

/// Write barrier: all earlier stores are visible (to the device) before any
/// later store, in particular a doorbell register write.
#[inline]
pub fn wmb() {
    fence(Ordering::Release);
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `sfence` is part of SSE, which every x86-64 CPU has; it has no
    // operands and no effect besides ordering stores.
    unsafe {
        std::arch::x86_64::_mm_sfence()
    };
}

/// Read barrier: no later load (of DMA memory) is performed before an
/// earlier load (of the index that covers it).
#[inline]
pub fn rmb() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `lfence` is part of SSE2, baseline on x86-64; it only orders
    // loads.
    unsafe {
        std::arch::x86_64::_mm_lfence()
    };
    fence(Ordering::Acquire);
}

/// Full barrier: every earlier load and store completes before any later
/// one (`mfence` on x86-64).
#[inline]
pub fn mb() {
    fence(Ordering::SeqCst);
}
