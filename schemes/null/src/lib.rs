//! `/scheme/null` and `/scheme/zero`: a single file each that swallows
//! every write. They differ only in what a read gives: end of file (null)
//! or a buffer full of zeros, any size (zero; the kernel splits big reads
//! into 1 MiB requests). One scheme serves both, as Linux's `mem` driver
//! does; each still runs as its own daemon (`nulld`, `zerod`).

use scheme::{CallerCtx, Handles, OpenResult, Scheme, Stat};
use syscall::error::{Error, Result, ENOENT};
use syscall::flag::MODE_FILE;

/// What a read of the file gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reads {
    Eof,
    Zeros,
}

pub struct SinkScheme {
    handles: Handles<()>,
    reads: Reads,
}

impl SinkScheme {
    /// `/scheme/null`: reads give end of file.
    pub fn null() -> SinkScheme {
        SinkScheme {
            handles: Handles::default(),
            reads: Reads::Eof,
        }
    }

    /// `/scheme/zero`: reads give zeros.
    pub fn zero() -> SinkScheme {
        SinkScheme {
            handles: Handles::default(),
            reads: Reads::Zeros,
        }
    }

    fn check(&self, id: usize) -> Result<()> {
        self.handles.get(id).map(|_| ())
    }
}

impl Scheme for SinkScheme {
    fn openat(&mut self, path: &str, _flags: usize, _ctx: &CallerCtx) -> Result<OpenResult> {
        if !path.is_empty() {
            return Err(Error::new(ENOENT));
        }
        Ok(OpenResult::file(self.handles.insert(())))
    }

    fn read(
        &mut self,
        id: usize,
        buf: &mut [u8],
        _off: u64,
        _fl: u32,
        _ctx: &CallerCtx,
    ) -> Result<usize> {
        self.check(id)?;
        match self.reads {
            Reads::Eof => Ok(0),
            Reads::Zeros => {
                buf.fill(0);
                Ok(buf.len())
            }
        }
    }

    fn write(
        &mut self,
        id: usize,
        buf: &[u8],
        _off: u64,
        _fl: u32,
        _ctx: &CallerCtx,
    ) -> Result<usize> {
        self.check(id).map(|()| buf.len())
    }

    fn fstat(&mut self, id: usize, stat: &mut Stat, _ctx: &CallerCtx) -> Result<()> {
        self.check(id)?;
        stat.st_mode = MODE_FILE | 0o666;
        stat.st_nlink = 1;
        Ok(())
    }

    fn ftruncate(&mut self, id: usize, _len: u64, _ctx: &CallerCtx) -> Result<()> {
        // `> /scheme/null` may truncate; nothing to do.
        self.check(id)
    }

    fn on_close(&mut self, id: usize) {
        self.handles.remove(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use syscall::error::EBADF;
    use syscall::flag::O_RDWR;

    #[test]
    fn null_semantics() {
        let ctx = CallerCtx::default();
        let mut s = SinkScheme::null();
        let id = s.openat("", O_RDWR, &ctx).unwrap().id;
        assert_eq!(s.read(id, &mut [0u8; 16], 0, 0, &ctx), Ok(0));
        assert_eq!(s.write(id, b"abc", 0, 0, &ctx), Ok(3));
        assert_eq!(s.openat("x", O_RDWR, &ctx).unwrap_err().errno, ENOENT);
        s.on_close(id);
        assert_eq!(
            s.read(id, &mut [0u8; 16], 0, 0, &ctx).unwrap_err().errno,
            EBADF
        );
    }

    #[test]
    fn zero_semantics() {
        let ctx = CallerCtx::default();
        let mut s = SinkScheme::zero();
        let id = s.openat("", O_RDWR, &ctx).unwrap().id;
        let mut buf = vec![0xffu8; 1 << 20];
        assert_eq!(s.read(id, &mut buf, 12345, 0, &ctx), Ok(1 << 20));
        assert!(buf.iter().all(|&b| b == 0));
        assert_eq!(s.write(id, b"abc", 0, 0, &ctx), Ok(3));
        assert_eq!(s.openat("x", O_RDWR, &ctx).unwrap_err().errno, ENOENT);
    }
}
