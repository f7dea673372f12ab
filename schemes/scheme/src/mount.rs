//! Mounting a scheme: the registrar side (init, and the host tests).

use std::ffi::CString;
use std::io;
use std::os::fd::OwnedFd;
use std::path::Path;

use rustix::fs::{Mode, OFlags};
use rustix::mount::{MountFlags, UnmountFlags};

/// What the root of a scheme's mount is (`Dir`: `rootmode=40000`, `File`:
/// `rootmode=100000`); the same type a daemon names when it registers.
pub use daemon::RootKind;

/// Opens `/dev/fuse` and mounts it on `target`, returning the fd to hand to
/// the daemon that serves it. The mount's source (shown in
/// `/proc/self/mounts`) is the scheme name, the last component of `target`.
///
/// Options: `allow_other` (every user may open scheme files; the scheme does
/// its own access checks from the caller's uid/gid), no `default_permissions`
/// for the same reason, `nosuid,nodev`. Requires `CAP_SYS_ADMIN`.
pub fn mount_fuse(target: &Path, kind: RootKind, uid: u32, gid: u32) -> io::Result<OwnedFd> {
    let fd = rustix::fs::open("/dev/fuse", OFlags::RDWR | OFlags::CLOEXEC, Mode::empty())?;
    let rootmode = match kind {
        RootKind::Dir => "40000",
        RootKind::File => "100000",
    };
    let raw = {
        use std::os::fd::AsRawFd;
        fd.as_raw_fd()
    };
    let data = format!("fd={raw},rootmode={rootmode},user_id={uid},group_id={gid},allow_other");
    let data = CString::new(data).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let name = target
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| !n.is_empty())
        .unwrap_or("scheme");
    rustix::mount::mount(
        name,
        target,
        "fuse",
        MountFlags::NOSUID | MountFlags::NODEV,
        data.as_c_str(),
    )?;
    Ok(fd)
}

/// Lazily unmounts `target` (`MNT_DETACH`): the mount disappears from the
/// namespace now and the connection ends once open files are closed.
pub fn unmount(target: &Path) -> io::Result<()> {
    rustix::mount::unmount(target, UnmountFlags::DETACH)?;
    Ok(())
}

/// `FUSE_NOTIFY_RESEND` (Linux 6.9, protocol 7.40): the notification code
/// in `fuse_out_header.error` of a message with `unique` 0 and no body.
const FUSE_NOTIFY_RESEND: i32 = 7;

/// Asks the kernel to queue again every request of this connection that was
/// read but not answered (by a daemon that has since died): they come back
/// with bit 63 set in `unique`, which the reply echoes. Whoever takes over a
/// connection sends it once, before serving.
pub fn notify_resend(fuse: std::os::fd::BorrowedFd<'_>) -> io::Result<()> {
    let mut msg = [0u8; 16];
    msg[..4].copy_from_slice(&16u32.to_ne_bytes());
    msg[4..8].copy_from_slice(&FUSE_NOTIFY_RESEND.to_ne_bytes());
    rustix::io::write(fuse, &msg)?;
    Ok(())
}
