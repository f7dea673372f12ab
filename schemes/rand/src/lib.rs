//! `/scheme/rand`: a single read-only file of random bytes from the kernel
//! (`getrandom(2)`). Opening it for writing gives `EACCES`.

use scheme::{CallerCtx, Handles, OpenResult, Scheme, Stat};
use syscall::error::{Error, Result, EACCES, EBADF, EIO, ENOENT};
use syscall::flag::{MODE_FILE, O_ACCMODE, O_RDONLY, O_STAT};

#[derive(Default)]
pub struct RandScheme {
    handles: Handles<()>,
}

impl RandScheme {
    pub fn new() -> RandScheme {
        RandScheme::default()
    }

    fn check(&self, id: usize) -> Result<()> {
        self.handles.get(id).map(|_| ())
    }
}

/// Fills `buf` with random bytes from the kernel's CSPRNG.
pub fn fill_random(buf: &mut [u8]) -> Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match rustix::rand::getrandom(&mut buf[done..], rustix::rand::GetRandomFlags::empty()) {
            Ok(n) => done += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(Error::new(e.raw_os_error().max(EIO))),
        }
    }
    Ok(())
}

impl Scheme for RandScheme {
    fn openat(&mut self, path: &str, flags: usize, _ctx: &CallerCtx) -> Result<OpenResult> {
        if !path.is_empty() {
            return Err(Error::new(ENOENT));
        }
        if flags & O_STAT == 0 && flags & O_ACCMODE != O_RDONLY {
            return Err(Error::new(EACCES));
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
        fill_random(buf)?;
        Ok(buf.len())
    }

    fn write(
        &mut self,
        id: usize,
        _buf: &[u8],
        _off: u64,
        _fl: u32,
        _ctx: &CallerCtx,
    ) -> Result<usize> {
        // Unreachable through open (write access is refused there).
        self.check(id)?;
        Err(Error::new(EBADF))
    }

    fn fstat(&mut self, id: usize, stat: &mut Stat, _ctx: &CallerCtx) -> Result<()> {
        self.check(id)?;
        stat.st_mode = MODE_FILE | 0o444;
        stat.st_nlink = 1;
        Ok(())
    }

    fn on_close(&mut self, id: usize) {
        self.handles.remove(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use syscall::flag::{O_RDWR, O_WRONLY};

    #[test]
    fn rand_semantics() {
        let ctx = CallerCtx::default();
        let mut s = RandScheme::new();
        assert_eq!(s.openat("", O_WRONLY, &ctx).unwrap_err().errno, EACCES);
        assert_eq!(s.openat("", O_RDWR, &ctx).unwrap_err().errno, EACCES);
        let id = s.openat("", O_RDONLY, &ctx).unwrap().id;
        let (mut a, mut b) = ([0u8; 64], [0u8; 64]);
        assert_eq!(s.read(id, &mut a, 0, 0, &ctx), Ok(64));
        assert_eq!(s.read(id, &mut b, 0, 0, &ctx), Ok(64));
        assert_ne!(a, b);
        assert_ne!(a, [0u8; 64]);
    }
}
