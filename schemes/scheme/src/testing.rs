//! Test harness: serve a scheme on a real FUSE mount in a temporary
//! directory, on a background thread, torn down by a drop guard.
//! Needs root (mount(2)) and `/dev/fuse`. Enabled by the `test-util` feature.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec};

use crate::{mount_fuse, unmount, RootKind, Scheme, Server, Status};

/// A live mount of a scheme served by a thread of this process.
pub struct TestMount {
    base: PathBuf,
    path: PathBuf,
    stop: Arc<AtomicBool>,
    parked: Arc<AtomicUsize>,
    deferred: Arc<AtomicUsize>,
    pollers: Arc<AtomicUsize>,
    done: mpsc::Receiver<io::Result<()>>,
    thread: Option<JoinHandle<()>>,
}

impl TestMount {
    /// Mounts `scheme` on a fresh path under `/tmp` (a directory for
    /// `RootKind::Dir`, a regular file for `RootKind::File`).
    pub fn new<S: Scheme + Send + 'static>(kind: RootKind, scheme: S) -> io::Result<TestMount> {
        Self::start(kind, scheme, None)
    }

    /// Like [`TestMount::new`], with an interrupt source, as a driver's
    /// event loop has: whenever `irq` is readable the serving thread drains
    /// it, calls `on_irq` on the scheme, then `Server::wake()` (which
    /// collects the scheme's completions). A test double fires an
    /// "interrupt" by writing to the other end of `irq` (a socket pair, a
    /// pipe or an eventfd).
    pub fn with_irq<S, F>(
        kind: RootKind,
        scheme: S,
        irq: OwnedFd,
        on_irq: F,
    ) -> io::Result<TestMount>
    where
        S: Scheme + Send + 'static,
        F: FnMut(&mut S) + Send + 'static,
    {
        let fl = rustix::fs::fcntl_getfl(&irq)?;
        rustix::fs::fcntl_setfl(&irq, fl | rustix::fs::OFlags::NONBLOCK)?;
        Self::start(kind, scheme, Some((irq, Box::new(on_irq))))
    }

    #[allow(clippy::type_complexity)]
    fn start<S: Scheme + Send + 'static>(
        kind: RootKind,
        scheme: S,
        mut irq: Option<(OwnedFd, Box<dyn FnMut(&mut S) + Send>)>,
    ) -> io::Result<TestMount> {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let base = std::env::temp_dir().join(format!("scheme-test-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(&base)?;
        let path = base.join("mnt");
        match kind {
            RootKind::Dir => std::fs::create_dir(&path)?,
            RootKind::File => drop(std::fs::File::create(&path)?),
        }
        let fd = match mount_fuse(&path, kind, 0, 0) {
            Ok(fd) => fd,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&base);
                return Err(e);
            }
        };
        let mut server = Server::new(fd, scheme)?;
        let stop = Arc::new(AtomicBool::new(false));
        let parked = Arc::new(AtomicUsize::new(0));
        let deferred = Arc::new(AtomicUsize::new(0));
        let pollers = Arc::new(AtomicUsize::new(0));
        let (tx, done) = mpsc::channel();
        let (s, p, d, q) = (
            stop.clone(),
            parked.clone(),
            deferred.clone(),
            pollers.clone(),
        );
        let thread = std::thread::spawn(move || {
            let res = (|| -> io::Result<()> {
                while !s.load(Ordering::Relaxed) {
                    let status = server.process()?;
                    p.store(server.parked(), Ordering::Relaxed);
                    d.store(server.deferred(), Ordering::Relaxed);
                    q.store(server.pollers(), Ordering::Relaxed);
                    if status == Status::Unmounted {
                        break;
                    }
                    // The timeout only bounds how late we see `stop`.
                    let t = Timespec {
                        tv_sec: 0,
                        tv_nsec: 50_000_000,
                    };
                    let irq_ready = match &irq {
                        Some((fd, _)) => {
                            let mut fds = [
                                PollFd::new(&server, PollFlags::IN),
                                PollFd::new(fd, PollFlags::IN),
                            ];
                            match rustix::event::poll(&mut fds, Some(&t)) {
                                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                                Err(e) => return Err(e.into()),
                            }
                            !fds[1].revents().is_empty()
                        }
                        None => {
                            let mut fds = [PollFd::new(&server, PollFlags::IN)];
                            match rustix::event::poll(&mut fds, Some(&t)) {
                                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                                Err(e) => return Err(e.into()),
                            }
                            false
                        }
                    };
                    if let (true, Some((fd, on_irq))) = (irq_ready, irq.as_mut()) {
                        drain(fd.as_fd());
                        on_irq(server.scheme_mut());
                        server.wake();
                    }
                }
                Ok(())
            })();
            // Dropping the server closes the last /dev/fuse fd, which aborts
            // the connection: nothing stays blocked on a dead mount.
            drop(server);
            let _ = tx.send(res);
        });
        Ok(TestMount {
            base,
            path,
            stop,
            parked,
            deferred,
            pollers,
            done,
            thread: Some(thread),
        })
    }

    /// The mount point (the scheme root).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `path()/name`.
    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Requests currently parked in the server (updated after each batch).
    pub fn parked(&self) -> usize {
        self.parked.load(Ordering::Relaxed)
    }

    /// Requests deferred in the server (taken by the scheme, not yet
    /// completed; updated after each batch).
    pub fn deferred(&self) -> usize {
        self.deferred.load(Ordering::Relaxed)
    }

    /// Poll handles waiting for notifications.
    pub fn pollers(&self) -> usize {
        self.pollers.load(Ordering::Relaxed)
    }
}

impl Drop for TestMount {
    fn drop(&mut self) {
        if let Err(e) = unmount(&self.path) {
            eprintln!("unmount {}: {e}", self.path.display());
        }
        self.stop.store(true, Ordering::Relaxed);
        match self.done.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("scheme server failed: {e}"),
            Err(_) => eprintln!("scheme server did not stop within 10 s"),
        }
        if let Some(t) = self.thread.take() {
            if t.is_finished() {
                let _ = t.join();
            }
        }
        let _ = std::fs::remove_dir_all(&self.base);
    }
}

/// Reads a non-blocking fd until it is empty (an interrupt may have fired
/// more than once before we looked).
fn drain(fd: std::os::fd::BorrowedFd<'_>) {
    let mut buf = [0u8; 64];
    while let Ok(n) = rustix::io::read(fd, &mut buf) {
        if n == 0 {
            break;
        }
    }
}

/// Waits (bounded) until `cond` holds; `false` on timeout.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    let mut pause = Duration::from_micros(200);
    loop {
        if cond() {
            return true;
        }
        if start.elapsed() >= timeout {
            return false;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// Runs `f` on its own thread and waits at most `timeout` for it; `None`
/// if it did not finish (the thread is left behind, blocked).
pub fn with_timeout<T: Send + 'static>(
    timeout: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(timeout).ok()
}
