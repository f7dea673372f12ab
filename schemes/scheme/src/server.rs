//! The FUSE runtime: reads requests from a non-blocking `/dev/fuse` fd,
//! calls the [`Scheme`], answers, parks what cannot finish, answers
//! deferred requests when the scheme completes them and sends poll
//! notifications. Single-threaded; the daemon owns the event loop.
//!
//! What waits (parked and deferred requests, poll waiters) is kept in
//! `server/waiters.rs`; the host tests of the runtime are in
//! `server/tests.rs`; what survives a restart is in `store.rs`.

use std::collections::HashMap;
use std::io::{self, IoSlice};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use log::{debug, trace, warn};

use rustix::event::{PollFd, PollFlags};
use rustix::fs::OFlags;
use rustix::io::Errno;
use syscall::error::{
    EAGAIN, EBADF, EINPROGRESS, EINTR, EINVAL, EIO, ENOENT, ENOSYS, ENOTTY, EPROTO, EWOULDBLOCK,
};
use syscall::flag::{MODE_DIR, MODE_TYPE, O_DIRECTORY, O_NONBLOCK, O_WRONLY};
use waiters::{DeferredKind, Interrupted, Parked, ParkedOp, Poller, Waiters};
use zerocopy::{FromBytes, Immutable, IntoBytes};

use crate::abi::{self, *};
use crate::convert::{self, linux};
use crate::nodes::{join, Nodes};
use crate::store::{Change, OpenRecord, Store};
use crate::{CallerCtx, Completed, Completion, DirentBuf, DirentKind, Error, Result, Scheme, Stat};

/// What [`Server::process`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Keep serving.
    Running,
    /// The mount is gone (the fd reads `ENODEV`): the daemon should exit.
    Unmounted,
}

/// One open file as the kernel knows it (by the `fh` the runtime gave
/// out): the scheme's handle id behind it.
#[derive(Debug, Clone, Copy)]
enum Handle {
    Open {
        id: usize,
        stream: bool,
    },
    /// Opened by an earlier instance and not reopened by this one (the
    /// path is gone, the scheme refused): requests on it get `EIO`.
    Lost,
}

/// Serves one [`Scheme`] on one FUSE connection.
pub struct Server<S: Scheme> {
    fd: OwnedFd,
    scheme: S,
    /// Kernel `fh` → scheme handle. The runtime hands out its own `fh`s so
    /// a new instance can reopen an earlier one's handles under the same
    /// numbers the kernel holds.
    handles: HashMap<u64, Handle>,
    next_fh: u64,
    /// What a later instance must find: node ids, handles, poll handles.
    store: Store,
    rbuf: Vec<u8>,
    iobuf: Vec<u8>,
    nodes: Nodes,
    /// Parked and deferred requests, poll waiters.
    waiters: Waiters,
    /// Reused buffer for `take_completions`.
    completions: Vec<Completion>,
    /// Negotiated minor version; before INIT (e.g. a restarted daemon on an
    /// already initialised connection) we assume our own.
    minor: u32,
}

impl<S: Scheme> AsFd for Server<S> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl<S: Scheme> Server<S> {
    /// Takes a `/dev/fuse` fd (mounted by the registrar) and makes it
    /// non-blocking. Does not block: INIT is just the first request.
    pub fn new(fd: OwnedFd, scheme: S) -> io::Result<Server<S>> {
        Server::with_store(fd, scheme, Store::open(None))
    }

    /// Serves the scheme init registered for this daemon. On a connection
    /// that outlived an earlier instance (`reg.resumed`), takes it over:
    /// reads the earlier instance's node ids and handles back from the state
    /// store, opens those handles again in `scheme`, wakes the kernel's poll
    /// sleepers (they poll again, and so register with us), and asks the
    /// kernel to resend every request the dead instance had read and not
    /// answered.
    pub fn from_registration(reg: daemon::Registration, scheme: S) -> io::Result<Server<S>> {
        let resumed = reg.resumed;
        let mut server = Server::with_store(reg.fuse, scheme, Store::open(reg.state))?;
        if resumed {
            server.resume();
            crate::notify_resend(server.fd.as_fd())?;
        }
        Ok(server)
    }

    fn with_store(fd: OwnedFd, scheme: S, store: Store) -> io::Result<Server<S>> {
        let fl = rustix::fs::fcntl_getfl(&fd)?;
        rustix::fs::fcntl_setfl(&fd, fl | OFlags::NONBLOCK)?;
        Ok(Server {
            fd,
            scheme,
            handles: HashMap::new(),
            next_fh: 0,
            store,
            rbuf: vec![0; REQUEST_BUFFER_SIZE],
            iobuf: vec![0; MAX_WRITE],
            nodes: Nodes::new(),
            waiters: Waiters::default(),
            completions: Vec::new(),
            minor: KERNEL_MINOR_VERSION,
        })
    }

    /// Rebuilds what the store recorded (see [`Server::from_registration`]).
    fn resume(&mut self) {
        let tables = self.store.tables().clone();
        if let Some(m) = tables.minor {
            self.minor = m;
        }
        self.nodes = Nodes::restore(&tables.nodes);
        let mut lost = 0;
        for (&fh, o) in &tables.opens {
            let ctx = CallerCtx {
                uid: o.uid,
                gid: o.gid,
                pid: o.pid,
                request: 0,
            };
            let h = match self.scheme.openat(&o.path, o.flags, &ctx) {
                Ok(opened) => Handle::Open {
                    id: opened.id,
                    stream: o.stream,
                },
                Err(e) => {
                    warn!("fuse: handle {fh} ({:?}) not reopened: {e}", o.path);
                    lost += 1;
                    Handle::Lost
                }
            };
            self.handles.insert(fh, h);
        }
        self.next_fh = tables.next_fh().unwrap_or(0);
        for &kh in tables.polls.keys() {
            let n = NotifyPollWakeupOut { kh };
            self.send(0, FUSE_NOTIFY_POLL, &[n.as_bytes()]);
            self.store.record(Change::Unpoll(kh));
        }
        log::info!(
            "fuse: took over the connection: {} nodes, {} handles ({lost} lost), {} poll sleepers woken",
            tables.nodes.len(),
            tables.opens.len(),
            tables.polls.len()
        );
    }

    /// The scheme's handle for a write. A write the kernel sends again
    /// (its earlier instance had read it and died before answering) on a
    /// stream may already have had its effect (a frame on the wire): the
    /// scheme decides ([`Scheme::resent_stream_write`]); a positioned write
    /// just runs again, as it is idempotent.
    fn writable(&mut self, p: &Parked) -> Result<usize> {
        let id = self.sid(p.fh)?;
        if p.unique & FUSE_UNIQUE_RESEND != 0 {
            if let Some(Handle::Open { stream: true, .. }) = self.handles.get(&p.fh) {
                self.scheme.resent_stream_write(id)?;
            }
        }
        Ok(id)
    }

    /// The scheme's handle behind kernel `fh`.
    fn sid(&self, fh: u64) -> Result<usize> {
        match self.handles.get(&fh) {
            Some(Handle::Open { id, .. }) => Ok(*id),
            Some(Handle::Lost) => Err(Error::new(EIO)),
            None => Err(Error::new(EBADF)),
        }
    }

    pub fn scheme(&self) -> &S {
        &self.scheme
    }

    pub fn scheme_mut(&mut self) -> &mut S {
        &mut self.scheme
    }

    /// Number of parked requests (diagnostics and tests).
    pub fn parked(&self) -> usize {
        self.waiters.parked()
    }

    /// Number of deferred requests, taken by the scheme and not yet
    /// completed (diagnostics and tests).
    pub fn deferred(&self) -> usize {
        self.waiters.deferred()
    }

    /// Number of poll handles waiting for notifications.
    pub fn pollers(&self) -> usize {
        self.waiters.pollers()
    }

    /// Handles every request available now, then retries parked requests
    /// and sends poll notifications. Call when the fd is readable.
    pub fn process(&mut self) -> io::Result<Status> {
        loop {
            match rustix::io::read(&self.fd, &mut self.rbuf) {
                Ok(0) => break,
                Ok(n) => {
                    // Take the buffer out so handlers can borrow `self`.
                    let rbuf = std::mem::take(&mut self.rbuf);
                    self.handle(&rbuf[..n.min(rbuf.len())]);
                    self.rbuf = rbuf;
                    // Retry after every request, so a parked reader is
                    // served before a newer one (FIFO fairness).
                    self.wake();
                }
                Err(Errno::AGAIN) => break,
                // ENOENT: the request was interrupted before we got it.
                Err(Errno::INTR) | Err(Errno::NOENT) => continue,
                Err(Errno::NODEV) => return Ok(Status::Unmounted),
                Err(e) => return Err(e.into()),
            }
        }
        self.wake();
        Ok(Status::Running)
    }

    /// Answers completed deferred requests, retries parked requests
    /// (oldest first) and re-checks poll waiters. Call after any event that
    /// may have changed the scheme's state from outside a request (an IRQ,
    /// a timer).
    pub fn wake(&mut self) {
        self.complete();
        self.retry_parked();
        // A retried request may have completed at once.
        self.complete();
        self.check_pollers();
    }

    /// Collects the scheme's completions and answers the deferred requests
    /// they name. Called by `process()` and `wake()`; a daemon may call it
    /// on its own right after its IRQ handler.
    pub fn complete(&mut self) {
        let mut done = std::mem::take(&mut self.completions);
        self.scheme.take_completions(&mut done);
        for c in done.drain(..) {
            self.finish(c);
        }
        // Keep the allocation for next time.
        self.completions = done;
    }

    fn finish(&mut self, c: Completion) {
        let Some(d) = self.waiters.finish(c.request) else {
            warn!(
                "fuse: completion for request {} that is not deferred: ignored",
                c.request
            );
            return;
        };
        match (d.kind, c.result) {
            (_, Err(e)) => self.reply_err(c.request, e.errno),
            (DeferredKind::Read { size }, Ok(Completed::Read(data))) if data.len() <= size => {
                self.send(c.request, 0, &[&data])
            }
            (DeferredKind::Write { size }, Ok(Completed::Written(n))) if n <= size => self.reply(
                c.request,
                &WriteOut {
                    size: n as u32,
                    padding: 0,
                },
            ),
            (DeferredKind::Fsync, Ok(Completed::Synced)) => self.reply_empty(c.request),
            (DeferredKind::Call, Ok(Completed::Called(v))) => self.reply_ioctl(c.request, v, &[]),
            (kind, Ok(got)) => {
                warn!(
                    "fuse: request {} ({kind:?}) completed with a mismatched result {:?}",
                    c.request,
                    CompletedSummary(&got)
                );
                self.reply_err(c.request, EIO);
            }
        }
        if let Some(fh) = d.close {
            self.close_handle(fh);
        }
    }

    /// Blocking convenience loop: serves until the mount goes away.
    pub fn run(mut self) -> io::Result<()> {
        loop {
            if self.process()? == Status::Unmounted {
                return Ok(());
            }
            let mut fds = [PollFd::new(&self.fd, PollFlags::IN)];
            match rustix::event::poll(&mut fds, None) {
                Ok(_) | Err(Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    // ---- transport ----

    fn send(&self, unique: u64, error: i32, parts: &[&[u8]]) {
        let len = std::mem::size_of::<OutHeader>() + parts.iter().map(|p| p.len()).sum::<usize>();
        let header = OutHeader {
            len: len as u32,
            error,
            unique,
        };
        let mut iov = Vec::with_capacity(parts.len() + 1);
        iov.push(IoSlice::new(header.as_bytes()));
        iov.extend(parts.iter().map(|p| IoSlice::new(p)));
        match rustix::io::writev(&self.fd, &iov) {
            Ok(_) => {}
            // The caller is gone (killed, or the request was aborted).
            Err(Errno::NOENT) => debug!("fuse: reply to {unique} dropped: request gone"),
            Err(e) => warn!("fuse: reply to {unique} failed: {e}"),
        }
    }

    fn reply<T: IntoBytes + Immutable>(&self, unique: u64, out: &T) {
        self.send(unique, 0, &[out.as_bytes()]);
    }

    fn reply_empty(&self, unique: u64) {
        self.send(unique, 0, &[]);
    }

    fn reply_err(&self, unique: u64, errno: i32) {
        self.send(unique, -convert::errno_to_linux(errno), &[]);
    }

    // ---- dispatch ----

    fn handle(&mut self, bytes: &[u8]) {
        let req = match Request::parse(bytes) {
            Ok(req) => req,
            Err(ParseError::NoHeader) => {
                warn!(
                    "fuse: dropped a {}-byte request without a header",
                    bytes.len()
                );
                return;
            }
            Err(ParseError::BadLength { header }) => {
                warn!(
                    "fuse: request {} (opcode {}) says {} bytes, read {}",
                    header.unique,
                    header.opcode,
                    header.len,
                    bytes.len()
                );
                self.reply_err(header.unique, EIO);
                return;
            }
        };
        let h = req.header;
        trace!(
            "fuse: request {} opcode {} node {} from pid {}",
            h.unique,
            h.opcode,
            h.nodeid,
            h.pid
        );
        let ctx = CallerCtx {
            uid: h.uid,
            gid: h.gid,
            pid: h.pid,
            request: h.unique,
        };
        let res = match h.opcode {
            FUSE_INIT => self.op_init(&req),
            FUSE_DESTROY => {
                self.reply_empty(h.unique);
                Ok(())
            }
            FUSE_LOOKUP => self.op_lookup(&req, &ctx),
            FUSE_FORGET => {
                if let Some((f, _)) = req.arg::<ForgetIn>() {
                    self.forget(h.nodeid, f.nlookup);
                }
                Ok(())
            }
            FUSE_BATCH_FORGET => {
                self.op_batch_forget(&req);
                Ok(())
            }
            FUSE_GETATTR => self.op_getattr(&req, &ctx),
            FUSE_SETATTR => self.op_setattr(&req, &ctx),
            FUSE_OPEN => self.op_open(&req, &ctx, false),
            FUSE_OPENDIR => self.op_open(&req, &ctx, true),
            FUSE_CREATE => self.op_create(&req, &ctx),
            FUSE_READ => self.op_read(&req, &ctx),
            FUSE_WRITE => self.op_write(&req, &ctx),
            FUSE_FLUSH => {
                self.reply_empty(h.unique);
                Ok(())
            }
            FUSE_RELEASE | FUSE_RELEASEDIR => self.op_release(&req),
            FUSE_FSYNC | FUSE_FSYNCDIR => self.op_fsync(&req, &ctx),
            FUSE_READDIR => self.op_readdir(&req, &ctx),
            FUSE_STATFS => {
                let st = Kstatfs {
                    bsize: 4096,
                    frsize: 4096,
                    namelen: 255,
                    ..Default::default()
                };
                self.reply(h.unique, &st);
                Ok(())
            }
            FUSE_ACCESS => match self.nodes.path(h.nodeid) {
                // Access is decided at open by the scheme, from the caller.
                Some(_) => {
                    self.reply_empty(h.unique);
                    Ok(())
                }
                None => Err(Error::new(ENOENT)),
            },
            FUSE_IOCTL => self.op_ioctl(&req, &ctx),
            FUSE_POLL => self.op_poll(&req, &ctx),
            FUSE_INTERRUPT => {
                self.op_interrupt(&req);
                Ok(())
            }
            op => {
                debug!("fuse: opcode {op} not implemented");
                Err(Error::new(ENOSYS))
            }
        };
        if let Err(e) = res {
            self.reply_err(h.unique, e.errno);
        }
    }

    fn path_of(&self, nodeid: u64) -> Result<String> {
        self.nodes
            .path(nodeid)
            .map(str::to_owned)
            .ok_or(Error::new(ENOENT))
    }

    fn op_init(&mut self, req: &Request<'_>) -> Result<()> {
        let (init, rest) = req.arg::<InitIn>().ok_or(Error::new(EINVAL))?;
        let unique = req.header.unique;
        let flags2 = match rest.get(..4) {
            Some(b) if init.flags & FUSE_INIT_EXT != 0 => {
                u32::from_le_bytes([b[0], b[1], b[2], b[3]])
            }
            _ => 0,
        };
        debug!(
            "fuse: kernel offers {}.{}, flags {:#x}, flags2 {flags2:#x}",
            init.major, init.minor, init.flags
        );
        if init.major < KERNEL_VERSION {
            warn!(
                "fuse: kernel protocol {}.{} is too old",
                init.major, init.minor
            );
            return Err(Error::new(EPROTO));
        }
        if init.major > KERNEL_VERSION {
            // The kernel retries INIT with our major.
            let out = InitOut {
                major: KERNEL_VERSION,
                minor: KERNEL_MINOR_VERSION,
                ..Default::default()
            };
            self.reply(unique, &out);
            return Ok(());
        }
        self.minor = init.minor.min(KERNEL_MINOR_VERSION);
        self.store.record(Change::Init(self.minor));
        let out = InitOut {
            major: KERNEL_VERSION,
            minor: self.minor,
            max_readahead: init.max_readahead,
            flags: init.flags & (FUSE_ATOMIC_O_TRUNC | FUSE_BIG_WRITES | FUSE_MAX_PAGES),
            max_background: 16,
            congestion_threshold: 12,
            max_write: MAX_WRITE as u32,
            time_gran: 1,
            max_pages: MAX_PAGES,
            ..Default::default()
        };
        // Before 7.23 the reply ended after max_write.
        let bytes = out.as_bytes();
        let len = if self.minor < 23 { 24 } else { bytes.len() };
        self.send(unique, 0, &[&bytes[..len]]);
        Ok(())
    }

    fn child_path(&self, req: &Request<'_>, name: &[u8]) -> Result<String> {
        let parent = self.path_of(req.header.nodeid)?;
        let name = std::str::from_utf8(name).map_err(|_| Error::new(ENOENT))?;
        join(&parent, name).ok_or(Error::new(ENOENT))
    }

    fn entry_out(&mut self, path: &str, stat: &Stat) -> EntryOut {
        let (id, new) = self.nodes.lookup(path);
        if new {
            self.store.record(Change::Node(id, path));
        }
        // Validity 0: device state changes under the kernel, never cache.
        EntryOut {
            nodeid: id,
            attr: attr_from_stat(stat, id),
            ..Default::default()
        }
    }

    fn op_lookup(&mut self, req: &Request<'_>, ctx: &CallerCtx) -> Result<()> {
        let name = c_name(req.body).ok_or(Error::new(EINVAL))?;
        let path = self.child_path(req, name)?;
        let mut stat = Stat::default();
        self.scheme.stat_path(&path, &mut stat, ctx)?;
        let out = self.entry_out(&path, &stat);
        self.reply(req.header.unique, &out);
        Ok(())
    }

    fn forget(&mut self, id: u64, n: u64) {
        if self.nodes.forget(id, n) {
            self.store.record(Change::Forget(id));
        }
    }

    fn op_batch_forget(&mut self, req: &Request<'_>) {
        let Some((b, mut rest)) = req.arg::<BatchForgetIn>() else {
            warn!("fuse: short BATCH_FORGET");
            return;
        };
        for _ in 0..b.count {
            let Ok((one, tail)) = ForgetOne::read_from_prefix(rest) else {
                warn!("fuse: BATCH_FORGET shorter than its count");
                return;
            };
            self.forget(one.nodeid, one.nlookup);
            rest = tail;
        }
    }

    fn attr_out(&self, nodeid: u64, stat: &Stat) -> AttrOut {
        AttrOut {
            attr: attr_from_stat(stat, nodeid),
            ..Default::default()
        }
    }

    fn op_getattr(&mut self, req: &Request<'_>, ctx: &CallerCtx) -> Result<()> {
        let h = req.header;
        let mut stat = Stat::default();
        match req.arg::<GetattrIn>() {
            Some((g, _)) if g.getattr_flags & FUSE_GETATTR_FH != 0 => {
                self.scheme.fstat(self.sid(g.fh)?, &mut stat, ctx)?
            }
            _ => {
                let path = self.path_of(h.nodeid)?;
                self.scheme.stat_path(&path, &mut stat, ctx)?
            }
        }
        let out = self.attr_out(h.nodeid, &stat);
        self.reply(h.unique, &out);
        Ok(())
    }

    fn op_setattr(&mut self, req: &Request<'_>, ctx: &CallerCtx) -> Result<()> {
        let h = req.header;
        let (s, _) = req.arg::<SetattrIn>().ok_or(Error::new(EINVAL))?;
        let with_fh = s.valid & FATTR_FH != 0;
        let path = self.path_of(h.nodeid)?;
        // Only the size means something to a scheme; mode, owner and times
        // are accepted and ignored so that tools like `touch` work.
        if s.valid & FATTR_SIZE != 0 {
            if with_fh {
                self.scheme.ftruncate(self.sid(s.fh)?, s.size, ctx)?;
            } else {
                let opened = self.scheme.openat(&path, O_WRONLY, ctx)?;
                let res = self.scheme.ftruncate(opened.id, s.size, ctx);
                self.scheme.on_close(opened.id);
                res?;
            }
        }
        let mut stat = Stat::default();
        if with_fh {
            self.scheme.fstat(self.sid(s.fh)?, &mut stat, ctx)?;
        } else {
            self.scheme.stat_path(&path, &mut stat, ctx)?;
        }
        let out = self.attr_out(h.nodeid, &stat);
        self.reply(h.unique, &out);
        Ok(())
    }

    fn open_out(fh: u64, opened: crate::OpenResult, dir: bool) -> OpenOut {
        let mut open_flags = 0;
        if !dir {
            // Device data is never cached by the kernel, so there is
            // nothing to flush on close (see FOPEN_NOFLUSH).
            open_flags |= FOPEN_DIRECT_IO | FOPEN_NOFLUSH;
            if opened.stream {
                open_flags |= FOPEN_NONSEEKABLE | FOPEN_STREAM;
            } else {
                // Positioned writes need no kernel-side serialization: the
                // scheme orders overlapping ones itself (see the doc).
                open_flags |= FOPEN_PARALLEL_DIRECT_WRITES;
            }
        }
        OpenOut {
            fh,
            open_flags,
            padding: 0,
        }
    }

    fn op_open(&mut self, req: &Request<'_>, ctx: &CallerCtx, dir: bool) -> Result<()> {
        let (o, _) = req.arg::<OpenIn>().ok_or(Error::new(EINVAL))?;
        let path = self.path_of(req.header.nodeid)?;
        let mut flags = convert::open_flags_from_linux(o.flags);
        if dir {
            flags |= O_DIRECTORY;
        }
        let opened = self.scheme.openat(&path, flags, ctx)?;
        let fh = self.new_handle(opened, flags, &path, ctx);
        self.reply(req.header.unique, &Self::open_out(fh, opened, dir));
        Ok(())
    }

    /// Gives the kernel a new `fh` for a handle the scheme opened, and
    /// records it for a later instance.
    fn new_handle(
        &mut self,
        opened: crate::OpenResult,
        flags: usize,
        path: &str,
        ctx: &CallerCtx,
    ) -> u64 {
        let fh = self.next_fh;
        self.next_fh += 1;
        self.handles.insert(
            fh,
            Handle::Open {
                id: opened.id,
                stream: opened.stream,
            },
        );
        self.store.record(Change::Open(
            fh,
            OpenRecord {
                // Creation and truncation happened once; a reopen only opens.
                flags: flags
                    & !(syscall::flag::O_CREAT | syscall::flag::O_EXCL | syscall::flag::O_TRUNC),
                stream: opened.stream,
                uid: ctx.uid,
                gid: ctx.gid,
                pid: ctx.pid,
                path: path.to_owned(),
            },
        ));
        fh
    }

    /// The kernel released `fh`: the scheme's handle closes.
    fn close_handle(&mut self, fh: u64) {
        if let Some(Handle::Open { id, .. }) = self.handles.remove(&fh) {
            self.scheme.on_close(id);
        }
        self.store.record(Change::Close(fh));
    }

    fn op_create(&mut self, req: &Request<'_>, ctx: &CallerCtx) -> Result<()> {
        let (c, rest) = req.arg::<CreateIn>().ok_or(Error::new(EINVAL))?;
        let name = c_name(rest).ok_or(Error::new(EINVAL))?;
        let path = self.child_path(req, name)?;
        let flags = convert::open_flags_from_linux(c.flags) | syscall::flag::O_CREAT;
        let opened = self.scheme.openat(&path, flags, ctx)?;
        let mut stat = Stat::default();
        if let Err(e) = self.scheme.fstat(opened.id, &mut stat, ctx) {
            self.scheme.on_close(opened.id);
            return Err(e);
        }
        let entry = self.entry_out(&path, &stat);
        let fh = self.new_handle(opened, flags, &path, ctx);
        let open = Self::open_out(fh, opened, false);
        self.send(req.header.unique, 0, &[entry.as_bytes(), open.as_bytes()]);
        Ok(())
    }

    fn op_read(&mut self, req: &Request<'_>, ctx: &CallerCtx) -> Result<()> {
        let (r, _) = req.arg::<ReadIn>().ok_or(Error::new(EINVAL))?;
        let p = Parked {
            unique: req.header.unique,
            fh: r.fh,
            ctx: *ctx,
            op: ParkedOp::Read {
                offset: r.offset,
                // The kernel never asks for more than max_pages; a larger
                // size just gets a short read.
                size: (r.size as usize).min(MAX_WRITE),
                fcntl: convert::fcntl_flags_from_linux(r.flags),
            },
        };
        if !self.attempt(&p, None) {
            self.waiters.park(p);
        }
        Ok(())
    }

    fn op_write(&mut self, req: &Request<'_>, ctx: &CallerCtx) -> Result<()> {
        let (w, data) = req.arg::<WriteIn>().ok_or(Error::new(EINVAL))?;
        let data = data.get(..w.size as usize).ok_or(Error::new(EINVAL))?;
        let fcntl = convert::fcntl_flags_from_linux(w.flags);
        let mut p = Parked {
            unique: req.header.unique,
            fh: w.fh,
            ctx: *ctx,
            op: ParkedOp::Write {
                offset: w.offset,
                data: Vec::new(),
                fcntl,
            },
        };
        // First try straight from the request buffer; copy only to park.
        if !self.attempt(&p, Some(data)) {
            if let ParkedOp::Write { data: d, .. } = &mut p.op {
                *d = data.to_vec();
            }
            self.waiters.park(p);
        }
        Ok(())
    }

    /// Runs a read or write once. Returns `true` when it was answered
    /// (data or error), `false` when it must stay parked.
    fn attempt(&mut self, p: &Parked, write_data: Option<&[u8]>) -> bool {
        let (res, fcntl) = match &p.op {
            ParkedOp::Read {
                offset,
                size,
                fcntl,
            } => {
                let size = (*size).min(self.iobuf.len());
                let sid = self.sid(p.fh);
                let buf = &mut self.iobuf[..size];
                let res = sid
                    .and_then(|id| self.scheme.read(id, buf, *offset, *fcntl, &p.ctx))
                    .and_then(|n| {
                        if n <= size {
                            Ok(n)
                        } else {
                            Err(Error::new(EIO))
                        }
                    });
                (res, *fcntl)
            }
            ParkedOp::Write {
                offset,
                data,
                fcntl,
            } => {
                let data = write_data.unwrap_or(data);
                let res = self
                    .writable(p)
                    .and_then(|id| self.scheme.write(id, data, *offset, *fcntl, &p.ctx))
                    .and_then(|n| {
                        if n <= data.len() {
                            Ok(n)
                        } else {
                            Err(Error::new(EIO))
                        }
                    });
                (res, *fcntl)
            }
        };
        match res {
            Ok(n) => {
                match p.op {
                    ParkedOp::Read { .. } => self.send(p.unique, 0, &[&self.iobuf[..n]]),
                    ParkedOp::Write { .. } => self.reply(
                        p.unique,
                        &WriteOut {
                            size: n as u32,
                            padding: 0,
                        },
                    ),
                }
                true
            }
            // Taken by the scheme: answered on completion, whatever
            // O_NONBLOCK says.
            Err(e) if e.errno == EINPROGRESS => {
                let kind = match &p.op {
                    ParkedOp::Read { size, .. } => DeferredKind::Read {
                        size: (*size).min(self.iobuf.len()),
                    },
                    ParkedOp::Write { data, .. } => DeferredKind::Write {
                        size: write_data.unwrap_or(data).len(),
                    },
                };
                self.waiters.defer(p.unique, p.fh, kind);
                true
            }
            Err(e)
                if (e.errno == EAGAIN || e.errno == EWOULDBLOCK)
                    && fcntl & O_NONBLOCK as u32 == 0 =>
            {
                false
            }
            Err(e) => {
                self.reply_err(p.unique, e.errno);
                true
            }
        }
    }

    fn retry_parked(&mut self) {
        let mut queue = self.waiters.take_parked();
        waiters::retry(&mut queue, |p| self.attempt(p, None));
        self.waiters.requeue(queue);
    }

    fn op_fsync(&mut self, req: &Request<'_>, ctx: &CallerCtx) -> Result<()> {
        let (f, _) = req.arg::<FsyncIn>().ok_or(Error::new(EINVAL))?;
        match self.scheme.fsync(self.sid(f.fh)?, ctx) {
            Ok(()) => self.reply_empty(req.header.unique),
            Err(e) if e.errno == EINPROGRESS => {
                self.waiters
                    .defer(req.header.unique, f.fh, DeferredKind::Fsync)
            }
            Err(e) => return Err(e),
        }
        Ok(())
    }

    fn op_interrupt(&mut self, req: &Request<'_>) {
        let Some((i, _)) = req.arg::<InterruptIn>() else {
            warn!("fuse: short INTERRUPT");
            return;
        };
        // Unknown uniques were answered already: nothing to do. The
        // interrupt itself never gets a reply (ENOSYS would disable
        // interrupts for the whole connection).
        match self.waiters.interrupt(i.unique) {
            Interrupted::Parked(unique) => {
                debug!("fuse: parked request {unique} interrupted");
                self.reply_err(unique, EINTR);
            }
            // Device I/O cannot be recalled (the device may be writing into
            // our buffer); it finishes in bounded time and is answered then.
            Interrupted::Deferred => debug!(
                "fuse: deferred request {} interrupted: waits for its completion",
                i.unique
            ),
            Interrupted::Unknown => {}
        }
    }

    fn op_release(&mut self, req: &Request<'_>) -> Result<()> {
        let (r, _) = req.arg::<ReleaseIn>().ok_or(Error::new(EINVAL))?;
        let released = self.waiters.release(r.fh);
        for unique in released.unparked {
            self.reply_err(unique, EBADF);
        }
        if released.close_now {
            self.close_handle(r.fh);
        }
        self.reply_empty(req.header.unique);
        Ok(())
    }

    fn op_readdir(&mut self, req: &Request<'_>, ctx: &CallerCtx) -> Result<()> {
        let (r, _) = req.arg::<ReadIn>().ok_or(Error::new(EINVAL))?;
        let dir = self.path_of(req.header.nodeid)?;
        let size = (r.size as usize).min(MAX_WRITE);
        let mut buf = DirentBuf::new(size);
        self.scheme
            .getdents(self.sid(r.fh)?, &mut buf, r.offset, ctx)?;
        let mut out = Vec::with_capacity(size.min(64 * 1024));
        for (name, kind, next) in &buf.entries {
            let path = join(&dir, name);
            let ino = path
                .as_deref()
                .and_then(|p| self.nodes.id_of(p))
                .unwrap_or_else(|| synthetic_ino(path.as_deref().unwrap_or(name)));
            let typ = match kind {
                DirentKind::Directory => linux::DT_DIR,
                DirentKind::Unspecified => linux::DT_UNKNOWN,
                // Everything else is presented as a regular file (see attr).
                _ => linux::DT_REG,
            };
            let d = Dirent {
                ino,
                off: *next,
                namelen: name.len() as u32,
                typ,
            };
            let start = out.len();
            out.extend_from_slice(d.as_bytes());
            out.extend_from_slice(name.as_bytes());
            out.resize(start + abi::dirent_size(name.len()), 0);
        }
        self.send(req.header.unique, 0, &[&out]);
        Ok(())
    }

    fn op_ioctl(&mut self, req: &Request<'_>, ctx: &CallerCtx) -> Result<()> {
        let (io, data) = req.arg::<IoctlIn>().ok_or(Error::new(EINVAL))?;
        if io.flags & FUSE_IOCTL_UNRESTRICTED != 0 {
            // Only CUSE sends these; never for a mounted file system.
            return Err(Error::new(ENOTTY));
        }
        let in_size = io.in_size as usize;
        let out_size = io.out_size as usize;
        if in_size > data.len() || out_size > MAX_WRITE {
            return Err(Error::new(EINVAL));
        }
        let mut payload = vec![0u8; in_size.max(out_size)];
        payload[..in_size].copy_from_slice(&data[..in_size]);
        let id = self.sid(io.fh)?;
        let res = self
            .scheme
            .call(id, &mut payload, &[u64::from(io.cmd), io.arg], ctx);
        let value = match res {
            Ok(v) => v,
            // ENOSYS would make the kernel give up on ioctl for the mount.
            Err(e) if e.errno == ENOSYS => return Err(Error::new(ENOTTY)),
            // Only a command whose reply carries no data can wait: the
            // payload is not kept.
            Err(e) if e.errno == EINPROGRESS && out_size == 0 => {
                self.waiters
                    .defer(req.header.unique, io.fh, DeferredKind::Call);
                return Ok(());
            }
            Err(e) if e.errno == EINPROGRESS => {
                warn!(
                    "fuse: ioctl {:#x} returning data cannot be deferred",
                    io.cmd
                );
                return Err(Error::new(EIO));
            }
            Err(e) => return Err(e),
        };
        self.reply_ioctl(req.header.unique, value, &payload[..out_size]);
        Ok(())
    }

    fn reply_ioctl(&self, unique: u64, value: usize, data: &[u8]) {
        let out = IoctlOut {
            result: i32::try_from(value).unwrap_or(i32::MAX),
            ..Default::default()
        };
        self.send(unique, 0, &[out.as_bytes(), data]);
    }

    fn op_poll(&mut self, req: &Request<'_>, ctx: &CallerCtx) -> Result<()> {
        let (p, _) = req.arg::<PollIn>().ok_or(Error::new(EINVAL))?;
        let mut events = convert::events_from_poll(p.events);
        if p.flags & FUSE_POLL_SCHEDULE_NOTIFY != 0 {
            if let Some(old) = self.waiters.polled_events(p.kh, p.fh) {
                events |= old;
            }
        }
        let ready = match self
            .sid(p.fh)
            .and_then(|id| self.scheme.fevent(id, events, ctx))
        {
            Ok(r) => r & events,
            // ENOSYS would disable poll for the whole mount: report ready.
            Err(e) if e.errno == ENOSYS => events,
            Err(e) => return Err(e),
        };
        if p.flags & FUSE_POLL_SCHEDULE_NOTIFY != 0 {
            if !self.waiters.is_polling(p.kh) {
                self.store.record(Change::Poll { kh: p.kh, fh: p.fh });
            }
            self.waiters.watch(
                p.kh,
                Poller {
                    fh: p.fh,
                    events,
                    last: ready,
                    ctx: *ctx,
                },
            );
        }
        let out = PollOut {
            revents: convert::poll_from_events(ready, p.events),
            padding: 0,
        };
        self.reply(req.header.unique, &out);
        Ok(())
    }

    fn check_pollers(&mut self) {
        let handles = &self.handles;
        let scheme = &mut self.scheme;
        let wake = self
            .waiters
            .check_pollers(|fh, events, ctx| match handles.get(&fh) {
                Some(Handle::Open { id, .. }) => scheme.fevent(*id, events, ctx),
                _ => Err(Error::new(EBADF)),
            });
        for kh in wake {
            let n = NotifyPollWakeupOut { kh };
            self.send(0, FUSE_NOTIFY_POLL, &[n.as_bytes()]);
        }
    }
}

/// A completion's shape for logs (not its data).
struct CompletedSummary<'a>(&'a Completed);

impl std::fmt::Debug for CompletedSummary<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Completed::Read(d) => write!(f, "Read({} bytes)", d.len()),
            Completed::Written(n) => write!(f, "Written({n})"),
            Completed::Synced => write!(f, "Synced"),
            Completed::Called(v) => write!(f, "Called({v})"),
        }
    }
}

/// Regular file or directory, never a device: with `S_IFCHR` the VFS would
/// route opens to a device driver instead of to us.
fn attr_from_stat(stat: &Stat, ino: u64) -> Attr {
    let is_dir = stat.st_mode & MODE_TYPE == MODE_DIR;
    let kind = if is_dir {
        linux::S_IFDIR
    } else {
        linux::S_IFREG
    };
    Attr {
        ino,
        size: stat.st_size,
        blocks: stat.st_blocks,
        atime: stat.st_atime,
        mtime: stat.st_mtime,
        ctime: stat.st_ctime,
        atimensec: stat.st_atime_nsec,
        mtimensec: stat.st_mtime_nsec,
        ctimensec: stat.st_ctime_nsec,
        mode: kind | u32::from(stat.st_mode & 0o7777),
        nlink: stat.st_nlink.max(if is_dir { 2 } else { 1 }),
        uid: stat.st_uid,
        gid: stat.st_gid,
        rdev: 0,
        blksize: if stat.st_blksize == 0 {
            4096
        } else {
            stat.st_blksize
        },
        flags: 0,
    }
}

/// A stable, non-zero inode number for a directory entry the kernel has not
/// looked up yet (some tools skip entries with inode 0).
fn synthetic_ino(path: &str) -> u64 {
    // FNV-1a, top bit set so it never collides with our small counters.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in path.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h | (1 << 63)
}

#[cfg(test)]
mod tests;
mod waiters;
