//! Interrupts as eventfds.
//!
//! VFIO signals each interrupt vector on an eventfd we hand it
//! ([`crate::vfio::Device::set_irq_eventfds`]); reading the eventfd gives
//! the number of interrupts since the last read (Redox's `/scheme/irq/N`
//! read). For MSI and MSI-X, VFIO programs the vector table itself; the
//! driver never touches it. INTx is level-triggered: VFIO masks the line
//! each time it fires, and [`Irq::ack`] unmasks it once the driver has
//! quieted the device.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::event::{EventfdFlags, PollFd, PollFlags};

use crate::vfio::Device;
use crate::{err, os_err};

/// Which kind of vector an [`Irq`] is; INTx keeps the device for unmasking.
#[derive(Debug)]
enum Kind {
    Msi,
    Intx(Arc<Device>),
}

/// An interrupt source: an eventfd that VFIO signals. Level INTx needs
/// `ack()` (unmask) after handling.
#[derive(Debug)]
pub struct Irq {
    fd: OwnedFd,
    kind: Kind,
}

/// A new eventfd suited for VFIO signalling (non-blocking, close-on-exec).
pub fn new_eventfd() -> io::Result<OwnedFd> {
    rustix::event::eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)
        .map_err(|e| os_err("eventfd", e))
}

impl Irq {
    /// An MSI or MSI-X vector signalled on `eventfd`.
    pub fn msi(eventfd: OwnedFd) -> Irq {
        Irq {
            fd: eventfd,
            kind: Kind::Msi,
        }
    }

    /// The INTx line of `device`, signalled on `eventfd`.
    pub fn intx(eventfd: OwnedFd, device: Arc<Device>) -> Irq {
        Irq {
            fd: eventfd,
            kind: Kind::Intx(device),
        }
    }

    /// Non-blocking: how many interrupts since the last call (0 if none).
    pub fn take(&self) -> io::Result<u64> {
        let mut buf = [0u8; 8];
        loop {
            match rustix::io::read(&self.fd, &mut buf) {
                Ok(8) => return Ok(u64::from_ne_bytes(buf)),
                Ok(n) => {
                    return Err(err(
                        io::ErrorKind::InvalidData,
                        format!("eventfd read returned {n} bytes"),
                    ))
                }
                Err(rustix::io::Errno::AGAIN) => return Ok(0),
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(os_err("eventfd read", e)),
            }
        }
    }

    /// Re-arms a level-triggered INTx line (VFIO unmask); no-op for
    /// MSI/MSI-X.
    pub fn ack(&self) -> io::Result<()> {
        match &self.kind {
            Kind::Msi => Ok(()),
            Kind::Intx(dev) => dev.unmask_intx(),
        }
    }

    /// True for an INTx line (needs [`Irq::ack`]).
    pub fn is_intx(&self) -> bool {
        matches!(self.kind, Kind::Intx(_))
    }

    /// Blocks until at least one interrupt arrives or `timeout` passes
    /// (for start-up paths before the event loop). Returns the count, 0 on
    /// timeout.
    pub fn wait(&self, timeout: Duration) -> io::Result<u64> {
        wait_any(std::slice::from_ref(self), timeout)
    }
}

/// Blocks until any of `irqs` fires or `timeout` passes (start-up paths
/// of a driver with several queue vectors). Takes every count and returns
/// their sum, 0 on timeout.
pub fn wait_any(irqs: &[Irq], timeout: Duration) -> io::Result<u64> {
    let deadline = Instant::now().checked_add(timeout);
    loop {
        let mut n = 0;
        for irq in irqs {
            n += irq.take()?;
        }
        if n > 0 || irqs.is_empty() {
            return Ok(n);
        }
        let left = match deadline {
            Some(d) => d.saturating_duration_since(Instant::now()),
            None => Duration::from_secs(3600),
        };
        if left.is_zero() {
            return Ok(0);
        }
        let ts = rustix::event::Timespec {
            tv_sec: left.as_secs().min(i64::MAX as u64) as i64,
            tv_nsec: left.subsec_nanos() as _,
        };
        let mut fds: Vec<PollFd<'_>> = irqs
            .iter()
            .map(|i| PollFd::new(&i.fd, PollFlags::IN))
            .collect();
        match rustix::event::poll(&mut fds, Some(&ts)) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(os_err("poll on IRQ eventfds", e)),
        }
    }
}

impl AsFd for Irq {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signal(irq: &Irq, n: u64) {
        rustix::io::write(irq, &n.to_ne_bytes()).unwrap();
    }

    #[test]
    fn take_counts_and_resets() {
        let irq = Irq::msi(new_eventfd().unwrap());
        assert_eq!(irq.take().unwrap(), 0);
        signal(&irq, 1);
        signal(&irq, 2);
        assert_eq!(irq.take().unwrap(), 3);
        assert_eq!(irq.take().unwrap(), 0);
        irq.ack().unwrap();
        assert!(!irq.is_intx());
    }

    #[test]
    fn wait_times_out_then_sees_a_signal_from_another_thread() {
        let irq = Arc::new(Irq::msi(new_eventfd().unwrap()));
        let t0 = Instant::now();
        assert_eq!(irq.wait(Duration::from_millis(50)).unwrap(), 0);
        assert!(t0.elapsed() >= Duration::from_millis(50));
        let other = irq.clone();
        let h = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(30));
            signal(&other, 1);
        });
        assert_eq!(irq.wait(Duration::from_secs(10)).unwrap(), 1);
        h.join().unwrap();
    }

    #[test]
    fn wait_any_takes_every_count() {
        let irqs = [
            Irq::msi(new_eventfd().unwrap()),
            Irq::msi(new_eventfd().unwrap()),
        ];
        assert_eq!(wait_any(&irqs, Duration::from_millis(20)).unwrap(), 0);
        signal(&irqs[1], 2);
        assert_eq!(wait_any(&irqs, Duration::from_secs(10)).unwrap(), 2);
        assert_eq!(irqs[1].take().unwrap(), 0);
    }
}
