//! The FUSE runtime: reads requests from a non-blocking `/dev/fuse` fd,
//! calls the [`Scheme`], answers, parks what cannot finish, answers
//! deferred requests when the scheme completes them and sends poll
//! notifications. Single-threaded; the daemon owns the event loop.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::io::{self, IoSlice};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use log::{debug, trace, warn};
use rustix::event::{PollFd, PollFlags};
use rustix::fs::OFlags;
use rustix::io::Errno;
use syscall::error::{
    EAGAIN, EBADF, EINPROGRESS, EINTR, EINVAL, EIO, ENOENT, ENOSYS, ENOTTY, EPROTO, EWOULDBLOCK,
};
use syscall::flag::{EventFlags, MODE_DIR, MODE_TYPE, O_DIRECTORY, O_NONBLOCK, O_WRONLY};
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

/// A read or write that returned `EAGAIN` on a blocking file.
struct Parked {
    unique: u64,
    fh: u64,
    ctx: CallerCtx,
    op: ParkedOp,
}

enum ParkedOp {
    Read {
        offset: u64,
        size: usize,
        fcntl: u32,
    },
    Write {
        offset: u64,
        data: Vec<u8>,
        fcntl: u32,
    },
}

/// A request the scheme took with `EINPROGRESS`: no reply until its
/// [`Completion`] comes.
struct Deferred {
    fh: u64,
    kind: DeferredKind,
}

/// What a deferred request expects back, with the bound its result is
/// checked against.
#[derive(Debug, Clone, Copy)]
enum DeferredKind {
    Read { size: usize },
    Write { size: usize },
    Fsync,
}

/// A kernel poll handle waiting for readiness changes on one open file.
struct Poller {
    fh: u64,
    events: EventFlags,
    /// Readiness last reported or observed; a notification goes out when
    /// a flag appears that was not in here.
    last: EventFlags,
    ctx: CallerCtx,
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
    parked: VecDeque<Parked>,
    /// Deferred requests by unique.
    deferred: BTreeMap<u64, Deferred>,
    /// Handles released while requests on them were deferred: `on_close`
    /// waits for the last of them.
    closing: BTreeSet<u64>,
    /// Reused buffer for `take_completions`.
    completions: Vec<Completion>,
    pollers: BTreeMap<u64, Poller>,
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
            parked: VecDeque::new(),
            deferred: BTreeMap::new(),
            closing: BTreeSet::new(),
            completions: Vec::new(),
            pollers: BTreeMap::new(),
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
        self.parked.len()
    }

    /// Number of deferred requests, taken by the scheme and not yet
    /// completed (diagnostics and tests).
    pub fn deferred(&self) -> usize {
        self.deferred.len()
    }

    /// Number of poll handles waiting for notifications.
    pub fn pollers(&self) -> usize {
        self.pollers.len()
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
        let Some(d) = self.deferred.remove(&c.request) else {
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
            (kind, Ok(got)) => {
                warn!(
                    "fuse: request {} ({kind:?}) completed with a mismatched result {:?}",
                    c.request,
                    CompletedSummary(&got)
                );
                self.reply_err(c.request, EIO);
            }
        }
        if self.closing.contains(&d.fh) && !self.deferred.values().any(|x| x.fh == d.fh) {
            self.closing.remove(&d.fh);
            self.close_handle(d.fh);
        }
    }

    /// Records a request the scheme took with `EINPROGRESS`.
    fn defer(&mut self, unique: u64, fh: u64, kind: DeferredKind) {
        trace!("fuse: request {unique} deferred");
        if self
            .deferred
            .insert(unique, Deferred { fh, kind })
            .is_some()
        {
            // Only a misbehaving kernel reuses a unique still in flight;
            // either way the unique gets one reply.
            warn!("fuse: request {unique} deferred twice");
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
            self.parked.push_back(p);
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
            self.parked.push_back(p);
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
                self.defer(p.unique, p.fh, kind);
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
        // Repeat while something completes: a finished write may unblock a
        // read queued before it.
        loop {
            let mut progress = false;
            let mut i = 0;
            while i < self.parked.len() {
                let Some(p) = self.parked.remove(i) else {
                    break;
                };
                if self.attempt(&p, None) {
                    progress = true;
                } else {
                    self.parked.insert(i, p);
                    i += 1;
                }
            }
            if !progress {
                break;
            }
        }
    }

    fn op_fsync(&mut self, req: &Request<'_>, ctx: &CallerCtx) -> Result<()> {
        let (f, _) = req.arg::<FsyncIn>().ok_or(Error::new(EINVAL))?;
        match self.scheme.fsync(self.sid(f.fh)?, ctx) {
            Ok(()) => self.reply_empty(req.header.unique),
            Err(e) if e.errno == EINPROGRESS => {
                self.defer(req.header.unique, f.fh, DeferredKind::Fsync)
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
        if let Some(pos) = self.parked.iter().position(|p| p.unique == i.unique) {
            if let Some(p) = self.parked.remove(pos) {
                debug!("fuse: parked request {} interrupted", p.unique);
                self.reply_err(p.unique, EINTR);
            }
        } else if self.deferred.contains_key(&i.unique) {
            // Device I/O cannot be recalled (the device may be writing into
            // our buffer); it finishes in bounded time and is answered then.
            debug!(
                "fuse: deferred request {} interrupted: waits for its completion",
                i.unique
            );
        }
    }

    fn op_release(&mut self, req: &Request<'_>) -> Result<()> {
        let (r, _) = req.arg::<ReleaseIn>().ok_or(Error::new(EINVAL))?;
        let mut i = 0;
        while i < self.parked.len() {
            if self.parked[i].fh == r.fh {
                if let Some(p) = self.parked.remove(i) {
                    self.reply_err(p.unique, EBADF);
                }
            } else {
                i += 1;
            }
        }
        self.pollers.retain(|_, p| p.fh != r.fh);
        // The kernel holds a file reference for each request in flight, so
        // this happens only on odd paths. The scheme is still doing the
        // I/O: let it finish and answer truthfully, and close after.
        if self.deferred.values().any(|d| d.fh == r.fh) {
            debug!("fuse: handle {} released with deferred requests", r.fh);
            self.closing.insert(r.fh);
        } else {
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
            Err(e) => return Err(e),
        };
        let out = IoctlOut {
            result: i32::try_from(value).unwrap_or(i32::MAX),
            ..Default::default()
        };
        self.send(
            req.header.unique,
            0,
            &[out.as_bytes(), &payload[..out_size]],
        );
        Ok(())
    }

    fn op_poll(&mut self, req: &Request<'_>, ctx: &CallerCtx) -> Result<()> {
        let (p, _) = req.arg::<PollIn>().ok_or(Error::new(EINVAL))?;
        let mut events = convert::events_from_poll(p.events);
        if p.flags & FUSE_POLL_SCHEDULE_NOTIFY != 0 {
            if let Some(old) = self.pollers.get(&p.kh) {
                if old.fh == p.fh {
                    events |= old.events;
                }
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
            if !self.pollers.contains_key(&p.kh) {
                self.store.record(Change::Poll { kh: p.kh, fh: p.fh });
            }
            self.pollers.insert(
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
        let mut wake = Vec::new();
        for (&kh, p) in self.pollers.iter_mut() {
            let sid = match self.handles.get(&p.fh) {
                Some(Handle::Open { id, .. }) => Ok(*id),
                _ => Err(Error::new(EBADF)),
            };
            match sid.and_then(|id| self.scheme.fevent(id, p.events, &p.ctx)) {
                Ok(r) => {
                    let r = r & p.events;
                    if !(r - p.last).is_empty() {
                        wake.push(kh);
                    }
                    p.last = r;
                }
                // Let the poller come back and collect the error.
                Err(_) => wake.push(kh),
            }
        }
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
mod tests {
    //! The runtime fed hand-made (and malformed) requests through a
    //! `SOCK_SEQPACKET` pair, which keeps message boundaries like /dev/fuse.

    use super::*;
    use crate::OpenResult;
    use rustix::net::{socketpair, AddressFamily, SocketFlags, SocketType};
    use syscall::flag::MODE_FILE;

    /// One file, `""`; reads park until `data` is set. With `defer` set,
    /// reads, writes and fsyncs are taken (`EINPROGRESS`) and recorded in
    /// `taken`; the test finishes them by pushing to `done`.
    #[derive(Default)]
    struct Pending {
        data: Option<Vec<u8>>,
        closed: Vec<usize>,
        defer: bool,
        taken: Vec<(u64, &'static str)>,
        done: Vec<Completion>,
    }

    impl Pending {
        fn take(&mut self, ctx: &CallerCtx, what: &'static str) -> Result<usize> {
            self.taken.push((ctx.request, what));
            Err(Error::new(EINPROGRESS))
        }
    }

    /// The one handle id the test scheme gives out; the kernel sees the
    /// runtime's own `fh` for it.
    const SCHEME_ID: usize = 5;

    impl Scheme for Pending {
        fn openat(
            &mut self,
            path: &str,
            _flags: usize,
            _ctx: &CallerCtx,
        ) -> Result<crate::OpenResult> {
            if path.is_empty() {
                Ok(OpenResult::stream(SCHEME_ID))
            } else {
                Err(Error::new(ENOENT))
            }
        }
        fn read(
            &mut self,
            _id: usize,
            buf: &mut [u8],
            _o: u64,
            _f: u32,
            c: &CallerCtx,
        ) -> Result<usize> {
            if self.defer {
                return self.take(c, "read");
            }
            match self.data.take() {
                Some(d) => {
                    let n = d.len().min(buf.len());
                    buf[..n].copy_from_slice(&d[..n]);
                    Ok(n)
                }
                None => Err(Error::new(EAGAIN)),
            }
        }
        fn write(
            &mut self,
            _id: usize,
            _buf: &[u8],
            _o: u64,
            _f: u32,
            c: &CallerCtx,
        ) -> Result<usize> {
            if self.defer {
                return self.take(c, "write");
            }
            Err(Error::new(EBADF))
        }
        fn fsync(&mut self, _id: usize, c: &CallerCtx) -> Result<()> {
            if self.defer {
                return self.take(c, "fsync").map(|_| ());
            }
            Ok(())
        }
        fn take_completions(&mut self, out: &mut Vec<Completion>) {
            out.append(&mut self.done);
        }
        fn fstat(&mut self, _id: usize, stat: &mut Stat, _ctx: &CallerCtx) -> Result<()> {
            stat.st_mode = MODE_FILE | 0o644;
            Ok(())
        }
        fn fevent(
            &mut self,
            _id: usize,
            flags: EventFlags,
            _ctx: &CallerCtx,
        ) -> Result<EventFlags> {
            let mut ready = EventFlags::EVENT_WRITE;
            if self.data.is_some() {
                ready |= EventFlags::EVENT_READ;
            }
            Ok(ready & flags)
        }
        fn on_close(&mut self, id: usize) {
            self.closed.push(id);
        }
    }

    struct Harness {
        server: Server<Pending>,
        peer: OwnedFd,
        unique: u64,
    }

    impl Harness {
        fn new() -> Harness {
            let (a, b) = socketpair(
                AddressFamily::UNIX,
                SocketType::SEQPACKET,
                SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
                None,
            )
            .unwrap();
            Harness {
                server: Server::new(a, Pending::default()).unwrap(),
                peer: b,
                unique: 100,
            }
        }

        fn send_raw(&mut self, bytes: &[u8]) {
            rustix::io::write(&self.peer, bytes).unwrap();
            assert_eq!(self.server.process().unwrap(), Status::Running);
        }

        /// Sends opcode + body with a correct header; returns its unique.
        fn send(&mut self, opcode: u32, nodeid: u64, body: &[u8]) -> u64 {
            self.unique += 2;
            let h = InHeader {
                len: (40 + body.len()) as u32,
                opcode,
                unique: self.unique,
                nodeid,
                uid: 1000,
                gid: 1000,
                pid: 42,
                ..Default::default()
            };
            let mut msg = h.as_bytes().to_vec();
            msg.extend_from_slice(body);
            self.send_raw(&msg);
            self.unique
        }

        /// The next reply: (unique, error, body), or None if there is none.
        fn reply(&mut self) -> Option<(u64, i32, Vec<u8>)> {
            let mut buf = vec![0u8; 1 << 16];
            match rustix::io::read(&self.peer, &mut buf) {
                Ok(n) => {
                    let (h, rest) = OutHeader::read_from_prefix(&buf[..n]).unwrap();
                    assert_eq!(h.len as usize, n);
                    Some((h.unique, h.error, rest.to_vec()))
                }
                Err(Errno::AGAIN) => None,
                Err(e) => panic!("{e}"),
            }
        }

        fn expect_err(&mut self, unique: u64, errno: i32) {
            let (u, e, _) = self.reply().expect("a reply");
            assert_eq!((u, e), (unique, -errno));
        }

        fn open(&mut self) -> u64 {
            let u = self.send(FUSE_OPEN, ROOT_ID, OpenIn::default().as_bytes());
            let (ru, e, body) = self.reply().unwrap();
            assert_eq!((ru, e), (u, 0));
            let (o, _) = OpenOut::read_from_prefix(&body).unwrap();
            assert_eq!(
                o.open_flags,
                FOPEN_DIRECT_IO | FOPEN_NOFLUSH | FOPEN_NONSEEKABLE | FOPEN_STREAM
            );
            o.fh
        }

        fn write_req(&mut self, fh: u64, data: &[u8]) -> u64 {
            let w = WriteIn {
                fh,
                size: data.len() as u32,
                ..Default::default()
            };
            let mut body = w.as_bytes().to_vec();
            body.extend_from_slice(data);
            self.send(FUSE_WRITE, ROOT_ID, &body)
        }

        fn fsync_req(&mut self, fh: u64) -> u64 {
            let f = FsyncIn {
                fh,
                ..Default::default()
            };
            self.send(FUSE_FSYNC, ROOT_ID, f.as_bytes())
        }

        /// Hands the scheme a completion and lets the server collect it.
        fn finish(&mut self, request: u64, result: Result<Completed>) {
            self.server
                .scheme_mut()
                .done
                .push(Completion { request, result });
            self.server.complete();
        }

        fn release(&mut self, fh: u64) -> u64 {
            let rel = ReleaseIn {
                fh,
                ..Default::default()
            };
            self.send(FUSE_RELEASE, ROOT_ID, rel.as_bytes())
        }

        fn read_req(&mut self, fh: u64, flags: u32) -> u64 {
            let r = ReadIn {
                fh,
                size: 16,
                flags,
                ..Default::default()
            };
            self.send(FUSE_READ, ROOT_ID, r.as_bytes())
        }
    }

    #[test]
    fn init_negotiates_our_minor_and_sizes() {
        let mut h = Harness::new();
        let init = InitIn {
            major: 7,
            minor: 37,
            max_readahead: 4096,
            flags: FUSE_MAX_PAGES | FUSE_ATOMIC_O_TRUNC | (1 << 0),
        };
        let u = h.send(FUSE_INIT, 0, init.as_bytes());
        let (ru, e, body) = h.reply().unwrap();
        assert_eq!((ru, e), (u, 0));
        let (out, _) = InitOut::read_from_prefix(&body).unwrap();
        assert_eq!((out.major, out.minor), (7, KERNEL_MINOR_VERSION));
        assert_eq!(out.max_write as usize, MAX_WRITE);
        assert_eq!(out.max_pages, MAX_PAGES);
        assert_eq!(out.flags, FUSE_MAX_PAGES | FUSE_ATOMIC_O_TRUNC);
    }

    #[test]
    fn malformed_requests_get_errors_and_the_server_goes_on() {
        let mut h = Harness::new();
        // Too short for a header: nothing to answer.
        h.send_raw(&[1, 2, 3]);
        assert!(h.reply().is_none());
        // Header length disagrees with the message.
        let bad = InHeader {
            len: 4000,
            opcode: FUSE_GETATTR,
            unique: 7,
            ..Default::default()
        };
        h.send_raw(bad.as_bytes());
        h.expect_err(7, EIO);
        // Bodies too short for their opcode.
        for op in [
            FUSE_INIT,
            FUSE_READ,
            FUSE_WRITE,
            FUSE_OPEN,
            FUSE_SETATTR,
            FUSE_CREATE,
            FUSE_IOCTL,
            FUSE_POLL,
            FUSE_RELEASE,
            FUSE_FSYNC,
            FUSE_READDIR,
        ] {
            let u = h.send(op, ROOT_ID, &[0u8; 3]);
            h.expect_err(u, EINVAL);
        }
        // A name without its terminator.
        let u = h.send(FUSE_LOOKUP, ROOT_ID, b"abc");
        h.expect_err(u, EINVAL);
        // Not UTF-8, or not a single component.
        let u = h.send(FUSE_LOOKUP, ROOT_ID, b"\xff\xfe\0");
        h.expect_err(u, ENOENT);
        let u = h.send(FUSE_LOOKUP, ROOT_ID, b"..\0");
        h.expect_err(u, ENOENT);
        // Unknown node, unknown opcode.
        let u = h.send(FUSE_GETATTR, 12345, GetattrIn::default().as_bytes());
        h.expect_err(u, ENOENT);
        let u = h.send(999, ROOT_ID, &[]);
        h.expect_err(u, ENOSYS);
        // A write announcing more data than it carries.
        let w = WriteIn {
            size: 100,
            ..Default::default()
        };
        let mut body = w.as_bytes().to_vec();
        body.extend_from_slice(b"short");
        let u = h.send(FUSE_WRITE, ROOT_ID, &body);
        h.expect_err(u, EINVAL);
        // An ioctl announcing more input than it carries.
        let io = IoctlIn {
            in_size: 64,
            ..Default::default()
        };
        let u = h.send(FUSE_IOCTL, ROOT_ID, io.as_bytes());
        h.expect_err(u, EINVAL);
        // No reply at all: forgets (even lying ones) and unknown interrupts.
        let bf = BatchForgetIn {
            count: 1000,
            dummy: 0,
        };
        h.send(FUSE_BATCH_FORGET, 0, bf.as_bytes());
        h.send(FUSE_FORGET, 77, &[]);
        h.send(FUSE_INTERRUPT, 0, InterruptIn { unique: 555 }.as_bytes());
        assert!(h.reply().is_none());
        // Still serving.
        let u = h.send(FUSE_GETATTR, ROOT_ID, GetattrIn::default().as_bytes());
        let (ru, e, body) = h.reply().unwrap();
        assert_eq!((ru, e), (u, 0));
        let (a, _) = AttrOut::read_from_prefix(&body).unwrap();
        assert_eq!(a.attr.mode, linux::S_IFREG | 0o644);
        assert_eq!(a.attr.ino, ROOT_ID);
    }

    #[test]
    fn parked_read_is_answered_once_on_interrupt() {
        let mut h = Harness::new();
        let fh = h.open();
        let u = h.read_req(fh, 0);
        assert!(h.reply().is_none(), "read must park");
        assert_eq!(h.server.parked(), 1);
        // A non-blocking read is refused instead.
        let nb = h.read_req(fh, linux::O_NONBLOCK);
        h.expect_err(nb, linux::EAGAIN);
        h.send(FUSE_INTERRUPT, 0, InterruptIn { unique: u }.as_bytes());
        h.expect_err(u, EINTR);
        h.send(FUSE_INTERRUPT, 0, InterruptIn { unique: u }.as_bytes());
        assert!(h.reply().is_none(), "answered twice");
        assert_eq!(h.server.parked(), 0);
    }

    #[test]
    fn parked_reads_complete_in_order_on_wake() {
        let mut h = Harness::new();
        let fh = h.open();
        let first = h.read_req(fh, 0);
        let second = h.read_req(fh, 0);
        assert_eq!(h.server.parked(), 2);
        h.server.scheme_mut().data = Some(b"data".to_vec());
        h.server.wake();
        let (u, e, body) = h.reply().unwrap();
        assert_eq!((u, e, body.as_slice()), (first, 0, &b"data"[..]));
        assert!(h.reply().is_none());
        assert_eq!(h.server.parked(), 1);
        // Release answers what is still parked on the handle, then closes.
        let rel = ReleaseIn {
            fh,
            ..Default::default()
        };
        let r = h.send(FUSE_RELEASE, ROOT_ID, rel.as_bytes());
        h.expect_err(second, EBADF);
        let (u, e, _) = h.reply().unwrap();
        assert_eq!((u, e), (r, 0));
        assert_eq!(h.server.scheme().closed, vec![SCHEME_ID]);
    }

    #[test]
    fn poll_registers_and_notifies_on_readiness() {
        let mut h = Harness::new();
        let fh = h.open();
        let p = PollIn {
            fh,
            kh: 99,
            flags: FUSE_POLL_SCHEDULE_NOTIFY,
            events: linux::POLLIN,
        };
        let u = h.send(FUSE_POLL, ROOT_ID, p.as_bytes());
        let (ru, e, body) = h.reply().unwrap();
        assert_eq!((ru, e), (u, 0));
        let (out, _) = PollOut::read_from_prefix(&body).unwrap();
        assert_eq!(out.revents, 0, "nothing to read yet");
        assert_eq!(h.server.pollers(), 1);
        // Readiness appears: one FUSE_NOTIFY_POLL (unique 0) naming kh.
        h.server.scheme_mut().data = Some(b"x".to_vec());
        h.server.wake();
        let (ru, code, body) = h.reply().expect("a notification");
        assert_eq!((ru, code), (0, FUSE_NOTIFY_POLL));
        let (n, _) = NotifyPollWakeupOut::read_from_prefix(&body).unwrap();
        assert_eq!(n.kh, 99);
        // No change, no second notification.
        h.server.wake();
        assert!(h.reply().is_none());
        // Re-polling reports it; release forgets the poller.
        let u = h.send(FUSE_POLL, ROOT_ID, p.as_bytes());
        let (ru, _, body) = h.reply().unwrap();
        assert_eq!(ru, u);
        let (out, _) = PollOut::read_from_prefix(&body).unwrap();
        assert_eq!(out.revents, linux::POLLIN);
        let rel = ReleaseIn {
            fh,
            ..Default::default()
        };
        h.send(FUSE_RELEASE, ROOT_ID, rel.as_bytes());
        h.reply().unwrap();
        assert_eq!(h.server.pollers(), 0);
    }

    #[test]
    fn deferred_requests_are_answered_on_completion_in_any_order() {
        let mut h = Harness::new();
        let fh = h.open();
        h.server.scheme_mut().defer = true;
        let r1 = h.read_req(fh, 0);
        // O_NONBLOCK does not turn a deferral into EAGAIN.
        let r2 = h.read_req(fh, linux::O_NONBLOCK);
        let w = h.write_req(fh, b"abcdef");
        let f = h.fsync_req(fh);
        assert!(h.reply().is_none(), "nothing answered before completion");
        assert_eq!(h.server.deferred(), 4);
        assert_eq!(h.server.parked(), 0, "deferred is not parked");
        // The scheme saw each request's unique in its CallerCtx.
        assert_eq!(
            h.server.scheme().taken,
            vec![(r1, "read"), (r2, "read"), (w, "write"), (f, "fsync")]
        );
        // Nothing is retried: waking does not call the scheme again.
        h.server.wake();
        assert_eq!(h.server.scheme().taken.len(), 4);
        // Completions arrive out of order.
        h.finish(f, Ok(Completed::Synced));
        let (u, e, body) = h.reply().unwrap();
        assert_eq!((u, e, body.len()), (f, 0, 0));
        h.finish(r2, Ok(Completed::Read(b"second".to_vec())));
        h.finish(w, Ok(Completed::Written(4)));
        let (u, e, body) = h.reply().unwrap();
        assert_eq!((u, e, body.as_slice()), (r2, 0, &b"second"[..]));
        let (u, e, body) = h.reply().unwrap();
        assert_eq!((u, e), (w, 0));
        let (out, _) = WriteOut::read_from_prefix(&body).unwrap();
        assert_eq!(out.size, 4);
        h.finish(r1, Err(Error::new(syscall::error::EIO)));
        h.expect_err(r1, EIO);
        assert_eq!(h.server.deferred(), 0);
        assert!(h.reply().is_none());
    }

    #[test]
    fn bad_and_unknown_completions_never_double_reply() {
        let mut h = Harness::new();
        let fh = h.open();
        h.server.scheme_mut().defer = true;
        let r = h.read_req(fh, 0);
        let w = h.write_req(fh, b"xy");
        let f = h.fsync_req(fh);
        // Unknown request: ignored.
        h.finish(424242, Ok(Completed::Synced));
        assert!(h.reply().is_none());
        // More data than asked for (16), more written than given, or the
        // wrong kind of result: EIO.
        h.finish(r, Ok(Completed::Read(vec![0; 17])));
        h.expect_err(r, EIO);
        h.finish(w, Ok(Completed::Written(3)));
        h.expect_err(w, EIO);
        h.finish(f, Ok(Completed::Read(Vec::new())));
        h.expect_err(f, EIO);
        // Completing any of them again: ignored.
        h.finish(r, Ok(Completed::Read(b"late".to_vec())));
        h.finish(f, Ok(Completed::Synced));
        assert!(h.reply().is_none());
        assert_eq!(h.server.deferred(), 0);
    }

    #[test]
    fn interrupted_deferred_request_waits_for_its_completion() {
        let mut h = Harness::new();
        let fh = h.open();
        h.server.scheme_mut().defer = true;
        let r = h.read_req(fh, 0);
        h.send(FUSE_INTERRUPT, 0, InterruptIn { unique: r }.as_bytes());
        assert!(h.reply().is_none(), "no EINTR for device I/O in flight");
        assert_eq!(h.server.deferred(), 1);
        h.finish(r, Ok(Completed::Read(b"done".to_vec())));
        let (u, e, body) = h.reply().unwrap();
        assert_eq!((u, e, body.as_slice()), (r, 0, &b"done"[..]));
        assert!(h.reply().is_none());
    }

    #[test]
    fn release_with_deferred_requests_closes_after_the_last_completion() {
        let mut h = Harness::new();
        let fh = h.open();
        h.server.scheme_mut().defer = true;
        let r = h.read_req(fh, 0);
        let w = h.write_req(fh, b"z");
        let rel = h.release(fh);
        let (u, e, _) = h.reply().unwrap();
        assert_eq!((u, e), (rel, 0), "release is answered at once");
        assert!(h.reply().is_none(), "deferred requests are not failed");
        assert!(h.server.scheme().closed.is_empty(), "closed under I/O");
        h.finish(w, Ok(Completed::Written(1)));
        let (u, e, _) = h.reply().unwrap();
        assert_eq!((u, e), (w, 0));
        assert!(h.server.scheme().closed.is_empty());
        h.finish(r, Ok(Completed::Read(Vec::new())));
        let (u, e, _) = h.reply().unwrap();
        assert_eq!((u, e), (r, 0));
        assert_eq!(h.server.scheme().closed, vec![SCHEME_ID]);
        // Late duplicates change nothing.
        h.finish(r, Ok(Completed::Read(Vec::new())));
        assert!(h.reply().is_none());
        assert_eq!(h.server.scheme().closed, vec![SCHEME_ID]);
        assert_eq!(h.server.deferred(), 0);
    }

    #[test]
    fn parked_request_retried_into_a_deferral() {
        let mut h = Harness::new();
        let fh = h.open();
        let r = h.read_req(fh, 0);
        assert_eq!(h.server.parked(), 1);
        // The scheme can now take it (e.g. a queue slot freed up).
        h.server.scheme_mut().defer = true;
        h.server.wake();
        assert_eq!((h.server.parked(), h.server.deferred()), (0, 1));
        assert_eq!(h.server.scheme().taken, vec![(r, "read")]);
        assert!(h.reply().is_none());
        // Completions handed over before a request are collected by
        // process() itself.
        h.server.scheme_mut().done.push(Completion {
            request: r,
            result: Ok(Completed::Read(b"ok".to_vec())),
        });
        let g = h.send(FUSE_GETATTR, ROOT_ID, GetattrIn::default().as_bytes());
        let (u, e, _) = h.reply().unwrap();
        assert_eq!((u, e), (g, 0));
        let (u, e, body) = h.reply().unwrap();
        assert_eq!((u, e, body.as_slice()), (r, 0, &b"ok"[..]));
        assert_eq!(h.server.deferred(), 0);
    }

    #[test]
    fn attributes_never_claim_a_device() {
        let mut st = Stat {
            st_mode: syscall::flag::MODE_CHR | 0o600,
            ..Default::default()
        };
        assert_eq!(attr_from_stat(&st, 3).mode, linux::S_IFREG | 0o600);
        st.st_mode = MODE_DIR | 0o755;
        let a = attr_from_stat(&st, 3);
        assert_eq!(a.mode, linux::S_IFDIR | 0o755);
        assert_eq!(a.nlink, 2);
        assert_eq!(a.blksize, 4096);
    }
}
