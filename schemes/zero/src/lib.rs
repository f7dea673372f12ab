//! `/scheme/zero`: a single file; reads fill the buffer with zeros (any
//! size; the kernel splits big reads into 1 MiB requests), writes swallow
//! everything.

use scheme::{CallerCtx, Handles, OpenResult, Scheme, Stat};
use syscall::error::{Error, Result, ENOENT};
use syscall::flag::MODE_FILE;

#[derive(Default)]
pub struct ZeroScheme {
    handles: Handles<()>,
}

impl ZeroScheme {
    pub fn new() -> ZeroScheme {
        ZeroScheme::default()
    }

    fn check(&self, id: usize) -> Result<()> {
        self.handles.get(id).map(|_| ())
    }
}

impl Scheme for ZeroScheme {
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
        buf.fill(0);
        Ok(buf.len())
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
        // `> /scheme/zero` may truncate; nothing to do.
        self.check(id)
    }

    fn on_close(&mut self, id: usize) {
        self.handles.remove(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use syscall::flag::O_RDWR;

    #[test]
    fn zero_semantics() {
        let ctx = CallerCtx::default();
        let mut s = ZeroScheme::new();
        let id = s.openat("", O_RDWR, &ctx).unwrap().id;
        let mut buf = vec![0xffu8; 1 << 20];
        assert_eq!(s.read(id, &mut buf, 12345, 0, &ctx), Ok(1 << 20));
        assert!(buf.iter().all(|&b| b == 0));
        assert_eq!(s.write(id, b"abc", 0, 0, &ctx), Ok(3));
        assert_eq!(s.openat("x", O_RDWR, &ctx).unwrap_err().errno, ENOENT);
    }
}
