//! `/scheme/null`: a single file; reads give end of file, writes swallow
//! everything.

use scheme::{CallerCtx, Handles, OpenResult, Scheme, Stat};
use syscall::error::{Error, Result, ENOENT};
use syscall::flag::MODE_FILE;

#[derive(Default)]
pub struct NullScheme {
    handles: Handles<()>,
}

impl NullScheme {
    pub fn new() -> NullScheme {
        NullScheme::default()
    }

    fn check(&self, id: usize) -> Result<()> {
        self.handles.get(id).map(|_| ())
    }
}

impl Scheme for NullScheme {
    fn openat(&mut self, path: &str, _flags: usize, _ctx: &CallerCtx) -> Result<OpenResult> {
        if !path.is_empty() {
            return Err(Error::new(ENOENT));
        }
        Ok(OpenResult::file(self.handles.insert(())))
    }

    fn read(
        &mut self,
        id: usize,
        _buf: &mut [u8],
        _off: u64,
        _fl: u32,
        _ctx: &CallerCtx,
    ) -> Result<usize> {
        self.check(id).map(|()| 0)
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
        let mut s = NullScheme::new();
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
}
