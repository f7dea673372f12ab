//! The Scheme trait and its runtime.
//!
//! A daemon serves a small file namespace (`/scheme/<name>`) by implementing
//! [`Scheme`], shaped like Redox's `SchemeSync` and speaking `redox_syscall`
//! errors and flags. [`Server`] carries it over the Linux FUSE protocol on a
//! `/dev/fuse` fd that we speak ourselves (see `docs/scheme-protocol.md`):
//! single-threaded, non-blocking, meant to sit in the daemon's own event loop.
//! Requests that cannot finish now are parked and retried later (Redox
//! `SchemeBlock` semantics), or *deferred*: taken by the scheme and answered
//! when it reports a [`Completion`] (device I/O finished by an interrupt);
//! `poll`/`select`/`epoll` work through FUSE poll notifications; `ioctl`
//! reaches [`Scheme::call`].

pub mod abi;
pub mod convert;
mod daemon_main;
mod handles;
pub mod mount;
mod nodes;
mod server;
pub mod store;
#[cfg(any(test, feature = "test-util"))]
pub mod testing;

pub use convert::ioctl;
pub use daemon_main::{run_daemon, serve};
pub use handles::Handles;
pub use mount::{mount_fuse, notify_resend, unmount, RootKind};
pub use server::{Server, Status};

pub use syscall::data::Stat;
pub use syscall::dirent::DirentKind;
pub use syscall::error::{Error, Result};
pub use syscall::flag::EventFlags;

/// Copies the part of `data` at `offset` into `buf` and returns how many
/// bytes that was: the body of `read` for a file whose contents are a
/// snapshot held in memory (0 at or past the end, never an error).
pub fn read_at(data: &[u8], buf: &mut [u8], offset: u64) -> usize {
    let start = usize::try_from(offset)
        .unwrap_or(usize::MAX)
        .min(data.len());
    let n = buf.len().min(data.len() - start);
    buf[..n].copy_from_slice(&data[start..start + n]);
    n
}

use syscall::error::{EBADF, ENOSYS, ENOTDIR, ENOTTY};
use syscall::flag::O_STAT;

/// Who made a request (from `fuse_in_header`), for access checks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CallerCtx {
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
    /// The FUSE `unique` of the request being served (0 where there is
    /// none, e.g. a scheme called outside a request). A scheme that defers
    /// a request (`EINPROGRESS`) names it by this in its [`Completion`].
    pub request: u64,
}

/// The result of a deferred request (see [`Scheme::take_completions`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Completed {
    /// A deferred `read`: the bytes read (at most the size asked for).
    Read(Vec<u8>),
    /// A deferred `write`: how many bytes were taken.
    Written(usize),
    /// A deferred `fsync`.
    Synced,
    /// A deferred `ioctl` (`call`) that moves no data back: its return
    /// value.
    Called(usize),
}

/// One finished deferred request: `request` is the [`CallerCtx::request`]
/// the scheme saw when it returned `EINPROGRESS`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    pub request: u64,
    pub result: Result<Completed>,
}

/// What a successful [`Scheme::openat`] hands back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenResult {
    /// The scheme's handle id; later calls name the file by it.
    pub id: usize,
    /// A stream has no positions (pipe-like): offsets are meaningless and
    /// `lseek` fails (`FOPEN_NONSEEKABLE | FOPEN_STREAM`).
    pub stream: bool,
}

impl OpenResult {
    /// A seekable file (offsets are passed to read and write).
    pub fn file(id: usize) -> OpenResult {
        OpenResult { id, stream: false }
    }
    /// A stream (FIFO, queue, socket-like).
    pub fn stream(id: usize) -> OpenResult {
        OpenResult { id, stream: true }
    }
}

/// One directory entry produced by [`Scheme::getdents`].
#[derive(Debug, Clone, Copy)]
pub struct DirEntry<'a> {
    /// The entry's name (one path component).
    pub name: &'a str,
    pub kind: DirentKind,
    /// Opaque position *after* this entry: passed back as `opaque_offset`
    /// to continue the listing. Must be non-zero (0 means "start").
    pub next_opaque_id: u64,
}

/// Where [`Scheme::getdents`] puts entries. It holds as many as fit in the
/// caller's buffer; [`DirentBuf::entry`] returns `false` once full, and the
/// scheme should stop there (the runtime asks again from the last offset).
#[derive(Debug)]
pub struct DirentBuf {
    pub(crate) entries: Vec<(String, DirentKind, u64)>,
    pub(crate) space: usize,
}

impl DirentBuf {
    pub(crate) fn new(space: usize) -> DirentBuf {
        DirentBuf {
            entries: Vec::new(),
            space,
        }
    }

    /// Lists a directory whose entries have stable indexes (a fixed set of
    /// files, or a map that only grows): `opaque_offset` is the index of the
    /// next entry to give, and each entry's `next_opaque_id` its index + 1.
    pub fn list<'a>(
        &mut self,
        opaque_offset: u64,
        entries: impl IntoIterator<Item = (&'a str, DirentKind)>,
    ) {
        let skip = usize::try_from(opaque_offset).unwrap_or(usize::MAX);
        for (i, (name, kind)) in entries.into_iter().enumerate().skip(skip) {
            let entry = DirEntry {
                name,
                kind,
                next_opaque_id: i as u64 + 1,
            };
            if !self.entry(entry) {
                break;
            }
        }
    }

    /// Adds an entry; `false` (and nothing added) if it does not fit.
    pub fn entry(&mut self, entry: DirEntry<'_>) -> bool {
        let need = abi::dirent_size(entry.name.len());
        if need > self.space {
            return false;
        }
        self.space -= need;
        self.entries
            .push((entry.name.to_owned(), entry.kind, entry.next_opaque_id));
        true
    }
}

/// A scheme: the file namespace a daemon serves. Every method but
/// [`Scheme::openat`] has a default, so a small scheme implements only what
/// it needs. Errors are Redox errno values; the runtime translates them.
///
/// `read` and `write` returning `EAGAIN` mean "not now": the runtime parks
/// the request (unless the caller set `O_NONBLOCK`) and retries it after
/// the next event, so a scheme never blocks and never keeps its own queue
/// of waiting callers.
///
/// `read`, `write` and `fsync` returning `EINPROGRESS` mean "taken, I will
/// finish it later" (a request submitted to hardware): the runtime sends no
/// reply and never retries it; the scheme later hands a [`Completion`]
/// naming `ctx.request` out of [`Scheme::take_completions`]. A deferred
/// `read` gives its data in [`Completed::Read`] (what it wrote into `buf`
/// is ignored). `O_NONBLOCK` does not change this.
pub trait Scheme {
    /// Opens `path` (relative to the scheme root, `""` is the root itself,
    /// components separated by `/`). `flags` are Redox `O_*` flags; `O_STAT`
    /// asks only for a handle to `fstat`, never for data access.
    fn openat(&mut self, path: &str, flags: usize, ctx: &CallerCtx) -> Result<OpenResult>;

    /// Attributes of `path` without an open file (path lookup, `stat`).
    /// Default: `openat(O_STAT)`, `fstat`, `on_close`.
    fn stat_path(&mut self, path: &str, stat: &mut Stat, ctx: &CallerCtx) -> Result<()> {
        let opened = self.openat(path, O_STAT, ctx)?;
        let res = self.fstat(opened.id, stat, ctx);
        self.on_close(opened.id);
        res
    }

    /// Reads into `buf`. `Ok(0)` is end of file; `Err(EAGAIN)` parks.
    /// `fcntl_flags` are the file's current Redox status flags (`O_NONBLOCK`, …).
    fn read(
        &mut self,
        id: usize,
        buf: &mut [u8],
        offset: u64,
        fcntl_flags: u32,
        ctx: &CallerCtx,
    ) -> Result<usize> {
        let _ = (id, buf, offset, fcntl_flags, ctx);
        Err(Error::new(EBADF))
    }

    /// Writes from `buf`, returning how much was taken; `Err(EAGAIN)` parks.
    fn write(
        &mut self,
        id: usize,
        buf: &[u8],
        offset: u64,
        fcntl_flags: u32,
        ctx: &CallerCtx,
    ) -> Result<usize> {
        let _ = (id, buf, offset, fcntl_flags, ctx);
        Err(Error::new(EBADF))
    }

    /// Fills `stat`. Only the type bits of `st_mode` (`MODE_DIR` or anything
    /// else = regular file), the permission bits, size, owner and times are
    /// passed on; the runtime assigns inode numbers itself.
    fn fstat(&mut self, id: usize, stat: &mut Stat, ctx: &CallerCtx) -> Result<()> {
        let _ = (id, stat, ctx);
        Err(Error::new(EBADF))
    }

    /// Writes the handle's full path into `buf` (Redox `fpath`). Not reachable
    /// through FUSE; kept for schemes shared with Redox code.
    fn fpath(&mut self, id: usize, buf: &mut [u8], ctx: &CallerCtx) -> Result<usize> {
        let _ = (id, buf, ctx);
        Err(Error::new(ENOSYS))
    }

    /// Lists a directory handle from `opaque_offset` (0 = start) into `buf`.
    fn getdents(
        &mut self,
        id: usize,
        buf: &mut DirentBuf,
        opaque_offset: u64,
        ctx: &CallerCtx,
    ) -> Result<()> {
        let _ = (id, buf, opaque_offset, ctx);
        Err(Error::new(ENOTDIR))
    }

    /// Which of `flags` are ready *now*. Default: always ready, like a
    /// regular file.
    fn fevent(&mut self, id: usize, flags: EventFlags, ctx: &CallerCtx) -> Result<EventFlags> {
        let _ = (id, ctx);
        Ok(flags)
    }

    /// `Err(EINPROGRESS)` defers the reply like `read` and `write`.
    fn fsync(&mut self, id: usize, ctx: &CallerCtx) -> Result<()> {
        let _ = (id, ctx);
        Ok(())
    }

    /// Moves the deferred requests that finished since the last call into
    /// `out`. The runtime calls this at the end of every `process()` and
    /// `wake()` (and in `complete()`), so a daemon collects device
    /// completions in its IRQ handler and then calls `wake()`. A completion
    /// naming a request that is not deferred (unknown, already answered) is
    /// logged and ignored.
    fn take_completions(&mut self, out: &mut Vec<Completion>) {
        let _ = out;
    }

    fn ftruncate(&mut self, id: usize, len: u64, ctx: &CallerCtx) -> Result<()> {
        let _ = (id, len, ctx);
        Err(Error::new(syscall::error::EINVAL))
    }

    /// `ioctl`: `metadata[0]` is the command, `metadata[1]` the raw argument.
    /// `payload` holds the caller's data for `_IOW`/`_IOWR` commands and is
    /// copied back for `_IOR`/`_IOWR` (its size is the command's `_IOC_SIZE`).
    /// The returned value becomes `ioctl`'s return value. `Err(EINPROGRESS)`
    /// defers the reply (finished with [`Completed::Called`]) for a command
    /// that moves no data back (`_IO`, `_IOW`); for one that does, it fails
    /// with `EIO`.
    fn call(
        &mut self,
        id: usize,
        payload: &mut [u8],
        metadata: &[u64],
        ctx: &CallerCtx,
    ) -> Result<usize> {
        let _ = (id, payload, metadata, ctx);
        Err(Error::new(ENOTTY))
    }

    /// A write on stream `id` comes again after a restart: the daemon's
    /// previous instance had read it and died before answering, so it may
    /// already have had its effect. `Ok` runs it again; an error answers it
    /// instead. Default: `EIO`, since a stream write is not known to be
    /// idempotent (a network scheme counts the frame as lost).
    fn resent_stream_write(&mut self, id: usize) -> Result<()> {
        let _ = id;
        Err(Error::new(syscall::error::EIO))
    }

    /// The last reference to `id` is gone. Any parked request on it has
    /// already been answered, and every deferred one has completed (the
    /// runtime holds `on_close` back until then).
    fn on_close(&mut self, id: usize) {
        let _ = id;
    }
}
