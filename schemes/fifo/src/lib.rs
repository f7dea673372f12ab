//! `/scheme/fifo`: named bounded FIFOs, like LDD's globalfifo.
//!
//! Opening any name creates that FIFO if needed (`/scheme/fifo/<name>`);
//! it lives until the daemon exits. Each FIFO holds at most [`CAPACITY`]
//! bytes, and there are at most [`MAX_FIFOS`]: any user may create them,
//! so without a bound one could grow fifod until the machine runs out of
//! memory (the scheme fuzzer's campaign left FIFOs behind every round; a
//! user writing 4 KiB into 20,000 names grew fifod from 1.4 to 90 MB). Reads take what is there (blocking while empty), writes put what
//! fits (blocking only while nothing fits); `O_NONBLOCK` gives `EAGAIN`
//! instead. `poll` reports readable when data is buffered, writable when
//! there is space. Blocking itself is the runtime's job: the scheme returns
//! `EAGAIN` and the request is parked.

use std::collections::{BTreeMap, VecDeque};

use scheme::{ioctl, CallerCtx, DirentBuf, DirentKind, Handles, OpenResult, Scheme, Stat};
use syscall::error::{
    Error, Result, EAGAIN, EBADF, EEXIST, EINVAL, EISDIR, ENAMETOOLONG, ENOENT, ENOSPC, ENOTDIR,
    ENOTTY,
};
use syscall::flag::{
    EventFlags, MODE_DIR, MODE_FILE, O_ACCMODE, O_CREAT, O_DIRECTORY, O_EXCL, O_RDONLY, O_STAT,
    O_WRONLY,
};

/// Bytes one FIFO holds.
pub const CAPACITY: usize = 4096;

/// FIFOs that may exist at once (at most 4 MiB buffered in all); opening
/// a new name beyond them gives `ENOSPC`, existing ones stay usable.
pub const MAX_FIFOS: usize = 1024;

/// `ioctl(fd, FIFO_CLEAR)`: drop everything buffered (wakes writers).
/// `_IO('F', 1)` = 0x4601.
pub const FIFO_CLEAR: u32 = ioctl::io(b'F', 1);

/// `ioctl(fd, FIFO_GET_LEN, &mut u32)`: bytes currently buffered.
/// `_IOR('F', 2, u32)` = 0x80044602.
pub const FIFO_GET_LEN: u32 = ioctl::ior(b'F', 2, 4);

const MAX_NAME: usize = 255;

#[derive(Default)]
struct Fifo {
    data: VecDeque<u8>,
}

enum Handle {
    Root,
    /// An open FIFO, and whether it may read / write.
    Fifo {
        name: String,
        read: bool,
        write: bool,
    },
    /// `O_STAT` on a name that does not exist yet: every name is openable,
    /// so it looks like an empty FIFO, but nothing is created.
    Probe,
}

#[derive(Default)]
pub struct FifoScheme {
    fifos: BTreeMap<String, Fifo>,
    handles: Handles<Handle>,
}

impl FifoScheme {
    pub fn new() -> FifoScheme {
        FifoScheme::default()
    }

    /// Names of the FIFOs that exist, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.fifos.keys().map(String::as_str)
    }

    fn insert(&mut self, h: Handle) -> usize {
        self.handles.insert(h)
    }

    fn fifo(&mut self, id: usize) -> Result<(&mut Fifo, bool, bool)> {
        match self.handles.get(id)? {
            Handle::Fifo { name, read, write } => {
                let (r, w) = (*read, *write);
                let f = self.fifos.get_mut(name).ok_or(Error::new(EBADF))?;
                Ok((f, r, w))
            }
            Handle::Root => Err(Error::new(EISDIR)),
            Handle::Probe => Err(Error::new(EBADF)),
        }
    }
}

impl Scheme for FifoScheme {
    fn openat(&mut self, path: &str, flags: usize, _ctx: &CallerCtx) -> Result<OpenResult> {
        let path = path.trim_matches('/');
        if path.is_empty() {
            if flags & O_ACCMODE != O_RDONLY && flags & O_STAT == 0 {
                return Err(Error::new(EISDIR));
            }
            return Ok(OpenResult::file(self.insert(Handle::Root)));
        }
        if path.contains('/') {
            return Err(Error::new(ENOENT));
        }
        if path.len() > MAX_NAME {
            return Err(Error::new(ENAMETOOLONG));
        }
        if flags & O_DIRECTORY != 0 {
            return Err(Error::new(ENOTDIR));
        }
        let exists = self.fifos.contains_key(path);
        if flags & O_STAT != 0 {
            let h = if exists {
                Handle::Fifo {
                    name: path.to_owned(),
                    read: false,
                    write: false,
                }
            } else {
                Handle::Probe
            };
            return Ok(OpenResult::stream(self.insert(h)));
        }
        if exists && flags & O_CREAT != 0 && flags & O_EXCL != 0 {
            return Err(Error::new(EEXIST));
        }
        if !exists && self.fifos.len() >= MAX_FIFOS {
            return Err(Error::new(ENOSPC));
        }
        // O_TRUNC is ignored, as on a pipe: `echo x > fifo` must not drop
        // what is already queued.
        self.fifos.entry(path.to_owned()).or_default();
        let mode = flags & O_ACCMODE;
        let h = Handle::Fifo {
            name: path.to_owned(),
            read: mode != O_WRONLY,
            write: mode != O_RDONLY,
        };
        Ok(OpenResult::stream(self.insert(h)))
    }

    fn read(
        &mut self,
        id: usize,
        buf: &mut [u8],
        _off: u64,
        _fl: u32,
        _ctx: &CallerCtx,
    ) -> Result<usize> {
        let (f, read, _) = self.fifo(id)?;
        if !read {
            return Err(Error::new(EBADF));
        }
        if buf.is_empty() {
            return Ok(0);
        }
        if f.data.is_empty() {
            return Err(Error::new(EAGAIN));
        }
        let n = buf.len().min(f.data.len());
        for (dst, src) in buf.iter_mut().zip(f.data.drain(..n)) {
            *dst = src;
        }
        Ok(n)
    }

    fn write(
        &mut self,
        id: usize,
        buf: &[u8],
        _off: u64,
        _fl: u32,
        _ctx: &CallerCtx,
    ) -> Result<usize> {
        let (f, _, write) = self.fifo(id)?;
        if !write {
            return Err(Error::new(EBADF));
        }
        if buf.is_empty() {
            return Ok(0);
        }
        let space = CAPACITY - f.data.len();
        if space == 0 {
            return Err(Error::new(EAGAIN));
        }
        let n = buf.len().min(space);
        f.data.extend(&buf[..n]);
        Ok(n)
    }

    fn fstat(&mut self, id: usize, stat: &mut Stat, _ctx: &CallerCtx) -> Result<()> {
        match self.handles.get(id)? {
            Handle::Root => {
                stat.st_mode = MODE_DIR | 0o777;
            }
            Handle::Fifo { name, .. } => {
                stat.st_mode = MODE_FILE | 0o666;
                stat.st_size = self.fifos.get(name).map_or(0, |f| f.data.len() as u64);
            }
            Handle::Probe => stat.st_mode = MODE_FILE | 0o666,
        }
        stat.st_nlink = 1;
        stat.st_blksize = CAPACITY as u32;
        Ok(())
    }

    fn getdents(
        &mut self,
        id: usize,
        buf: &mut DirentBuf,
        opaque_offset: u64,
        _ctx: &CallerCtx,
    ) -> Result<()> {
        if !matches!(self.handles.get(id)?, Handle::Root) {
            return Err(Error::new(ENOTDIR));
        }
        // The offset is the index of the next entry (the map is ordered and
        // FIFOs are never removed, so indexes are stable).
        buf.list(
            opaque_offset,
            self.fifos.keys().map(|n| (n.as_str(), DirentKind::Regular)),
        );
        Ok(())
    }

    fn fevent(&mut self, id: usize, flags: EventFlags, _ctx: &CallerCtx) -> Result<EventFlags> {
        let (f, _, _) = self.fifo(id)?;
        let mut ready = EventFlags::empty();
        if !f.data.is_empty() {
            ready |= EventFlags::EVENT_READ;
        }
        if f.data.len() < CAPACITY {
            ready |= EventFlags::EVENT_WRITE;
        }
        Ok(ready & flags)
    }

    fn ftruncate(&mut self, id: usize, _len: u64, _ctx: &CallerCtx) -> Result<()> {
        // Like a pipe: truncation means nothing (see O_TRUNC above).
        self.fifo(id).map(|_| ())
    }

    fn call(
        &mut self,
        id: usize,
        payload: &mut [u8],
        metadata: &[u64],
        _ctx: &CallerCtx,
    ) -> Result<usize> {
        let cmd = metadata.first().copied().ok_or(Error::new(EINVAL))?;
        let (f, _, _) = self.fifo(id)?;
        match u32::try_from(cmd) {
            Ok(FIFO_CLEAR) => {
                f.data.clear();
                Ok(0)
            }
            Ok(FIFO_GET_LEN) => {
                let out = payload.get_mut(..4).ok_or(Error::new(EINVAL))?;
                out.copy_from_slice(&(f.data.len() as u32).to_ne_bytes());
                Ok(0)
            }
            _ => Err(Error::new(ENOTTY)),
        }
    }

    fn on_close(&mut self, id: usize) {
        self.handles.remove(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use syscall::flag::{O_NONBLOCK, O_RDWR};

    const CTX: CallerCtx = CallerCtx {
        uid: 0,
        gid: 0,
        pid: 1,
        request: 0,
    };

    fn open(s: &mut FifoScheme, name: &str, flags: usize) -> usize {
        s.openat(name, flags, &CTX).unwrap().id
    }

    #[test]
    fn read_write_and_bounds() {
        let mut s = FifoScheme::new();
        let w = open(&mut s, "a", O_WRONLY);
        let r = open(&mut s, "a", O_RDONLY);
        let mut buf = [0u8; 8];
        assert_eq!(s.read(r, &mut buf, 0, 0, &CTX).unwrap_err().errno, EAGAIN);
        assert_eq!(s.write(w, b"hello", 0, 0, &CTX), Ok(5));
        assert_eq!(s.read(r, &mut buf[..3], 0, 0, &CTX), Ok(3));
        assert_eq!(&buf[..3], b"hel");
        assert_eq!(s.read(r, &mut buf, 0, 0, &CTX), Ok(2));
        // Fill to capacity: a big write takes what fits, then EAGAIN.
        let big = vec![7u8; CAPACITY + 100];
        assert_eq!(s.write(w, &big, 0, O_NONBLOCK as u32, &CTX), Ok(CAPACITY));
        assert_eq!(s.write(w, b"x", 0, 0, &CTX).unwrap_err().errno, EAGAIN);
        assert_eq!(
            s.fevent(w, EventFlags::EVENT_WRITE | EventFlags::EVENT_READ, &CTX),
            Ok(EventFlags::EVENT_READ)
        );
        // Wrong direction.
        assert_eq!(s.write(r, b"x", 0, 0, &CTX).unwrap_err().errno, EBADF);
        assert_eq!(s.read(w, &mut buf, 0, 0, &CTX).unwrap_err().errno, EBADF);
    }

    #[test]
    fn clear_and_len_ioctls() {
        let mut s = FifoScheme::new();
        let f = open(&mut s, "a", O_RDWR);
        s.write(f, b"abc", 0, 0, &CTX).unwrap();
        let mut out = [0u8; 4];
        assert_eq!(s.call(f, &mut out, &[u64::from(FIFO_GET_LEN)], &CTX), Ok(0));
        assert_eq!(u32::from_ne_bytes(out), 3);
        assert_eq!(s.call(f, &mut [], &[u64::from(FIFO_CLEAR)], &CTX), Ok(0));
        assert_eq!(
            s.fevent(f, EventFlags::EVENT_READ, &CTX),
            Ok(EventFlags::empty())
        );
        assert_eq!(
            s.call(f, &mut [], &[0xdead_beef], &CTX).unwrap_err().errno,
            ENOTTY
        );
        assert_eq!(
            s.call(f, &mut [], &[u64::MAX], &CTX).unwrap_err().errno,
            ENOTTY
        );
        assert_eq!(s.call(f, &mut [], &[], &CTX).unwrap_err().errno, EINVAL);
        // FIFO_GET_LEN without room for the answer is refused, not a panic.
        assert_eq!(
            s.call(f, &mut [0u8; 2], &[u64::from(FIFO_GET_LEN)], &CTX)
                .unwrap_err()
                .errno,
            EINVAL
        );
    }

    #[test]
    fn fifos_are_bounded_in_number_and_existing_ones_stay_usable() {
        let mut s = FifoScheme::new();
        for i in 0..MAX_FIFOS {
            let f = open(&mut s, &format!("f{i}"), O_WRONLY);
            assert_eq!(s.write(f, &[1; CAPACITY], 0, 0, &CTX), Ok(CAPACITY));
            s.on_close(f);
        }
        let refused = s.openat("one-more", O_WRONLY, &CTX).unwrap_err();
        assert_eq!(refused.errno, ENOSPC);
        assert_eq!(s.names().count(), MAX_FIFOS);
        // Looking a new name up still works (it creates nothing), and a
        // FIFO that exists opens and drains as before.
        let mut st = Stat::default();
        s.stat_path("one-more", &mut st, &CTX).unwrap();
        let r = open(&mut s, "f7", O_RDONLY);
        let mut buf = vec![0u8; CAPACITY];
        assert_eq!(s.read(r, &mut buf, 0, 0, &CTX), Ok(CAPACITY));
        assert_eq!(s.handles.len(), 1);
    }

    #[test]
    fn stat_does_not_create_but_open_does() {
        let mut s = FifoScheme::new();
        let mut st = Stat::default();
        s.stat_path("ghost", &mut st, &CTX).unwrap();
        assert_eq!(st.st_mode & MODE_FILE, MODE_FILE);
        assert_eq!(s.names().count(), 0);
        let f = open(&mut s, "b", O_RDONLY);
        s.on_close(f);
        open(&mut s, "a", O_WRONLY);
        assert_eq!(s.names().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(
            s.openat("a", O_CREAT | O_EXCL | O_WRONLY, &CTX)
                .unwrap_err()
                .errno,
            EEXIST
        );
        assert_eq!(s.openat("a/b", O_RDONLY, &CTX).unwrap_err().errno, ENOENT);
        assert_eq!(s.openat("", O_WRONLY, &CTX).unwrap_err().errno, EISDIR);
        assert_eq!(s.handles.len(), 1, "stat handles are closed");
    }
}
