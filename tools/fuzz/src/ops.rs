//! The operations and their random arguments: which call, how many bytes,
//! at which offset, with which flags, ioctl numbers and written bytes.
//! Everything is drawn from the worker's generator; nothing here makes a
//! system call.

use nix::fcntl::OFlag;

use crate::targets::Kind;
use scheme_fuzz::rng::Rng;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Open,
    Read,
    Pread,
    Write,
    Pwrite,
    Ioctl,
    Poll,
    Lseek,
    Ftruncate,
    Close,
    Dup,
    /// Fork a child that may use a held file once and exits with every
    /// file still open.
    Fork,
    Fstat,
    Getdents,
    Fsync,
    Fcntl,
    /// A call on a path rather than a file: unlink, mkdir, rename, chmod,
    /// truncate, xattrs, … (see `worker::Worker::on_path`).
    Path,
    /// `sendfile` from a held file to another (the kernel's splice path).
    Sendfile,
}

/// Every op and its weight: how often it is drawn, out of the total.
pub const OPS: [(Op, u64); 18] = [
    (Op::Open, 16),
    (Op::Read, 13),
    (Op::Pread, 8),
    (Op::Write, 12),
    (Op::Pwrite, 6),
    (Op::Ioctl, 10),
    (Op::Poll, 6),
    (Op::Lseek, 5),
    (Op::Ftruncate, 3),
    (Op::Close, 7),
    (Op::Dup, 3),
    (Op::Fork, 2),
    (Op::Fstat, 3),
    (Op::Getdents, 3),
    (Op::Fsync, 1),
    (Op::Fcntl, 2),
    (Op::Path, 4),
    (Op::Sendfile, 2),
];

impl Op {
    pub fn name(self) -> &'static str {
        match self {
            Op::Open => "open",
            Op::Read => "read",
            Op::Pread => "pread",
            Op::Write => "write",
            Op::Pwrite => "pwrite",
            Op::Ioctl => "ioctl",
            Op::Poll => "poll",
            Op::Lseek => "lseek",
            Op::Ftruncate => "ftruncate",
            Op::Close => "close",
            Op::Dup => "dup",
            Op::Fork => "fork",
            Op::Fstat => "fstat",
            Op::Getdents => "getdents",
            Op::Fsync => "fsync",
            Op::Fcntl => "fcntl",
            Op::Path => "path",
            Op::Sendfile => "sendfile",
        }
    }

    pub fn draw(rng: &mut Rng) -> Op {
        let total: u64 = OPS.iter().map(|(_, w)| w).sum();
        let mut x = rng.below(total);
        for (op, w) in OPS {
            if x < w {
                return op;
            }
            x -= w;
        }
        Op::Open
    }
}

/// The largest read or write (a few MiB: four FUSE requests of 1 MiB).
pub const MAX_IO: usize = 4 << 20;

/// A read or write size: mostly small, sometimes at and around page and
/// request boundaries, now and then up to [`MAX_IO`].
pub fn size(rng: &mut Rng) -> usize {
    const EDGES: [usize; 12] = [
        2,
        7,
        511,
        512,
        513,
        4095,
        4096,
        4097,
        65535,
        65536,
        1 << 20,
        (1 << 20) + 1,
    ];
    match rng.below(16) {
        0 => 0,
        1 => 1,
        2..=5 => 1 + rng.index(64),
        6..=8 => rng.pick(&EDGES).unwrap_or(1),
        9..=13 => 1 + rng.index(65536),
        14 => 1 + rng.index(1 << 20),
        _ => 1 + rng.index(MAX_IO),
    }
}

/// An offset for pread, pwrite and lseek around a file of `size` bytes
/// (0 when unknown): zero, unaligned, at, just before and past the end,
/// huge, and negative.
pub fn offset(rng: &mut Rng, size: u64) -> i64 {
    let size = i64::try_from(size).unwrap_or(i64::MAX);
    match rng.below(11) {
        0 => 0,
        1 => rng.below(4096) as i64,
        2 => rng.below(1 << 26) as i64,
        3 => size,
        4 => size.saturating_sub(1 + rng.below(4096) as i64).max(0),
        5 => size.saturating_add(rng.below(1 << 20) as i64),
        6 => 1 << 40,
        7 => i64::MAX - rng.below(4096) as i64,
        8 => -(1 + rng.below(4096) as i64),
        _ => rng.below(size.max(1) as u64) as i64,
    }
}

/// Open flags: any access mode (3 included: "ioctl only"), and any of the
/// status and creation flags.
pub fn open_flags(rng: &mut Rng) -> OFlag {
    const MAYBE: [OFlag; 12] = [
        OFlag::O_NONBLOCK,
        OFlag::O_TRUNC,
        OFlag::O_APPEND,
        OFlag::O_CREAT,
        OFlag::O_EXCL,
        OFlag::O_DIRECTORY,
        OFlag::O_NOFOLLOW,
        OFlag::O_DSYNC,
        OFlag::O_SYNC,
        OFlag::O_DIRECT,
        OFlag::O_NOATIME,
        OFlag::O_NOCTTY,
    ];
    let mut f = OFlag::from_bits_retain(rng.below(4) as i32);
    for flag in MAYBE {
        if rng.one_in(5) {
            f |= flag;
        }
    }
    if rng.one_in(40) {
        f |= OFlag::O_PATH;
    }
    if rng.one_in(60) {
        f |= OFlag::from_bits_retain(libc::O_TMPFILE);
    }
    f
}

/// `_IOC(dir, type, nr, size)` (asm-generic, what x86 uses).
pub const fn ioc(dir: u64, ty: u64, nr: u64, size: u64) -> u64 {
    (dir << 30) | (size << 16) | (ty << 8) | nr
}

/// Commands worth sending on purpose: our schemes' own, the block
/// commands tools send, and some the VFS answers itself.
const KNOWN_IOCTLS: [u64; 12] = [
    0x4601,      // FIFO_CLEAR
    0x8004_4602, // FIFO_GET_LEN
    0x8008_1272, // BLKGETSIZE64
    0x1268,      // BLKSSZGET
    0x5401,      // TCGETS
    0x541b,      // FIONREAD
    0x5421,      // FIONBIO
    0x5450,      // FIONCLEX
    0x5451,      // FIOCLEX
    0x5452,      // FIOASYNC
    0x2,         // FIGETBSZ
    0x8008_6601, // FS_IOC_GETFLAGS
];

/// Freezing a file system (root may) would stop every scheme under it.
const NEVER_IOCTLS: [u64; 2] = [
    0xc004_5877, // FIFREEZE
    0xc004_5878, // FITHAW
];

/// An ioctl command: a known one, a well-formed random one (any direction,
/// type, number and size), or any 32 bits.
pub fn ioctl_cmd(rng: &mut Rng) -> u64 {
    let cmd = match rng.below(4) {
        0 => rng.pick(&KNOWN_IOCTLS).unwrap_or(0),
        1 | 2 => {
            let any_type = rng.below(256);
            let ty = rng
                .pick(&[b'F' as u64, 0x12, b'T' as u64, any_type])
                .unwrap_or(0);
            let any_size = rng.below(1 << 14);
            let size = rng.pick(&[0, 1, 4, 8, 16, 64, 4096, any_size]).unwrap_or(0);
            ioc(rng.below(4), ty, rng.below(256), size)
        }
        _ => rng.next_u64() & 0xffff_ffff,
    };
    if NEVER_IOCTLS.contains(&cmd) {
        KNOWN_IOCTLS[0]
    } else {
        cmd
    }
}

/// Fills `buf` with what to write to a `kind` file at `path` and returns
/// how many bytes to write: shaped like what the file takes (an Ethernet
/// frame, a pcid request, method arguments, a control line), broken, or
/// random.
pub fn data(rng: &mut Rng, kind: Kind, buf: &mut [u8]) -> usize {
    if rng.one_in(4) {
        let n = size(rng).min(buf.len());
        rng.fill(&mut buf[..n]);
        return n;
    }
    let text = match kind {
        Kind::Network => return frame(rng, buf),
        Kind::Pci => {
            let (any_offset, any_len) = (rng.below(70000), rng.below(70000));
            let offset = rng.pick(&[0, 4, 0x40, 0xfff, any_offset]).unwrap_or(0);
            let len = rng.pick(&[0, 1, 4, 256, 4096, any_len]).unwrap_or(0);
            match rng.below(5) {
                0 => "\"Info\"".to_owned(),
                1 => format!("{{\"ConfigRead\":{{\"offset\":{offset},\"len\":{len}}}}}"),
                2 => format!("{{\"ConfigWrite\":{{\"offset\":{offset},\"value\":{len}}}}}"),
                3 => format!("{{\"ConfigRead\":{{\"offset\":-{offset},\"len\":\"x\"}}"),
                _ => "{\"Info\":[1,2,{\"a\":null}]}".to_owned(),
            }
        }
        Kind::Acpi => {
            // Method arguments: up to seven (AML's most), mostly integers
            // of every width, now and then a string or something that
            // parses as neither.
            let count = rng.below(8);
            let args: Vec<String> = (0..count)
                .map(|_| match rng.below(8) {
                    0 => "\"text\"".to_owned(),
                    1 => "((((".to_owned(),
                    2 => format!("{:#x}", rng.next_u64()),
                    _ => format!("{}", rng.below(16)),
                })
                .collect();
            args.join(" ")
        }
        Kind::Init => {
            let words = [
                "restart", "stop", "start", "status", "kill", "fifod", "pcid", "acpid", "init", "",
            ];
            let a = rng.pick(&words).unwrap_or("");
            let b = rng.pick(&words).unwrap_or("");
            format!("{a} {b}\n")
        }
        _ => {
            let n = size(rng).min(buf.len());
            rng.fill(&mut buf[..n]);
            return n;
        }
    };
    let mut bytes = text.into_bytes();
    // Now and then broken: a byte changed or the end cut off.
    if !bytes.is_empty() && rng.one_in(3) {
        let i = rng.index(bytes.len());
        bytes[i] = rng.next_u64() as u8;
        bytes.truncate(1 + rng.index(bytes.len()));
    }
    let n = bytes.len().min(buf.len());
    buf[..n].copy_from_slice(&bytes[..n]);
    n
}

/// An Ethernet frame of 14..=1514 bytes (broadcast or unicast, an
/// experimental EtherType, random payload), or a size a NIC must refuse.
fn frame(rng: &mut Rng, buf: &mut [u8]) -> usize {
    let n = if rng.one_in(5) {
        rng.pick(&[0, 1, 13, 1515, 2000, 9000]).unwrap_or(0)
    } else {
        14 + rng.index(1501)
    }
    .min(buf.len());
    rng.fill(&mut buf[..n]);
    if n >= 14 {
        if rng.one_in(2) {
            buf[..6].fill(0xff);
        } else {
            buf[0] &= !1;
        }
        buf[6] &= !1;
        buf[12..14].copy_from_slice(&[0x88, 0xb5]);
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_op_is_drawn() {
        let mut rng = Rng::new(3);
        let drawn: Vec<Op> = (0..5000).map(|_| Op::draw(&mut rng)).collect();
        for (op, _) in OPS {
            assert!(drawn.contains(&op), "{op:?} never drawn");
        }
    }

    #[test]
    fn sizes_and_offsets_cover_the_edges() {
        let mut rng = Rng::new(5);
        let sizes: Vec<usize> = (0..5000).map(|_| size(&mut rng)).collect();
        assert!(sizes.contains(&0) && sizes.contains(&4096));
        assert!(sizes.iter().all(|&s| s <= MAX_IO));
        assert!(sizes.iter().any(|&s| s > 1 << 20));
        let offs: Vec<i64> = (0..5000).map(|_| offset(&mut rng, 8 << 20)).collect();
        assert!(offs.iter().any(|&o| o < 0));
        assert!(offs.contains(&(8 << 20)));
        assert!(offs.iter().any(|&o| o > 1 << 39));
    }

    #[test]
    fn ioctl_numbers_never_freeze_and_use_every_direction() {
        let mut rng = Rng::new(9);
        let cmds: Vec<u64> = (0..5000).map(|_| ioctl_cmd(&mut rng)).collect();
        assert!(cmds
            .iter()
            .all(|c| !NEVER_IOCTLS.contains(c) && *c <= 0xffff_ffff));
        for dir in 0..4 {
            assert!(cmds.iter().any(|c| c >> 30 == dir));
        }
        assert_eq!(ioc(2, 0x12, 114, 8), 0x8008_1272);
    }

    #[test]
    fn frames_are_mostly_the_sizes_a_nic_takes() {
        let mut rng = Rng::new(11);
        let mut buf = vec![0u8; 9000];
        let sizes: Vec<usize> = (0..1000).map(|_| frame(&mut rng, &mut buf)).collect();
        let good = sizes.iter().filter(|&&n| (14..=1514).contains(&n)).count();
        assert!(good > 700 && good < 1000, "{good}");
    }
}
