//! The FUSE wire format: the subset of `include/uapi/linux/fuse.h` this
//! runtime speaks, written out here from the protocol description.
//!
//! Every structure is `#[repr(C)]` with explicit padding fields so that
//! zerocopy can prove it has no uninitialised bytes; requests are parsed by
//! copying out of the (unaligned) read buffer, never by casting pointers.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Protocol major version; the kernel and we must agree exactly.
pub const KERNEL_VERSION: u32 = 7;
/// Highest minor version we implement. 7.31 brings `FOPEN_STREAM`; 7.28
/// brought `FUSE_MAX_PAGES`. Linux 6.1 offers 7.37, so we get all we need.
pub const KERNEL_MINOR_VERSION: u32 = 31;

/// Largest write payload we accept (and read size the kernel will ask for).
pub const MAX_WRITE: usize = 1 << 20;
/// `MAX_WRITE` in 4 KiB pages, sent as `max_pages`.
pub const MAX_PAGES: u16 = (MAX_WRITE / 4096) as u16;
/// The kernel refuses to hand a request to a reader whose buffer cannot
/// hold it, so the buffer covers the largest write plus its headers.
pub const REQUEST_BUFFER_SIZE: usize = MAX_WRITE + 64 * 1024;

/// The root node's id, fixed by the protocol.
pub const ROOT_ID: u64 = 1;

// Opcodes.
pub const FUSE_LOOKUP: u32 = 1;
pub const FUSE_FORGET: u32 = 2;
pub const FUSE_GETATTR: u32 = 3;
pub const FUSE_SETATTR: u32 = 4;
pub const FUSE_OPEN: u32 = 14;
pub const FUSE_READ: u32 = 15;
pub const FUSE_WRITE: u32 = 16;
pub const FUSE_STATFS: u32 = 17;
pub const FUSE_RELEASE: u32 = 18;
pub const FUSE_FSYNC: u32 = 20;
pub const FUSE_FLUSH: u32 = 25;
pub const FUSE_INIT: u32 = 26;
pub const FUSE_OPENDIR: u32 = 27;
pub const FUSE_READDIR: u32 = 28;
pub const FUSE_RELEASEDIR: u32 = 29;
pub const FUSE_FSYNCDIR: u32 = 30;
pub const FUSE_ACCESS: u32 = 34;
pub const FUSE_CREATE: u32 = 35;
pub const FUSE_INTERRUPT: u32 = 36;
pub const FUSE_DESTROY: u32 = 38;
pub const FUSE_IOCTL: u32 = 39;
pub const FUSE_POLL: u32 = 40;
pub const FUSE_BATCH_FORGET: u32 = 42;

// FUSE_INIT flags.
pub const FUSE_ATOMIC_O_TRUNC: u32 = 1 << 3;
pub const FUSE_BIG_WRITES: u32 = 1 << 5;
pub const FUSE_MAX_PAGES: u32 = 1 << 22;
/// 7.36+: `flags2` follows `flags` in INIT, for flags 32-63.
pub const FUSE_INIT_EXT: u32 = 1 << 30;

// fuse_open_out.open_flags.
pub const FOPEN_DIRECT_IO: u32 = 1 << 0;
pub const FOPEN_NONSEEKABLE: u32 = 1 << 2;
pub const FOPEN_STREAM: u32 = 1 << 4;
/// Linux 5.16+: `close` sends no FLUSH. Without it every close takes the
/// inode lock, which a write parked in the daemon holds: closing any other
/// fd of a full FIFO would hang until the writer is served.
pub const FOPEN_NOFLUSH: u32 = 1 << 5;
/// Linux 6.2+: direct-I/O writes inside the file's size take the inode lock
/// shared, so several (deferred) writes to one disk can be in flight.
/// Older kernels ignore it.
pub const FOPEN_PARALLEL_DIRECT_WRITES: u32 = 1 << 6;

// fuse_getattr_in.getattr_flags.
pub const FUSE_GETATTR_FH: u32 = 1 << 0;

// fuse_setattr_in.valid.
pub const FATTR_SIZE: u32 = 1 << 3;
pub const FATTR_FH: u32 = 1 << 6;

// fuse_ioctl_in.flags.
pub const FUSE_IOCTL_UNRESTRICTED: u32 = 1 << 1;
pub const FUSE_IOCTL_DIR: u32 = 1 << 4;

// fuse_poll_in.flags.
pub const FUSE_POLL_SCHEDULE_NOTIFY: u32 = 1 << 0;

/// Notification code carried in `fuse_out_header.error` (unique 0).
pub const FUSE_NOTIFY_POLL: i32 = 1;
/// Bit 63 of `unique` marks a request the kernel sent again after
/// `FUSE_NOTIFY_RESEND`; the reply echoes the whole unique.
pub const FUSE_UNIQUE_RESEND: u64 = 1 << 63;

#[repr(C)]
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct InHeader {
    pub len: u32,
    pub opcode: u32,
    pub unique: u64,
    pub nodeid: u64,
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
    /// `total_extlen` since 7.36; always zero at the minor we negotiate.
    pub total_extlen: u16,
    pub padding: u16,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct OutHeader {
    pub len: u32,
    pub error: i32,
    pub unique: u64,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct InitIn {
    pub major: u32,
    pub minor: u32,
    pub max_readahead: u32,
    pub flags: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct InitOut {
    pub major: u32,
    pub minor: u32,
    pub max_readahead: u32,
    pub flags: u32,
    pub max_background: u16,
    pub congestion_threshold: u16,
    pub max_write: u32,
    pub time_gran: u32,
    pub max_pages: u16,
    pub map_alignment: u16,
    pub flags2: u32,
    pub unused: [u32; 7],
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct Attr {
    pub ino: u64,
    pub size: u64,
    pub blocks: u64,
    pub atime: u64,
    pub mtime: u64,
    pub ctime: u64,
    pub atimensec: u32,
    pub mtimensec: u32,
    pub ctimensec: u32,
    pub mode: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u32,
    pub blksize: u32,
    pub flags: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct EntryOut {
    pub nodeid: u64,
    pub generation: u64,
    pub entry_valid: u64,
    pub attr_valid: u64,
    pub entry_valid_nsec: u32,
    pub attr_valid_nsec: u32,
    pub attr: Attr,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct AttrOut {
    pub attr_valid: u64,
    pub attr_valid_nsec: u32,
    pub dummy: u32,
    pub attr: Attr,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct GetattrIn {
    pub getattr_flags: u32,
    pub dummy: u32,
    pub fh: u64,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct SetattrIn {
    pub valid: u32,
    pub padding: u32,
    pub fh: u64,
    pub size: u64,
    pub lock_owner: u64,
    pub atime: u64,
    pub mtime: u64,
    pub ctime: u64,
    pub atimensec: u32,
    pub mtimensec: u32,
    pub ctimensec: u32,
    pub mode: u32,
    pub unused4: u32,
    pub uid: u32,
    pub gid: u32,
    pub unused5: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct OpenIn {
    pub flags: u32,
    pub open_flags: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct CreateIn {
    pub flags: u32,
    pub mode: u32,
    pub umask: u32,
    pub open_flags: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct OpenOut {
    pub fh: u64,
    pub open_flags: u32,
    pub padding: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct ReleaseIn {
    pub fh: u64,
    pub flags: u32,
    pub release_flags: u32,
    pub lock_owner: u64,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct ReadIn {
    pub fh: u64,
    pub offset: u64,
    pub size: u32,
    pub read_flags: u32,
    pub lock_owner: u64,
    pub flags: u32,
    pub padding: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct WriteIn {
    pub fh: u64,
    pub offset: u64,
    pub size: u32,
    pub write_flags: u32,
    pub lock_owner: u64,
    pub flags: u32,
    pub padding: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct WriteOut {
    pub size: u32,
    pub padding: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct FsyncIn {
    pub fh: u64,
    pub fsync_flags: u32,
    pub padding: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct ForgetIn {
    pub nlookup: u64,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct BatchForgetIn {
    pub count: u32,
    pub dummy: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct ForgetOne {
    pub nodeid: u64,
    pub nlookup: u64,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct InterruptIn {
    pub unique: u64,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct Kstatfs {
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
    pub namelen: u32,
    pub frsize: u32,
    pub padding: u32,
    pub spare: [u32; 6],
}

/// Header of one `fuse_dirent`; the name follows, padded to 8 bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct Dirent {
    pub ino: u64,
    pub off: u64,
    pub namelen: u32,
    pub typ: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct IoctlIn {
    pub fh: u64,
    pub flags: u32,
    pub cmd: u32,
    pub arg: u64,
    pub in_size: u32,
    pub out_size: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct IoctlOut {
    pub result: i32,
    pub flags: u32,
    pub in_iovs: u32,
    pub out_iovs: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct PollIn {
    pub fh: u64,
    pub kh: u64,
    pub flags: u32,
    pub events: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct PollOut {
    pub revents: u32,
    pub padding: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct NotifyPollWakeupOut {
    pub kh: u64,
}

/// Why a buffer could not be taken as a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseError {
    /// Shorter than a `fuse_in_header`: not even the unique can be trusted.
    NoHeader,
    /// The header's `len` disagrees with the number of bytes read.
    BadLength { header: InHeader },
}

/// One request as read from `/dev/fuse`: its header and the opcode-specific
/// bytes after it (extension headers of newer minors excluded).
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub header: InHeader,
    pub body: &'a [u8],
}

impl<'a> Request<'a> {
    /// Splits one read's worth of bytes into header and body.
    pub fn parse(bytes: &'a [u8]) -> Result<Request<'a>, ParseError> {
        let (header, rest) = InHeader::read_from_prefix(bytes).map_err(|_| ParseError::NoHeader)?;
        if header.len as usize != bytes.len() {
            return Err(ParseError::BadLength { header });
        }
        Ok(Request { header, body: rest })
    }

    /// The fixed-size argument at the front of the body and what follows it,
    /// or `None` if the body is too short.
    pub fn arg<T: FromBytes>(&self) -> Option<(T, &'a [u8])> {
        T::read_from_prefix(self.body).ok()
    }
}

/// A NUL-terminated name at the front of `bytes`: the name without its NUL,
/// or `None` if there is no terminator.
pub fn c_name(bytes: &[u8]) -> Option<&[u8]> {
    let end = bytes.iter().position(|&b| b == 0)?;
    Some(&bytes[..end])
}

/// Size of a dirent entry with a name of `namelen` bytes, padded to 8.
pub fn dirent_size(namelen: usize) -> usize {
    (std::mem::size_of::<Dirent>() + namelen + 7) & !7
}

#[cfg(test)]
mod tests {
    use super::*;
    use zerocopy::IntoBytes;

    fn header(len: u32, opcode: u32) -> InHeader {
        InHeader {
            len,
            opcode,
            unique: 42,
            nodeid: 1,
            uid: 1000,
            gid: 100,
            pid: 7,
            ..Default::default()
        }
    }

    #[test]
    fn sizes_match_the_kernel_abi() {
        use std::mem::size_of;
        assert_eq!(size_of::<InHeader>(), 40);
        assert_eq!(size_of::<OutHeader>(), 16);
        assert_eq!(size_of::<InitOut>(), 64);
        assert_eq!(size_of::<Attr>(), 88);
        assert_eq!(size_of::<EntryOut>(), 128);
        assert_eq!(size_of::<AttrOut>(), 104);
        assert_eq!(size_of::<SetattrIn>(), 88);
        assert_eq!(size_of::<ReadIn>(), 40);
        assert_eq!(size_of::<WriteIn>(), 40);
        assert_eq!(size_of::<ReleaseIn>(), 24);
        assert_eq!(size_of::<Kstatfs>(), 80);
        assert_eq!(size_of::<IoctlIn>(), 32);
        assert_eq!(size_of::<IoctlOut>(), 16);
        assert_eq!(size_of::<PollIn>(), 24);
        assert_eq!(size_of::<Dirent>(), 24);
    }

    #[test]
    fn empty_and_short_buffers_have_no_header() {
        assert_eq!(Request::parse(&[]).unwrap_err(), ParseError::NoHeader);
        assert_eq!(
            Request::parse(&[0u8; 39]).unwrap_err(),
            ParseError::NoHeader
        );
    }

    #[test]
    fn length_mismatch_is_reported_with_the_header() {
        let h = header(100, FUSE_READ);
        match Request::parse(h.as_bytes()) {
            Err(ParseError::BadLength { header }) => assert_eq!(header.unique, 42),
            other => panic!("unexpected {other:?}"),
        }
        // Longer than announced is just as wrong.
        let mut bytes = header(40, FUSE_READ).as_bytes().to_vec();
        bytes.push(0);
        assert!(matches!(
            Request::parse(&bytes),
            Err(ParseError::BadLength { .. })
        ));
    }

    #[test]
    fn short_body_has_no_argument() {
        let mut bytes = header(40 + 8, FUSE_READ).as_bytes().to_vec();
        bytes.extend_from_slice(&[1u8; 8]);
        let req = Request::parse(&bytes).unwrap();
        assert!(req.arg::<ReadIn>().is_none());
        let (forget, rest) = req.arg::<ForgetIn>().unwrap();
        assert_eq!(forget.nlookup, 0x0101_0101_0101_0101);
        assert!(rest.is_empty());
    }

    #[test]
    fn write_payload_follows_the_argument() {
        let w = WriteIn {
            fh: 3,
            size: 5,
            ..Default::default()
        };
        let mut bytes = header(40 + 40 + 5, FUSE_WRITE).as_bytes().to_vec();
        bytes.extend_from_slice(w.as_bytes());
        bytes.extend_from_slice(b"hello");
        let req = Request::parse(&bytes).unwrap();
        let (arg, data) = req.arg::<WriteIn>().unwrap();
        assert_eq!(arg.fh, 3);
        assert_eq!(data, b"hello");
    }

    #[test]
    fn names_need_a_terminator() {
        assert_eq!(c_name(b"abc\0"), Some(&b"abc"[..]));
        assert_eq!(c_name(b"abc\0junk"), Some(&b"abc"[..]));
        assert_eq!(c_name(b"abc"), None);
        assert_eq!(c_name(b""), None);
    }

    #[test]
    fn dirents_are_padded_to_eight() {
        assert_eq!(dirent_size(1), 32);
        assert_eq!(dirent_size(8), 32);
        assert_eq!(dirent_size(9), 40);
    }
}
