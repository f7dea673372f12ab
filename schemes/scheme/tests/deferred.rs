//! Deferred replies against the real kernel (needs root and /dev/fuse): a
//! scheme that takes every read (`EINPROGRESS`) and answers it only after
//! its "interrupt" fires, as a storage driver does.

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use scheme::testing::{wait_until, with_timeout, TestMount};
use scheme::{CallerCtx, Completed, Completion, OpenResult, RootKind, Scheme, Stat};
use syscall::error::{Error, Result, EINPROGRESS, ENOENT};
use syscall::flag::MODE_FILE;

const BOUND: Duration = Duration::from_secs(10);

/// `/scheme/x` as one file; reads are taken and answered with as many
/// `b'z'` as asked once an interrupt has been seen.
#[derive(Default)]
struct Later {
    taken: Vec<(u64, usize)>,
    irq_seen: bool,
}

impl Scheme for Later {
    fn openat(&mut self, path: &str, _flags: usize, _ctx: &CallerCtx) -> Result<OpenResult> {
        if path.is_empty() {
            Ok(OpenResult::file(1))
        } else {
            Err(Error::new(ENOENT))
        }
    }
    fn read(
        &mut self,
        _id: usize,
        buf: &mut [u8],
        _offset: u64,
        _fcntl: u32,
        ctx: &CallerCtx,
    ) -> Result<usize> {
        self.taken.push((ctx.request, buf.len()));
        Err(Error::new(EINPROGRESS))
    }
    fn fstat(&mut self, _id: usize, stat: &mut Stat, _ctx: &CallerCtx) -> Result<()> {
        stat.st_mode = MODE_FILE | 0o666;
        stat.st_size = 1 << 20;
        Ok(())
    }
    fn take_completions(&mut self, out: &mut Vec<Completion>) {
        if self.irq_seen {
            out.extend(self.taken.drain(..).map(|(request, n)| Completion {
                request,
                result: Ok(Completed::Read(vec![b'z'; n.min(4)])),
            }));
        }
    }
}

fn mount() -> (TestMount, UnixStream) {
    let (tx, rx) = UnixStream::pair().unwrap();
    let m = TestMount::with_irq(
        RootKind::File,
        Later::default(),
        rx.into(),
        |s: &mut Later| s.irq_seen = true,
    )
    .expect("mount");
    (m, tx)
}

#[test]
fn a_deferred_read_is_answered_after_the_interrupt() {
    let (m, mut irq) = mount();
    let p = m.path().to_owned();
    let reader = std::thread::spawn(move || {
        let f = std::fs::File::open(p).unwrap();
        let mut buf = [0u8; 16];
        let n = f.read_at(&mut buf, 0).unwrap();
        buf[..n].to_vec()
    });
    assert!(wait_until(BOUND, || m.deferred() == 1), "not deferred");
    std::thread::sleep(Duration::from_millis(50));
    assert!(!reader.is_finished(), "answered before the interrupt");
    irq.write_all(&[1]).unwrap();
    let got = with_timeout(BOUND, move || reader.join().unwrap()).expect("reader hung");
    assert_eq!(got, b"zzzz");
    assert!(wait_until(BOUND, || m.deferred() == 0));
}

static SIGNALLED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigusr1(_: libc::c_int) {
    SIGNALLED.store(true, Ordering::SeqCst);
}

#[test]
fn a_signal_does_not_end_a_deferred_read() {
    // A handler without SA_RESTART: a parked read would fail with EINTR;
    // a deferred one waits for its completion instead.
    // SAFETY: the handler only stores to an atomic (async-signal-safe); the
    // sigaction struct is zero-initialised and then filled in.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_sigusr1 as extern "C" fn(libc::c_int) as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        assert_eq!(libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut()), 0);
    }
    let (m, mut irq) = mount();
    let p = m.path().to_owned();
    let (tid_tx, tid_rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        // SAFETY: pthread_self has no preconditions.
        tid_tx.send(unsafe { libc::pthread_self() }).unwrap();
        let f = std::fs::File::open(p).unwrap();
        let mut buf = [0u8; 16];
        f.read_at(&mut buf, 0).map(|n| buf[..n].to_vec())
    });
    let tid = tid_rx.recv().unwrap();
    assert!(wait_until(BOUND, || m.deferred() == 1), "not deferred");
    // SAFETY: `tid` is a live thread of this process (it is blocked in read).
    assert_eq!(unsafe { libc::pthread_kill(tid, libc::SIGUSR1) }, 0);
    // Give the kernel's FUSE_INTERRUPT time to reach the server. (The
    // handler itself runs only when the read returns.)
    std::thread::sleep(Duration::from_millis(200));
    assert!(!reader.is_finished(), "the signal ended the read");
    assert_eq!(m.deferred(), 1);
    irq.write_all(&[1]).unwrap();
    let got = with_timeout(BOUND, move || reader.join().unwrap()).expect("reader hung");
    assert_eq!(got.expect("read"), b"zzzz");
    assert!(SIGNALLED.load(Ordering::SeqCst), "the signal was delivered");
}
