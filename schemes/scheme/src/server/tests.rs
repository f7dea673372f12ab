//! The runtime fed hand-made (and malformed) requests through a
//! `SOCK_SEQPACKET` pair, which keeps message boundaries like /dev/fuse.

use super::*;
use crate::OpenResult;
use rustix::net::{socketpair, AddressFamily, SocketFlags, SocketType};
use syscall::flag::{EventFlags, MODE_FILE};

/// One file, `""`; reads park until `data` is set. With `defer` set,
/// reads, writes, fsyncs and ioctls are taken (`EINPROGRESS`) and recorded in
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
    fn openat(&mut self, path: &str, _flags: usize, _ctx: &CallerCtx) -> Result<crate::OpenResult> {
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
    fn write(&mut self, _id: usize, _buf: &[u8], _o: u64, _f: u32, c: &CallerCtx) -> Result<usize> {
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
    fn call(&mut self, _id: usize, _p: &mut [u8], _m: &[u64], c: &CallerCtx) -> Result<usize> {
        if self.defer {
            return self.take(c, "call");
        }
        Err(Error::new(ENOTTY))
    }
    fn take_completions(&mut self, out: &mut Vec<Completion>) {
        out.append(&mut self.done);
    }
    fn fstat(&mut self, _id: usize, stat: &mut Stat, _ctx: &CallerCtx) -> Result<()> {
        stat.st_mode = MODE_FILE | 0o644;
        Ok(())
    }
    fn fevent(&mut self, _id: usize, flags: EventFlags, _ctx: &CallerCtx) -> Result<EventFlags> {
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
fn a_deferred_ioctl_is_answered_with_its_value_and_one_returning_data_is_refused() {
    let mut h = Harness::new();
    let fh = h.open();
    h.server.scheme_mut().defer = true;
    let range = [0u8; 16];
    let io = IoctlIn {
        fh,
        cmd: crate::ioctl::iow(0x12, 119, 16),
        in_size: 16,
        ..Default::default()
    };
    let mut body = io.as_bytes().to_vec();
    body.extend_from_slice(&range);
    let u = h.send(FUSE_IOCTL, ROOT_ID, &body);
    assert!(h.reply().is_none(), "nothing answered before completion");
    assert_eq!(h.server.deferred(), 1);
    h.finish(u, Ok(Completed::Called(3)));
    let (ru, e, body) = h.reply().unwrap();
    assert_eq!((ru, e), (u, 0));
    let (out, rest) = IoctlOut::read_from_prefix(&body).unwrap();
    assert_eq!((out.result, rest.len()), (3, 0));
    // A command that returns data cannot wait: its payload is not kept.
    let io = IoctlIn {
        fh,
        cmd: crate::ioctl::ior(0x12, 114, 8),
        out_size: 8,
        ..Default::default()
    };
    let u = h.send(FUSE_IOCTL, ROOT_ID, io.as_bytes());
    h.expect_err(u, EIO);
    assert_eq!(h.server.deferred(), 0);
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
