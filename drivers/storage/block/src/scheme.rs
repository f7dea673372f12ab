//! `DiskScheme`: the `disk.*` namespace over one or more block devices.
//!
//! `/` lists `0`, `0p1`, …, `1`, …; `/N` is disk N and `/NpM` partition M of
//! it (numbered like Linux: MBR slot, GPT entry index + 1). Disks are
//! numbered 0, 1, … in the order given ([`DiskScheme::new`]) or by the
//! driver ([`DiskScheme::numbered`]: an AHCI port, an NVMe namespace id).
//! Every byte offset
//! and length works:
//! - reads past the end give 0 bytes, a read crossing it is short;
//! - a write starting at or past the end fails with `ENOSPC`, a write
//!   crossing it is short (what fits), so `write(2)` returns the count and
//!   the next write gets `ENOSPC`, as on a Linux block device;
//! - partitions are bounded the same way by their extent.
//!
//! A driver may add small read-only files beside the disks
//! ([`DiskScheme::add_file`]: nvmed's `health`), rendered when opened.
//!
//! Discard is the ioctl [`BLKDISCARD`] (a byte offset and length, both
//! multiples of the block size, inside the disk or partition; else
//! `EINVAL`; `EOPNOTSUPP` when the device cannot discard).
//!
//! Reads, writes, fsync and discards are deferred (`EINPROGRESS`):
//! submitted to the device at once and answered from
//! [`DiskScheme::on_irq`].

use std::io;

use log::{error, info, warn};
use scheme::{
    ioctl, CallerCtx, Completion, DirentBuf, DirentKind, Handles, OpenResult, Scheme, Stat,
};
use syscall::error::{
    Error, Result, EACCES, EBADF, EINPROGRESS, EINVAL, EIO, EISDIR, ENOENT, ENOSPC, ENOTDIR,
    ENOTTY, EOPNOTSUPP, EROFS,
};
use syscall::flag::{MODE_DIR, MODE_FILE, O_DIRECTORY, O_RDONLY, O_STAT, O_WRONLY};

use crate::partition::{self, PartError, Partition};
use crate::request::Engine;
use crate::BlockDevice;

/// Linux `BLKGETSIZE64` = `_IOR(0x12, 114, size_t)`: the size in bytes, as a
/// native-endian `u64` in the payload.
pub const BLKGETSIZE64: u32 = ioctl::ior(0x12, 114, 8);
/// Linux `BLKSSZGET` = `_IO(0x12, 104)`: the logical block size. Linux
/// writes it through the argument pointer, but FUSE moves no data for `_IO`
/// commands, so here it is the ioctl's return value.
pub const BLKSSZGET: u32 = ioctl::io(0x12, 104);
/// Discard a range: Linux's `BLKDISCARD` number with its argument's size
/// in the command, `_IOW(0x12, 119, 16)`. The argument points at two
/// native-endian `u64`s, byte offset and length, as for Linux's; the size
/// is what makes FUSE copy them to us.
pub const BLKDISCARD: u32 = ioctl::iow(0x12, 119, 16);
/// Linux's own `BLKDISCARD` = `_IO(0x12, 119)`. FUSE (restricted ioctls)
/// moves no data for `_IO` commands, so its range never reaches a FUSE
/// server: it is answered `EINVAL`; use [`BLKDISCARD`].
pub const BLKDISCARD_LINUX: u32 = ioctl::io(0x12, 119);

/// Permission bits of disk and partition files (owner and group read and
/// write, like `/dev/sd*`).
const DISK_MODE: u16 = 0o660;
const ROOT_MODE: u16 = 0o755;
/// Permission bits of a driver's extra files (anyone may read them).
const FILE_MODE: u16 = 0o444;

/// Renders one of a driver's extra files, when it is opened. It runs in
/// the event loop: it must bound any wait on the device. `Send`, like the
/// rest of a scheme, so a scheme can be served from another thread.
pub type FileSource = Box<dyn FnMut() -> io::Result<Vec<u8>> + Send>;

struct ExtraFile {
    name: String,
    source: FileSource,
}

struct Disk<D> {
    /// Its name in the namespace (`/N`).
    number: u32,
    engine: Engine<D>,
    parts: Vec<Partition>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Root,
    /// Disk index (not number), and index into its `parts` for a partition.
    Disk(usize, Option<usize>),
    /// One of the driver's extra files, by index.
    File(usize),
}

struct Handle {
    target: Target,
    read: bool,
    write: bool,
    /// An extra file's content, rendered at open.
    content: Option<Vec<u8>>,
}

/// The `disk.*` scheme over the disks of one driver.
pub struct DiskScheme<D: BlockDevice> {
    disks: Vec<Disk<D>>,
    files: Vec<ExtraFile>,
    handles: Handles<Handle>,
    uid: u32,
    gid: u32,
}

impl<D: BlockDevice> DiskScheme<D> {
    /// Takes the driver's disks and reads each one's partition table
    /// through `submit`/`complete`, calling `wait(disk_index)` whenever the
    /// device must make progress (the driver blocks on its IRQ there). A
    /// disk whose table cannot be read or parsed is served as a whole disk,
    /// with a warning. Files are owned by the calling process's uid/gid.
    pub fn new(disks: Vec<D>, wait: &mut dyn FnMut(usize) -> io::Result<()>) -> DiskScheme<D> {
        let numbered = (0..).zip(disks).collect();
        DiskScheme::numbered(numbered, wait)
    }

    /// As [`DiskScheme::new`], but each disk is served as `/N` for the
    /// number given with it, in the order given; `wait` still gets the
    /// index into `disks`. A disk whose number is already taken is left
    /// out, with an error logged.
    pub fn numbered(
        disks: Vec<(u32, D)>,
        wait: &mut dyn FnMut(usize) -> io::Result<()>,
    ) -> DiskScheme<D> {
        let mut out: Vec<Disk<D>> = Vec::with_capacity(disks.len());
        for (i, (number, dev)) in disks.into_iter().enumerate() {
            if out.iter().any(|d| d.number == number) {
                error!("disk number {number} given twice: the second disk is not served");
                continue;
            }
            let mut engine = Engine::new(dev);
            let geo = engine.geometry();
            let block_size = geo.bs as u32;
            let table = partition::read_table(block_size, geo.blocks, &mut |lba, n| {
                engine.read_blocks_sync(lba, n, &mut || wait(i))
            });
            let parts = match table {
                Ok(parts) => {
                    info!("disk {number}: {} partition(s)", parts.len());
                    parts
                }
                Err(PartError::NoTable) => {
                    info!("disk {number}: no partition table");
                    Vec::new()
                }
                Err(e) => {
                    warn!("disk {number}: {e}; serving the whole disk only");
                    Vec::new()
                }
            };
            out.push(Disk {
                number,
                engine,
                parts,
            });
        }
        DiskScheme {
            disks: out,
            files: Vec::new(),
            handles: Handles::new(),
            uid: rustix::process::getuid().as_raw(),
            gid: rustix::process::getgid().as_raw(),
        }
    }

    /// Sets the owner reported by `fstat` and allowed by access checks
    /// (default: this process's uid/gid). Root is always allowed.
    pub fn set_owner(&mut self, uid: u32, gid: u32) {
        self.uid = uid;
        self.gid = gid;
    }

    /// Adds a read-only file `/name` beside the disks, its content made by
    /// `source` each time it is opened for reading (an error there fails
    /// the open with `EIO`). A name already in use is refused.
    pub fn add_file(&mut self, name: &str, source: FileSource) -> io::Result<()> {
        if name.is_empty() || name.contains('/') || self.names().iter().any(|n| n == name) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("cannot add a file named {name:?}"),
            ));
        }
        self.files.push(ExtraFile {
            name: name.to_owned(),
            source,
        });
        Ok(())
    }

    /// Number of disks.
    pub fn disks(&self) -> usize {
        self.disks.len()
    }

    /// The numbers disks are served under, in index order.
    pub fn numbers(&self) -> Vec<u32> {
        self.disks.iter().map(|d| d.number).collect()
    }

    /// The partitions found on disk `i` (index; empty if none or unknown disk).
    pub fn partitions(&self, i: usize) -> &[Partition] {
        self.disks.get(i).map_or(&[], |d| &d.parts)
    }

    /// Disk `i`'s device. Panics if there is no disk `i` (a driver bug,
    /// like indexing past a slice).
    pub fn device_mut(&mut self, i: usize) -> Option<&mut D> {
        self.disks.get_mut(i).map(|d| d.engine.device_mut())
    }

    /// Called by the daemon's loop after an IRQ: collects completions from
    /// every device and advances requests. Follow with `Server::wake()`.
    pub fn on_irq(&mut self) {
        for d in &mut self.disks {
            d.engine.poll();
        }
    }

    /// Requests inside the scheme, not yet finished (diagnostics, tests).
    pub fn in_flight(&self) -> usize {
        self.disks.iter().map(|d| d.engine.active()).sum()
    }

    fn allowed(&self, ctx: &CallerCtx) -> bool {
        ctx.uid == 0 || ctx.uid == self.uid || ctx.gid == self.gid
    }

    fn resolve(&self, path: &str) -> Result<Target> {
        if path.is_empty() {
            return Ok(Target::Root);
        }
        if let Some(i) = self.files.iter().position(|f| f.name == path) {
            return Ok(Target::File(i));
        }
        let (disk, part) = match path.split_once('p') {
            Some((d, p)) => (d, Some(p)),
            None => (path, None),
        };
        let number = parse_index(disk).ok_or(Error::new(ENOENT))?;
        let disk = self
            .disks
            .iter()
            .position(|d| d.number as usize == number)
            .ok_or(Error::new(ENOENT))?;
        let d = &self.disks[disk];
        match part {
            None => Ok(Target::Disk(disk, None)),
            Some(p) => {
                let number = parse_index(p).ok_or(Error::new(ENOENT))?;
                let idx = d
                    .parts
                    .iter()
                    .position(|x| u64::from(x.number) == number as u64)
                    .ok_or(Error::new(ENOENT))?;
                Ok(Target::Disk(disk, Some(idx)))
            }
        }
    }

    /// Disk index, first byte on the disk and size in bytes of a target.
    fn extent(&self, target: Target) -> Result<(usize, u64, u64)> {
        let Target::Disk(i, part) = target else {
            return Err(Error::new(if target == Target::Root {
                EISDIR
            } else {
                EINVAL
            }));
        };
        let d = self.disks.get(i).ok_or(Error::new(EBADF))?;
        let geo = d.engine.geometry();
        match part {
            None => Ok((i, 0, geo.bytes())),
            Some(p) => {
                let p = d.parts.get(p).ok_or(Error::new(EBADF))?;
                // Partitions were checked to lie inside the disk.
                Ok((i, p.start_lba * geo.bs, p.blocks * geo.bs))
            }
        }
    }

    /// The extent behind a handle about to be read (`write` false) or
    /// written: `EISDIR` for `/`, `EBADF` if the handle was not opened for
    /// that.
    fn data_extent(&self, id: usize, write: bool) -> Result<(usize, u64, u64)> {
        let h = self.handles.get(id)?;
        if h.target == Target::Root {
            return Err(Error::new(EISDIR));
        }
        if !(if write { h.write } else { h.read }) {
            return Err(Error::new(EBADF));
        }
        self.extent(h.target)
    }

    /// The names in `/`, in listing order.
    /// Starts a discard of the range in `payload` (byte offset and length,
    /// relative to the extent `base`/`size` of disk `disk`).
    fn discard(
        &mut self,
        disk: usize,
        (base, size): (u64, u64),
        payload: &[u8],
        ctx: &CallerCtx,
    ) -> Result<usize> {
        let word = |i: usize| {
            payload
                .get(i * 8..i * 8 + 8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_ne_bytes)
                .ok_or(Error::new(EINVAL))
        };
        let (offset, len) = (word(0)?, word(1)?);
        let d = self.disks.get_mut(disk).ok_or(Error::new(EBADF))?;
        if !d.engine.info().can_discard() {
            return Err(Error::new(EOPNOTSUPP));
        }
        let bs = d.engine.geometry().bs;
        let inside = offset.checked_add(len).is_some_and(|end| end <= size);
        if len == 0 || !offset.is_multiple_of(bs) || !len.is_multiple_of(bs) || !inside {
            warn!("discard of {len} bytes at {offset} refused: unaligned, empty or past the end");
            return Err(Error::new(EINVAL));
        }
        d.engine
            .discard(ctx.request, (base + offset) / bs, len / bs);
        Err(Error::new(EINPROGRESS))
    }

    fn names(&self) -> Vec<String> {
        let mut names = Vec::new();
        for d in &self.disks {
            let n = d.number;
            names.push(n.to_string());
            names.extend(d.parts.iter().map(|p| format!("{n}p{}", p.number)));
        }
        names.extend(self.files.iter().map(|f| f.name.clone()));
        names
    }
}

/// A canonical decimal index: digits only, no leading zeros.
fn parse_index(s: &str) -> Option<usize> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) || (s.len() > 1 && s.starts_with('0'))
    {
        return None;
    }
    s.parse().ok()
}

impl<D: BlockDevice> Scheme for DiskScheme<D> {
    fn openat(&mut self, path: &str, flags: usize, ctx: &CallerCtx) -> Result<OpenResult> {
        let target = self.resolve(path)?;
        let stat_only = flags & O_STAT == O_STAT;
        let read = !stat_only && flags & O_RDONLY == O_RDONLY;
        let write = !stat_only && flags & O_WRONLY == O_WRONLY;
        match target {
            Target::Root if write => return Err(Error::new(EISDIR)),
            Target::Root => {}
            Target::File(_) if write => return Err(Error::new(EACCES)),
            Target::File(_) if flags & O_DIRECTORY == O_DIRECTORY => {
                return Err(Error::new(ENOTDIR))
            }
            Target::File(i) => {
                if read {
                    let f = &mut self.files[i];
                    let content = (f.source)().map_err(|e| {
                        warn!("/{}: {e}", f.name);
                        Error::new(EIO)
                    })?;
                    let id = self.handles.insert(Handle {
                        target,
                        read,
                        write,
                        content: Some(content),
                    });
                    return Ok(OpenResult::file(id));
                }
            }
            Target::Disk(..) if flags & O_DIRECTORY == O_DIRECTORY => {
                return Err(Error::new(ENOTDIR))
            }
            Target::Disk(i, _) => {
                if (read || write) && !self.allowed(ctx) {
                    return Err(Error::new(EACCES));
                }
                let ro = self.disks.get(i).is_some_and(|d| d.engine.info().read_only);
                if write && ro {
                    return Err(Error::new(EROFS));
                }
            }
        }
        // O_TRUNC is ignored: a disk has a fixed size.
        let id = self.handles.insert(Handle {
            target,
            read,
            write,
            content: None,
        });
        Ok(OpenResult::file(id))
    }

    fn read(
        &mut self,
        id: usize,
        buf: &mut [u8],
        offset: u64,
        _fcntl_flags: u32,
        ctx: &CallerCtx,
    ) -> Result<usize> {
        if let Some(content) = self.handles.get(id)?.content.as_deref() {
            let from = usize::try_from(offset)
                .unwrap_or(usize::MAX)
                .min(content.len());
            let n = buf.len().min(content.len() - from);
            buf[..n].copy_from_slice(&content[from..from + n]);
            return Ok(n);
        }
        let (disk, base, size) = self.data_extent(id, false)?;
        if buf.is_empty() || offset >= size {
            return Ok(0);
        }
        let len = (size - offset).min(buf.len() as u64) as usize;
        self.disks[disk]
            .engine
            .read(ctx.request, base + offset, len);
        Err(Error::new(EINPROGRESS))
    }

    fn write(
        &mut self,
        id: usize,
        buf: &[u8],
        offset: u64,
        _fcntl_flags: u32,
        ctx: &CallerCtx,
    ) -> Result<usize> {
        let (disk, base, size) = self.data_extent(id, true)?;
        if buf.is_empty() {
            return Ok(0);
        }
        if offset >= size {
            return Err(Error::new(ENOSPC));
        }
        let len = (size - offset).min(buf.len() as u64) as usize;
        self.disks[disk]
            .engine
            .write(ctx.request, base + offset, buf[..len].to_vec());
        Err(Error::new(EINPROGRESS))
    }

    fn fsync(&mut self, id: usize, ctx: &CallerCtx) -> Result<()> {
        let h = self.handles.get(id)?;
        let Target::Disk(i, _) = h.target else {
            return Ok(());
        };
        let d = self.disks.get_mut(i).ok_or(Error::new(EBADF))?;
        if !d.engine.info().can_flush {
            // Nothing cached in the device: completed writes are durable.
            return Ok(());
        }
        d.engine.flush(ctx.request);
        Err(Error::new(EINPROGRESS))
    }

    fn fstat(&mut self, id: usize, stat: &mut Stat, _ctx: &CallerCtx) -> Result<()> {
        let h = self.handles.get(id)?;
        stat.st_uid = self.uid;
        stat.st_gid = self.gid;
        match h.target {
            Target::Root => {
                stat.st_mode = MODE_DIR | ROOT_MODE;
                stat.st_size = 0;
            }
            Target::File(i) => {
                // The kernel bounds reads by this size, so a stat-only
                // handle renders the file to know it.
                let size = match h.content.as_ref() {
                    Some(c) => c.len(),
                    None => self.files.get_mut(i).map_or(0, |f| match (f.source)() {
                        Ok(c) => c.len(),
                        Err(e) => {
                            warn!("/{}: {e}", f.name);
                            0
                        }
                    }),
                };
                stat.st_mode = MODE_FILE | FILE_MODE;
                stat.st_size = size as u64;
            }
            target => {
                let (disk, _, size) = self.extent(target)?;
                let bs = self.disks[disk].engine.geometry().bs;
                stat.st_mode = MODE_FILE | DISK_MODE;
                stat.st_size = size;
                stat.st_blksize = bs as u32;
                stat.st_blocks = size.div_ceil(512);
            }
        }
        Ok(())
    }

    fn getdents(
        &mut self,
        id: usize,
        buf: &mut DirentBuf,
        opaque_offset: u64,
        _ctx: &CallerCtx,
    ) -> Result<()> {
        if self.handles.get(id)?.target != Target::Root {
            return Err(Error::new(ENOTDIR));
        }
        let names = self.names();
        buf.list(
            opaque_offset,
            names.iter().map(|n| (n.as_str(), DirentKind::Regular)),
        );
        Ok(())
    }

    fn ftruncate(&mut self, id: usize, len: u64, _ctx: &CallerCtx) -> Result<()> {
        let h = self.handles.get(id)?;
        let (_, _, size) = self.extent(h.target)?;
        // A disk's size is fixed; truncating within it changes nothing (so
        // tools that truncate their output, like dd with seek=, work).
        if len <= size {
            Ok(())
        } else {
            Err(Error::new(EINVAL))
        }
    }

    fn call(
        &mut self,
        id: usize,
        payload: &mut [u8],
        metadata: &[u64],
        ctx: &CallerCtx,
    ) -> Result<usize> {
        let h = self.handles.get(id)?;
        let cmd = metadata.first().copied().ok_or(Error::new(ENOTTY))?;
        let Ok(cmd) = u32::try_from(cmd) else {
            return Err(Error::new(ENOTTY));
        };
        if !matches!(h.target, Target::Disk(..)) {
            return Err(Error::new(ENOTTY));
        }
        let writable = h.write;
        let (disk, base, size) = self.extent(h.target)?;
        match cmd {
            BLKGETSIZE64 => {
                let out = payload.get_mut(..8).ok_or(Error::new(EINVAL))?;
                out.copy_from_slice(&size.to_ne_bytes());
                Ok(0)
            }
            BLKSSZGET => Ok(self.disks[disk].engine.geometry().bs as usize),
            // As on Linux, discarding needs a handle open for writing.
            BLKDISCARD if !writable => Err(Error::new(EBADF)),
            BLKDISCARD => self.discard(disk, (base, size), payload, ctx),
            BLKDISCARD_LINUX => {
                warn!("BLKDISCARD as _IO carries no range through FUSE: use _IOW(0x12, 119, 16)");
                Err(Error::new(EINVAL))
            }
            _ => Err(Error::new(ENOTTY)),
        }
    }

    fn take_completions(&mut self, out: &mut Vec<Completion>) {
        for d in &mut self.disks {
            d.engine.take_finished(out);
        }
    }

    fn on_close(&mut self, id: usize) {
        // Requests still in flight on it finish normally (the runtime
        // closes only after they are answered).
        self.handles.remove(id);
    }
}
