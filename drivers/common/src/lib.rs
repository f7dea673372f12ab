//! The driver kit: everything a userspace driver daemon needs from the
//! kernel, in one place.
//!
//! A driver is handed already-open VFIO fds by pcid (through init); this crate
//! wraps them ([`vfio`]), maps its registers ([`io`]), gives it memory the
//! device may reach ([`dma`]), turns interrupts into pollable fds ([`irq`],
//! [`event`]), locks the process down ([`sandbox`]) and runs its one event
//! loop over the scheme and the interrupts ([`driver`]). The Linux
//! analogue of each Redox kernel service is described in
//! `docs/architecture.md`.
//!
//! Ordering between CPU writes to DMA memory and device register writes is
//! the caller's job; [`barrier`] states the rule.

pub mod barrier;
pub mod dma;
pub mod driver;
pub mod event;
pub mod fault;
pub mod io;
pub mod irq;
pub mod port;
pub mod probe;
pub mod sandbox;
pub mod throttle;
pub mod vfio;

pub use barrier::{mb, rmb, wmb};
pub use dma::{Dma, DmaSpace};
pub use driver::DriverLoop;
pub use event::EventLoop;
pub use io::{Mmio, MmioRegion};
pub use irq::Irq;
pub use throttle::Throttle;

/// Polls `done` every 100 us until it holds or `timeout` passes; whether
/// it held. For device handshakes that have no interrupt (resets, engine
/// stops), never for I/O.
pub fn poll_until(timeout: std::time::Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_micros(100));
    }
}

/// The page size every mapping in this crate is rounded to. x86-64 Linux
/// uses 4 KiB base pages, and the VFIO type1 IOMMU supports them.
pub const PAGE_SIZE: usize = 4096;

/// Rounds `n` up to a whole number of pages (`None` on overflow).
pub(crate) fn page_round_up(n: usize) -> Option<usize> {
    n.checked_add(PAGE_SIZE - 1).map(|v| v & !(PAGE_SIZE - 1))
}

/// An `io::Error` with our own message and a fitting kind.
pub(crate) fn err(kind: std::io::ErrorKind, msg: impl Into<String>) -> std::io::Error {
    std::io::Error::new(kind, msg.into())
}

/// Adds context to an OS error while keeping its kind (and so its errno
/// meaning for callers that match on kinds).
pub(crate) fn os_err(what: &str, e: rustix::io::Errno) -> std::io::Error {
    let io = std::io::Error::from(e);
    std::io::Error::new(io.kind(), format!("{what}: {io}"))
}
