//! Translation between Linux numbers (what FUSE carries) and Redox numbers
//! (what a scheme body sees). Done explicitly, flag by flag: the two flag
//! spaces share no bit positions.

use syscall::error::{EDEADLK, EDEADLOCK, EIO, EWOULDBLOCK};
use syscall::flag::{
    EventFlags, O_APPEND, O_ASYNC, O_CREAT, O_DIRECTORY, O_EXCL, O_FSYNC, O_NOFOLLOW, O_NONBLOCK,
    O_RDONLY, O_RDWR, O_TRUNC, O_WRONLY,
};

/// Linux `open(2)` flag bits (x86-64 / asm-generic values).
pub mod linux {
    pub const O_ACCMODE: u32 = 0o3;
    pub const O_WRONLY: u32 = 0o1;
    pub const O_RDWR: u32 = 0o2;
    pub const O_CREAT: u32 = 0o100;
    pub const O_EXCL: u32 = 0o200;
    pub const O_TRUNC: u32 = 0o1000;
    pub const O_APPEND: u32 = 0o2000;
    pub const O_NONBLOCK: u32 = 0o4000;
    pub const O_DSYNC: u32 = 0o10000;
    pub const O_ASYNC: u32 = 0o20000;
    pub const O_DIRECTORY: u32 = 0o200000;
    pub const O_NOFOLLOW: u32 = 0o400000;

    pub const EAGAIN: i32 = 11;

    pub const POLLIN: u32 = 0x1;
    pub const POLLOUT: u32 = 0x4;
    pub const POLLRDNORM: u32 = 0x40;
    pub const POLLWRNORM: u32 = 0x100;

    pub const S_IFDIR: u32 = 0o040000;
    pub const S_IFREG: u32 = 0o100000;

    pub const DT_UNKNOWN: u32 = 0;
    pub const DT_DIR: u32 = 4;
    pub const DT_REG: u32 = 8;
}

/// Redox `O_*` flags for Linux open flags (access mode, creation and
/// status flags). Bits with no Redox meaning (`O_CLOEXEC`, `O_LARGEFILE`,
/// `O_NOCTTY`, `O_DIRECT`, …) are dropped: they are the kernel's business.
pub fn open_flags_from_linux(flags: u32) -> usize {
    let mut out = match flags & linux::O_ACCMODE {
        linux::O_WRONLY => O_WRONLY,
        linux::O_RDWR => O_RDWR,
        // 0 is O_RDONLY; 3 is not a valid mode and is treated as read-only.
        _ => O_RDONLY,
    };
    for (l, r) in [
        (linux::O_CREAT, O_CREAT),
        (linux::O_EXCL, O_EXCL),
        (linux::O_TRUNC, O_TRUNC),
        (linux::O_APPEND, O_APPEND),
        (linux::O_NONBLOCK, O_NONBLOCK),
        (linux::O_DSYNC, O_FSYNC),
        (linux::O_ASYNC, O_ASYNC),
        (linux::O_DIRECTORY, O_DIRECTORY),
        (linux::O_NOFOLLOW, O_NOFOLLOW),
    ] {
        if flags & l != 0 {
            out |= r;
        }
    }
    out
}

/// The per-file status flags a read/write carries (from `fcntl(F_SETFL)`),
/// as the Redox `fcntl_flags` argument.
pub fn fcntl_flags_from_linux(flags: u32) -> u32 {
    // The Redox O_* status bits all fit in the low 32 bits.
    (open_flags_from_linux(flags) & (O_NONBLOCK | O_APPEND | O_ASYNC | O_FSYNC)) as u32
}

/// Linux errno for a Redox error number. Redox numbers equal Linux's for
/// everything Linux defines; the two Redox-only aliases are folded and
/// anything out of range becomes `EIO` (never 0: that would mean success).
pub fn errno_to_linux(errno: i32) -> i32 {
    match errno {
        EWOULDBLOCK => linux::EAGAIN,
        EDEADLOCK => EDEADLK,
        1..=131 => errno,
        _ => EIO,
    }
}

/// Redox event flags for Linux poll bits; no bit asked for means both.
pub fn events_from_poll(events: u32) -> EventFlags {
    let mut out = EventFlags::empty();
    if events & (linux::POLLIN | linux::POLLRDNORM) != 0 {
        out |= EventFlags::EVENT_READ;
    }
    if events & (linux::POLLOUT | linux::POLLWRNORM) != 0 {
        out |= EventFlags::EVENT_WRITE;
    }
    if out.is_empty() {
        out = EventFlags::EVENT_READ | EventFlags::EVENT_WRITE;
    }
    out
}

/// Linux poll bits for ready Redox events, limited to what was asked for.
pub fn poll_from_events(ready: EventFlags, requested: u32) -> u32 {
    let mut out = 0;
    if ready.contains(EventFlags::EVENT_READ) {
        out |= linux::POLLIN | linux::POLLRDNORM;
    }
    if ready.contains(EventFlags::EVENT_WRITE) {
        out |= linux::POLLOUT | linux::POLLWRNORM;
    }
    if requested != 0 {
        out &= requested;
    }
    out
}

/// ioctl command encoding (`_IOC` in `asm-generic/ioctl.h`, used by x86).
pub mod ioctl {
    pub const NRBITS: u32 = 8;
    pub const TYPEBITS: u32 = 8;
    pub const SIZEBITS: u32 = 14;
    pub const NRSHIFT: u32 = 0;
    pub const TYPESHIFT: u32 = NRSHIFT + NRBITS;
    pub const SIZESHIFT: u32 = TYPESHIFT + TYPEBITS;
    pub const DIRSHIFT: u32 = SIZESHIFT + SIZEBITS;

    /// No data moves: the argument is a plain value.
    pub const NONE: u32 = 0;
    /// Userspace writes data to the driver (`_IOW`).
    pub const WRITE: u32 = 1;
    /// Userspace reads data from the driver (`_IOR`).
    pub const READ: u32 = 2;

    pub const fn ioc(dir: u32, ty: u8, nr: u8, size: u32) -> u32 {
        (dir << DIRSHIFT)
            | ((size & ((1 << SIZEBITS) - 1)) << SIZESHIFT)
            | ((ty as u32) << TYPESHIFT)
            | ((nr as u32) << NRSHIFT)
    }
    /// `_IO(ty, nr)`
    pub const fn io(ty: u8, nr: u8) -> u32 {
        ioc(NONE, ty, nr, 0)
    }
    /// `_IOR(ty, nr, size)`: the driver fills `size` bytes.
    pub const fn ior(ty: u8, nr: u8, size: u32) -> u32 {
        ioc(READ, ty, nr, size)
    }
    /// `_IOW(ty, nr, size)`: the caller passes `size` bytes.
    pub const fn iow(ty: u8, nr: u8, size: u32) -> u32 {
        ioc(WRITE, ty, nr, size)
    }
    /// `_IOWR(ty, nr, size)`
    pub const fn iowr(ty: u8, nr: u8, size: u32) -> u32 {
        ioc(READ | WRITE, ty, nr, size)
    }
    pub const fn dir(cmd: u32) -> u32 {
        cmd >> DIRSHIFT
    }
    pub const fn size(cmd: u32) -> u32 {
        (cmd >> SIZESHIFT) & ((1 << SIZEBITS) - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_flags() {
        assert_eq!(open_flags_from_linux(0), O_RDONLY);
        assert_eq!(open_flags_from_linux(1), O_WRONLY);
        assert_eq!(open_flags_from_linux(2), O_RDWR);
        // O_CLOEXEC | O_LARGEFILE are dropped.
        assert_eq!(
            open_flags_from_linux(0o2000000 | 0o100000 | 0o4000 | 0o100 | 2),
            O_RDWR | O_NONBLOCK | O_CREAT
        );
        assert_eq!(fcntl_flags_from_linux(0o4002), O_NONBLOCK as u32);
    }

    #[test]
    fn errnos() {
        assert_eq!(errno_to_linux(syscall::error::ENOENT), 2);
        assert_eq!(errno_to_linux(EWOULDBLOCK), 11);
        assert_eq!(errno_to_linux(EDEADLOCK), 35);
        assert_eq!(errno_to_linux(0), EIO);
        assert_eq!(errno_to_linux(-3), EIO);
        assert_eq!(errno_to_linux(9999), EIO);
    }

    #[test]
    fn ioctl_encoding_matches_linux() {
        // Known values from Linux headers.
        assert_eq!(ioctl::io(b'F', 1), 0x4601);
        assert_eq!(ioctl::ior(b'f', 1, 8), 0x8008_6601); // FS_IOC_GETFLAGS on 64-bit
        assert_eq!(ioctl::iow(b'f', 2, 8), 0x4008_6602); // FS_IOC_SETFLAGS
        assert_eq!(ioctl::dir(0x8008_6601), ioctl::READ);
        assert_eq!(ioctl::size(0x8008_6601), 8);
    }

    #[test]
    fn poll_bits() {
        assert_eq!(
            events_from_poll(0),
            EventFlags::EVENT_READ | EventFlags::EVENT_WRITE
        );
        assert_eq!(events_from_poll(linux::POLLIN), EventFlags::EVENT_READ);
        assert_eq!(
            poll_from_events(
                EventFlags::EVENT_READ | EventFlags::EVENT_WRITE,
                linux::POLLIN
            ),
            linux::POLLIN
        );
    }
}
