//! probe: one system call on a path, with the result printed in a form tests
//! can match. For what busybox cannot do: O_NONBLOCK reads and writes, poll,
//! raw ioctls, and exact errno names.
//!
//!   probe read  [--nonblock] PATH COUNT       → ok N <hex of bytes> | err ENAME
//!   probe write [--nonblock] PATH TEXT        → ok N | err ENAME
//!   probe poll  PATH in|out TIMEOUT_MS        → ready | timeout | err ENAME
//!   probe ioctl PATH CMD                      → ok N | err ENAME   (CMD in hex or decimal)
//!   probe open  PATH r|w|rw                   → ok | err ENAME
//!   probe pread PATH OFFSET COUNT             → ok N <hex> | err ENAME
//!   probe pwrite PATH OFFSET HEX              → ok N | err ENAME
//!   probe writes PATH PLAN                    → ok N | err ENAME
//!         (PLAN: lines "OFFSET HEX", each one pwrite, in file order)
//!   probe fsync PATH                          → ok | err ENAME
//!   probe ioctl-u64 PATH CMD                  → ok R V  (V: the u64 the call wrote)
//!   probe ioctl-range PATH CMD OFFSET LEN     → ok R | err ENAME
//!         (the argument points at two u64s, OFFSET and LEN: BLKDISCARD's)
//!   probe canary GO_FILE TIMEOUT_S            → a page for a DMA attack to miss (canary.rs)

use std::os::fd::OwnedFd;

mod canary;

use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::fs::{open, Mode, OFlags};
use rustix::io::Errno;

fn errno_name(e: Errno) -> String {
    let known = [
        (Errno::AGAIN, "EAGAIN"),
        (Errno::NOENT, "ENOENT"),
        (Errno::ACCESS, "EACCES"),
        (Errno::PERM, "EPERM"),
        (Errno::BADF, "EBADF"),
        (Errno::INVAL, "EINVAL"),
        (Errno::NOTTY, "ENOTTY"),
        (Errno::INTR, "EINTR"),
        (Errno::ISDIR, "EISDIR"),
        (Errno::NOSYS, "ENOSYS"),
        (Errno::NOSPC, "ENOSPC"),
        (Errno::IO, "EIO"),
        (Errno::NODEV, "ENODEV"),
        (Errno::ROFS, "EROFS"),
        (Errno::NOTCONN, "ENOTCONN"),
        (Errno::NOTDIR, "ENOTDIR"),
        (Errno::EXIST, "EEXIST"),
        (Errno::FBIG, "EFBIG"),
        (Errno::BUSY, "EBUSY"),
        (Errno::NXIO, "ENXIO"),
        (Errno::OPNOTSUPP, "EOPNOTSUPP"),
    ];
    known
        .iter()
        .find(|(k, _)| *k == e)
        .map(|(_, n)| (*n).to_owned())
        .unwrap_or_else(|| format!("E{}", e.raw_os_error()))
}

fn open_path(path: &str, flags: OFlags) -> Result<OwnedFd, Errno> {
    open(path, flags | OFlags::CLOEXEC, Mode::empty())
}

fn parse_num(s: &str) -> Option<u64> {
    match s.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

fn run(args: &[String]) -> Result<String, Errno> {
    let nonblock = args.iter().any(|a| a == "--nonblock");
    let args: Vec<&str> = args
        .iter()
        .map(String::as_str)
        .filter(|a| *a != "--nonblock")
        .collect();
    let extra = if nonblock {
        OFlags::NONBLOCK
    } else {
        OFlags::empty()
    };
    match args.as_slice() {
        ["read", path, count] => {
            let count = parse_num(count).ok_or(Errno::INVAL)? as usize;
            let fd = open_path(path, OFlags::RDONLY | extra)?;
            let mut buf = vec![0u8; count];
            let n = rustix::io::read(&fd, &mut buf)?;
            Ok(format!("ok {n} {}", to_hex(&buf[..n])))
        }
        ["write", path, text] => {
            let fd = open_path(path, OFlags::WRONLY | extra)?;
            let n = rustix::io::write(&fd, text.as_bytes())?;
            Ok(format!("ok {n}"))
        }
        ["poll", path, dir, timeout] => {
            let (flags, events) = match *dir {
                "in" => (OFlags::RDONLY, PollFlags::IN),
                "out" => (OFlags::WRONLY, PollFlags::OUT),
                _ => return Err(Errno::INVAL),
            };
            let ms = parse_num(timeout).ok_or(Errno::INVAL)?;
            let fd = open_path(path, flags)?;
            let mut fds = [PollFd::new(&fd, events)];
            let ts = Timespec {
                tv_sec: (ms / 1000) as i64,
                tv_nsec: ((ms % 1000) * 1_000_000) as i64,
            };
            let n = poll(&mut fds, Some(&ts))?;
            Ok(if n > 0 {
                "ready".to_owned()
            } else {
                "timeout".to_owned()
            })
        }
        ["ioctl", path, cmd] => {
            let cmd = parse_num(cmd).ok_or(Errno::INVAL)?;
            let fd = open_path(path, OFlags::RDWR)?;
            let (r, _) = raw_ioctl(&fd, cmd)?;
            Ok(format!("ok {r}"))
        }
        ["pread", path, offset, count] => {
            let offset = parse_num(offset).ok_or(Errno::INVAL)?;
            let count = parse_num(count).ok_or(Errno::INVAL)? as usize;
            let fd = open_path(path, OFlags::RDONLY)?;
            let mut buf = vec![0u8; count];
            let n = rustix::io::pread(&fd, &mut buf, offset)?;
            Ok(format!("ok {n} {}", to_hex(&buf[..n])))
        }
        ["pwrite", path, offset, hex] => {
            let offset = parse_num(offset).ok_or(Errno::INVAL)?;
            let data = from_hex(hex).ok_or(Errno::INVAL)?;
            let fd = open_path(path, OFlags::WRONLY)?;
            let n = rustix::io::pwrite(&fd, &data, offset)?;
            Ok(format!("ok {n}"))
        }
        ["writes", path, plan] => {
            let plan = std::fs::read_to_string(plan).map_err(|_| Errno::NOENT)?;
            let fd = open_path(path, OFlags::WRONLY)?;
            let mut total = 0;
            for line in plan.lines().filter(|l| !l.is_empty()) {
                let (offset, hex) = line.split_once(' ').ok_or(Errno::INVAL)?;
                let offset = parse_num(offset).ok_or(Errno::INVAL)?;
                let data = from_hex(hex).ok_or(Errno::INVAL)?;
                let n = rustix::io::pwrite(&fd, &data, offset)?;
                if n != data.len() {
                    return Err(Errno::IO);
                }
                total += n;
            }
            Ok(format!("ok {total}"))
        }
        ["fsync", path] => {
            let fd = open_path(path, OFlags::WRONLY)?;
            rustix::fs::fsync(&fd)?;
            Ok("ok".to_owned())
        }
        ["ioctl-u64", path, cmd] => {
            let cmd = parse_num(cmd).ok_or(Errno::INVAL)?;
            let fd = open_path(path, OFlags::RDONLY)?;
            let (r, buf) = raw_ioctl(&fd, cmd)?;
            let mut v = [0u8; 8];
            v.copy_from_slice(&buf[..8]);
            Ok(format!("ok {r} {}", u64::from_ne_bytes(v)))
        }
        ["ioctl-range", path, cmd, offset, len] => {
            let cmd = parse_num(cmd).ok_or(Errno::INVAL)?;
            let offset = parse_num(offset).ok_or(Errno::INVAL)?;
            let len = parse_num(len).ok_or(Errno::INVAL)?;
            let fd = open_path(path, OFlags::RDWR)?;
            let range = [offset.to_ne_bytes(), len.to_ne_bytes()].concat();
            let (r, _) = ioctl_on(&fd, cmd, &range)?;
            Ok(format!("ok {r}"))
        }
        ["open", path, mode] => {
            let flags = match *mode {
                "r" => OFlags::RDONLY,
                "w" => OFlags::WRONLY,
                "rw" => OFlags::RDWR,
                _ => return Err(Errno::INVAL),
            };
            open_path(path, flags | extra)?;
            Ok("ok".to_owned())
        }
        _ => {
            eprintln!("usage: probe read|write|poll|ioctl|open|pread|pwrite|writes|fsync|ioctl-u64|ioctl-range ... (see source)");
            std::process::exit(2);
        }
    }
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn from_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Calls ioctl `cmd` on `fd` with a zeroed buffer as the argument; returns
/// the call's value and the buffer as the call left it.
fn raw_ioctl(fd: &OwnedFd, cmd: u64) -> Result<(i32, Vec<u8>), Errno> {
    ioctl_on(fd, cmd, &[])
}

/// As [`raw_ioctl`], the buffer starting with `init` (at most 16 KiB).
fn ioctl_on(fd: &OwnedFd, cmd: u64, init: &[u8]) -> Result<(i32, Vec<u8>), Errno> {
    let mut buf = vec![0u8; 16384];
    buf.get_mut(..init.len())
        .ok_or(Errno::INVAL)?
        .copy_from_slice(init);
    // SAFETY: the command is arbitrary by design (the tests send garbage on
    // purpose); the argument points at a zeroed 16 KiB buffer, larger than
    // the biggest size (16383) an _IOC encoding can name for restricted FUSE
    // ioctls, so nothing is written past it.
    let r = unsafe {
        rustix::ioctl::ioctl(
            fd,
            RawIoctl {
                cmd: cmd as u32,
                arg: buf.as_mut_ptr(),
            },
        )
    }?;
    Ok((r, buf))
}

/// An ioctl whose command comes from the command line.
struct RawIoctl {
    cmd: u32,
    arg: *mut u8,
}

// SAFETY: `arg` points at a buffer large enough for any restricted ioctl
// (see the caller); the result is the raw return value.
unsafe impl rustix::ioctl::Ioctl for RawIoctl {
    type Output = i32;
    const IS_MUTATING: bool = true;

    fn opcode(&self) -> rustix::ioctl::Opcode {
        self.cmd as rustix::ioctl::Opcode
    }

    fn as_ptr(&mut self) -> *mut core::ffi::c_void {
        self.arg.cast()
    }

    unsafe fn output_from_ptr(
        out: rustix::ioctl::IoctlOutput,
        _: *mut core::ffi::c_void,
    ) -> rustix::io::Result<i32> {
        Ok(out)
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().is_some_and(|a| a == "canary") {
        std::process::exit(canary::run(&args[1..]));
    }
    match run(&args) {
        Ok(s) => println!("{s}"),
        Err(e) => {
            println!("err {}", errno_name(e));
            std::process::exit(1);
        }
    }
}
