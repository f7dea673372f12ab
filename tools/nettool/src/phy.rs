//! smoltcp's `phy::Device` over a frame file descriptor: one `read(2)` is
//! one received frame, one `write(2)` sends one frame. That is the
//! `network.*` scheme's `frames` file, and also one end of a
//! `SOCK_SEQPACKET` pair (the host tests' wire).
//!
//! The fd is non-blocking: `receive` returns `None` on `EAGAIN` and the
//! caller sleeps in [`FrameDevice::wait`] (`poll(2)` for `POLLIN`) until a
//! frame or its deadline comes. A write that finds the TX ring full
//! (`EAGAIN`) waits for `POLLOUT` up to [`TX_WAIT`], then drops the frame
//! (TCP retransmits; a lost ping counts as lost), so a wedged device can
//! never hang the tool.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use log::{debug, warn};
use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;
use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

use crate::MAX_FRAME;

/// How long one frame may wait for room in a full TX ring before it is
/// dropped.
pub const TX_WAIT: Duration = Duration::from_secs(1);
/// Read buffer: larger than any frame, so a frame is never truncated here
/// (the scheme would count a truncation).
const RX_BUF: usize = 2048;

/// Frame counters, for `-v` output and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FrameStats {
    pub rx_frames: u64,
    pub rx_bytes: u64,
    pub tx_frames: u64,
    pub tx_bytes: u64,
    /// Frames not sent: the TX ring stayed full for [`TX_WAIT`], or the
    /// handle refused the frame (`EINVAL`).
    pub tx_dropped: u64,
}

/// A frame handle as a smoltcp device.
pub struct FrameDevice {
    fd: OwnedFd,
    rx_buf: Vec<u8>,
    tx_buf: Vec<u8>,
    /// The first fatal error of the handle; the stack stops on it.
    error: Option<io::Error>,
    stats: FrameStats,
}

impl FrameDevice {
    /// Opens a scheme's `frames` file for reading and writing.
    pub fn open(path: &Path) -> io::Result<FrameDevice> {
        let fd = rustix::fs::open(
            path,
            OFlags::RDWR | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        FrameDevice::from_fd(fd)
    }

    /// Wraps an open frame fd (a scheme handle or a `SOCK_SEQPACKET`
    /// socket), making it non-blocking.
    pub fn from_fd(fd: OwnedFd) -> io::Result<FrameDevice> {
        let flags = rustix::fs::fcntl_getfl(&fd)?;
        rustix::fs::fcntl_setfl(&fd, flags | OFlags::NONBLOCK)?;
        Ok(FrameDevice {
            fd,
            rx_buf: vec![0; RX_BUF],
            tx_buf: Vec::with_capacity(MAX_FRAME),
            error: None,
            stats: FrameStats::default(),
        })
    }

    pub fn stats(&self) -> FrameStats {
        self.stats
    }

    /// The handle's fatal error, if one happened since the last call.
    pub fn take_error(&mut self) -> Option<io::Error> {
        self.error.take()
    }

    /// Sleeps until a frame can be read or `timeout` passes (never longer).
    pub fn wait(&self, timeout: Duration) -> io::Result<()> {
        wait_for(self.fd.as_fd(), PollFlags::IN, timeout).map(|_| ())
    }
}

impl AsFd for FrameDevice {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// `poll(2)` on one fd for `events`, at most `timeout`; retried on `EINTR`
/// with the time left. Returns whether the fd became ready.
fn wait_for(fd: BorrowedFd<'_>, events: PollFlags, timeout: Duration) -> io::Result<bool> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let ts = Timespec::try_from(left).unwrap_or(Timespec {
            tv_sec: i64::MAX,
            tv_nsec: 0,
        });
        let mut fds = [PollFd::new(&fd, events)];
        match rustix::event::poll(&mut fds, Some(&ts)) {
            Ok(n) => return Ok(n > 0),
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// One received frame.
pub struct RxToken<'a> {
    frame: &'a [u8],
}

impl phy::RxToken for RxToken<'_> {
    fn consume<R, F>(self, f: F) -> R
    where
        F: FnOnce(&[u8]) -> R,
    {
        f(self.frame)
    }
}

/// Room to send one frame.
pub struct TxToken<'a> {
    fd: BorrowedFd<'a>,
    buf: &'a mut Vec<u8>,
    error: &'a mut Option<io::Error>,
    stats: &'a mut FrameStats,
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F>(self, len: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        self.buf.clear();
        self.buf.resize(len, 0);
        let result = f(&mut self.buf[..]);
        send(self.fd, self.buf, self.error, self.stats);
        result
    }
}

/// Writes one frame, waiting (bounded) while the TX ring is full.
fn send(fd: BorrowedFd<'_>, frame: &[u8], error: &mut Option<io::Error>, stats: &mut FrameStats) {
    if error.is_some() {
        return; // the stack is about to stop; do not pile up errors
    }
    let mut waited = false;
    loop {
        match rustix::io::write(fd, frame) {
            Ok(n) => {
                if n != frame.len() {
                    warn!("frame handle took {n} of {} bytes", frame.len());
                }
                stats.tx_frames += 1;
                stats.tx_bytes += n as u64;
                return;
            }
            Err(Errno::INTR) => continue,
            Err(Errno::AGAIN) if !waited => {
                waited = true;
                match wait_for(fd, PollFlags::OUT, TX_WAIT) {
                    Ok(_) => continue,
                    Err(e) => {
                        *error = Some(e);
                        return;
                    }
                }
            }
            Err(Errno::AGAIN) => {
                debug!("TX ring full for {TX_WAIT:?}: frame dropped");
                stats.tx_dropped += 1;
                return;
            }
            // A frame the handle refuses (size): drop it, keep going.
            Err(Errno::INVAL) | Err(Errno::MSGSIZE) => {
                warn!("frame of {} bytes refused: dropped", frame.len());
                stats.tx_dropped += 1;
                return;
            }
            Err(e) => {
                *error = Some(io::Error::from(e));
                return;
            }
        }
    }
}

impl phy::Device for FrameDevice {
    type RxToken<'a> = RxToken<'a>;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, _timestamp: Instant) -> Option<(RxToken<'_>, TxToken<'_>)> {
        if self.error.is_some() {
            return None;
        }
        let n = loop {
            match rustix::io::read(&self.fd, &mut self.rx_buf[..]) {
                Ok(0) => {
                    self.error = Some(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the frame handle was closed",
                    ));
                    return None;
                }
                Ok(n) => break n,
                Err(Errno::INTR) => continue,
                Err(Errno::AGAIN) => return None,
                Err(e) => {
                    self.error = Some(e.into());
                    return None;
                }
            }
        };
        self.stats.rx_frames += 1;
        self.stats.rx_bytes += n as u64;
        let FrameDevice {
            ref fd,
            rx_buf,
            tx_buf,
            error,
            stats,
        } = self;
        Some((
            RxToken {
                frame: &rx_buf[..n],
            },
            TxToken {
                fd: fd.as_fd(),
                buf: tx_buf,
                error,
                stats,
            },
        ))
    }

    fn transmit(&mut self, _timestamp: Instant) -> Option<TxToken<'_>> {
        if self.error.is_some() {
            return None;
        }
        Some(TxToken {
            fd: self.fd.as_fd(),
            buf: &mut self.tx_buf,
            error: &mut self.error,
            stats: &mut self.stats,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = MAX_FRAME;
        caps
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::net::{socketpair, AddressFamily, SocketFlags, SocketType};
    use smoltcp::phy::{Device, RxToken as _, TxToken as _};

    fn pair() -> (FrameDevice, OwnedFd) {
        let (a, b) = socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .unwrap();
        (FrameDevice::from_fd(a).unwrap(), b)
    }

    #[test]
    fn one_read_is_one_frame() {
        let (mut dev, peer) = pair();
        let now = Instant::from_millis(0);
        assert!(dev.receive(now).is_none(), "empty wire gave a frame");
        let f1: Vec<u8> = (0..60u8).collect();
        let f2: Vec<u8> = (0..MAX_FRAME).map(|i| (i * 7) as u8).collect();
        rustix::io::write(&peer, &f1).unwrap();
        rustix::io::write(&peer, &f2).unwrap();
        let (rx, _) = dev.receive(now).unwrap();
        assert_eq!(rx.consume(|b| b.to_vec()), f1);
        let (rx, _) = dev.receive(now).unwrap();
        assert_eq!(rx.consume(|b| b.to_vec()), f2);
        assert!(dev.receive(now).is_none());
        assert_eq!(dev.stats().rx_frames, 2);
        assert_eq!(dev.stats().rx_bytes, (60 + MAX_FRAME) as u64);
        assert!(dev.take_error().is_none());
    }

    #[test]
    fn one_transmit_is_one_write() {
        let (mut dev, peer) = pair();
        let now = Instant::from_millis(0);
        for len in [14usize, 60, 1000, MAX_FRAME] {
            let tx = dev.transmit(now).unwrap();
            tx.consume(len, |b| b.iter_mut().for_each(|x| *x = len as u8));
            let mut buf = [0u8; 4096];
            let n = rustix::io::read(&peer, &mut buf[..]).unwrap();
            assert_eq!(n, len);
            assert!(buf[..n].iter().all(|&x| x == len as u8));
        }
        assert_eq!(dev.stats().tx_frames, 4);
    }

    #[test]
    fn wait_is_bounded_and_wakes_on_a_frame() {
        let (dev, peer) = pair();
        let t = std::time::Instant::now();
        dev.wait(Duration::from_millis(100)).unwrap();
        let waited = t.elapsed();
        assert!(waited >= Duration::from_millis(90), "{waited:?}");
        assert!(waited < Duration::from_secs(5), "{waited:?}");
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            rustix::io::write(&peer, &[0u8; 60]).unwrap();
            peer
        });
        let t = std::time::Instant::now();
        dev.wait(Duration::from_secs(20)).unwrap();
        assert!(t.elapsed() < Duration::from_secs(10));
        drop(writer.join().unwrap());
    }

    #[test]
    fn closed_peer_is_a_fatal_error() {
        let (mut dev, peer) = pair();
        drop(peer);
        assert!(dev.receive(Instant::from_millis(0)).is_none());
        let err = dev.take_error().expect("no error after the peer closed");
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn full_tx_drops_after_a_bounded_wait() {
        let (mut dev, peer) = pair();
        let now = Instant::from_millis(0);
        // Fill the socket buffer (the peer never reads) until a frame is
        // dropped; that must take about TX_WAIT, not forever.
        let t = std::time::Instant::now();
        let mut sent = 0;
        while dev.stats().tx_dropped == 0 {
            let tx = dev.transmit(now).unwrap();
            tx.consume(MAX_FRAME, |_| ());
            sent += 1;
            assert!(sent < 100_000, "never filled up");
        }
        assert!(t.elapsed() < TX_WAIT * 10);
        assert!(dev.take_error().is_none());
        drop(peer);
    }
}
