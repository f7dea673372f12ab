//! `NetworkScheme`: the `network.*` namespace over one NIC (the file
//! semantics are documented in the crate root).

use std::collections::VecDeque;

use log::warn;
use scheme::{CallerCtx, DirentBuf, DirentKind, Handles, OpenResult, Scheme, Stat};
use syscall::error::{
    Error, Result, EACCES, EAGAIN, EBADF, EINVAL, EIO, EISDIR, ENOENT, ENOTDIR, EWOULDBLOCK,
};
use syscall::flag::{EventFlags, MODE_DIR, MODE_FILE, O_DIRECTORY, O_RDONLY, O_STAT, O_WRONLY};

use crate::{format_mac, NetworkDevice, FRAMES, MAX_FRAME, MIN_FRAME, RX_QUEUE_FRAMES};

const ROOT_MODE: u16 = 0o755;
const FRAMES_MODE: u16 = 0o660;
const INFO_MODE: u16 = 0o440;

/// The directory's entries, in listing order.
const NAMES: [(&str, Target); 4] = [
    (FRAMES, Target::Frames),
    ("link", Target::Link),
    ("mac", Target::Mac),
    ("stats", Target::Stats),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Root,
    Frames,
    Mac,
    Link,
    Stats,
}

struct Handle {
    target: Target,
    read: bool,
    write: bool,
    /// Frames received for this handle, oldest first (frame handles open
    /// for reading only).
    queue: VecDeque<Vec<u8>>,
    /// The text of an info file as of the last read at offset 0.
    snapshot: Option<Vec<u8>>,
}

/// Counters kept by the scheme (device errors come from the driver).
#[derive(Debug, Default, Clone, Copy)]
struct Counters {
    rx_frames: u64,
    rx_bytes: u64,
    tx_frames: u64,
    tx_bytes: u64,
    rx_dropped: u64,
    rx_truncated: u64,
    /// Transmits the device refused with an error other than EAGAIN.
    tx_failed: u64,
    /// Frames a client wrote before this driver restarted, which the dead
    /// instance had taken and may or may not have sent: answered `EIO`,
    /// never sent twice.
    tx_lost: u64,
}

/// The `network.*` scheme over one NIC.
pub struct NetworkScheme<D: NetworkDevice> {
    device: D,
    /// Open handles by id.
    handles: Handles<Handle>,
    counters: Counters,
    /// The last transmit found the TX ring full and no interrupt came
    /// since (the device cannot tell us it has room otherwise).
    tx_full: bool,
    uid: u32,
    gid: u32,
}

impl<D: NetworkDevice> NetworkScheme<D> {
    /// Serves `device`. Files are owned by this process's uid/gid.
    pub fn new(device: D) -> Self {
        NetworkScheme {
            device,
            handles: Handles::new(),
            counters: Counters::default(),
            tx_full: false,
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

    pub fn device(&self) -> &D {
        &self.device
    }

    pub fn device_mut(&mut self) -> &mut D {
        &mut self.device
    }

    /// Called by the driver after its IRQ eventfd fired: lets the device
    /// handle the interrupt, then drains every received frame into the
    /// queues of the handles open for reading. Parked readers and writers
    /// are retried by the runtime when the driver then calls
    /// `server.wake()`.
    pub fn on_irq(&mut self) {
        self.device.handle_interrupt();
        // TX descriptors may have been reclaimed: let writers try again.
        self.tx_full = false;
        self.drain_rx();
    }

    /// Moves every frame the device has into the handles' queues.
    fn drain_rx(&mut self) {
        while let Some(frame) = self.device.receive() {
            self.counters.rx_frames += 1;
            self.counters.rx_bytes += frame.len() as u64;
            let mut readers = 0usize;
            let mut dropped = 0u64;
            // Queues with room get the frame: copies for all but the last,
            // which takes the frame itself (one reader: no copy at all).
            let mut room: Vec<&mut Handle> = Vec::new();
            let open = self.handles.values_mut();
            for h in open.filter(|h| h.target == Target::Frames && h.read) {
                readers += 1;
                if h.queue.len() >= RX_QUEUE_FRAMES {
                    dropped += 1;
                } else {
                    room.push(h);
                }
            }
            if let Some((last, others)) = room.split_last_mut() {
                for h in others {
                    h.queue.push_back(frame.clone());
                }
                last.queue.push_back(frame);
            }
            if readers == 0 {
                dropped = 1;
            }
            self.counters.rx_dropped += dropped;
        }
    }

    /// One queued frame into `buf` (`EAGAIN` if none).
    fn read_frame(&mut self, id: usize, buf: &mut [u8]) -> Result<usize> {
        let h = self.handles.get_mut(id)?;
        if buf.is_empty() {
            return Ok(0);
        }
        let frame = h.queue.pop_front().ok_or(Error::new(EAGAIN))?;
        let n = frame.len().min(buf.len());
        buf[..n].copy_from_slice(&frame[..n]);
        if n < frame.len() {
            self.counters.rx_truncated += 1;
        }
        Ok(n)
    }

    fn allowed(&self, ctx: &CallerCtx) -> bool {
        ctx.uid == 0 || ctx.uid == self.uid || ctx.gid == self.gid
    }

    /// The text of an info file, now.
    fn info_text(&self, target: Target) -> Vec<u8> {
        match target {
            Target::Mac => format!("{}\n", format_mac(self.device.mac_address())).into_bytes(),
            Target::Link => {
                if self.device.link_up() {
                    b"up\n".to_vec()
                } else {
                    b"down\n".to_vec()
                }
            }
            Target::Stats => {
                let c = &self.counters;
                let e = self.device.errors();
                let lines = [
                    ("rx_frames", c.rx_frames),
                    ("rx_bytes", c.rx_bytes),
                    ("tx_frames", c.tx_frames),
                    ("tx_bytes", c.tx_bytes),
                    ("rx_dropped", c.rx_dropped),
                    ("rx_truncated", c.rx_truncated),
                    ("rx_errors", e.rx_errors),
                    ("tx_errors", e.tx_errors.saturating_add(c.tx_failed)),
                    ("tx_lost", c.tx_lost),
                ];
                let mut s = String::new();
                for (k, v) in lines {
                    s.push_str(&format!("{k} {v}\n"));
                }
                s.into_bytes()
            }
            Target::Root | Target::Frames => Vec::new(),
        }
    }

    fn resolve(path: &str) -> Result<Target> {
        let path = path.trim_matches('/');
        if path.is_empty() {
            return Ok(Target::Root);
        }
        NAMES
            .iter()
            .find(|(n, _)| *n == path)
            .map(|(_, t)| *t)
            .ok_or(Error::new(ENOENT))
    }
}

impl<D: NetworkDevice> Scheme for NetworkScheme<D> {
    fn openat(&mut self, path: &str, flags: usize, ctx: &CallerCtx) -> Result<OpenResult> {
        let target = Self::resolve(path)?;
        let stat_only = flags & O_STAT == O_STAT;
        let read = !stat_only && flags & O_RDONLY == O_RDONLY;
        let write = !stat_only && flags & O_WRONLY == O_WRONLY;
        match target {
            Target::Root if write => return Err(Error::new(EISDIR)),
            Target::Root => {}
            _ if flags & O_DIRECTORY == O_DIRECTORY => return Err(Error::new(ENOTDIR)),
            // The info files are read-only.
            Target::Mac | Target::Link | Target::Stats if write => return Err(Error::new(EACCES)),
            _ => {
                if (read || write) && !self.allowed(ctx) {
                    return Err(Error::new(EACCES));
                }
            }
        }
        let id = self.handles.insert(Handle {
            target,
            read,
            write,
            queue: VecDeque::new(),
            snapshot: None,
        });
        // O_TRUNC is ignored: there is nothing to truncate.
        Ok(if target == Target::Frames {
            OpenResult::stream(id)
        } else {
            OpenResult::file(id)
        })
    }

    fn read(
        &mut self,
        id: usize,
        buf: &mut [u8],
        offset: u64,
        _fcntl_flags: u32,
        _ctx: &CallerCtx,
    ) -> Result<usize> {
        let h = self.handles.get(id)?;
        let target = h.target;
        if target == Target::Root {
            return Err(Error::new(EISDIR));
        }
        if !h.read {
            return Err(Error::new(EBADF));
        }
        if target == Target::Frames {
            return self.read_frame(id, buf);
        }
        // An info file: a read at 0 (or the first read) takes a snapshot,
        // so a reader going through it in pieces sees one consistent text.
        let fresh = (offset == 0 || h.snapshot.is_none()).then(|| self.info_text(target));
        let h = self.handles.get_mut(id)?;
        if let Some(text) = fresh {
            h.snapshot = Some(text);
        }
        let text = h.snapshot.as_deref().unwrap_or_default();
        Ok(scheme::read_at(text, buf, offset))
    }

    fn write(
        &mut self,
        id: usize,
        buf: &[u8],
        _offset: u64,
        _fcntl_flags: u32,
        _ctx: &CallerCtx,
    ) -> Result<usize> {
        let h = self.handles.get(id)?;
        match h.target {
            Target::Root => return Err(Error::new(EISDIR)),
            Target::Frames if h.write => {}
            _ => return Err(Error::new(EBADF)),
        }
        if !(MIN_FRAME..=MAX_FRAME).contains(&buf.len()) {
            return Err(Error::new(EINVAL));
        }
        match self.device.transmit(buf) {
            Ok(()) => {
                self.counters.tx_frames += 1;
                self.counters.tx_bytes += buf.len() as u64;
                Ok(buf.len())
            }
            Err(e) if e.errno == EAGAIN || e.errno == EWOULDBLOCK => {
                self.tx_full = true;
                Err(Error::new(EAGAIN))
            }
            Err(e) => {
                self.counters.tx_failed += 1;
                warn!("transmit of {} bytes failed: {e}", buf.len());
                Err(e)
            }
        }
    }

    fn fstat(&mut self, id: usize, stat: &mut Stat, _ctx: &CallerCtx) -> Result<()> {
        let target = self.handles.get(id)?.target;
        stat.st_uid = self.uid;
        stat.st_gid = self.gid;
        stat.st_nlink = 1;
        match target {
            Target::Root => {
                stat.st_mode = MODE_DIR | ROOT_MODE;
                stat.st_size = 0;
            }
            Target::Frames => {
                stat.st_mode = MODE_FILE | FRAMES_MODE;
                stat.st_size = 0;
            }
            info => {
                stat.st_mode = MODE_FILE | INFO_MODE;
                stat.st_size = self.info_text(info).len() as u64;
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
        let h = self.handles.get(id)?;
        if h.target != Target::Root {
            return Err(Error::new(ENOTDIR));
        }
        buf.list(
            opaque_offset,
            NAMES.iter().map(|(n, _)| (*n, DirentKind::Regular)),
        );
        Ok(())
    }

    fn fevent(&mut self, id: usize, flags: EventFlags, _ctx: &CallerCtx) -> Result<EventFlags> {
        let h = self.handles.get(id)?;
        if h.target != Target::Frames {
            return Ok(flags);
        }
        let mut ready = EventFlags::empty();
        if h.read && !h.queue.is_empty() {
            ready |= EventFlags::EVENT_READ;
        }
        if h.write && !self.tx_full {
            ready |= EventFlags::EVENT_WRITE;
        }
        Ok(ready & flags)
    }

    fn ftruncate(&mut self, id: usize, _len: u64, _ctx: &CallerCtx) -> Result<()> {
        // Nothing to truncate (a shell's `>` redirection must still work).
        self.handles.get(id).map(|_| ())
    }

    /// A frame written before a restart comes again: it may already be on
    /// the wire, so it is answered `EIO` once and counted, never sent twice.
    fn resent_stream_write(&mut self, _id: usize) -> Result<()> {
        self.counters.tx_lost += 1;
        Err(Error::new(EIO))
    }

    fn on_close(&mut self, id: usize) {
        self.handles.remove(id);
    }
}
