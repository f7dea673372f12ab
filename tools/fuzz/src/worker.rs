//! One worker: a process that makes `ops` random calls on scheme files,
//! drawn from its seed, each bounded in time.
//!
//! Every call runs with an interval timer armed (`SIGALRM`, no
//! `SA_RESTART`), so a call a scheme parks (an empty FIFO, a NIC with no
//! frame) is interrupted and answered `EINTR` by the runtime: the worker
//! never waits on purpose. The timer is short for calls that may park (a
//! read or write without `O_NONBLOCK`), and drawn short or as long as the
//! bound for all others, which a scheme must answer at once: an interrupt
//! ends a request the daemon has not read yet, so only such patient calls
//! can show a daemon that stopped reading. A call answered later than the
//! bound is a hang, reported with the worker's seed and the op's index;
//! one never answered is found by the parent, which sees the op under way
//! in shared memory.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag};
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
use nix::sys::stat::Mode;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{ForkResult, Pid, Whence};

use crate::ops::{self, Op, MAX_IO};
use crate::tally::Slot;
use crate::targets::{allowed_flags, normalize, scrub, Guard, Kind, Rules, Target};
use scheme_fuzz::rng::Rng;

/// Files a worker holds at most; opening another closes one first.
const MAX_HELD: usize = 24;
/// Bytes behind a valid ioctl argument: more than any `_IOC` size (14
/// bits), with room for the few commands the VFS sizes itself.
const IOCTL_BUF: usize = 64 << 10;

/// What every worker of a run shares.
pub struct Setup<'a> {
    pub root: &'a Path,
    pub targets: &'a [Target],
    pub rules: &'a Rules,
    pub ops: usize,
    /// A call answered later than this is a hang.
    pub bound: Duration,
    /// The timer each call runs under.
    pub alarm: Duration,
    /// The check disk's whole-disk file and the seed of its content
    /// (`rng::pattern`): every read of it is compared with what it holds.
    pub check_disk: Option<(PathBuf, u64)>,
}

/// What a read of a file must return, where that is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Unknown,
    /// `/scheme/null`: end of file.
    Nothing,
    /// `/scheme/zero`: zero bytes.
    Zeros,
    /// The check disk: its pattern at the offset read.
    Pattern(u64),
}

/// A file the worker holds.
struct Held {
    fd: OwnedFd,
    kind: Kind,
    guard: Guard,
    path: PathBuf,
    /// Its size when opened (disks), for offsets near the end.
    size: u64,
    expect: Expect,
}

/// The timing and counting around one call (`Copy`, so a call's closure
/// may borrow the worker's files and buffers while it runs).
#[derive(Clone, Copy)]
struct Clock {
    slot: &'static Slot,
    seed: u64,
    worker: usize,
    bound: Duration,
    alarm: Duration,
    /// Whether the next call may be parked by its scheme.
    may_park: bool,
}

impl Clock {
    /// This clock for a call that may (or may not) be parked.
    fn parking(self, may_park: bool) -> Clock {
        Clock { may_park, ..self }
    }

    /// The timer for op `index`: for a call that must not park, half the
    /// time the bound itself (a patient call: a daemon that stops reading
    /// shows as a late answer); otherwise mostly the configured one,
    /// sometimes much shorter, so that interrupts reach requests at every
    /// stage (queued, read by the daemon, parked, answered). Drawn from
    /// the seed and the index, not from the worker's generator, so replays
    /// match.
    fn alarm_for(self, index: usize) -> Duration {
        let mut r = Rng::new(self.seed ^ index as u64);
        if !self.may_park && r.one_in(2) {
            return self.bound;
        }
        match r.below(4) {
            0 => Duration::from_millis(1 + r.below(20)),
            1 => Duration::from_millis(20 + r.below(200)),
            _ => self.alarm,
        }
    }

    fn call<T>(
        self,
        index: usize,
        op: Op,
        kind: Kind,
        desc: &str,
        f: impl FnOnce() -> nix::Result<T>,
    ) -> nix::Result<T> {
        self.slot.begin(index, desc);
        let alarm = self.alarm_for(index);
        // Timed from before the timer is armed, so an interrupted patient
        // call never measures a hair under the bound.
        let started = Instant::now();
        arm(alarm);
        let result = f();
        let took = started.elapsed();
        arm(Duration::ZERO);
        self.slot.end();
        self.slot
            .count(op, kind, result.as_ref().map(|_| ()).map_err(|e| *e));
        // A patient call cut short by its timer was not answered within
        // the bound, whatever the clock says.
        let cut_off = alarm >= self.bound && matches!(result, Err(Errno::EINTR));
        if took > self.bound || cut_off {
            self.slot.slow.fetch_add(1, Relaxed);
            say(&format!(
                "HANG worker {} seed {:#x} op {index}: {desc}: {} after {:.1} s (replay: scheme-fuzz --replay {:#x})",
                self.worker,
                self.seed,
                if cut_off { "cut off unanswered" } else { "answered" },
                took.as_secs_f64(),
                self.seed
            ));
        }
        result
    }
}

/// Fills `buf` with bytes to write to a `kind` file and returns how
/// many; what root writes where `guard` says so holds no control word.
fn write_data(rng: &mut Rng, kind: Kind, guard: Guard, buf: &mut [u8]) -> usize {
    let n = ops::data(rng, kind, buf);
    if guard == Guard::NoControlWords {
        scrub(&mut buf[..n]);
    }
    n
}

/// Whether `fd`'s file is in non-blocking mode (a call on it is never
/// parked).
fn nonblocking(fd: &OwnedFd) -> bool {
    nix::fcntl::fcntl(fd, FcntlArg::F_GETFL)
        .is_ok_and(|f| OFlag::from_bits_retain(f).contains(OFlag::O_NONBLOCK))
}

/// Sets (or reads) the extended attribute `user.fuzz` of `path`.
fn xattr(path: &Path, set: bool) -> nix::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(|_| Errno::EINVAL)?;
    let name = c"user.fuzz";
    let mut value = [0u8; 64];
    // SAFETY: both strings are NUL-terminated and `value` is 64 bytes,
    // the size passed.
    let r = unsafe {
        if set {
            libc::setxattr(
                c.as_ptr(),
                name.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            )
        } else {
            libc::getxattr(
                c.as_ptr(),
                name.as_ptr(),
                value.as_mut_ptr().cast(),
                value.len(),
            ) as libc::c_int
        }
    };
    Errno::result(r).map(drop)
}

/// One line of the fuzzer's output, written whole (workers share stdout).
pub fn say(line: &str) {
    use std::io::Write;
    let _ = std::io::stdout().write_all(format!("fuzz: {line}\n").as_bytes());
}

extern "C" fn on_alarm(_: libc::c_int) {}

/// Makes `SIGALRM` interrupt system calls instead of killing the process.
fn catch_alarm() -> nix::Result<()> {
    let action = SigAction::new(
        SigHandler::Handler(on_alarm),
        SaFlags::empty(),
        SigSet::empty(),
    );
    // SAFETY: the handler does nothing, which is async-signal-safe.
    unsafe { sigaction(Signal::SIGALRM, &action) }.map(drop)
}

/// Arms the real-time interval timer once for `d` (zero disarms it).
/// How often an expired timer fires again while the call goes on.
const REARM: Duration = Duration::from_millis(50);

fn arm(d: Duration) {
    let tv = |d: Duration| libc::timeval {
        tv_sec: d.as_secs() as libc::time_t,
        tv_usec: d.subsec_micros() as libc::suseconds_t,
    };
    // The timer repeats: a short one can expire before the call has even
    // entered the kernel (a busy guest), and its one signal would then be
    // spent before the call could park, leaving it parked for good.
    let timer = libc::itimerval {
        it_interval: tv(REARM.min(d)),
        it_value: tv(d),
    };
    // SAFETY: `timer` is a valid itimerval for the call's duration; the
    // old value is not asked for.
    unsafe { libc::setitimer(libc::ITIMER_REAL, &timer, std::ptr::null_mut()) };
}

pub struct Worker<'a> {
    setup: &'a Setup<'a>,
    rng: Rng,
    as_root: bool,
    clock: Clock,
    held: Vec<Held>,
    buf: Vec<u8>,
    ioctl_buf: Vec<u8>,
    /// Targets by scheme, so every scheme is drawn as often.
    by_kind: Vec<Vec<usize>>,
}

impl<'a> Worker<'a> {
    pub fn new(
        setup: &'a Setup<'a>,
        worker: usize,
        seed: u64,
        as_root: bool,
        slot: &'static Slot,
    ) -> Worker<'a> {
        let mut by_kind: Vec<Vec<usize>> = Vec::new();
        for (i, t) in setup.targets.iter().enumerate() {
            match by_kind
                .iter_mut()
                .find(|v| setup.targets[v[0]].kind == t.kind)
            {
                Some(v) => v.push(i),
                None => by_kind.push(vec![i]),
            }
        }
        Worker {
            setup,
            rng: Rng::new(seed),
            as_root,
            clock: Clock {
                slot,
                seed,
                worker,
                bound: setup.bound,
                alarm: setup.alarm,
                may_park: false,
            },
            held: Vec::new(),
            buf: vec![0; MAX_IO],
            ioctl_buf: vec![0; IOCTL_BUF],
            by_kind,
        }
    }

    /// Makes every op; then closes what it holds.
    pub fn run(&mut self) -> nix::Result<()> {
        catch_alarm()?;
        for i in 0..self.setup.ops {
            let mut op = Op::draw(&mut self.rng);
            if self.held.is_empty() && !matches!(op, Op::Open | Op::Fork) {
                op = Op::Open;
            }
            self.step(i, op);
        }
        self.held.clear();
        Ok(())
    }

    fn step(&mut self, i: usize, op: Op) {
        match op {
            Op::Open => self.open(i),
            Op::Fork => self.fork(i),
            Op::Path => self.on_path(i),
            _ => {
                let h = self.rng.index(self.held.len());
                self.on_held(i, op, h);
            }
        }
    }

    /// A path to open: mostly one found under the root, of a scheme drawn
    /// first, sometimes made into a name nothing serves.
    fn path(&mut self) -> PathBuf {
        let group = self.rng.index(self.by_kind.len());
        let Some(&t) = self
            .by_kind
            .get(group)
            .and_then(|g| g.get(self.rng.index(g.len())))
        else {
            return self.setup.root.to_path_buf();
        };
        let base = self.setup.targets[t].path.clone();
        let path = match self.rng.below(12) {
            0 => base.join(self.garbage_name()),
            1 => base
                .parent()
                .unwrap_or(self.setup.root)
                .join(self.garbage_name()),
            2 => self.setup.root.join(self.garbage_name()),
            3 => base.join("..").join(
                base.file_name()
                    .map(PathBuf::from)
                    .unwrap_or_else(|| PathBuf::from(".")),
            ),
            4 => PathBuf::from(format!("{}/./", base.display())),
            _ => base.clone(),
        };
        if normalize(&path).starts_with(self.setup.root) {
            path
        } else {
            base
        }
    }

    /// A file name that is valid to the kernel (no `/`, no NUL) but
    /// anything else: random bytes, not UTF-8, or too long.
    fn garbage_name(&mut self) -> PathBuf {
        use std::os::unix::ffi::OsStringExt;
        let len = if self.rng.one_in(10) {
            250 + self.rng.index(20)
        } else {
            1 + self.rng.index(16)
        };
        let printable = self.rng.one_in(2);
        let name: Vec<u8> = (0..len)
            .map(|_| {
                let b = if printable {
                    b'!' + self.rng.below(94) as u8
                } else {
                    self.rng.next_u64() as u8
                };
                if b == b'/' || b == 0 {
                    b'_'
                } else {
                    b
                }
            })
            .collect();
        PathBuf::from(std::ffi::OsString::from_vec(name))
    }

    fn open(&mut self, i: usize) {
        let path = self.path();
        let norm = normalize(&path);
        let kind = Kind::of(self.setup.root, &norm);
        let guard = self.setup.rules.guard(kind, &norm, self.as_root);
        let flags = allowed_flags(guard, ops::open_flags(&mut self.rng)) | OFlag::O_CLOEXEC;
        let mode = Mode::from_bits_truncate(self.rng.below(0o10000) as libc::mode_t);
        let desc = format!("open {} {:#o}", path.display(), flags.bits());
        let opened = self.clock.call(i, Op::Open, kind, &desc, || {
            nix::fcntl::open(&path, flags, mode)
        });
        let Ok(fd) = opened else { return };
        let size = if kind == Kind::Disk {
            nix::sys::stat::fstat(&fd).map_or(0, |s| s.st_size as u64)
        } else {
            0
        };
        let expect = match (kind, &self.setup.check_disk) {
            (Kind::Null, _) => Expect::Nothing,
            (Kind::Zero, _) => Expect::Zeros,
            (_, Some((disk, seed))) if *disk == norm => Expect::Pattern(*seed),
            _ => Expect::Unknown,
        };
        self.hold(Held {
            fd,
            kind,
            guard,
            path,
            size,
            expect,
        });
    }

    fn hold(&mut self, h: Held) {
        if self.held.len() >= MAX_HELD {
            let drop_at = self.rng.index(self.held.len());
            self.held.swap_remove(drop_at);
        }
        self.held.push(h);
    }

    /// An op on held file `h`.
    fn on_held(&mut self, i: usize, op: Op, h: usize) {
        let Some(held) = self.held.get(h) else { return };
        let (kind, guard, size, expect) = (held.kind, held.guard, held.size, held.expect);
        let name = format!(
            "{} fd {} ({})",
            op.name(),
            held.fd.as_raw_fd(),
            held.path.display()
        );
        let clock = self.clock;
        match op {
            Op::Read | Op::Pread => {
                let n = ops::size(&mut self.rng);
                let at = (op == Op::Pread).then(|| ops::offset(&mut self.rng, size));
                let desc = format!("{name} {n} at {at:?}");
                let fd = &self.held[h].fd;
                // Where a read(2) starts, to check what it returns (the
                // kernel answers SEEK_CUR itself).
                let pos = match (at, expect) {
                    (None, Expect::Pattern(_)) => nix::unistd::lseek(fd, 0, Whence::SeekCur).ok(),
                    _ => at,
                };
                let buf = &mut self.buf[..n];
                let got = clock
                    .parking(!nonblocking(fd))
                    .call(i, op, kind, &desc, || match at {
                        Some(at) => nix::sys::uio::pread(fd, buf, at),
                        None => nix::unistd::read(fd, buf),
                    });
                if let Ok(got) = got {
                    self.check(i, &desc, expect, pos, got);
                }
            }
            Op::Write | Op::Pwrite => {
                let n = write_data(&mut self.rng, kind, guard, &mut self.buf);
                let at = (op == Op::Pwrite).then(|| ops::offset(&mut self.rng, size));
                let desc = format!("{name} {n} at {at:?}");
                let fd = &self.held[h].fd;
                let buf = &self.buf[..n];
                let _ = clock
                    .parking(!nonblocking(fd))
                    .call(i, op, kind, &desc, || match at {
                        Some(at) => nix::sys::uio::pwrite(fd, buf, at),
                        None => nix::unistd::write(fd, buf),
                    });
            }
            Op::Ioctl => self.ioctl(i, h, &name),
            Op::Poll => self.poll(i, h, &name),
            Op::Lseek => {
                let at = ops::offset(&mut self.rng, size);
                let whence = self
                    .rng
                    .pick(&[
                        Whence::SeekSet,
                        Whence::SeekCur,
                        Whence::SeekEnd,
                        Whence::SeekData,
                        Whence::SeekHole,
                    ])
                    .unwrap_or(Whence::SeekSet);
                let desc = format!("{name} {at} {whence:?}");
                let fd = &self.held[h].fd;
                let _ = clock.call(i, op, kind, &desc, || nix::unistd::lseek(fd, at, whence));
            }
            Op::Ftruncate => {
                let len = ops::offset(&mut self.rng, size);
                let desc = format!("{name} {len}");
                let fd = &self.held[h].fd;
                let _ = clock.call(i, op, kind, &desc, || nix::unistd::ftruncate(fd, len));
            }
            Op::Close => {
                let held = self.held.swap_remove(h);
                let _ = clock.call(i, op, kind, &name, || nix::unistd::close(held.fd));
            }
            Op::Dup => {
                let fd = &self.held[h].fd;
                let dup = clock.call(i, op, kind, &name, || {
                    nix::fcntl::fcntl(fd, FcntlArg::F_DUPFD_CLOEXEC(0))
                });
                if let Ok(raw) = dup {
                    // SAFETY: F_DUPFD_CLOEXEC returned a new descriptor that
                    // nothing else owns.
                    let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) };
                    let (path, size) = (self.held[h].path.clone(), self.held[h].size);
                    self.hold(Held {
                        fd,
                        kind,
                        guard,
                        path,
                        size,
                        expect,
                    });
                }
            }
            Op::Fstat => {
                let fd = &self.held[h].fd;
                let _ = clock.call(i, op, kind, &name, || nix::sys::stat::fstat(fd));
            }
            Op::Getdents => {
                let len = self
                    .rng
                    .pick(&[0usize, 1, 16, 24, 64, 280, 4096, 65536])
                    .unwrap_or(4096);
                let desc = format!("{name} {len}");
                let fd = self.held[h].fd.as_raw_fd();
                let buf = &mut self.buf[..len];
                let _ = clock.call(i, op, kind, &desc, || {
                    // SAFETY: `buf` is `len` writable bytes, all the call
                    // may fill.
                    let n = unsafe {
                        libc::syscall(libc::SYS_getdents64, fd, buf.as_mut_ptr(), buf.len())
                    };
                    Errno::result(n)
                });
            }
            Op::Fsync => {
                let fd = &self.held[h].fd;
                let _ = clock.call(i, op, kind, &name, || nix::unistd::fsync(fd));
            }
            Op::Fcntl => {
                let mut flags = OFlag::empty();
                for f in [
                    OFlag::O_NONBLOCK,
                    OFlag::O_APPEND,
                    OFlag::O_DIRECT,
                    OFlag::O_NOATIME,
                ] {
                    if self.rng.one_in(2) {
                        flags |= f;
                    }
                }
                let desc = format!("{name} F_SETFL {:#o}", flags.bits());
                let fd = &self.held[h].fd;
                let _ = clock.call(i, op, kind, &desc, || {
                    nix::fcntl::fcntl(fd, FcntlArg::F_SETFL(flags))
                });
            }
            Op::Sendfile => {
                // Into a file root may write freely only: bytes read from
                // a FIFO the user filled must not reach a control file.
                let d = self.rng.index(self.held.len());
                let dest = &self.held[d];
                if self.as_root && dest.guard != Guard::Free {
                    return;
                }
                let n = ops::size(&mut self.rng);
                let desc = format!("{name} {n} to fd {}", dest.fd.as_raw_fd());
                let (src, dst) = (&self.held[h].fd, &dest.fd);
                let _ = clock.parking(true).call(i, op, kind, &desc, || {
                    nix::sys::sendfile::sendfile(dst, src, None, n)
                });
            }
            Op::Open | Op::Fork | Op::Path => {}
        }
    }

    /// Compares what a read returned (`got` bytes at the start of the
    /// buffer, read at `pos`) with what the file holds; a difference is
    /// WRONG, reported with the seed that replays it.
    fn check(&self, i: usize, desc: &str, expect: Expect, pos: Option<i64>, got: usize) {
        let data = &self.buf[..got.min(self.buf.len())];
        let wrong = match expect {
            Expect::Unknown => None,
            Expect::Nothing => (got != 0).then(|| format!("{got} bytes from /scheme/null")),
            Expect::Zeros => data
                .iter()
                .position(|&b| b != 0)
                .map(|p| format!("byte {p} of {got} is not zero")),
            Expect::Pattern(seed) => pos.and_then(|pos| {
                scheme_fuzz::rng::pattern_mismatch(seed, pos as u64, data)
                    .map(|p| format!("byte {p} of {got} read at {pos} differs from the disk"))
            }),
        };
        if expect != Expect::Unknown {
            self.clock.slot.checked.fetch_add(1, Relaxed);
        }
        if let Some(why) = wrong {
            self.clock.slot.wrong.fetch_add(1, Relaxed);
            say(&format!(
                "WRONG worker {} seed {:#x} op {i}: {desc}: {why} (replay: scheme-fuzz --replay {:#x})",
                self.clock.worker, self.clock.seed, self.clock.seed
            ));
        }
    }

    /// A call on a path: the namespace operations no scheme serves
    /// (unlink, rmdir, mkdir, rename, link, symlink, mknod), attribute
    /// changes the runtime ignores (chmod, chown, times) or passes on
    /// (truncate: the scheme's `ftruncate`), and lookups. Root only looks
    /// at what it may not change (the check disk, the clock, names under
    /// `/scheme` itself).
    fn on_path(&mut self, i: usize) {
        let path = self.path();
        let other = self.path();
        let norm = normalize(&path);
        let kind = Kind::of(self.setup.root, &norm);
        let changes_allowed = |w: &Worker, p: &Path| {
            let n = normalize(p);
            let g = w
                .setup
                .rules
                .guard(Kind::of(w.setup.root, &n), &n, w.as_root);
            matches!(g, Guard::Free | Guard::NoControlWords)
        };
        let may_change = changes_allowed(self, &path) && changes_allowed(self, &other);
        let call = if may_change {
            self.rng.below(14)
        } else {
            11 + self.rng.below(3)
        };
        let mode = self.rng.below(0o10000) as u32;
        let len = ops::offset(&mut self.rng, 0);
        let names = [
            "unlink", "rmdir", "mkdir", "rename", "link", "symlink", "mknod", "chmod", "chown",
            "truncate", "setxattr", "stat", "readlink", "getxattr",
        ];
        let what = names.get(call as usize).copied().unwrap_or("stat");
        let desc = format!("{what} {} ({})", path.display(), other.display());
        let io = |r: std::io::Result<()>| {
            r.map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))
        };
        let _ = self.clock.call(i, Op::Path, kind, &desc, || match call {
            0 => io(std::fs::remove_file(&path)),
            1 => io(std::fs::remove_dir(&path)),
            2 => io(std::fs::create_dir(&path)),
            3 => io(std::fs::rename(&path, &other)),
            4 => io(std::fs::hard_link(&path, &other)),
            5 => io(std::os::unix::fs::symlink(&other, &path)),
            6 => nix::sys::stat::mknod(
                &path,
                nix::sys::stat::SFlag::from_bits_truncate(mode << 3 & libc::S_IFMT),
                Mode::from_bits_truncate(mode),
                0,
            ),
            7 => io(std::fs::set_permissions(
                &path,
                std::os::unix::fs::PermissionsExt::from_mode(mode),
            )),
            8 => io(std::os::unix::fs::chown(&path, Some(mode), Some(mode))),
            9 => nix::unistd::truncate(&path, len),
            10 => xattr(&path, true),
            11 => io(std::fs::symlink_metadata(&path).map(drop)),
            12 => io(std::fs::read_link(&path).map(drop)),
            _ => xattr(&path, false),
        });
    }

    fn ioctl(&mut self, i: usize, h: usize, name: &str) {
        let cmd = ops::ioctl_cmd(&mut self.rng);
        let valid = self.ioctl_buf.as_mut_ptr() as usize;
        let arg = match self.rng.below(6) {
            0 => 0,
            1 => 1 + self.rng.below(4095) as usize,
            2 => 0xdead_b000,
            3 => self.rng.next_u64() as usize,
            _ => valid,
        };
        if arg == valid {
            self.rng.fill(&mut self.ioctl_buf);
        }
        let desc = format!("{name} {cmd:#x} arg {arg:#x}");
        let fd = self.held[h].fd.as_raw_fd();
        let kind = self.held[h].kind;
        let _ = self.clock.call(i, Op::Ioctl, kind, &desc, || {
            // SAFETY: the argument is null, an address nothing is mapped at
            // (the kernel answers EFAULT), an integer, or `ioctl_buf`,
            // which outlives the call and is larger than any size an
            // `_IOC` command can carry.
            let r = unsafe { libc::ioctl(fd, cmd as libc::c_ulong, arg) };
            Errno::result(r)
        });
    }

    fn poll(&mut self, i: usize, h: usize, name: &str) {
        let events = [
            PollFlags::POLLIN,
            PollFlags::POLLOUT,
            PollFlags::POLLIN | PollFlags::POLLOUT,
            PollFlags::POLLPRI,
            PollFlags::from_bits_retain(libc::POLLRDHUP) | PollFlags::POLLIN,
        ];
        let others = self.rng.index(4);
        let mut picked = vec![h];
        picked.extend((0..others).map(|_| self.rng.index(self.held.len())));
        let flags: Vec<PollFlags> = picked
            .iter()
            .map(|_| self.rng.pick(&events).unwrap_or(PollFlags::POLLIN))
            .collect();
        let timeout_ms = self.rng.pick(&[0u16, 1, 10, 50, 200]).unwrap_or(0);
        let desc = format!("{name} +{others} files {timeout_ms} ms");
        let kind = self.held[h].kind;
        let mut fds: Vec<PollFd> = picked
            .iter()
            .zip(&flags)
            .map(|(&p, &f)| PollFd::new(self.held[p].fd.as_fd(), f))
            .collect();
        let _ = self.clock.call(i, Op::Poll, kind, &desc, || {
            nix::poll::poll(&mut fds, PollTimeout::from(timeout_ms))
        });
    }

    /// Forks a child that may read or write a held file once and exits
    /// with every file open; the worker sometimes closes one of its copies
    /// first, so the child's exit is the last close. The child's call is
    /// counted; the fork itself is an op of the worker.
    fn fork(&mut self, i: usize) {
        let child_seed = self.rng.next_u64();
        let close_one = !self.held.is_empty() && self.rng.one_in(2);
        let desc = format!("fork (holding {} files)", self.held.len());
        let kind = self.held.first().map(|h| h.kind).unwrap_or(Kind::Other);
        self.clock.slot.begin(i, &desc);
        let _ = std::io::Write::flush(&mut std::io::stdout());
        // SAFETY: the fuzzer is single-threaded, so the child may run any
        // code; it leaves with `_exit`, running no destructor twice.
        match unsafe { nix::unistd::fork() } {
            Ok(ForkResult::Child) => {
                self.child(child_seed);
                // SAFETY: ends the child at once, as a crashing client
                // would, with its files open.
                unsafe { libc::_exit(0) }
            }
            Ok(ForkResult::Parent { child }) => {
                if close_one {
                    let at = self.rng.index(self.held.len());
                    self.held.swap_remove(at);
                }
                let outcome = self.reap(i, child);
                self.clock.slot.end();
                self.clock.slot.forks.fetch_add(1, Relaxed);
                self.clock.slot.count(Op::Fork, kind, outcome);
            }
            Err(e) => {
                self.clock.slot.end();
                self.clock.slot.count(Op::Fork, kind, Err(e));
            }
        }
    }

    /// The child's life: maybe one read or write, then exit.
    fn child(&mut self, seed: u64) {
        let mut rng = Rng::new(seed);
        if self.held.is_empty() {
            return;
        }
        let h = rng.index(self.held.len());
        let (kind, guard) = (self.held[h].kind, self.held[h].guard);
        arm(self.setup.alarm);
        let (op, result) = match rng.below(3) {
            0 => {
                let n = ops::size(&mut rng);
                (
                    Op::Read,
                    nix::unistd::read(&self.held[h].fd, &mut self.buf[..n]).map(drop),
                )
            }
            1 => {
                let n = write_data(&mut rng, kind, guard, &mut self.buf);
                (
                    Op::Write,
                    nix::unistd::write(&self.held[h].fd, &self.buf[..n]).map(drop),
                )
            }
            _ => return,
        };
        arm(Duration::ZERO);
        self.clock.slot.count(op, kind, result);
    }

    /// Waits for the child, at most the bound; a child still there is a
    /// hang (killed), one killed by a signal a crash of the fuzzer.
    fn reap(&self, i: usize, child: Pid) -> nix::Result<()> {
        let started = Instant::now();
        loop {
            arm(self.setup.alarm);
            let status = waitpid(child, None);
            arm(Duration::ZERO);
            match status {
                Ok(WaitStatus::Exited(_, 0)) => return Ok(()),
                Ok(WaitStatus::Signaled(_, sig, _)) => {
                    self.clock.slot.crashes.fetch_add(1, Relaxed);
                    say(&format!(
                        "CRASH worker {} seed {:#x} op {i}: its forked child was killed by {sig:?} (replay: scheme-fuzz --replay {:#x})",
                        self.clock.worker, self.clock.seed, self.clock.seed
                    ));
                    return Err(Errno::ECHILD);
                }
                Ok(_) => return Err(Errno::ECHILD),
                Err(Errno::EINTR) if started.elapsed() <= self.setup.bound => continue,
                Err(Errno::EINTR) => {
                    self.clock.slot.slow.fetch_add(1, Relaxed);
                    say(&format!(
                        "HANG worker {} seed {:#x} op {i}: its forked child did not exit within {:?} (replay: scheme-fuzz --replay {:#x})",
                        self.clock.worker, self.clock.seed, self.setup.bound, self.clock.seed
                    ));
                    let _ = kill(child, Signal::SIGKILL);
                    let _ = waitpid(child, None);
                    return Err(Errno::ETIMEDOUT);
                }
                Err(e) => return Err(e),
            }
        }
    }
}
