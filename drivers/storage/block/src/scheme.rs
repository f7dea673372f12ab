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
//! Reads, writes and fsync are deferred (`EINPROGRESS`): submitted to the
//! device at once and answered from [`DiskScheme::on_irq`].

use std::io;

use log::{error, info, warn};
use scheme::{
    ioctl, CallerCtx, Completion, DirentBuf, DirentKind, Handles, OpenResult, Scheme, Stat,
};
use syscall::error::{
    Error, Result, EACCES, EBADF, EINPROGRESS, EINVAL, EISDIR, ENOENT, ENOSPC, ENOTDIR, ENOTTY,
    EROFS,
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

/// Permission bits of disk and partition files (owner and group read and
/// write, like `/dev/sd*`).
const DISK_MODE: u16 = 0o660;
const ROOT_MODE: u16 = 0o755;

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
}

struct Handle {
    target: Target,
    read: bool,
    write: bool,
}

/// The `disk.*` scheme over the disks of one driver.
pub struct DiskScheme<D: BlockDevice> {
    disks: Vec<Disk<D>>,
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
            return Err(Error::new(EISDIR));
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
    fn names(&self) -> Vec<String> {
        let mut names = Vec::new();
        for d in &self.disks {
            let n = d.number;
            names.push(n.to_string());
            names.extend(d.parts.iter().map(|p| format!("{n}p{}", p.number)));
        }
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
        _ctx: &CallerCtx,
    ) -> Result<usize> {
        let h = self.handles.get(id)?;
        let cmd = metadata.first().copied().ok_or(Error::new(ENOTTY))?;
        let Ok(cmd) = u32::try_from(cmd) else {
            return Err(Error::new(ENOTTY));
        };
        if h.target == Target::Root {
            return Err(Error::new(ENOTTY));
        }
        let (disk, _, size) = self.extent(h.target)?;
        match cmd {
            BLKGETSIZE64 => {
                let out = payload.get_mut(..8).ok_or(Error::new(EINVAL))?;
                out.copy_from_slice(&size.to_ne_bytes());
                Ok(0)
            }
            BLKSSZGET => Ok(self.disks[disk].engine.geometry().bs as usize),
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
