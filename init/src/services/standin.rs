//! What answers a scheme while no daemon serves it (its service failed, or
//! was stopped by hand): init itself, on the FUSE connection it keeps.
//! New opens get `ENODEV` (no such device now), requests on handles opened
//! earlier `EIO`, so no client hangs and none is told a lie. The next
//! instance of the service takes the connection back (`ok resumed`).

use scheme::{CallerCtx, DirentBuf, EventFlags, OpenResult, Scheme, Stat};
use syscall::error::{Error, Result, EIO, ENODEV};

/// The stand-in scheme: it refuses everything.
pub struct Refusing;

impl Scheme for Refusing {
    fn openat(&mut self, _path: &str, _flags: usize, _ctx: &CallerCtx) -> Result<OpenResult> {
        Err(Error::new(ENODEV))
    }
    fn stat_path(&mut self, _path: &str, _stat: &mut Stat, _ctx: &CallerCtx) -> Result<()> {
        Err(Error::new(ENODEV))
    }
    fn read(&mut self, _: usize, _: &mut [u8], _: u64, _: u32, _: &CallerCtx) -> Result<usize> {
        Err(Error::new(EIO))
    }
    fn write(&mut self, _: usize, _: &[u8], _: u64, _: u32, _: &CallerCtx) -> Result<usize> {
        Err(Error::new(EIO))
    }
    fn fstat(&mut self, _: usize, _: &mut Stat, _: &CallerCtx) -> Result<()> {
        Err(Error::new(EIO))
    }
    fn getdents(&mut self, _: usize, _: &mut DirentBuf, _: u64, _: &CallerCtx) -> Result<()> {
        Err(Error::new(EIO))
    }
    /// Ready for everything, so a sleeper in `poll` wakes and meets the
    /// error on its next call rather than waiting forever.
    fn fevent(&mut self, _: usize, flags: EventFlags, _: &CallerCtx) -> Result<EventFlags> {
        Ok(flags)
    }
    fn fsync(&mut self, _: usize, _: &CallerCtx) -> Result<()> {
        Err(Error::new(EIO))
    }
    fn ftruncate(&mut self, _: usize, _: u64, _: &CallerCtx) -> Result<()> {
        Err(Error::new(EIO))
    }
    fn call(&mut self, _: usize, _: &mut [u8], _: &[u64], _: &CallerCtx) -> Result<usize> {
        Err(Error::new(EIO))
    }
}
