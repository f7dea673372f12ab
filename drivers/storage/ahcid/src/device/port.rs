//! One AHCI port with an ATA disk: its command list, received-FIS area and
//! 32 command tables in one DMA block, a pool of 16 KiB data chunks that
//! commands borrow (their PRDT lists the chunks), command slots and how
//! they complete, and error recovery. Implements [`BlockDevice`].
//!
//! Slots and completion (AHCI 1.3.1 section 5.3): a non-queued command is
//! issued by setting its PxCI bit and is done when the HBA clears it; an
//! NCQ command sets its PxSACT bit first, then PxCI, and is done when the
//! device's Set Device Bits FIS clears its PxSACT bit. A non-queued
//! command (FLUSH CACHE EXT) never runs beside queued ones (SATA forbids
//! it): it waits until NCQ drains, and queued commands wait for it, both
//! through `EAGAIN` (the block engine resubmits after a completion).
//!
//! Errors (section 6.2.2): task-file errors, host bus errors, interface
//! errors or a Set Device Bits FIS with ERR stop the port: PxCMD.ST off,
//! COMRESET through PxSCTL.DET, PxSERR and PxIS cleared, ST on again.
//! Commands the device finished before the error complete normally; every
//! other one is issued again once, and fails with `EIO` if it was already
//! a retry. A port whose recovery fails is dead: its requests fail with
//! `EIO` and the other ports keep serving.
//!
//! Generic over [`PortRegs`] and [`Buffer`] so it runs against the
//! simulated port in `tests.rs` on the host.

use std::io;
use std::time::Duration;

use block::{BlockDevice, DiskInfo, Done, Op};
use common::barrier::{rmb, wmb};
use common::dma::Buffer;
use common::{poll_until, Throttle};
use log::{error, info, warn};
use syscall::error::{Error, EAGAIN, EINVAL, EIO, EOPNOTSUPP};

use super::fis::{self, CommandHeader, Identify, Prd, PRDT_OFFSET, PRD_LEN};
use super::regs::{cmd, is, port, sata, sig, tfd};

/// One port's registers, by offset in its 0x80-byte block.
pub trait PortRegs {
    fn read(&self, reg: usize) -> u32;
    fn write(&mut self, reg: usize, v: u32);
}

/// Command slots AHCI defines (the HBA may implement fewer: CAP.NCS).
pub const SLOTS: usize = 32;
/// Data chunk a command borrows from the pool.
pub const CHUNK: usize = 16 << 10;
/// The data pool per port: enough for every slot to hold a chunk and for
/// two 1 MiB transfers at once.
pub const POOL_BYTES: usize = 2 << 20;
/// Largest transfer offered (`DiskInfo::max_transfer`).
pub const MAX_TRANSFER: usize = 1 << 20;
/// PRD entries a command table holds: one per chunk of the largest
/// transfer, if none of its chunks are adjacent.
const MAX_PRDS: usize = MAX_TRANSFER / CHUNK;
/// Layout of the metadata block: command list (32 headers of 32 bytes,
/// 1 KiB aligned), received FIS area (256 bytes, 256 aligned), then the
/// command tables (128-byte aligned), one per slot.
const CL_OFFSET: usize = 0;
const RFIS_OFFSET: usize = 0x400;
const TABLES_OFFSET: usize = 0x800;
const TABLE_STRIDE: usize = PRDT_OFFSET + MAX_PRDS * PRD_LEN;
pub const META_BYTES: usize = TABLES_OFFSET + SLOTS * TABLE_STRIDE;
const _: () = assert!(TABLE_STRIDE.is_multiple_of(128) && MAX_PRDS * CHUNK == MAX_TRANSFER);

/// Bounds of the port's start and recovery handshakes (the specification
/// gives 500 ms for CR and FR to clear, 1 s for a COMRESET).
const ENGINE_TIMEOUT: Duration = Duration::from_millis(500);
const LINK_TIMEOUT: Duration = Duration::from_secs(1);
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// PxSERR.DIAG.N (PhyRdy change) and .X (exchanged): link events, not
/// command errors.
const SERR_LINK_EVENTS: u32 = 1 << 16 | 1 << 26;

/// What sits on a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attached {
    Nothing { det: u32, ipm: u32 },
    Ata,
    Atapi,
    Other(u32),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Read { bytes: usize },
    Write,
    Flush,
    Identify,
}

#[derive(Debug)]
struct Cmd {
    tag: u64,
    kind: Kind,
    queued: bool,
    chunks: Vec<usize>,
    /// Already issued a second time after an error.
    retried: bool,
}

#[derive(Debug)]
enum Slot {
    Free,
    Busy(Cmd),
    /// Failed for good while the HBA still had it issued (an HBA that
    /// does not clear PxCI when ST goes off runs it again on restart): its
    /// chunks stay lent until PxCI lets go.
    Zombie(Vec<usize>),
}

/// Which chunks of the pool are lent out.
#[derive(Debug)]
pub struct ChunkPool {
    used: Vec<bool>,
}

impl ChunkPool {
    pub fn new(chunks: usize) -> ChunkPool {
        ChunkPool {
            used: vec![false; chunks],
        }
    }

    /// `n` free chunks, lowest first (so they are often adjacent and
    /// merge into few PRD entries); `None` if fewer are free.
    pub fn alloc(&mut self, n: usize) -> Option<Vec<usize>> {
        let free: Vec<usize> = (0..self.used.len())
            .filter(|&i| !self.used[i])
            .take(n)
            .collect();
        if free.len() < n {
            return None;
        }
        for &i in &free {
            self.used[i] = true;
        }
        Some(free)
    }

    pub fn free(&mut self, chunks: &[usize]) {
        for &i in chunks {
            if let Some(u) = self.used.get_mut(i) {
                *u = false;
            }
        }
    }

    #[cfg(test)]
    pub fn in_use(&self) -> usize {
        self.used.iter().filter(|u| **u).count()
    }
}

/// One port with an ATA device.
pub struct AhciPort<R: PortRegs, B: Buffer> {
    regs: R,
    number: u32,
    meta: B,
    pool: B,
    chunks: ChunkPool,
    slots: Vec<Slot>,
    /// Slots the HBA implements (CAP.NCS + 1).
    hba_slots: usize,
    hba_ncq: bool,
    /// Slots used: the HBA's, or fewer for the device's queue depth.
    depth: usize,
    ncq: bool,
    info: DiskInfo,
    flush_cmd: u8,
    done: Vec<Done>,
    identify: Option<Result<Vec<u8>, Error>>,
    /// Recovery failed: the port no longer takes commands.
    dead: bool,
    /// Most commands at the device at once so far.
    most_in_flight: usize,
    recoveries: u64,
    log_error: Throttle,
    log_note: Throttle,
}

/// Internal tag of IDENTIFY (never surfaces as a `Done`).
const IDENTIFY_TAG: u64 = u64::MAX;

impl<R: PortRegs, B: Buffer> AhciPort<R, B> {
    /// A port over `regs`, with `meta` ([`META_BYTES`], page aligned)
    /// and `pool` ([`POOL_BYTES`]) as its DMA memory; `hba_slots` and
    /// `hba_ncq` from CAP, `s64a` whether the HBA takes 64-bit addresses.
    pub fn new(
        regs: R,
        number: u32,
        meta: B,
        pool: B,
        hba_slots: usize,
        hba_ncq: bool,
        s64a: bool,
    ) -> io::Result<Self> {
        let mut meta = meta;
        let mut pool = pool;
        if meta.bytes().len() < META_BYTES || pool.bytes().len() < POOL_BYTES {
            return Err(io::Error::other("port DMA buffers too small"));
        }
        if !meta.iova().is_multiple_of(0x400) || !pool.iova().is_multiple_of(2) {
            return Err(io::Error::other(format!(
                "port {number}: command list at IOVA {:#x} is not 1 KiB aligned",
                meta.iova()
            )));
        }
        let top = (meta.iova() + META_BYTES as u64).max(pool.iova() + POOL_BYTES as u64);
        if !s64a && top > 1 << 32 {
            return Err(io::Error::other(format!(
                "port {number}: DMA memory reaches IOVA {top:#x}, above the 4 GiB this HBA addresses"
            )));
        }
        let hba_slots = hba_slots.clamp(1, SLOTS);
        Ok(AhciPort {
            regs,
            number,
            meta,
            pool,
            chunks: ChunkPool::new(POOL_BYTES / CHUNK),
            slots: (0..SLOTS).map(|_| Slot::Free).collect(),
            hba_slots,
            hba_ncq,
            depth: 1,
            ncq: false,
            info: DiskInfo {
                block_size: 512,
                blocks: 0,
                max_transfer: MAX_TRANSFER,
                queue_depth: 1,
                read_only: false,
                can_flush: false,
                max_discard: 0,
            },
            flush_cmd: fis::ata::FLUSH_CACHE_EXT,
            done: Vec::new(),
            identify: None,
            dead: false,
            most_in_flight: 0,
            recoveries: 0,
            log_error: Throttle::default(),
            log_note: Throttle::default(),
        })
    }

    pub fn number(&self) -> u32 {
        self.number
    }

    /// Whether NCQ is in use, and with how many slots.
    pub fn queueing(&self) -> (bool, usize) {
        (self.ncq, self.depth)
    }

    /// Port recoveries so far.
    #[cfg(test)]
    pub fn recoveries(&self) -> u64 {
        self.recoveries
    }

    /// Data chunks lent to commands.
    #[cfg(test)]
    pub fn chunks_in_use(&self) -> usize {
        self.chunks.in_use()
    }

    fn iova_of_meta(&self, off: usize) -> u64 {
        self.meta.iova() + off as u64
    }

    /// Stops the command engine (ST, then CR) and FIS receive (FRE, then
    /// FR), each bounded (section 10.1.2).
    fn stop(&mut self) -> io::Result<()> {
        let c = self.regs.read(port::CMD);
        if c & (cmd::ST | cmd::CR) != 0 {
            self.regs.write(port::CMD, c & !cmd::ST);
            if !poll_until(ENGINE_TIMEOUT, || self.regs.read(port::CMD) & cmd::CR == 0) {
                return Err(io::Error::other(format!(
                    "port {}: PxCMD.CR still set 500 ms after clearing ST",
                    self.number
                )));
            }
        }
        let c = self.regs.read(port::CMD);
        if c & (cmd::FRE | cmd::FR) != 0 {
            self.regs.write(port::CMD, c & !cmd::FRE);
            if !poll_until(ENGINE_TIMEOUT, || self.regs.read(port::CMD) & cmd::FR == 0) {
                return Err(io::Error::other(format!(
                    "port {}: PxCMD.FR still set 500 ms after clearing FRE",
                    self.number
                )));
            }
        }
        Ok(())
    }

    fn wait_not_busy(&self) -> bool {
        poll_until(BUSY_TIMEOUT, || {
            self.regs.read(port::TFD) & (tfd::BSY | tfd::DRQ) == 0
        })
    }

    /// Brings the port up (section 10.1.2): engines stopped, command list
    /// and FIS area programmed, errors cleared, FIS receive on; then what
    /// is attached, from PxSSTS and PxSIG. An ATA device's port is started
    /// (ST) with its interrupts enabled; other ports are left stopped.
    pub fn start(&mut self) -> io::Result<Attached> {
        self.stop()?;
        let cl = self.iova_of_meta(CL_OFFSET);
        let rfis = self.iova_of_meta(RFIS_OFFSET);
        self.regs.write(port::CLB, cl as u32);
        self.regs.write(port::CLBU, (cl >> 32) as u32);
        self.regs.write(port::FB, rfis as u32);
        self.regs.write(port::FBU, (rfis >> 32) as u32);
        self.regs.write(port::SERR, u32::MAX);
        self.regs.write(port::IS, u32::MAX);
        self.regs.write(port::IE, 0);
        let ssts = self.regs.read(port::SSTS);
        let det = ssts & sata::DET_MASK;
        let ipm = (ssts >> sata::IPM_SHIFT) & sata::IPM_MASK;
        if det != sata::DET_PRESENT || ipm != sata::IPM_ACTIVE {
            return Ok(Attached::Nothing { det, ipm });
        }
        let c = self.regs.read(port::CMD);
        self.regs
            .write(port::CMD, c | cmd::FRE | cmd::SUD | cmd::POD);
        // The signature comes with the device's first D2H FIS, which
        // needs FIS receive on; BSY clears when it is in.
        if !self.wait_not_busy() {
            return Err(io::Error::other(format!(
                "port {}: device still busy 5 s after FIS receive on (PxTFD {:#x})",
                self.number,
                self.regs.read(port::TFD)
            )));
        }
        let attached = match self.regs.read(port::SIG) {
            sig::ATA => Attached::Ata,
            sig::ATAPI => Attached::Atapi,
            other => Attached::Other(other),
        };
        if attached == Attached::Ata {
            self.regs.write(port::SERR, u32::MAX);
            self.regs.write(port::IS, u32::MAX);
            self.regs.write(port::IE, is::WANTED);
            let c = self.regs.read(port::CMD);
            self.regs.write(port::CMD, c | cmd::ST);
        } else {
            self.stop()?;
        }
        Ok(attached)
    }

    /// Queues IDENTIFY DEVICE (slot 0, PIO data-in of 512 bytes); its
    /// answer is taken by [`AhciPort::take_identify`] after completions.
    pub fn start_identify(&mut self) -> io::Result<()> {
        self.identify = None;
        let frame = fis::h2d_plain(fis::ata::IDENTIFY_DEVICE);
        self.queue(IDENTIFY_TAG, Kind::Identify, frame, false, 512, None)
            .map_err(|e| io::Error::other(format!("IDENTIFY not issued: {e}")))
    }

    /// IDENTIFY's outcome once it completed: `None` while it has not.
    pub fn take_identify(&mut self) -> Option<Result<Vec<u8>, Error>> {
        self.identify.take()
    }

    /// Sets the geometry and queueing from IDENTIFY data.
    pub fn configure(&mut self, id: &Identify) -> io::Result<()> {
        if !id.lba48 {
            return Err(io::Error::other(format!(
                "port {}: device without 48-bit LBA is not supported",
                self.number
            )));
        }
        let bs = id.sector_size;
        if !bs.is_power_of_two() || !(512..=65536).contains(&bs) || id.sectors == 0 {
            return Err(io::Error::other(format!(
                "port {}: {} sectors of {bs} bytes is not a disk",
                self.number, id.sectors
            )));
        }
        self.ncq = self.hba_ncq && id.ncq_depth.is_some();
        self.depth = match id.ncq_depth {
            Some(d) if self.ncq => (d as usize).min(self.hba_slots),
            _ => self.hba_slots,
        };
        self.flush_cmd = if id.flush_ext {
            fis::ata::FLUSH_CACHE_EXT
        } else {
            // FLUSH CACHE (28-bit), mandatory for ATA devices.
            0xe7
        };
        self.info = DiskInfo {
            block_size: bs,
            blocks: id.sectors.min(fis::LBA48_LIMIT),
            max_transfer: MAX_TRANSFER / bs as usize * bs as usize,
            queue_depth: self.depth,
            read_only: false,
            can_flush: id.write_cache,
            // DATA SET MANAGEMENT (TRIM) is not used.
            max_discard: 0,
        };
        Ok(())
    }

    fn free_slot(&self) -> Option<usize> {
        (0..self.depth).find(|&s| matches!(self.slots[s], Slot::Free))
    }

    fn any(&self, queued: bool) -> bool {
        self.slots.iter().any(|s| match s {
            Slot::Busy(c) => c.queued == queued,
            // Zombies are non-queued leftovers or queued ones the device
            // lost: either way the device may still be working on them.
            Slot::Zombie(_) => true,
            Slot::Free => false,
        })
    }

    /// Fills slot `slot`'s table (the FIS and the PRDT over `chunks`) and
    /// header.
    fn fill(
        &mut self,
        slot: usize,
        frame: &[u8; fis::H2D_LEN],
        write: bool,
        bytes: usize,
        chunks: &[usize],
    ) -> Result<(), Error> {
        let pool_iova = self.pool.iova();
        let segs: Vec<(u64, u64)> = chunks
            .iter()
            .enumerate()
            .map(|(k, &c)| {
                let len = (bytes - k * CHUNK).min(CHUNK);
                (pool_iova + (c * CHUNK) as u64, len as u64)
            })
            .collect();
        let prdt: Vec<Prd> = match fis::build_prdt(&segs, MAX_PRDS) {
            Ok(p) => p,
            // No data (FLUSH CACHE EXT): no PRDT.
            Err(fis::PrdtError::Empty) if bytes == 0 => Vec::new(),
            Err(e) => {
                error!("port {}: PRDT for {bytes} bytes: {e:?}", self.number);
                return Err(Error::new(EINVAL));
            }
        };
        let table = TABLES_OFFSET + slot * TABLE_STRIDE;
        let table_iova = self.iova_of_meta(table);
        let m = self.meta.bytes();
        m[table..table + PRDT_OFFSET].fill(0);
        m[table..table + fis::H2D_LEN].copy_from_slice(frame);
        for (i, p) in prdt.iter().enumerate() {
            let at = table + PRDT_OFFSET + i * PRD_LEN;
            m[at..at + PRD_LEN].copy_from_slice(&p.to_bytes());
        }
        let header = CommandHeader {
            fis_dwords: (fis::H2D_LEN / 4) as u8,
            write,
            // At most MAX_PRDS (64) entries.
            prdt_len: prdt.len() as u16,
            table: table_iova,
        };
        let at = CL_OFFSET + slot * fis::HEADER_LEN;
        m[at..at + fis::HEADER_LEN].copy_from_slice(&header.to_bytes());
        Ok(())
    }

    /// Hands slot `slot` to the HBA: memory first, then PxSACT (queued),
    /// then PxCI.
    fn issue(&mut self, slot: usize, queued: bool) {
        wmb();
        let bit = 1u32 << slot;
        if queued {
            self.regs.write(port::SACT, bit);
        }
        self.regs.write(port::CI, bit);
    }

    /// Builds and issues one command in a free slot; `data` (writes) is
    /// copied into the chunks first.
    fn queue(
        &mut self,
        tag: u64,
        kind: Kind,
        frame: [u8; fis::H2D_LEN],
        queued: bool,
        bytes: usize,
        data: Option<&[u8]>,
    ) -> Result<(), Error> {
        if self.dead {
            return Err(Error::new(EIO));
        }
        let Some(slot) = self.free_slot() else {
            return Err(Error::new(EAGAIN));
        };
        let chunks = match self.chunks.alloc(bytes.div_ceil(CHUNK)) {
            Some(c) => c,
            None => return Err(Error::new(EAGAIN)),
        };
        if let Some(data) = data {
            let pool = self.pool.bytes();
            for (k, &c) in chunks.iter().enumerate() {
                let src = &data[k * CHUNK..((k + 1) * CHUNK).min(data.len())];
                pool[c * CHUNK..c * CHUNK + src.len()].copy_from_slice(src);
            }
        }
        let frame_with_tag = if queued {
            let mut f = frame;
            f[12] = (slot as u8) << 3;
            f
        } else {
            frame
        };
        let write = matches!(kind, Kind::Write);
        if let Err(e) = self.fill(slot, &frame_with_tag, write, bytes, &chunks) {
            self.chunks.free(&chunks);
            return Err(e);
        }
        self.slots[slot] = Slot::Busy(Cmd {
            tag,
            kind,
            queued,
            chunks,
            retried: false,
        });
        self.issue(slot, queued);
        let busy = self
            .slots
            .iter()
            .filter(|s| matches!(s, Slot::Busy(_)))
            .count();
        if busy > self.most_in_flight {
            self.most_in_flight = busy;
            // 1, 2, 4, ... 32: a handful of lines showing the depth used.
            if busy.is_power_of_two() {
                info!(
                    "port {}: {busy} commands in flight at once{}",
                    self.number,
                    if queued { " (NCQ)" } else { "" }
                );
            }
        }
        Ok(())
    }

    /// Checks a transfer of `blocks` at `lba`; its sector count.
    fn span(&self, lba: u64, blocks: u64) -> Result<u16, Error> {
        let bytes = blocks.checked_mul(u64::from(self.info.block_size));
        let in_range = lba
            .checked_add(blocks)
            .is_some_and(|end| end <= self.info.blocks);
        match bytes {
            Some(b)
                if blocks > 0
                    && blocks <= u64::from(fis::MAX_SECTORS)
                    && b <= self.info.max_transfer as u64
                    && in_range =>
            {
                Ok(blocks as u16)
            }
            _ => Err(Error::new(EINVAL)),
        }
    }

    fn rw(&mut self, tag: u64, lba: u64, blocks: u64, data: Option<&[u8]>) -> Result<(), Error> {
        let count = self.span(lba, blocks)?;
        let write = data.is_some();
        let bytes = blocks as usize * self.info.block_size as usize;
        let kind = if write {
            Kind::Write
        } else {
            Kind::Read { bytes }
        };
        if self.ncq {
            // A non-queued command (flush) is running: queued ones wait.
            if self.any(false) {
                return Err(Error::new(EAGAIN));
            }
            // The tag is set from the slot in `queue`.
            let frame = fis::h2d_fpdma(write, lba, count, 0);
            self.queue(tag, kind, frame, true, bytes, data)
        } else {
            let frame = fis::h2d_dma_ext(write, lba, count);
            self.queue(tag, kind, frame, false, bytes, data)
        }
    }

    /// Reads PxIS and clears what it read (write 1 to clear, before the
    /// caller clears the HBA's IS bit), recovers from errors, and collects
    /// finished commands from PxSACT and PxCI.
    fn service(&mut self) {
        if self.dead {
            return;
        }
        let status = self.regs.read(port::IS);
        if status != 0 {
            self.regs.write(port::IS, status);
        }
        if status & is::NOTES != 0 {
            if let Some(n) = self.log_note.hit() {
                info!(
                    "port {}: interface event PxIS {status:#010x} (PxSSTS {:#x}, seen {n} times)",
                    self.number,
                    self.regs.read(port::SSTS)
                );
            }
        }
        let tfd = self.regs.read(port::TFD);
        let serr = self.regs.read(port::SERR) & !SERR_LINK_EVENTS;
        if status & is::ERRORS != 0 || tfd & tfd::ERR != 0 || serr != 0 {
            self.recover(status, tfd, serr);
        } else {
            self.harvest(false);
        }
    }

    /// Completes every command the device has finished. With `error`
    /// (during recovery) only NCQ commands whose PxSACT bit cleared count
    /// as finished: a non-queued command's cleared PxCI bit does not say
    /// whether it was the one that failed.
    fn harvest(&mut self, error: bool) {
        let ci = self.regs.read(port::CI);
        let sact = self.regs.read(port::SACT);
        rmb();
        for slot in 0..SLOTS {
            let bit = 1u32 << slot;
            let busy = match &self.slots[slot] {
                Slot::Free => continue,
                Slot::Zombie(_) => {
                    if (ci | sact) & bit == 0 {
                        if let Slot::Zombie(chunks) =
                            std::mem::replace(&mut self.slots[slot], Slot::Free)
                        {
                            self.chunks.free(&chunks);
                        }
                    }
                    continue;
                }
                Slot::Busy(c) if c.queued => (sact | ci) & bit != 0,
                Slot::Busy(_) => error || ci & bit != 0,
            };
            if !busy {
                self.finish(slot, Ok(()));
            }
        }
    }

    /// Slot `slot`'s command is over: its data copied out (reads), its
    /// chunks returned, its outcome recorded.
    fn finish(&mut self, slot: usize, outcome: Result<(), Error>) {
        let Slot::Busy(c) = std::mem::replace(&mut self.slots[slot], Slot::Free) else {
            return;
        };
        let result = outcome.map(|()| match c.kind {
            Kind::Read { bytes } => self.gather(&c.chunks, bytes),
            Kind::Identify => self.gather(&c.chunks, 512),
            Kind::Write | Kind::Flush => Vec::new(),
        });
        self.chunks.free(&c.chunks);
        match c.kind {
            Kind::Identify => self.identify = Some(result),
            _ => self.done.push(Done { tag: c.tag, result }),
        }
    }

    fn gather(&mut self, chunks: &[usize], bytes: usize) -> Vec<u8> {
        let pool = self.pool.bytes();
        let mut out = Vec::with_capacity(bytes);
        for &c in chunks {
            let n = (bytes - out.len()).min(CHUNK);
            out.extend_from_slice(&pool[c * CHUNK..c * CHUNK + n]);
        }
        out
    }

    /// Section 6.2.2: the port stopped on an error. Logs what the port
    /// says, completes what finished, restarts the port (ST off, COMRESET,
    /// errors cleared, ST on) and issues the rest again once.
    fn recover(&mut self, status: u32, tfd: u32, serr: u32) {
        self.recoveries += 1;
        let ci = self.regs.read(port::CI);
        let sact = self.regs.read(port::SACT);
        if let Some(n) = self.log_error.hit() {
            error!(
                "port {}: error: PxIS {status:#010x} PxTFD {tfd:#06x} (status {:#04x}, error {:#04x}) \
                 PxSERR {serr:#010x} PxCI {ci:#010x} PxSACT {sact:#010x}; recovering (error {n})",
                self.number,
                tfd & 0xff,
                (tfd >> 8) & 0xff
            );
        }
        self.harvest(true);
        if let Err(e) = self.restart() {
            error!(
                "port {}: recovery failed: {e}; failing its requests from now on",
                self.number
            );
            self.dead = true;
            for slot in 0..SLOTS {
                self.finish(slot, Err(Error::new(EIO)));
            }
            return;
        }
        let ci = self.regs.read(port::CI);
        for slot in 0..SLOTS {
            let (retried, queued) = match &self.slots[slot] {
                Slot::Busy(c) => (c.retried, c.queued),
                _ => continue,
            };
            if !retried {
                if let Slot::Busy(c) = &mut self.slots[slot] {
                    c.retried = true;
                }
                // The header's byte count starts again from 0.
                let at = CL_OFFSET + slot * fis::HEADER_LEN + 4;
                self.meta.bytes()[at..at + 4].fill(0);
                self.issue(slot, queued);
                continue;
            }
            warn!(
                "port {}: slot {slot} failed again after a retry: EIO",
                self.number
            );
            if ci & (1 << slot) != 0 {
                if let Slot::Busy(c) = std::mem::replace(&mut self.slots[slot], Slot::Free) {
                    let tag = c.tag;
                    let identify = c.kind == Kind::Identify;
                    self.slots[slot] = Slot::Zombie(c.chunks);
                    if identify {
                        self.identify = Some(Err(Error::new(EIO)));
                    } else {
                        self.done.push(Done {
                            tag,
                            result: Err(Error::new(EIO)),
                        });
                    }
                }
            } else {
                self.finish(slot, Err(Error::new(EIO)));
            }
        }
    }

    /// ST off, COMRESET, link and device ready, errors cleared, ST on.
    fn restart(&mut self) -> io::Result<()> {
        let c = self.regs.read(port::CMD);
        self.regs.write(port::CMD, c & !cmd::ST);
        if !poll_until(ENGINE_TIMEOUT, || self.regs.read(port::CMD) & cmd::CR == 0) {
            return Err(io::Error::other(
                "PxCMD.CR still set 500 ms after clearing ST",
            ));
        }
        self.regs
            .write(port::SCTL, sata::IPM_NO_SLEEP | sata::DET_COMRESET);
        // COMRESET must be held at least 1 ms (section 10.4.2).
        std::thread::sleep(Duration::from_millis(1));
        self.regs.write(port::SCTL, sata::IPM_NO_SLEEP);
        if !poll_until(LINK_TIMEOUT, || {
            self.regs.read(port::SSTS) & sata::DET_MASK == sata::DET_PRESENT
        }) {
            return Err(io::Error::other(format!(
                "no link 1 s after COMRESET (PxSSTS {:#x})",
                self.regs.read(port::SSTS)
            )));
        }
        if !self.wait_not_busy() {
            return Err(io::Error::other(format!(
                "device busy 5 s after COMRESET (PxTFD {:#x})",
                self.regs.read(port::TFD)
            )));
        }
        self.regs.write(port::SERR, u32::MAX);
        self.regs.write(port::IS, u32::MAX);
        let c = self.regs.read(port::CMD);
        self.regs.write(port::CMD, c | cmd::FRE | cmd::ST);
        Ok(())
    }
}

impl<R: PortRegs, B: Buffer> BlockDevice for AhciPort<R, B> {
    fn info(&self) -> DiskInfo {
        self.info
    }

    fn submit(&mut self, tag: u64, op: Op<'_>) -> syscall::Result<()> {
        match op {
            Op::Read { lba, blocks } => self.rw(tag, lba, u64::from(blocks), None),
            Op::Write { lba, data } => {
                let bs = self.info.block_size as usize;
                if data.is_empty() || data.len() % bs != 0 {
                    return Err(Error::new(EINVAL));
                }
                self.rw(tag, lba, (data.len() / bs) as u64, Some(data))
            }
            Op::Flush => {
                // Non-queued: wait until NCQ drained.
                if self.any(true) {
                    return Err(Error::new(EAGAIN));
                }
                let frame = fis::h2d_plain(self.flush_cmd);
                self.queue(tag, Kind::Flush, frame, false, 0, None)
            }
            // DiskInfo says it cannot discard; the scheme never asks.
            Op::Discard { .. } => Err(Error::new(EOPNOTSUPP)),
        }
    }

    fn complete(&mut self, done: &mut Vec<Done>) {
        self.service();
        done.append(&mut self.done);
    }
}
