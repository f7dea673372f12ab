//! `/scheme/time`: the clock's two read-only files (`now`, `cmos`; see the
//! crate docs), each rendered from one read of the chip when opened.

use log::warn;
use scheme::{CallerCtx, DirentBuf, DirentKind, Handles, OpenResult, Scheme, Stat};
use syscall::error::{Error, Result, EACCES, EIO, EISDIR, ENOENT, ENOTDIR};
use syscall::flag::{MODE_DIR, MODE_FILE, O_ACCMODE, O_DIRECTORY, O_RDONLY, O_STAT};

use crate::device::Clock;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Node {
    Root,
    Now,
    Cmos,
}

const FILES: [(&str, Node); 2] = [("now", Node::Now), ("cmos", Node::Cmos)];

struct Open {
    node: Node,
    /// The file's content, taken when it was opened.
    data: Vec<u8>,
}

/// `/scheme/time`: a directory of read-only files (see the crate docs).
pub struct TimeScheme<C: Clock> {
    clock: C,
    handles: Handles<Open>,
}

impl<C: Clock> TimeScheme<C> {
    pub fn new(clock: C) -> TimeScheme<C> {
        TimeScheme {
            clock,
            handles: Handles::new(),
        }
    }

    fn content(&mut self, node: Node) -> Result<Vec<u8>> {
        let raw = self.clock.read().map_err(|e| {
            warn!("reading the clock: {e}");
            Error::new(EIO)
        })?;
        match node {
            Node::Root => Ok(Vec::new()),
            Node::Now => {
                let t = raw.decode().map_err(|e| {
                    warn!("the clock holds no valid time: {e}");
                    Error::new(EIO)
                })?;
                Ok(format!("{} {t}\n", t.unix_seconds()).into_bytes())
            }
            Node::Cmos => Ok(raw.describe(self.clock.century_register()).into_bytes()),
        }
    }
}

impl<C: Clock> Scheme for TimeScheme<C> {
    fn openat(&mut self, path: &str, flags: usize, _ctx: &CallerCtx) -> Result<OpenResult> {
        let path = path.trim_matches('/');
        let stat_only = flags & O_STAT != 0;
        let node = if path.is_empty() {
            Node::Root
        } else {
            FILES
                .iter()
                .find(|(name, _)| *name == path)
                .map(|&(_, n)| n)
                .ok_or(Error::new(ENOENT))?
        };
        match node {
            Node::Root if !stat_only && flags & O_ACCMODE != O_RDONLY => {
                return Err(Error::new(EISDIR))
            }
            Node::Now | Node::Cmos if flags & O_DIRECTORY != 0 => return Err(Error::new(ENOTDIR)),
            Node::Now | Node::Cmos if !stat_only && flags & O_ACCMODE != O_RDONLY => {
                return Err(Error::new(EACCES))
            }
            _ => {}
        }
        // A lookup (`O_STAT`) renders the content too, for its size: Linux
        // 6.12's FUSE serves sendfile/splice (busybox `cat`) from the page
        // cache, which stops at the size the lookup reported
        // (docs/scheme-protocol.md, Direct I/O). A clock that cannot be read
        // fails the open, not the lookup.
        let data = match node {
            Node::Root => Vec::new(),
            _ if stat_only => self.content(node).unwrap_or_default(),
            _ => self.content(node)?,
        };
        Ok(OpenResult::file(self.handles.insert(Open { node, data })))
    }

    fn read(
        &mut self,
        id: usize,
        buf: &mut [u8],
        offset: u64,
        _fcntl_flags: u32,
        _ctx: &CallerCtx,
    ) -> Result<usize> {
        let open = self.handles.get(id)?;
        if open.node == Node::Root {
            return Err(Error::new(EISDIR));
        }
        Ok(scheme::read_at(&open.data, buf, offset))
    }

    fn fstat(&mut self, id: usize, stat: &mut Stat, _ctx: &CallerCtx) -> Result<()> {
        let open = self.handles.get(id)?;
        if open.node == Node::Root {
            stat.st_mode = MODE_DIR | 0o555;
        } else {
            stat.st_mode = MODE_FILE | 0o444;
            stat.st_size = open.data.len() as u64;
        }
        stat.st_nlink = 1;
        Ok(())
    }

    fn getdents(
        &mut self,
        id: usize,
        buf: &mut DirentBuf,
        opaque_offset: u64,
        _ctx: &CallerCtx,
    ) -> Result<()> {
        if self.handles.get(id)?.node != Node::Root {
            return Err(Error::new(ENOTDIR));
        }
        buf.list(
            opaque_offset,
            FILES.iter().map(|(name, _)| (*name, DirentKind::Regular)),
        );
        Ok(())
    }

    fn on_close(&mut self, id: usize) {
        self.handles.remove(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;

    use crate::device::RawTime;
    use syscall::flag::{O_RDWR, O_WRONLY};

    /// A clock that counts its reads and can be made to fail.
    struct Fake {
        raw: RawTime,
        reads: usize,
        broken: bool,
    }

    impl Clock for Fake {
        fn read(&mut self) -> io::Result<RawTime> {
            self.reads += 1;
            if self.broken {
                return Err(io::Error::other("broken"));
            }
            Ok(self.raw)
        }
        fn century_register(&self) -> Option<u8> {
            Some(0x32)
        }
    }

    fn scheme() -> TimeScheme<Fake> {
        TimeScheme::new(Fake {
            raw: RawTime {
                seconds: 0x03,
                minutes: 0x12,
                hours: 0x03,
                weekday: 0x06,
                day: 0x22,
                month: 0x11,
                year: 0x24,
                century: Some(0x20),
                status_a: 0x26,
                status_b: 0x02,
            },
            reads: 0,
            broken: false,
        })
    }

    fn read_all(s: &mut TimeScheme<Fake>, id: usize, chunk: usize) -> String {
        let ctx = CallerCtx::default();
        let mut out = Vec::new();
        loop {
            let mut buf = vec![0u8; chunk];
            let n = s.read(id, &mut buf, out.len() as u64, 0, &ctx).unwrap();
            if n == 0 {
                return String::from_utf8(out).unwrap();
            }
            out.extend_from_slice(&buf[..n]);
        }
    }

    #[test]
    fn now_and_cmos() {
        let ctx = CallerCtx::default();
        let mut s = scheme();
        let id = s.openat("now", O_RDONLY, &ctx).unwrap().id;
        assert_eq!(read_all(&mut s, id, 5), "1732245123 2024-11-22T03:12:03Z\n");
        let id = s.openat("/cmos", O_RDONLY, &ctx).unwrap().id;
        let text = read_all(&mut s, id, 4096);
        assert!(
            text.starts_with("seconds 0x03\nminutes 0x12\nhours 0x03\n"),
            "{text}"
        );
        assert!(text.contains("century 0x20 (register 0x32)\n"), "{text}");
        let mut st = Stat::default();
        s.fstat(id, &mut st, &ctx).unwrap();
        assert_eq!(st.st_size as usize, text.len());
        assert_eq!(st.st_mode, MODE_FILE | 0o444);
    }

    #[test]
    fn one_read_of_the_chip_per_open() {
        let ctx = CallerCtx::default();
        let mut s = scheme();
        let id = s.openat("now", O_RDONLY, &ctx).unwrap().id;
        let first = read_all(&mut s, id, 1);
        // The clock moves on; the open file keeps what it read.
        s.clock.raw.seconds = 0x04;
        assert_eq!(read_all(&mut s, id, 7), first);
        assert_eq!(s.clock.reads, 1);
        let id2 = s.openat("now", O_RDONLY, &ctx).unwrap().id;
        assert!(read_all(&mut s, id2, 64).contains("03:12:04Z"));
        // A stat reads the chip once, for the size a read would give (what
        // sendfile on Linux 6.12 stops at).
        let mut st = Stat::default();
        s.stat_path("now", &mut st, &ctx).unwrap();
        assert_eq!(s.clock.reads, 3);
        assert_eq!(st.st_size as usize, first.len());
        // A clock that cannot be read fails the open, not the lookup.
        s.clock.broken = true;
        s.stat_path("now", &mut st, &ctx).unwrap();
        assert_eq!(st.st_size, 0);
        assert_eq!(s.openat("now", O_RDONLY, &ctx).unwrap_err().errno, EIO);
    }

    #[test]
    fn directory_and_bad_requests() {
        let ctx = CallerCtx::default();
        let mut s = scheme();
        let root = s.openat("", O_RDONLY | O_DIRECTORY, &ctx).unwrap().id;
        let mut st = Stat::default();
        s.fstat(root, &mut st, &ctx).unwrap();
        assert_eq!(st.st_mode, MODE_DIR | 0o555);
        let errno = |r: Result<OpenResult>| r.unwrap_err().errno;
        assert_eq!(errno(s.openat("now", O_WRONLY, &ctx)), EACCES);
        assert_eq!(errno(s.openat("cmos", O_RDWR, &ctx)), EACCES);
        assert_eq!(errno(s.openat("", O_WRONLY, &ctx)), EISDIR);
        assert_eq!(errno(s.openat("later", O_RDONLY, &ctx)), ENOENT);
        assert_eq!(errno(s.openat("now/x", O_RDONLY, &ctx)), ENOENT);
        assert_eq!(
            errno(s.openat("now", O_RDONLY | O_DIRECTORY, &ctx)),
            ENOTDIR
        );
        s.clock.broken = true;
        assert_eq!(errno(s.openat("now", O_RDONLY, &ctx)), EIO);
        s.clock.broken = false;
        s.clock.raw.month = 0x13;
        assert_eq!(errno(s.openat("now", O_RDONLY, &ctx)), EIO);
        // The raw registers are still shown when they make no date.
        let id = s.openat("cmos", O_RDONLY, &ctx).unwrap().id;
        assert!(read_all(&mut s, id, 64).contains("month 0x13\n"));
        s.on_close(id);
        let mut b = [0u8; 4];
        assert!(s.read(id, &mut b, 0, 0, &ctx).is_err(), "closed");
    }
}
