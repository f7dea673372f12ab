//! `DriverLoop` on a real FUSE mount (needs root and `/dev/fuse`): a read
//! parked in the scheme is answered once an "interrupt" (an MSI-style
//! eventfd written by the test) has run its handler; a handler's error ends
//! the loop with that error; an unmount ends it cleanly.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use common::irq::{new_eventfd, Irq};
use common::DriverLoop;
use scheme::{CallerCtx, OpenResult, RootKind, Scheme, Server, Stat};
use syscall::error::{Error, Result, EAGAIN};
use syscall::flag::MODE_FILE;

const BOUND: Duration = Duration::from_secs(10);

/// One file whose reads wait until the "device" has delivered.
#[derive(Default)]
struct Delivery {
    delivered: Option<&'static [u8]>,
}

impl Scheme for Delivery {
    fn openat(&mut self, _path: &str, _flags: usize, _ctx: &CallerCtx) -> Result<OpenResult> {
        Ok(OpenResult::stream(0))
    }
    fn fstat(&mut self, _id: usize, stat: &mut Stat, _ctx: &CallerCtx) -> Result<()> {
        stat.st_mode = MODE_FILE | 0o444;
        Ok(())
    }
    fn read(
        &mut self,
        _id: usize,
        buf: &mut [u8],
        _off: u64,
        _fl: u32,
        _ctx: &CallerCtx,
    ) -> Result<usize> {
        let data = self.delivered.take().ok_or(Error::new(EAGAIN))?;
        let n = data.len().min(buf.len());
        buf[..n].copy_from_slice(&data[..n]);
        Ok(n)
    }
}

fn mount_point(tag: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("driver-loop-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_file(&p);
    std::fs::write(&p, b"").unwrap();
    p
}

/// A driver loop on a thread: the eventfd to fire, init's end of the
/// control channel, and the loop's result.
struct Served {
    irq: OwnedFd,
    init_end: OwnedFd,
    result: mpsc::Receiver<io::Result<()>>,
}

/// Serves `Delivery` at `target` on a thread; the interrupt handler
/// delivers `b"done"`, or fails if `fail` is set.
fn serve(target: &Path, fail: bool) -> Served {
    let fuse = scheme::mount_fuse(target, RootKind::File, 0, 0).unwrap();
    let efd = new_eventfd().unwrap();
    let fire = efd.try_clone().unwrap();
    let (tx, rx) = mpsc::channel();
    // init's end of a control channel, kept open (and never pinging).
    let (init_end, ours) = rustix::net::socketpair(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::SEQPACKET,
        rustix::net::SocketFlags::CLOEXEC,
        None,
    )
    .unwrap();
    std::thread::spawn(move || {
        let run = || {
            DriverLoop::new(
                Server::new(fuse, Delivery::default())?,
                daemon::Daemon::from_fd(ours),
            )?
            .on_irq(Irq::msi(efd), move |s: &mut Delivery| {
                if fail {
                    return Err(io::Error::other("the device stopped working"));
                }
                s.delivered = Some(b"done");
                Ok(())
            })?
            .run()
        };
        let _ = tx.send(run());
    });
    Served {
        irq: fire,
        init_end,
        result: rx,
    }
}

fn fire(efd: &OwnedFd) {
    rustix::io::write(efd.as_fd(), &1u64.to_ne_bytes()).unwrap();
}

#[test]
fn a_parked_read_is_answered_after_the_interrupt_handler_ran() {
    let target = mount_point("answer");
    let Served {
        irq: efd,
        init_end,
        result,
    } = serve(&target, false);
    let path = target.clone();
    let (got_tx, got) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 16];
        let n = File::open(path).and_then(|mut f| f.read(&mut buf));
        let _ = got_tx.send(n.map(|n| buf[..n].to_vec()));
    });
    // No interrupt yet: the read stays parked.
    assert!(got.recv_timeout(Duration::from_millis(300)).is_err());
    fire(&efd);
    let data = got
        .recv_timeout(BOUND)
        .expect("read never answered")
        .unwrap();
    // init's heartbeat is answered from the loop.
    daemon::send_with_fd(init_end.as_fd(), b"ping 5", None).unwrap();
    let (pong, _) = daemon::recv_with_fds(init_end.as_fd()).unwrap();
    assert_eq!(pong, b"pong 5");
    assert_eq!(data, b"done");
    // Unmounting ends the loop cleanly.
    scheme::unmount(&target).unwrap();
    result
        .recv_timeout(BOUND)
        .expect("loop did not end")
        .unwrap();
    let _ = std::fs::remove_file(&target);
}

#[test]
fn a_failing_interrupt_handler_ends_the_loop_with_its_error() {
    let target = mount_point("fail");
    // init's end stays open: its hanging up would end the loop first.
    let Served {
        irq: efd,
        init_end: _init_end,
        result,
    } = serve(&target, true);
    fire(&efd);
    let e = result
        .recv_timeout(BOUND)
        .expect("loop did not end")
        .unwrap_err();
    assert_eq!(e.to_string(), "the device stopped working");
    let _ = scheme::unmount(&target);
    let _ = std::fs::remove_file(&target);
}
