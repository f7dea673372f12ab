//! virtio-blk (virtio 1.1 section 5.2) on one request queue.
//!
//! A request is three (or more) descriptors: a 16-byte header the device
//! reads, the data (device-writable for reads), and one status byte the
//! device writes. Each in-flight request owns a *slot*: a header + status
//! cell in one DMA block and a `max_transfer` bounce buffer in another, all
//! allocated once at start. Writes are copied into the bounce buffer at
//! submit; reads are copied out at completion. The ring token (head
//! descriptor index) maps to the slot, the slot to the caller's tag.
//!
//! The logic is generic over [`Port`] (queue + configuration) and
//! [`Buffer`] (DMA memory) so it runs on the host against a simulated
//! device in the tests.

use std::io;
use std::time::{Duration, Instant};

use block::{BlockDevice, DiskInfo, Done, Op};
use log::{debug, error, info, warn};
use syscall::error::{Error, EAGAIN, EINVAL, EIO, EOPNOTSUPP, EROFS};
use zerocopy::little_endian::{U32, U64};
use zerocopy::{Immutable, IntoBytes, KnownLayout};

use common::dma::Dma;
use common::irq::Irq;
use pcid_interface::PciFunctionHandle;
use virtio_core::spec::bit;
use virtio_core::{Buffer, PciPort, Port, VirtioDevice};

/// Virtio device type of a block device.
pub const DEVICE_TYPE: u16 = 2;

/// virtio-blk feature bits (spec 5.2.3).
pub mod feature {
    pub const SIZE_MAX: u32 = 1;
    pub const SEG_MAX: u32 = 2;
    pub const RO: u32 = 5;
    pub const BLK_SIZE: u32 = 6;
    pub const FLUSH: u32 = 9;
    pub const DISCARD: u32 = 13;
}

/// Features we ask for. GET_ID needs no feature bit. DISCARD is accepted
/// and its limits logged, but nothing uses it yet (the block layer has no
/// discard operation): it is not exposed.
pub const WANTED: u64 = bit(feature::SIZE_MAX)
    | bit(feature::SEG_MAX)
    | bit(feature::RO)
    | bit(feature::BLK_SIZE)
    | bit(feature::FLUSH)
    | bit(feature::DISCARD);

/// Request types (spec 5.2.6).
mod req {
    pub const IN: u32 = 0;
    pub const OUT: u32 = 1;
    pub const FLUSH: u32 = 4;
    pub const GET_ID: u32 = 8;
}

/// Status values the device writes.
mod status {
    pub const OK: u8 = 0;
    pub const IOERR: u8 = 1;
    pub const UNSUPP: u8 = 2;
    /// Our own marker, set before submission: a request that comes back
    /// with it was never answered by the device.
    pub const UNSET: u8 = 0xff;
}

/// Offsets in `struct virtio_blk_config`.
mod cfg {
    pub const CAPACITY: usize = 0;
    pub const SIZE_MAX: usize = 8;
    pub const SEG_MAX: usize = 12;
    pub const BLK_SIZE: usize = 20;
    pub const MAX_DISCARD_SECTORS: usize = 36;
    pub const MAX_DISCARD_SEG: usize = 40;
}

/// Bytes of the serial number GET_ID returns.
const ID_BYTES: usize = 20;
/// The protocol's sector size, whatever the logical block size.
const SECTOR: u64 = 512;
/// Largest transfer we offer (bounce buffer size per slot).
pub const MAX_TRANSFER: usize = 128 * 1024;
/// At most this many requests in flight (and bounce buffers allocated).
pub const MAX_DEPTH: usize = 128;
/// Ring entries we ask for (the device may offer fewer).
pub const QUEUE_SIZE: u16 = 256;
/// Per slot in the metadata block: header (16 bytes) then status (1).
const META_STRIDE: usize = 32;
const STATUS_OFF: usize = 16;
/// Tag of our own GET_ID request (never surfaces as a `Done`).
const INTERNAL_TAG: u64 = u64::MAX;

#[derive(IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
struct ReqHeader {
    kind: U32,
    reserved: U32,
    sector: U64,
}

/// The fields of the device configuration we use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlkConfig {
    /// In 512-byte sectors.
    pub capacity: u64,
    pub size_max: u32,
    pub seg_max: u32,
    pub blk_size: u32,
    pub max_discard_sectors: u32,
    pub max_discard_seg: u32,
}

impl BlkConfig {
    /// Reads it through the transport (generation-checked there).
    pub fn read(cfg: &virtio_core::DeviceConfig<'_>, features: u64) -> io::Result<BlkConfig> {
        let discard = features & bit(feature::DISCARD) != 0;
        Ok(BlkConfig {
            capacity: cfg.read_u64(cfg::CAPACITY)?,
            size_max: cfg.read_u32(cfg::SIZE_MAX)?,
            seg_max: cfg.read_u32(cfg::SEG_MAX)?,
            blk_size: cfg.read_u32(cfg::BLK_SIZE)?,
            max_discard_sectors: if discard {
                cfg.read_u32(cfg::MAX_DISCARD_SECTORS)?
            } else {
                0
            },
            max_discard_seg: if discard {
                cfg.read_u32(cfg::MAX_DISCARD_SEG)?
            } else {
                0
            },
        })
    }
}

/// virtio-blk's one queue (spec 5.2.2): requests.
const REQUEST_QUEUE: usize = 0;

/// Request geometry derived from the features and configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub block_size: u32,
    pub blocks: u64,
    pub max_transfer: usize,
    /// Largest data segment (one descriptor).
    pub seg_size: usize,
    /// Requests in flight at once.
    pub depth: usize,
    pub read_only: bool,
    pub can_flush: bool,
}

impl Limits {
    pub fn new(features: u64, c: &BlkConfig, queue_size: u16) -> io::Result<Limits> {
        let has = |f: u32| features & bit(f) != 0;
        let block_size = if has(feature::BLK_SIZE) {
            if c.blk_size.is_power_of_two() && (512..=65536).contains(&c.blk_size) {
                c.blk_size
            } else {
                warn!("device reports block size {}: using 512", c.blk_size);
                512
            }
        } else {
            512
        };
        let bs = block_size as usize;
        let blocks = c.capacity / (u64::from(block_size) / SECTOR);
        // A request uses a header and a status descriptor besides its data.
        let ring_segs = usize::from(queue_size).saturating_sub(2);
        if ring_segs == 0 {
            return Err(io::Error::other(format!(
                "queue of {queue_size} entries cannot hold a request"
            )));
        }
        let seg_size = if has(feature::SIZE_MAX) && c.size_max > 0 {
            (c.size_max as usize).min(MAX_TRANSFER)
        } else {
            MAX_TRANSFER
        };
        let dev_segs = if has(feature::SEG_MAX) && c.seg_max > 0 {
            c.seg_max as usize
        } else {
            usize::MAX
        };
        let max_segs = dev_segs.min(ring_segs);
        let max_transfer = MAX_TRANSFER.min(seg_size.saturating_mul(max_segs)) / bs * bs;
        if max_transfer == 0 {
            return Err(io::Error::other(format!(
                "device limits (size_max {}, seg_max {}) do not allow one {block_size}-byte block per request",
                c.size_max, c.seg_max
            )));
        }
        let segs = max_transfer.div_ceil(seg_size);
        let depth = (usize::from(queue_size) / (2 + segs)).clamp(1, MAX_DEPTH);
        Ok(Limits {
            block_size,
            blocks,
            max_transfer,
            seg_size,
            depth,
            read_only: has(feature::RO),
            can_flush: has(feature::FLUSH),
        })
    }
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Read { bytes: usize },
    Write,
    Flush,
    GetId,
}

#[derive(Debug)]
struct Slot {
    tag: u64,
    kind: Kind,
}

/// One virtio-blk disk.
pub struct VirtioBlk<P: Port<Config = BlkConfig>, B: Buffer> {
    // Declared first so it is dropped first: a real port resets the device
    // before the buffers below are unmapped.
    port: P,
    /// Header + status per slot.
    meta: B,
    /// `max_transfer` bytes per slot.
    data: B,
    limits: Limits,
    slots: Vec<Option<Slot>>,
    free: Vec<usize>,
    /// Ring token -> slot.
    by_token: Vec<Option<usize>>,
    /// Outcome of the GET_ID request, once it finished.
    id: Option<Result<String, Error>>,
}

impl<P: Port<Config = BlkConfig>, B: Buffer> VirtioBlk<P, B> {
    /// Computes the limits and allocates every slot's memory with `alloc`
    /// (called twice: metadata, then bounce buffers).
    pub fn new(port: P, mut alloc: impl FnMut(usize) -> io::Result<B>) -> io::Result<Self> {
        let config = port.read_config()?;
        let limits = Limits::new(port.features(), &config, port.queue_size(REQUEST_QUEUE))?;
        let meta = alloc(limits.depth * META_STRIDE)?;
        let data = alloc(limits.depth * limits.max_transfer)?;
        info!(
            "virtio-blk: {} blocks of {} bytes ({} MiB){}{}, {} requests of up to {} KiB in flight",
            limits.blocks,
            limits.block_size,
            (limits.blocks * u64::from(limits.block_size)) >> 20,
            if limits.read_only { ", read-only" } else { "" },
            if limits.can_flush {
                ", write cache"
            } else {
                ""
            },
            limits.depth,
            limits.max_transfer / 1024
        );
        if port.features() & bit(feature::DISCARD) != 0 {
            info!(
                "virtio-blk: discard offered (up to {} sectors, {} segments); not used",
                config.max_discard_sectors, config.max_discard_seg
            );
        }
        let qsize = usize::from(port.queue_size(REQUEST_QUEUE));
        Ok(VirtioBlk {
            port,
            meta,
            data,
            limits,
            slots: (0..limits.depth).map(|_| None).collect(),
            free: (0..limits.depth).rev().collect(),
            by_token: vec![None; qsize],
            id: None,
        })
    }

    /// After a configuration-change interrupt. An error only if the device
    /// has stopped working (DEVICE_NEEDS_RESET): nothing but a reset brings
    /// it back, so the daemon exits and the supervisor restarts it on a
    /// reset device. A new capacity is logged; the served size stays what
    /// it was at start (partitions were read against it).
    pub fn config_changed(&mut self) -> io::Result<()> {
        if self.port.needs_reset() {
            return Err(io::Error::other(
                "device set DEVICE_NEEDS_RESET: it has stopped working",
            ));
        }
        match self.refresh_capacity() {
            Ok((old, new)) if old != new => info!(
                "capacity changed: {old} -> {new} blocks of {} bytes \
                 (served size is fixed at start; restart to use it)",
                self.limits.block_size
            ),
            Ok(_) => info!("configuration change (capacity unchanged)"),
            Err(e) => warn!("re-reading the configuration failed: {e}"),
        }
        Ok(())
    }

    /// Re-reads the capacity (after a configuration-change interrupt).
    /// Returns (old, new) in blocks.
    pub fn refresh_capacity(&mut self) -> io::Result<(u64, u64)> {
        let config = self.port.read_config()?;
        let old = self.limits.blocks;
        self.limits.blocks = config.capacity / (u64::from(self.limits.block_size) / SECTOR);
        Ok((old, self.limits.blocks))
    }

    /// Asks the device for its serial number and waits for the answer,
    /// calling `wait` (the queue's interrupt) until it comes or `timeout`
    /// passes. `Ok(None)` if the device does not support GET_ID.
    pub fn identify(
        &mut self,
        timeout: Duration,
        mut wait: impl FnMut(Duration) -> io::Result<u64>,
    ) -> io::Result<Option<String>> {
        self.id = None;
        self.queue(INTERNAL_TAG, Kind::GetId, req::GET_ID, 0, ID_BYTES)
            .map_err(|e| io::Error::other(format!("GET_ID not queued: {e}")))?;
        let deadline = Instant::now() + timeout;
        let mut stray = Vec::new();
        loop {
            self.complete(&mut stray);
            for d in stray.drain(..) {
                warn!(
                    "virtio-blk: completion for tag {} during start-up dropped",
                    d.tag
                );
            }
            match self.id.take() {
                Some(Ok(id)) => return Ok(Some(id)),
                Some(Err(e)) if e.errno == EOPNOTSUPP => return Ok(None),
                Some(Err(e)) => return Err(io::Error::other(format!("GET_ID failed: {e}"))),
                None => {}
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                // The slot stays taken: the device may still answer.
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "device did not answer GET_ID",
                ));
            }
            wait(left)?;
        }
    }

    /// Builds and queues one request in a free slot. `data_len` bytes of
    /// the slot's bounce buffer take part (0 for flush); the caller has
    /// filled them for writes.
    fn queue(
        &mut self,
        tag: u64,
        kind: Kind,
        req_type: u32,
        sector: u64,
        data_len: usize,
    ) -> Result<(), Error> {
        let Some(slot) = self.free.pop() else {
            return Err(Error::new(EAGAIN));
        };
        let header = ReqHeader {
            kind: U32::new(req_type),
            reserved: U32::new(0),
            sector: U64::new(sector),
        };
        let meta_off = slot * META_STRIDE;
        let meta = self.meta.bytes();
        meta[meta_off..meta_off + 16].copy_from_slice(header.as_bytes());
        meta[meta_off + STATUS_OFF] = status::UNSET;

        let meta_iova = self.meta.iova() + meta_off as u64;
        let data_iova = self.data.iova() + (slot * self.limits.max_transfer) as u64;
        let device_writes = !matches!(kind, Kind::Write);
        let mut chain: Vec<(u64, u32, bool)> =
            Vec::with_capacity(2 + data_len.div_ceil(self.limits.seg_size));
        chain.push((meta_iova, 16, false));
        let mut done = 0;
        while done < data_len {
            let n = (data_len - done).min(self.limits.seg_size);
            // n <= MAX_TRANSFER: fits u32.
            chain.push((data_iova + done as u64, n as u32, device_writes));
            done += n;
        }
        chain.push((meta_iova + STATUS_OFF as u64, 1, true));

        match self.port.add(REQUEST_QUEUE, &chain) {
            Ok(token) => {
                let Some(entry) = self.by_token.get_mut(usize::from(token)) else {
                    // The ring handed out a token beyond its size: a bug,
                    // but the request is queued; we cannot take it back.
                    error!("virtio-blk: ring token {token} out of range");
                    return Err(Error::new(EIO));
                };
                *entry = Some(slot);
                self.slots[slot] = Some(Slot { tag, kind });
                self.port.kick(REQUEST_QUEUE);
                Ok(())
            }
            Err(e) => {
                self.free.push(slot);
                if e.kind() == io::ErrorKind::WouldBlock {
                    Err(Error::new(EAGAIN))
                } else {
                    error!("virtio-blk: queueing a request failed: {e}");
                    Err(Error::new(EIO))
                }
            }
        }
    }

    /// Checks a transfer of `blocks` blocks at `lba` and returns its first
    /// sector and byte length.
    fn span(&self, lba: u64, blocks: u64) -> Result<(u64, usize), Error> {
        let bs = u64::from(self.limits.block_size);
        let bytes = blocks
            .checked_mul(bs)
            .filter(|b| *b > 0 && *b <= self.limits.max_transfer as u64);
        let in_range = lba
            .checked_add(blocks)
            .is_some_and(|end| end <= self.limits.blocks);
        match bytes {
            Some(bytes) if in_range => Ok((lba * (bs / SECTOR), bytes as usize)),
            _ => Err(Error::new(EINVAL)),
        }
    }

    fn finish(&mut self, slot: usize, kind: Kind, written: u32) -> Result<Vec<u8>, Error> {
        let meta_off = slot * META_STRIDE;
        let meta = self.meta.bytes();
        // The device wrote this byte; read it as such, not from a cached
        // value (the ring's read barrier already ordered it after used.idx).
        // SAFETY: an in-bounds element of the slice, so valid and aligned.
        let st = unsafe { std::ptr::read_volatile(&meta[meta_off + STATUS_OFF]) };
        match st {
            status::OK => {}
            status::IOERR => return Err(Error::new(EIO)),
            status::UNSUPP => return Err(Error::new(EOPNOTSUPP)),
            other => {
                error!("virtio-blk: device returned status {other:#x} ({written} bytes)");
                return Err(Error::new(EIO));
            }
        }
        let start = slot * self.limits.max_transfer;
        match kind {
            Kind::Read { bytes } => {
                let mut data = self.data.bytes()[start..start + bytes].to_vec();
                // Fault injection (`make faults`): a result longer than asked.
                if common::fault::read_len("virtio-blk read", bytes) != bytes {
                    data.push(0);
                }
                Ok(data)
            }
            Kind::GetId => Ok(self.data.bytes()[start..start + ID_BYTES].to_vec()),
            Kind::Write | Kind::Flush => Ok(Vec::new()),
        }
    }
}

/// The serial as text: up to the first NUL (it has none if 20 bytes long).
fn serial_text(raw: &[u8]) -> String {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..end]).trim().to_owned()
}

impl<P: Port<Config = BlkConfig>, B: Buffer> BlockDevice for VirtioBlk<P, B> {
    fn info(&self) -> DiskInfo {
        DiskInfo {
            block_size: self.limits.block_size,
            blocks: self.limits.blocks,
            max_transfer: self.limits.max_transfer,
            queue_depth: self.limits.depth,
            read_only: self.limits.read_only,
            can_flush: self.limits.can_flush,
            // VIRTIO_BLK_F_DISCARD is not negotiated.
            max_discard: 0,
        }
    }

    fn submit(&mut self, tag: u64, op: Op<'_>) -> syscall::Result<()> {
        match op {
            Op::Read { lba, blocks } => {
                let (sector, bytes) = self.span(lba, u64::from(blocks))?;
                self.queue(tag, Kind::Read { bytes }, req::IN, sector, bytes)
            }
            Op::Write { lba, data } => {
                if self.limits.read_only {
                    return Err(Error::new(EROFS));
                }
                let bs = self.limits.block_size as usize;
                if data.len() % bs != 0 {
                    return Err(Error::new(EINVAL));
                }
                let (sector, bytes) = self.span(lba, (data.len() / bs) as u64)?;
                // Copy into the slot that queue() will pick: the top of the
                // free list.
                let Some(&slot) = self.free.last() else {
                    return Err(Error::new(EAGAIN));
                };
                let start = slot * self.limits.max_transfer;
                self.data.bytes()[start..start + bytes].copy_from_slice(data);
                self.queue(tag, Kind::Write, req::OUT, sector, bytes)
            }
            Op::Flush => {
                if !self.limits.can_flush {
                    // Without VIRTIO_BLK_F_FLUSH the device writes through
                    // and DiskInfo says so; nothing to flush.
                    return Err(Error::new(EOPNOTSUPP));
                }
                self.queue(tag, Kind::Flush, req::FLUSH, 0, 0)
            }
            // DiskInfo says it cannot discard; the scheme never asks.
            Op::Discard { .. } => Err(Error::new(EOPNOTSUPP)),
        }
    }

    fn complete(&mut self, done: &mut Vec<Done>) {
        while let Some((token, written)) = self.port.pop_used(REQUEST_QUEUE) {
            let Some(slot) = self
                .by_token
                .get_mut(usize::from(token))
                .and_then(Option::take)
            else {
                warn!("virtio-blk: completion for unknown token {token}");
                continue;
            };
            let Some(Slot { tag, kind }) = self.slots.get_mut(slot).and_then(Option::take) else {
                warn!("virtio-blk: completion for idle slot {slot}");
                continue;
            };
            let result = self.finish(slot, kind, written);
            self.free.push(slot);
            if let Err(e) = &result {
                warn!("virtio-blk: {kind:?} (tag {tag}) failed: {e}");
            }
            match kind {
                Kind::GetId => self.id = Some(result.map(|raw| serial_text(&raw))),
                _ => done.push(Done { tag, result }),
            }
        }
    }
}

#[cfg(test)]
mod tests;

/// A virtio-blk disk on PCI.
pub type Disk = VirtioBlk<PciPort<BlkConfig>, Dma<[u8]>>;

/// The disk's interrupts (MSI-X vector 1 and 0).
pub struct Irqs {
    pub queue: Irq,
    pub config: Irq,
}

/// Brings up the virtio-blk function behind `handle`.
pub fn start(handle: &PciFunctionHandle) -> io::Result<(Disk, Irqs)> {
    let VirtioDevice {
        transport,
        mut queues,
        config_irq,
        mut queue_irqs,
        features,
    } = virtio_core::start(handle, WANTED, &[QUEUE_SIZE])?;
    debug!("virtio-blk: features {features:#x}");
    let (Some(queue), Some(queue_irq)) = (queues.pop(), queue_irqs.pop()) else {
        return Err(io::Error::other("virtio-core started no request queue"));
    };
    let dma = handle.dma().clone();
    let port = PciPort::new(transport, vec![queue], BlkConfig::read);
    let disk = VirtioBlk::new(port, |len| Dma::<[u8]>::zeroed_slice(&dma, len))?;
    Ok((
        disk,
        Irqs {
            queue: queue_irq,
            config: config_irq,
        },
    ))
}
