//! The daemon side of init's control channel.
//!
//! init starts every service with one end of a `SOCK_SEQPACKET` socket pair
//! (its number is in `INIT_CONTROL_FD`). Over it a daemon registers its
//! schemes, receiving the mounted `/dev/fuse` fd, and reports readiness. The
//! wire format is one short text message per packet (see [`proto`]), so a
//! daemon in any language could speak it.

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use rustix::net::{
    recvmsg, sendmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

pub mod logger;
pub mod proto;

pub use logger::init_logging;
pub use proto::RootKind;

/// Environment variable naming the inherited control fd.
pub const CONTROL_FD_ENV: &str = "INIT_CONTROL_FD";

/// A daemon's connection to init.
#[derive(Debug)]
pub struct Daemon {
    control: OwnedFd,
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
        Ok(Daemon { control })
    }

    /// Wraps an existing control socket (init's own tests use this).
    pub fn from_fd(control: OwnedFd) -> Daemon {
        Daemon { control }
    }

    /// Asks init to mount a scheme called `name` at `/scheme/<name>`, its root
    /// a directory. Returns the `/dev/fuse` fd serving that mount.
    pub fn register_scheme(&self, name: &str) -> io::Result<OwnedFd> {
        self.register(name, RootKind::Dir)
    }

    /// Like [`Daemon::register_scheme`], but `/scheme/<name>` is itself a
    /// file (`null`, `zero`, `rand`).
    pub fn register_file_scheme(&self, name: &str) -> io::Result<OwnedFd> {
        self.register(name, RootKind::File)
    }

    /// Registers `name` with the given root type.
    pub fn register(&self, name: &str, kind: RootKind) -> io::Result<OwnedFd> {
        self.send(&proto::Request::Register(name.to_owned(), kind).encode())?;
        let (reply, fd) = recv_with_fd(self.control.as_fd())?;
        match proto::Reply::decode(&reply) {
            Ok(proto::Reply::Ok) => fd.ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidData, "init replied ok without an fd")
            }),
            Ok(proto::Reply::Err(errno, msg)) => Err(io::Error::new(
                io::Error::from_raw_os_error(errno).kind(),
                format!("init refused scheme {name}: {msg}"),
            )),
            Err(e) => Err(io::Error::new(io::ErrorKind::InvalidData, e)),
        }
    }

    /// Tells init this daemon has finished its setup.
    pub fn ready(&self) -> io::Result<()> {
        self.send(&proto::Request::Ready.encode())
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
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut anc = SendAncillaryBuffer::new(&mut space);
    let fds;
    if let Some(fd) = fd {
        fds = [fd];
        anc.push(SendAncillaryMessage::ScmRights(&fds));
    }
    sendmsg(sock, &[IoSlice::new(msg)], &mut anc, SendFlags::NOSIGNAL)?;
    Ok(())
}

/// Receives one packet and at most one passed file descriptor.
pub fn recv_with_fd(sock: BorrowedFd<'_>) -> io::Result<(Vec<u8>, Option<OwnedFd>)> {
    let mut buf = vec![0u8; proto::MAX_MESSAGE];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut anc = RecvAncillaryBuffer::new(&mut space);
    let res = recvmsg(
        sock,
        &mut [IoSliceMut::new(&mut buf)],
        &mut anc,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    if res.bytes == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "control channel closed",
        ));
    }
    buf.truncate(res.bytes);
    let mut passed = None;
    for msg in anc.drain() {
        if let RecvAncillaryMessage::ScmRights(fds) = msg {
            for fd in fds {
                // Keep the first; any extra descriptor is closed on drop.
                if passed.is_none() {
                    passed = Some(fd);
                }
            }
        }
    }
    Ok((buf, passed))
}
