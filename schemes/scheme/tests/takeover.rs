//! A daemon's death and its successor, on a real FUSE mount (needs root and
//! a kernel with `FUSE_NOTIFY_RESEND`, Linux 6.9+): the connection and the
//! state store outlive the first server (the test holds them, as init
//! does); the second takes over, reopens the client's handle under the
//! `fh` the kernel holds, and answers the read the first had taken and
//! never answered. A write on a stream that comes again is refused once,
//! never run twice.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use rustix::event::{PollFd, PollFlags, Timespec};
use scheme::{CallerCtx, OpenResult, RootKind, Scheme, Server, Stat, Status};
use syscall::error::{Error, Result, EAGAIN};
use syscall::flag::MODE_FILE;

const BOUND: Duration = Duration::from_secs(10);

/// One stream file: reads wait for a delivery; writes are counted.
#[derive(Clone, Default)]
struct Mailbox {
    data: Arc<Mutex<Option<Vec<u8>>>>,
    writes: Arc<Mutex<usize>>,
    opens: Arc<Mutex<usize>>,
}

impl Scheme for Mailbox {
    fn openat(&mut self, _path: &str, _flags: usize, _ctx: &CallerCtx) -> Result<OpenResult> {
        *self.opens.lock().unwrap() += 1;
        Ok(OpenResult::stream(40))
    }
    fn fstat(&mut self, _id: usize, stat: &mut Stat, _ctx: &CallerCtx) -> Result<()> {
        stat.st_mode = MODE_FILE | 0o666;
        Ok(())
    }
    fn read(&mut self, _: usize, buf: &mut [u8], _: u64, _: u32, _: &CallerCtx) -> Result<usize> {
        let data = self.data.lock().unwrap().take().ok_or(Error::new(EAGAIN))?;
        let n = data.len().min(buf.len());
        buf[..n].copy_from_slice(&data[..n]);
        Ok(n)
    }
    fn write(&mut self, _: usize, buf: &[u8], _: u64, _: u32, _: &CallerCtx) -> Result<usize> {
        // A write that never returns: the daemon "dies" holding it.
        if buf == b"hang" {
            return Err(Error::new(EAGAIN));
        }
        *self.writes.lock().unwrap() += 1;
        Ok(buf.len())
    }
}

/// Serves `server` on a thread until `stop` is set, then drops it without
/// answering what it holds: the daemon's death.
fn serve(mut server: Server<Mailbox>, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        while !stop.load(Ordering::SeqCst) {
            if server.process().unwrap() == Status::Unmounted {
                return;
            }
            let mut fds = [PollFd::new(&server, PollFlags::IN)];
            let _ = rustix::event::poll(
                &mut fds,
                Some(&Timespec::try_from(Duration::from_millis(20)).unwrap()),
            );
        }
    })
}

/// On a failed assertion, aborts the FUSE connection: a request a dead
/// server had read leaves its caller in an uninterruptible wait, which
/// would otherwise keep this test process from ever exiting.
struct AbortOnPanic(PathBuf);

impl Drop for AbortOnPanic {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let ctl = std::path::Path::new("/sys/fs/fuse/connections");
        if std::fs::read_dir(ctl).map_or(true, |mut d| d.next().is_none()) {
            let _ = std::process::Command::new("mount")
                .args(["-t", "fusectl", "fusectl"])
                .arg(ctl)
                .status();
        }
        if let Ok(st) = rustix::fs::stat(&self.0) {
            let dev = rustix::fs::minor(st.st_dev);
            let _ = std::fs::write(ctl.join(dev.to_string()).join("abort"), b"1");
        }
    }
}

fn registration(fuse: &OwnedFd, state: &OwnedFd, resumed: bool) -> daemon::Registration {
    daemon::Registration {
        fuse: fuse.try_clone().unwrap(),
        state: Some(state.try_clone().unwrap()),
        resumed,
    }
}

#[test]
fn a_successor_answers_what_its_predecessor_took_and_keeps_the_handles() {
    let target = PathBuf::from(format!("/tmp/takeover-{}", std::process::id()));
    let _ = std::fs::remove_file(&target);
    std::fs::write(&target, b"").unwrap();
    // What init keeps: the connection and the store.
    let fuse = scheme::mount_fuse(&target, RootKind::File, 0, 0).unwrap();
    let state = rustix::fs::memfd_create("state", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
    let _abort = AbortOnPanic(target.clone());

    let first = Mailbox::default();
    let stop = Arc::new(AtomicBool::new(false));
    let a = serve(
        Server::from_registration(registration(&fuse, &state, false), first.clone()).unwrap(),
        stop.clone(),
    );

    // A client opens the file and reads: the read parks in the first server.
    let (opened_tx, opened) = mpsc::channel();
    let (got_tx, got) = mpsc::channel();
    let path = target.clone();
    std::thread::spawn(move || {
        let mut f = File::open(&path).unwrap();
        opened_tx.send(()).unwrap();
        let mut buf = [0u8; 16];
        let n = f.read(&mut buf).unwrap();
        got_tx.send(buf[..n].to_vec()).unwrap();
        // The same handle reads again, from the successor.
        let n = f.read(&mut buf).unwrap();
        got_tx.send(buf[..n].to_vec()).unwrap();
    });
    opened.recv_timeout(BOUND).unwrap();
    // A writer whose write the first server takes and never answers.
    let path = target.clone();
    let (wrote_tx, wrote) = mpsc::channel();
    std::thread::spawn(move || {
        let mut f = OpenOptions::new().write(true).open(&path).unwrap();
        let r = f.write(b"hang").map_err(|e| e.raw_os_error());
        wrote_tx.send(r).unwrap();
    });
    std::thread::sleep(Duration::from_millis(300));
    assert!(got.try_recv().is_err(), "the read must still be waiting");

    // The first server dies holding both requests.
    stop.store(true, Ordering::SeqCst);
    a.join().unwrap();
    assert!(
        got.recv_timeout(Duration::from_millis(300)).is_err(),
        "nobody answered yet"
    );

    // The successor, with data to give: it takes over.
    let second = Mailbox::default();
    *second.data.lock().unwrap() = Some(b"after".to_vec());
    let stop_b = Arc::new(AtomicBool::new(false));
    let b = serve(
        Server::from_registration(registration(&fuse, &state, true), second.clone()).unwrap(),
        stop_b.clone(),
    );
    assert_eq!(
        got.recv_timeout(BOUND).expect("resent read answered"),
        b"after"
    );
    // Both handles were reopened under the kernel's fh numbers.
    assert_eq!(*second.opens.lock().unwrap(), 2);
    // The resent write on the stream was refused once, not run.
    assert_eq!(
        wrote.recv_timeout(BOUND).expect("resent write answered"),
        Err(Some(5)),
        "EIO"
    );
    assert_eq!(*second.writes.lock().unwrap(), 0);
    // The old handle goes on working with the successor.
    *second.data.lock().unwrap() = Some(b"again".to_vec());
    assert_eq!(got.recv_timeout(BOUND).expect("second read"), b"again");

    stop_b.store(true, Ordering::SeqCst);
    b.join().unwrap();
    let _ = scheme::unmount(&target);
    drop(fuse);
    let _ = std::fs::remove_file(&target);
}
