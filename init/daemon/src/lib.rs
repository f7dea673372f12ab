//! The daemon side of init's control channel.
//!
//! init starts every service with one end of a `SOCK_SEQPACKET` socket pair
//! (its number is in `INIT_CONTROL_FD`). Over it a daemon registers its
//! schemes, receiving the mounted `/dev/fuse` fd, and reports readiness. The
//! wire format is one short text message per packet (see [`proto`]), so a
//! daemon in any language could speak it.

use std::collections::VecDeque;
use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::ops::RangeInclusive;
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Mutex;

use rustix::net::{
    recvmsg, sendmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags,
    SendAncillaryBuffer, SendAncillaryMessage, SendFlags,
};

pub mod config;
pub mod instance;
pub mod logger;
pub mod ports;
pub mod proto;

pub use logger::{init_logging, main_with};
pub use proto::{Notice, RootKind};

/// Environment variable naming the inherited control fd.
pub const CONTROL_FD_ENV: &str = "INIT_CONTROL_FD";

/// Environment variable listing the fds passed through a `spawn` request,
/// in order, space separated (`"4 5 6"`).
pub const PASSED_FDS_ENV: &str = "INIT_PASSED_FDS";

/// Environment variable listing the I/O ports init granted the process
/// (`"600-67f cf9-cf9"`: inclusive hex ranges, space separated).
pub use ports::IOPORTS_ENV;

/// The I/O ports init granted this process with `ioperm` (the unit's
/// `ioports` plus any its enumerator asked for), from `INIT_IOPORTS`.
/// Empty when none were granted; an error if the variable is malformed.
pub use ports::granted_from_env as granted_ioports;

/// Takes the capability fds init passed to this instance (from the
/// enumerator's `spawn` request), in the order they were sent. Empty when
/// none were passed; an error if the variable is malformed.
pub fn take_passed_fds() -> io::Result<Vec<OwnedFd>> {
    let Ok(list) = std::env::var(PASSED_FDS_ENV) else {
        return Ok(Vec::new());
    };
    std::env::remove_var(PASSED_FDS_ENV);
    let mut fds = Vec::new();
    for word in list.split_whitespace() {
        let raw: RawFd = word.parse().map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{PASSED_FDS_ENV}={list} is not a list of fd numbers"),
            )
        })?;
        if raw < 3 || fds.len() >= proto::MAX_PASSED_FDS {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{PASSED_FDS_ENV}={list}: bad fd {raw}"),
            ));
        }
        // Refuse a number that is not open rather than adopt a stranger later.
        // SAFETY: only borrowed for the fcntl probe; ownership is taken below.
        let borrowed = unsafe { BorrowedFd::borrow_raw(raw) };
        rustix::io::fcntl_setfd(borrowed, rustix::io::FdFlags::CLOEXEC)?;
        // SAFETY: init placed this descriptor here for us and nothing else in
        // the process owns it; the env var is removed so it is taken once.
        fds.push(unsafe { OwnedFd::from_raw_fd(raw) });
    }
    Ok(fds)
}

/// A scheme init mounted for this daemon.
#[derive(Debug)]
pub struct Registration {
    /// The `/dev/fuse` fd serving `/scheme/NAME`.
    pub fuse: OwnedFd,
    /// The scheme's state store: a memfd init keeps with the mount, so the
    /// runtime finds there what an earlier instance recorded (node ids,
    /// open handles). `None` from an init that keeps none.
    pub state: Option<OwnedFd>,
    /// The mount outlived an earlier daemon: the connection is already
    /// initialised and may hold requests that daemon had read and not
    /// answered, which the runtime asks the kernel to send again.
    pub resumed: bool,
}

/// A daemon's connection to init.
#[derive(Debug)]
pub struct Daemon {
    control: OwnedFd,
    /// Notices that arrived while a request waited for its reply.
    notices: Mutex<VecDeque<Notice>>,
}

impl Daemon {
    /// Takes the control fd init passed down. Fails if the process was not
    /// started by our init (no or malformed `INIT_CONTROL_FD`).
    pub fn from_env() -> io::Result<Daemon> {
        let raw = std::env::var(CONTROL_FD_ENV).map_err(|_| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("{CONTROL_FD_ENV} is not set: this daemon must be started by init"),
            )
        })?;
        let fd: RawFd = raw.parse().map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{CONTROL_FD_ENV}={raw} is not a file descriptor number"),
            )
        })?;
        // Only the daemon should hold it: make sure children do not inherit it.
        std::env::remove_var(CONTROL_FD_ENV);
        // SAFETY: init passed this descriptor to us open and owned by nobody
        // else in this process; we take ownership exactly once.
        let control = unsafe { OwnedFd::from_raw_fd(fd) };
        rustix::io::fcntl_setfd(&control, rustix::io::FdFlags::CLOEXEC)?;
        Ok(Daemon::from_fd(control))
    }

    /// Wraps an existing control socket (init's own tests use this).
    pub fn from_fd(control: OwnedFd) -> Daemon {
        Daemon {
            control,
            notices: Mutex::new(VecDeque::new()),
        }
    }

    /// The control socket, for the daemon's event loop: when it is
    /// readable, call [`Daemon::serve_control`].
    pub fn control_fd(&self) -> BorrowedFd<'_> {
        self.control.as_fd()
    }

    /// Asks init to mount a scheme called `name` at `/scheme/<name>`, its root
    /// a directory.
    pub fn register_scheme(&self, name: &str) -> io::Result<Registration> {
        self.register(name, RootKind::Dir)
    }

    /// Like [`Daemon::register_scheme`], but `/scheme/<name>` is itself a
    /// file (`null`, `zero`, `rand`).
    pub fn register_file_scheme(&self, name: &str) -> io::Result<Registration> {
        self.register(name, RootKind::File)
    }

    /// Registers `name` with the given root type.
    pub fn register(&self, name: &str, kind: RootKind) -> io::Result<Registration> {
        self.send(&proto::Request::Register(name.to_owned(), kind).encode())?;
        let (reply, fds) = self.recv_reply()?;
        let resumed = match reply {
            proto::Reply::Ok => false,
            proto::Reply::Resumed => true,
            proto::Reply::Err(errno, msg) => {
                return Err(io::Error::new(
                    io::Error::from_raw_os_error(errno).kind(),
                    format!("init refused scheme {name}: {msg}"),
                ))
            }
        };
        let mut fds = fds.into_iter();
        let fuse = fds.next().ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidData, "init replied ok without an fd")
        })?;
        Ok(Registration {
            fuse,
            state: fds.next(),
            resumed,
        })
    }

    /// Asks init to start instance `instance` of the template unit `unit`
    /// (for pcid: a driver for one function), handing it `fds` as its fds
    /// 4, 5, …. Returns once init has started it or refused.
    pub fn spawn(
        &self,
        unit: &str,
        instance: &str,
        args: &[&str],
        fds: &[BorrowedFd<'_>],
    ) -> io::Result<()> {
        self.spawn_with_ioports(unit, instance, args, fds, &[])
    }

    /// Like [`Daemon::spawn`], and init also grants the instance the port
    /// ranges `ioports` (inclusive) with `ioperm` before it drops the
    /// instance's privileges; the instance finds them in `INIT_IOPORTS`.
    /// Only an enumerator listed in the template's `spawned_by` may ask.
    pub fn spawn_with_ioports(
        &self,
        unit: &str,
        instance: &str,
        args: &[&str],
        fds: &[BorrowedFd<'_>],
        ioports: &[RangeInclusive<u16>],
    ) -> io::Result<()> {
        if let Some(r) = ioports.iter().find(|r| r.start() > r.end()) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("empty port range {r:?}"),
            ));
        }
        if fds.len() > proto::MAX_PASSED_FDS {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("at most {} fds can be passed", proto::MAX_PASSED_FDS),
            ));
        }
        let req = proto::Request::Spawn {
            unit: unit.to_owned(),
            instance: instance.to_owned(),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            ioports: ioports.to_vec(),
        };
        let msg = req.encode();
        if msg.len() > proto::MAX_MESSAGE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("spawn request for {unit}@{instance} is too long"),
            ));
        }
        send_with_fds(self.control.as_fd(), &msg, fds)?;
        match self.recv_reply()?.0 {
            proto::Reply::Ok | proto::Reply::Resumed => Ok(()),
            proto::Reply::Err(errno, msg) => Err(io::Error::new(
                io::Error::from_raw_os_error(errno).kind(),
                format!("init refused to start {unit}@{instance}: {msg}"),
            )),
        }
    }

    /// Tells init this daemon has finished its setup.
    pub fn ready(&self) -> io::Result<()> {
        self.send(&proto::Request::Ready.encode())
    }

    /// Tells init the daemon's device is being taken away and it is about
    /// to exit: not a crash, so not restarted.
    pub fn removed(&self) -> io::Result<()> {
        self.send(&proto::Request::Removed.encode())
    }

    /// From an enumerator: the function of instance `instance` of `unit`
    /// has left the bus; init stops that driver for good.
    pub fn gone(&self, unit: &str, instance: &str) -> io::Result<()> {
        let req = proto::Request::Gone {
            unit: unit.to_owned(),
            instance: instance.to_owned(),
        };
        self.send(&req.encode())
    }

    /// Handles what init sent, without blocking: answers its heartbeat and
    /// returns its other notices (with any that came while a request waited
    /// for its reply). An error once init's end is gone.
    pub fn serve_control(&self) -> io::Result<Vec<Notice>> {
        loop {
            let (msg, _fds) = match recv_packet(self.control.as_fd(), RecvFlags::DONTWAIT) {
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            match proto::FromInit::decode(&msg) {
                Ok(proto::FromInit::Notice(n)) => self.take_notice(n)?,
                Ok(proto::FromInit::Reply(r)) => {
                    log::warn!("control channel: a reply nobody asked for: {r:?}")
                }
                Err(e) => log::warn!("control channel: {e}"),
            }
        }
        Ok(self.lock_notices().drain(..).collect())
    }

    /// Answers a heartbeat at once; keeps any other notice for the loop.
    fn take_notice(&self, n: Notice) -> io::Result<()> {
        match n {
            Notice::Ping(seq) => self.send(&proto::Request::Pong(seq).encode()),
            other => {
                self.lock_notices().push_back(other);
                Ok(())
            }
        }
    }

    fn lock_notices(&self) -> std::sync::MutexGuard<'_, VecDeque<Notice>> {
        // A panic elsewhere cannot leave the queue inconsistent.
        self.notices.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits for init's reply to the request just sent, answering its
    /// heartbeat and keeping its notices meanwhile.
    fn recv_reply(&self) -> io::Result<(proto::Reply, Vec<OwnedFd>)> {
        loop {
            let (msg, fds) = recv_with_fds(self.control.as_fd())?;
            match proto::FromInit::decode(&msg) {
                Ok(proto::FromInit::Reply(r)) => return Ok((r, fds)),
                Ok(proto::FromInit::Notice(n)) => self.take_notice(n)?,
                Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
            }
        }
    }

    fn send(&self, msg: &[u8]) -> io::Result<()> {
        sendmsg(
            &self.control,
            &[IoSlice::new(msg)],
            &mut SendAncillaryBuffer::default(),
            SendFlags::NOSIGNAL,
        )?;
        Ok(())
    }
}

/// Sends one packet, optionally carrying a file descriptor.
pub fn send_with_fd(
    sock: BorrowedFd<'_>,
    msg: &[u8],
    fd: Option<BorrowedFd<'_>>,
) -> io::Result<()> {
    match fd {
        Some(fd) => send_with_fds(sock, msg, &[fd]),
        None => send_with_fds(sock, msg, &[]),
    }
}

/// Sends one packet carrying up to [`proto::MAX_PASSED_FDS`] descriptors.
pub fn send_with_fds(sock: BorrowedFd<'_>, msg: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(proto::MAX_PASSED_FDS))];
    let mut anc = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !anc.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "too many fds for one packet",
        ));
    }
    sendmsg(sock, &[IoSlice::new(msg)], &mut anc, SendFlags::NOSIGNAL)?;
    Ok(())
}

/// Receives one packet and at most one passed file descriptor.
pub fn recv_with_fd(sock: BorrowedFd<'_>) -> io::Result<(Vec<u8>, Option<OwnedFd>)> {
    let (msg, fds) = recv_with_fds(sock)?;
    // Keep the first; any extra descriptor is closed on drop.
    Ok((msg, fds.into_iter().next()))
}

/// Receives one packet and the descriptors passed with it, in order.
pub fn recv_with_fds(sock: BorrowedFd<'_>) -> io::Result<(Vec<u8>, Vec<OwnedFd>)> {
    recv_packet(sock, RecvFlags::empty())
}

fn recv_packet(sock: BorrowedFd<'_>, flags: RecvFlags) -> io::Result<(Vec<u8>, Vec<OwnedFd>)> {
    let mut buf = vec![0u8; proto::MAX_MESSAGE];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(proto::MAX_PASSED_FDS))];
    let mut anc = RecvAncillaryBuffer::new(&mut space);
    let res = recvmsg(
        sock,
        &mut [IoSliceMut::new(&mut buf)],
        &mut anc,
        RecvFlags::CMSG_CLOEXEC | flags,
    )?;
    let mut passed = Vec::new();
    for msg in anc.drain() {
        if let RecvAncillaryMessage::ScmRights(fds) = msg {
            passed.extend(fds);
        }
    }
    // A cut packet is refused whole (its fds are closed here): acting on
    // the first 512 bytes of a longer `spawn`, or on some of its fds, would
    // act on something the peer never said.
    if res.flags.contains(ReturnFlags::TRUNC) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("packet longer than {} bytes", proto::MAX_MESSAGE),
        ));
    }
    if res.flags.contains(ReturnFlags::CTRUNC) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("more than {} fds passed", proto::MAX_PASSED_FDS),
        ));
    }
    if res.bytes == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "control channel closed",
        ));
    }
    buf.truncate(res.bytes);
    Ok((buf, passed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::net::{socketpair, AddressFamily, SocketFlags, SocketType};

    fn pair() -> (OwnedFd, OwnedFd) {
        socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .unwrap()
    }

    fn open_fds() -> usize {
        std::fs::read_dir("/proc/self/fd").unwrap().count()
    }

    /// The fd count is the process's: the tests that open fds take turns.
    fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
        static ONE: Mutex<()> = Mutex::new(());
        ONE.lock().unwrap_or_else(|p| p.into_inner())
    }

    #[test]
    fn an_oversized_packet_is_refused_whole_and_the_next_one_read() {
        let _one = one_at_a_time();
        let (a, b) = pair();
        let mut long = b"ready".to_vec();
        long.resize(proto::MAX_MESSAGE + 100, b' ');
        send_with_fds(a.as_fd(), &long, &[]).unwrap();
        send_with_fds(a.as_fd(), b"ready", &[]).unwrap();
        let e = recv_with_fds(b.as_fd()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
        assert!(e.to_string().contains("longer than 512"), "{e}");
        let (msg, fds) = recv_with_fds(b.as_fd()).unwrap();
        assert_eq!(msg, b"ready");
        assert!(fds.is_empty());
    }

    #[test]
    fn too_many_fds_refuse_the_packet_and_none_stay_open() {
        let _one = one_at_a_time();
        let (a, b) = pair();
        let before = open_fds();
        let files: Vec<std::fs::File> = (0..proto::MAX_PASSED_FDS + 3)
            .map(|_| std::fs::File::open("/dev/null").unwrap())
            .collect();
        let borrowed: Vec<BorrowedFd<'_>> = files.iter().map(|f| f.as_fd()).collect();
        // Our sender refuses this many; send it raw, as a hostile peer would.
        let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(borrowed.len()))];
        let mut anc = SendAncillaryBuffer::new(&mut space);
        assert!(anc.push(SendAncillaryMessage::ScmRights(&borrowed)));
        sendmsg(
            a.as_fd(),
            &[IoSlice::new(b"ready")],
            &mut anc,
            SendFlags::empty(),
        )
        .unwrap();
        drop(files);
        let e = recv_with_fds(b.as_fd()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
        assert!(e.to_string().contains("fds passed"), "{e}");
        // Whatever the kernel installed was closed with the refusal.
        assert_eq!(open_fds(), before);
    }
}
