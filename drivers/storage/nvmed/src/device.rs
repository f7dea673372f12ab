//! One NVMe controller (NVM Express Base Specification 1.4) and its
//! namespaces as block devices.
//!
//! [`Controller`] owns the registers, the admin queue pair and the I/O
//! queue pairs (one per CPU the daemon may use, each completion queue on
//! its own MSI-X vector). A request in flight owns a *slot*: a bounce
//! buffer of `max_transfer` bytes and a page for its PRP list, allocated
//! once at start; the slot number is the command id, unique across every
//! queue, so a completion names its slot directly. Each active namespace is
//! a [`Namespace`], the `block::BlockDevice` the shared `DiskScheme` serves
//! as `/N` (N the namespace id); namespaces share the controller's queues.
//!
//! The logic is generic over [`Regs`] (BAR0) and `Buffer` (DMA memory), so
//! the host tests run it against a simulated controller
//! (`device/tests.rs`). `queue.rs` keeps the queue arithmetic, `spec.rs`
//! the specification's layouts and constants.

use std::io;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use block::{BlockDevice, DiskInfo, Done, Op};
use common::barrier::wmb;
use common::dma::{Buffer, Dma};
use common::io::MmioRegion;
use common::irq::Irq;
use common::{poll_until, Throttle};
use log::{debug, error, info, warn};
use pcid_interface::PciFunctionHandle;
use syscall::error::{Error, EAGAIN, EINVAL, EIO, EOPNOTSUPP};
use zerocopy::little_endian::{U32, U64};
use zerocopy::IntoBytes;

pub mod queue;
pub mod spec;

use queue::{doorbell, prps, CompQueue, SubQueue};
use spec::{admin, cap, cc, csts, reg, Command, ControllerId, CqEntry, NamespaceId, PAGE};

/// Entries of the admin queues.
const ADMIN_QUEUE: u16 = 32;
/// Entries of each I/O queue (fewer if CAP.MQES says so).
const IO_QUEUE: u16 = 32;
/// Requests in flight over all I/O queue pairs, shared out evenly (each
/// at most one less than its queue's size). Fixed, so the DMA pinned (and
/// the unit's memlock) does not grow with the number of CPUs.
const SLOTS: usize = 32;
/// Largest transfer we offer, whatever MDTS allows: the size of each
/// slot's bounce buffer, and 128 PRP entries (one list page holds 512).
pub const MAX_TRANSFER: usize = 512 * 1024;
/// At most this many I/O queue pairs (and MSI-X vectors beside the
/// admin's), however many CPUs there are.
pub const MAX_IO_QUEUES: u16 = 4;
/// How long an admin command may take. TCG is slow, so it is generous.
pub const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Most bytes one Dataset Management range names: 1 GiB keeps each range
/// one request for a backend (QEMU's block layer takes under 2 GiB).
const DSM_RANGE_BYTES: u64 = 1 << 30;

/// BAR0 as the controller logic sees it.
pub trait Regs {
    fn read32(&self, off: usize) -> u32;
    fn write32(&mut self, off: usize, v: u32);
}

impl Regs for MmioRegion {
    fn read32(&self, off: usize) -> u32 {
        MmioRegion::read32(self, off)
    }
    fn write32(&mut self, off: usize, v: u32) {
        MmioRegion::write32(self, off, v)
    }
}

/// Waits for a queue's interrupt, at most the given time (start-up only).
pub type Wait<'a> = &'a mut dyn FnMut(Duration) -> io::Result<()>;

/// A submission queue and the completion queue it posts to.
struct Pair<B: Buffer> {
    id: u16,
    sq: SubQueue<B>,
    cq: CompQueue<B>,
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Read { bytes: usize },
    Write,
    Flush,
    Discard,
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    tag: u64,
    nsid: u32,
    kind: Kind,
}

/// One active namespace, as Identify Namespace describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NsInfo {
    pub nsid: u32,
    pub block_size: u32,
    pub blocks: u64,
}

/// A controller, enabled, with its admin queue and (after
/// [`Controller::create_io_queues`]) its I/O queues.
pub struct Controller<R: Regs, B: Buffer> {
    // Declared first so a real BAR is still mapped when `Drop` disables
    // the controller, before the queues and buffers below are unmapped.
    regs: R,
    stride: usize,
    /// CAP.TO: how long CSTS.RDY may take to follow CC.EN.
    ready_timeout: Duration,
    mqes: u16,
    admin: Pair<B>,
    /// One page for Identify (and log page) data.
    admin_data: B,
    next_admin_cid: u16,
    id: Option<ControllerId>,
    io: Vec<Pair<B>>,
    /// Slot `s` belongs to queue `s / (slots per queue)`; its command id is `s`.
    slots: Vec<Option<Slot>>,
    free: Vec<Vec<u16>>,
    next_queue: usize,
    bounce: Option<B>,
    prp_lists: Option<B>,
    max_transfer: usize,
    /// Finished requests not yet collected by their namespace.
    done: Vec<(u32, Done)>,
    stray: Throttle,
}

impl<R: Regs, B: Buffer> Controller<R, B> {
    /// Resets the controller (CC.EN = 0, then CSTS.RDY = 0), programs the
    /// admin queues and enables it (7.6.1), each wait bounded by CAP.TO.
    /// `alloc` gives zeroed DMA memory.
    pub fn enable(
        mut regs: R,
        alloc: &mut dyn FnMut(usize) -> io::Result<B>,
    ) -> io::Result<Controller<R, B>> {
        let cap = u64::from(regs.read32(reg::CAP)) | u64::from(regs.read32(reg::CAP + 4)) << 32;
        let vs = regs.read32(reg::VS);
        let ready_timeout = Duration::from_millis(500 * u64::from(cap::timeout_500ms(cap).max(1)));
        debug!("nvme: CAP {cap:#018x}, version {:#x}", vs);
        if cap::css(cap) & 1 == 0 {
            return Err(io::Error::other(format!(
                "controller lacks the NVM command set (CAP {cap:#x})"
            )));
        }
        if cap::mpsmin(cap) > 0 {
            return Err(io::Error::other(format!(
                "controller's smallest page is {} KiB; we use 4 KiB",
                4 << cap::mpsmin(cap)
            )));
        }
        if !cap::cqr(cap) {
            // Ours are contiguous anyway; just worth knowing.
            debug!("nvme: queues need not be contiguous");
        }
        // Reset: a restarted driver meets whatever the last one left.
        let cc0 = regs.read32(reg::CC);
        if cc0 & cc::EN != 0 {
            regs.write32(reg::CC, cc0 & !cc::EN);
        }
        if !poll_until(ready_timeout, || regs.read32(reg::CSTS) & csts::RDY == 0) {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("CSTS.RDY still set {ready_timeout:?} after clearing CC.EN"),
            ));
        }
        let size = ADMIN_QUEUE.min(cap::mqes(cap).saturating_add(1)).max(2);
        let sq = SubQueue::new(alloc(usize::from(size) * 64)?, size);
        let cq = CompQueue::new(alloc(usize::from(size) * 16)?, size);
        let q = u32::from(size - 1);
        regs.write32(reg::AQA, q << 16 | q);
        write64(&mut regs, reg::ASQ, sq.iova());
        write64(&mut regs, reg::ACQ, cq.iova());
        // NVM command set, 4 KiB pages, round robin, 64/16-byte entries.
        regs.write32(reg::CC, cc::IOSQES_64 | cc::IOCQES_16 | cc::EN);
        let mut fatal = false;
        let ready = poll_until(ready_timeout, || {
            let s = regs.read32(reg::CSTS);
            fatal = s & csts::CFS != 0;
            fatal || s & csts::RDY != 0
        });
        if fatal {
            return Err(io::Error::other(
                "controller fatal status (CSTS.CFS) while enabling",
            ));
        }
        if !ready {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("controller not ready {ready_timeout:?} after setting CC.EN"),
            ));
        }
        let admin_data = alloc(PAGE)?;
        Ok(Controller {
            stride: 4 << cap::dstrd(cap),
            ready_timeout,
            mqes: cap::mqes(cap),
            admin: Pair { id: 0, sq, cq },
            admin_data,
            next_admin_cid: 0,
            id: None,
            io: Vec::new(),
            slots: Vec::new(),
            free: Vec::new(),
            next_queue: 0,
            bounce: None,
            prp_lists: None,
            max_transfer: 0,
            done: Vec::new(),
            stray: Throttle::default(),
            regs,
        })
    }

    fn ring(&mut self, qid: u16, completion: bool, value: u16) {
        let off = doorbell(qid, completion, self.stride);
        self.regs.write32(off, u32::from(value));
    }

    /// An error if the controller has failed (CSTS.CFS): only a reset
    /// brings it back, so the daemon exits and the supervisor restarts it.
    pub fn check_fatal(&self) -> io::Result<()> {
        let s = self.regs.read32(reg::CSTS);
        if s & csts::CFS != 0 {
            return Err(io::Error::other(format!(
                "controller fatal status (CSTS {s:#x}): the controller needs a reset"
            )));
        }
        Ok(())
    }

    /// Runs one admin command to completion, with `admin_data` as its data
    /// page. Completions for other command ids are logged and dropped.
    pub fn admin_sync(&mut self, cmd: Command, wait: Wait<'_>) -> io::Result<CqEntry> {
        let data = self.admin_data.iova();
        self.admin_with(cmd, data, wait)
    }

    /// Runs one admin command whose PRP1 is `prp1` (a data page, or a new
    /// queue's memory) to completion, at most [`ADMIN_TIMEOUT`].
    fn admin_with(&mut self, mut cmd: Command, prp1: u64, wait: Wait<'_>) -> io::Result<CqEntry> {
        let cid = self.next_admin_cid;
        self.next_admin_cid = self.next_admin_cid.wrapping_add(1);
        cmd.set_cid(cid);
        cmd.prp1 = U64::new(prp1);
        let opcode = cmd.opcode();
        let Some(tail) = self.admin.sq.push(&cmd) else {
            return Err(io::Error::other("admin submission queue full"));
        };
        wmb();
        self.ring(0, false, tail);
        let deadline = Instant::now() + ADMIN_TIMEOUT;
        loop {
            let mut answer = None;
            while let Some(e) = self.admin.cq.pop() {
                self.admin.sq.set_head(e.sq_head.get());
                if e.cid.get() == cid && answer.is_none() {
                    answer = Some(e);
                } else {
                    self.stray_completion(0, &e);
                }
            }
            let head = self.admin.cq.head();
            self.ring(0, true, head);
            if let Some(e) = answer {
                let status = e.status();
                return match status.error() {
                    None => Ok(e),
                    Some(err) => {
                        warn!("nvme: admin command {opcode:#04x} failed: {status}");
                        Err(io::Error::other(format!(
                            "admin command {opcode:#04x}: {status} ({err})"
                        )))
                    }
                };
            }
            self.check_fatal()?;
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("admin command {opcode:#04x} not answered in {ADMIN_TIMEOUT:?}"),
                ));
            }
            wait(left)?;
        }
    }

    fn stray_completion(&mut self, qid: u16, e: &CqEntry) {
        if let Some(n) = self.stray.hit() {
            warn!(
                "nvme: completion on queue {qid} for unknown command id {} ignored ({n} so far)",
                e.cid.get()
            );
        }
    }

    /// The admin data page after a command filled it.
    fn data(&mut self) -> Vec<u8> {
        self.admin_data.bytes()[..PAGE].to_vec()
    }

    fn identify(&mut self, cns: u32, nsid: u32, wait: Wait<'_>) -> io::Result<Vec<u8>> {
        let mut cmd = Command::new(admin::IDENTIFY, nsid);
        cmd.cdw10 = U32::new(cns);
        self.admin_sync(cmd, wait)?;
        Ok(self.data())
    }

    /// Identify Controller.
    pub fn identify_controller(&mut self, wait: Wait<'_>) -> io::Result<ControllerId> {
        let data = self.identify(admin::CNS_CONTROLLER, 0, wait)?;
        let id = ControllerId::parse(&data)
            .ok_or_else(|| io::Error::other("short Identify Controller data"))?;
        self.id = Some(id.clone());
        Ok(id)
    }

    /// Every active namespace we can serve: the active list, then Identify
    /// Namespace for each. One with metadata or a nonsense format is left
    /// out, with a warning.
    pub fn namespaces(&mut self, wait: Wait<'_>) -> io::Result<Vec<NsInfo>> {
        let ids = spec::parse_nsids(&self.identify(admin::CNS_ACTIVE_NSIDS, 0, wait)?);
        let mut out = Vec::new();
        for nsid in ids {
            let data = self.identify(admin::CNS_NAMESPACE, nsid, wait)?;
            let Some(ns) = NamespaceId::parse(&data) else {
                warn!("nvme: namespace {nsid}: format index out of range; not served");
                continue;
            };
            info!(
                "nvme: namespace {nsid}: deallocated blocks read back {} (DLFEAT {:#x})",
                ns.deallocated_reads(),
                ns.dlfeat
            );
            if !(9..=16).contains(&ns.lbads) || ns.ms != 0 {
                warn!(
                    "nvme: namespace {nsid}: 2^{} byte blocks with {} metadata bytes; not served",
                    ns.lbads, ns.ms
                );
                continue;
            }
            out.push(NsInfo {
                nsid,
                block_size: 1 << ns.lbads,
                blocks: ns.nsze,
            });
        }
        Ok(out)
    }

    /// Asks for `want` I/O queue pairs (Set Features, Number of Queues),
    /// creates as many as were granted, each completion queue on MSI-X
    /// vector `qid` (vector 0 is the admin queue's), and allocates the
    /// slots. Returns how many pairs there are.
    pub fn create_io_queues(
        &mut self,
        want: u16,
        alloc: &mut dyn FnMut(usize) -> io::Result<B>,
        wait: Wait<'_>,
    ) -> io::Result<u16> {
        let want = want.max(1);
        let mut cmd = Command::new(admin::SET_FEATURES, 0);
        cmd.cdw10 = U32::new(admin::FEAT_NUM_QUEUES);
        let n = u32::from(want - 1);
        cmd.cdw11 = U32::new(n << 16 | n);
        let e = self.admin_sync(cmd, wait)?;
        let granted_sq = (e.dw0.get() & 0xffff) as u16;
        let granted_cq = (e.dw0.get() >> 16) as u16;
        let count = want
            .min(granted_sq.saturating_add(1))
            .min(granted_cq.saturating_add(1));
        let size = IO_QUEUE.min(self.mqes.saturating_add(1)).max(2);
        let per = (SLOTS / usize::from(count)).clamp(1, usize::from(size) - 1);
        for qid in 1..=count {
            let cq = CompQueue::new(alloc(usize::from(size) * 16)?, size);
            let mut c = Command::new(admin::CREATE_CQ, 0);
            c.cdw10 = U32::new(u32::from(size - 1) << 16 | u32::from(qid));
            // Interrupts enabled (bit 1), physically contiguous (bit 0).
            c.cdw11 = U32::new(u32::from(qid) << 16 | 0b11);
            self.admin_with(c, cq.iova(), wait)?;
            let sq = SubQueue::new(alloc(usize::from(size) * 64)?, size);
            let mut c = Command::new(admin::CREATE_SQ, 0);
            c.cdw10 = U32::new(u32::from(size - 1) << 16 | u32::from(qid));
            c.cdw11 = U32::new(u32::from(qid) << 16 | 0b1);
            self.admin_with(c, sq.iova(), wait)?;
            self.io.push(Pair { id: qid, sq, cq });
        }
        let max = self
            .id
            .as_ref()
            .and_then(ControllerId::max_transfer)
            .unwrap_or(MAX_TRANSFER)
            .min(MAX_TRANSFER);
        self.max_transfer = max;
        let slots = per * usize::from(count);
        self.bounce = Some(alloc(slots * max)?);
        self.prp_lists = Some(alloc(slots * PAGE)?);
        self.slots = vec![None; slots];
        self.free = (0..usize::from(count))
            .map(|q| ((q * per) as u16..((q + 1) * per) as u16).rev().collect())
            .collect();
        info!(
            "nvme: {count} I/O queue pairs of {size} entries, {per} requests of up to {} KiB in flight on each",
            max / 1024
        );
        Ok(count)
    }

    /// Largest transfer per command, in bytes.
    pub fn max_transfer(&self) -> usize {
        self.max_transfer
    }

    /// Requests the controller can hold at once.
    pub fn depth(&self) -> usize {
        self.slots.len()
    }

    #[cfg(test)]
    pub fn io_queues(&self) -> usize {
        self.io.len()
    }

    /// Queues one I/O command for namespace `ns`.
    pub fn submit(&mut self, ns: &NsInfo, tag: u64, op: Op<'_>) -> syscall::Result<()> {
        let bs = u64::from(ns.block_size);
        let (opcode, lba, blocks, kind) = match op {
            Op::Read { lba, blocks } => {
                let bytes = u64::from(blocks) * bs;
                (
                    spec::io::READ,
                    lba,
                    blocks,
                    Kind::Read {
                        bytes: bytes as usize,
                    },
                )
            }
            Op::Write { lba, data } => {
                if !(data.len() as u64).is_multiple_of(bs) {
                    return Err(Error::new(EINVAL));
                }
                let blocks =
                    u32::try_from(data.len() as u64 / bs).map_err(|_| Error::new(EINVAL))?;
                (spec::io::WRITE, lba, blocks, Kind::Write)
            }
            Op::Flush => (spec::io::FLUSH, 0, 0, Kind::Flush),
            Op::Discard { lba, blocks } => return self.submit_discard(ns, tag, lba, blocks),
        };
        if !matches!(kind, Kind::Flush) {
            let bytes = u64::from(blocks) * bs;
            let in_range = lba
                .checked_add(u64::from(blocks))
                .is_some_and(|e| e <= ns.blocks);
            if blocks == 0 || blocks > 0x1_0000 || bytes > self.max_transfer as u64 || !in_range {
                return Err(Error::new(EINVAL));
            }
        }
        let (q, slot) = self.free_slot()?;
        let (Some(bounce), Some(lists)) = (self.bounce.as_mut(), self.prp_lists.as_mut()) else {
            return Err(Error::new(EIO));
        };
        let s = usize::from(slot);
        let mut cmd = if matches!(kind, Kind::Flush) {
            Command::new(opcode, ns.nsid)
        } else {
            Command::rw(opcode, ns.nsid, lba, blocks)
        };
        if let Op::Write { data, .. } = op {
            let at = s * self.max_transfer;
            bounce.bytes()[at..at + data.len()].copy_from_slice(data);
        }
        if !matches!(kind, Kind::Flush) {
            let len = blocks as usize * ns.block_size as usize;
            let iova = bounce.iova() + (s * self.max_transfer) as u64;
            let list_iova = lists.iova() + (s * PAGE) as u64;
            let Some(p) = prps(iova, len, list_iova) else {
                error!("nvme: no PRPs for {len} bytes at {iova:#x}");
                return Err(Error::new(EIO));
            };
            let at = s * PAGE;
            for (i, entry) in p.list.iter().enumerate() {
                lists.bytes()[at + 8 * i..at + 8 * i + 8].copy_from_slice(&entry.to_le_bytes());
            }
            cmd.prp1 = U64::new(p.prp1);
            cmd.prp2 = U64::new(p.prp2);
        }
        self.issue(q, slot, cmd, tag, ns.nsid, kind)
    }

    /// A queue with room and a free slot of it, round robin.
    fn free_slot(&mut self) -> syscall::Result<(usize, u16)> {
        let n = self.io.len();
        let Some(q) = (0..n)
            .map(|i| (self.next_queue + i) % n)
            .find(|&q| !self.free[q].is_empty() && !self.io[q].sq.is_full())
        else {
            return Err(Error::new(EAGAIN));
        };
        self.next_queue = (q + 1) % n.max(1);
        let slot = self.free[q].last().copied().ok_or(Error::new(EAGAIN))?;
        Ok((q, slot))
    }

    /// Dataset Management, Deallocate (NVM command set 1.0, 3.2.3): the
    /// range list goes in the slot's bounce buffer (at most 256 ranges,
    /// 4 KiB: PRP1 and at most PRP2).
    fn submit_discard(
        &mut self,
        ns: &NsInfo,
        tag: u64,
        lba: u64,
        blocks: u64,
    ) -> syscall::Result<()> {
        if !self.id.as_ref().is_some_and(ControllerId::has_dsm) {
            return Err(Error::new(EOPNOTSUPP));
        }
        let in_range = lba.checked_add(blocks).is_some_and(|e| e <= ns.blocks);
        let ranges = spec::dsm_ranges(lba, blocks, range_blocks(ns.block_size))
            .filter(|_| in_range)
            .ok_or(Error::new(EINVAL))?;
        let (q, slot) = self.free_slot()?;
        let list = ranges.as_slice().as_bytes();
        let at = usize::from(slot) * self.max_transfer;
        let Some(bounce) = self
            .bounce
            .as_mut()
            .filter(|_| list.len() <= self.max_transfer)
        else {
            return Err(Error::new(EIO));
        };
        bounce.bytes()[at..at + list.len()].copy_from_slice(list);
        let iova = bounce.iova() + at as u64;
        // A list of at most one page spans at most two: no PRP list.
        let Some(p) = prps(iova, list.len(), 0).filter(|p| p.list.is_empty()) else {
            return Err(Error::new(EIO));
        };
        let mut cmd = Command::new(spec::io::DSM, ns.nsid);
        cmd.cdw10 = U32::new(ranges.len() as u32 - 1);
        cmd.cdw11 = U32::new(spec::io::DSM_AD);
        cmd.prp1 = U64::new(p.prp1);
        cmd.prp2 = U64::new(p.prp2);
        self.issue(q, slot, cmd, tag, ns.nsid, Kind::Discard)
    }

    /// Puts `cmd` in queue `q` under `slot` (its command id) and rings.
    fn issue(
        &mut self,
        q: usize,
        slot: u16,
        mut cmd: Command,
        tag: u64,
        nsid: u32,
        kind: Kind,
    ) -> syscall::Result<()> {
        let s = usize::from(slot);
        cmd.set_cid(slot);
        let pair = &mut self.io[q];
        let Some(tail) = pair.sq.push(&cmd) else {
            return Err(Error::new(EAGAIN));
        };
        let qid = pair.id;
        self.free[q].pop();
        self.slots[s] = Some(Slot { tag, nsid, kind });
        // The entry, its data and PRP list before the doorbell.
        wmb();
        self.ring(qid, false, tail);
        Ok(())
    }

    /// Collects every completion the I/O queues hold, then tells the
    /// controller how far each was read.
    pub fn reap(&mut self) {
        for q in 0..self.io.len() {
            let mut any = false;
            while let Some(e) = self.io[q].cq.pop() {
                any = true;
                let qid = self.io[q].id;
                if !self.io[q].sq.set_head(e.sq_head.get()) {
                    warn!(
                        "nvme: queue {qid}: SQ head {} out of range",
                        e.sq_head.get()
                    );
                }
                self.finish(q, &e);
            }
            if any {
                let (qid, head) = (self.io[q].id, self.io[q].cq.head());
                self.ring(qid, true, head);
            }
        }
    }

    fn finish(&mut self, q: usize, e: &CqEntry) {
        let s = usize::from(e.cid.get());
        let per = self.slots.len() / self.io.len().max(1);
        let ours = per > 0 && s / per == q;
        let Some(slot) = self
            .slots
            .get_mut(s)
            .filter(|_| ours)
            .and_then(Option::take)
        else {
            self.stray_completion(self.io[q].id, e);
            return;
        };
        self.free[q].push(s as u16);
        let status = e.status();
        let result = match status.error() {
            Some(err) => {
                warn!(
                    "nvme: namespace {} {:?} (tag {}) failed: {status}",
                    slot.nsid, slot.kind, slot.tag
                );
                Err(err)
            }
            None => match (slot.kind, self.bounce.as_mut()) {
                (Kind::Read { bytes }, Some(b)) => {
                    let at = s * self.max_transfer;
                    Ok(b.bytes()[at..at + bytes].to_vec())
                }
                (Kind::Read { .. }, None) => Err(Error::new(EIO)),
                _ => Ok(Vec::new()),
            },
        };
        self.done.push((
            slot.nsid,
            Done {
                tag: slot.tag,
                result,
            },
        ));
    }

    /// Moves the finished requests of namespace `nsid` into `out`.
    pub fn take_done(&mut self, nsid: u32, out: &mut Vec<Done>) {
        let mut i = 0;
        while i < self.done.len() {
            if self.done[i].0 == nsid {
                out.push(self.done.swap_remove(i).1);
            } else {
                i += 1;
            }
        }
    }

    /// The SMART / Health Information log, rendered as text.
    pub fn health(&mut self, wait: Wait<'_>) -> io::Result<Vec<u8>> {
        let mut cmd = Command::new(admin::GET_LOG_PAGE, admin::NSID_ALL);
        // 512 bytes: 128 dwords, 0's based, in NUMDL (31:16).
        cmd.cdw10 = U32::new(127 << 16 | admin::LOG_SMART);
        self.admin_sync(cmd, wait)?;
        let log = spec::SmartLog::parse(&self.data())
            .ok_or_else(|| io::Error::other("short SMART log page"))?;
        Ok(log.render().into_bytes())
    }

    /// The controller's identity, once read.
    pub fn id(&self) -> Option<&ControllerId> {
        self.id.as_ref()
    }
}

impl<R: Regs, B: Buffer> Drop for Controller<R, B> {
    fn drop(&mut self) {
        // Stop the controller's DMA before the queues and buffers go.
        let c = self.regs.read32(reg::CC);
        self.regs.write32(reg::CC, c & !cc::EN);
        let t = self.ready_timeout.min(Duration::from_secs(2));
        if !poll_until(t, || self.regs.read32(reg::CSTS) & csts::RDY == 0) {
            error!("nvme: controller still ready {t:?} after clearing CC.EN");
        }
    }
}

/// Blocks one Dataset Management range may name.
fn range_blocks(block_size: u32) -> u32 {
    u32::try_from(DSM_RANGE_BYTES / u64::from(block_size.max(1))).unwrap_or(u32::MAX)
}

fn write64<R: Regs>(regs: &mut R, off: usize, v: u64) {
    regs.write32(off, v as u32);
    regs.write32(off + 4, (v >> 32) as u32);
}

/// The controller, shared by its namespaces (and the health file). One
/// thread uses it; the mutex is what makes it `Send` with them.
pub type Shared<R, B> = Arc<Mutex<Controller<R, B>>>;

/// The controller behind `shared`. A panic never happens while it is
/// held, so a poisoned lock's state is still consistent.
pub fn lock<R: Regs, B: Buffer>(shared: &Shared<R, B>) -> MutexGuard<'_, Controller<R, B>> {
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

/// One namespace of a shared controller, as the disk scheme sees it.
pub struct Namespace<R: Regs, B: Buffer> {
    ns: NsInfo,
    info: DiskInfo,
    ctrl: Shared<R, B>,
}

impl<R: Regs, B: Buffer> Namespace<R, B> {
    pub fn new(ctrl: &Shared<R, B>, ns: NsInfo) -> Namespace<R, B> {
        let c = lock(ctrl);
        let bs = ns.block_size as usize;
        let info = DiskInfo {
            block_size: ns.block_size,
            blocks: ns.blocks,
            max_transfer: c.max_transfer() / bs * bs,
            queue_depth: c.depth(),
            read_only: false,
            can_flush: c.id().is_some_and(ControllerId::has_write_cache),
            max_discard: if c.id().is_some_and(ControllerId::has_dsm) {
                u64::from(range_blocks(ns.block_size)) * spec::io::DSM_MAX_RANGES as u64
            } else {
                0
            },
        };
        drop(c);
        Namespace {
            ns,
            info,
            ctrl: ctrl.clone(),
        }
    }

    #[cfg(test)]
    pub fn nsid(&self) -> u32 {
        self.ns.nsid
    }
}

impl<R: Regs, B: Buffer> BlockDevice for Namespace<R, B> {
    fn info(&self) -> DiskInfo {
        self.info
    }

    fn submit(&mut self, tag: u64, op: Op<'_>) -> syscall::Result<()> {
        lock(&self.ctrl).submit(&self.ns, tag, op)
    }

    fn complete(&mut self, done: &mut Vec<Done>) {
        let mut c = lock(&self.ctrl);
        c.reap();
        c.take_done(self.ns.nsid, done);
    }
}

#[cfg(test)]
mod tests;

/// A namespace of it.
pub type Disk = Namespace<MmioRegion, Dma<[u8]>>;

/// What `start` brings up: the controller, its namespaces, the admin
/// queue's interrupt and the I/O queues' (index i: I/O queue i + 1).
pub struct Started {
    pub ctrl: Shared<MmioRegion, Dma<[u8]>>,
    pub disks: Vec<(u32, Disk)>,
    pub admin_irq: Irq,
    pub io_irqs: Vec<Irq>,
}

/// Set in the unit's environment to choose the number of I/O queue pairs
/// (1 to [`MAX_IO_QUEUES`]); `make bench`'s `nvme-queues` part measures 1
/// against 2 with it. Unset: one per CPU, at least 2.
pub const IO_QUEUES_ENV: &str = "NVMED_IO_QUEUES";

/// The I/O queue pairs to ask the controller for: `asked` (the
/// environment's word) if it is a number from 1 to [`MAX_IO_QUEUES`], else
/// (logged) one per CPU, clamped to 2..=[`MAX_IO_QUEUES`].
pub fn io_queues_wanted(cpus: usize, asked: Option<&str>) -> u16 {
    let default = u16::try_from(cpus)
        .unwrap_or(MAX_IO_QUEUES)
        .clamp(2, MAX_IO_QUEUES);
    match asked.map(|a| a.trim().parse::<u16>()) {
        None => default,
        Some(Ok(n)) if (1..=MAX_IO_QUEUES).contains(&n) => n,
        Some(_) => {
            warn!(
                "{IO_QUEUES_ENV}={:?}: not a number from 1 to {MAX_IO_QUEUES}; using {default}",
                asked.unwrap_or_default()
            );
            default
        }
    }
}

/// Brings up the NVMe controller behind `handle`: reset, admin queue,
/// Identify, I/O queues on MSI-X vectors 1.., namespaces.
pub fn start(handle: &PciFunctionHandle) -> io::Result<Started> {
    // A restarted driver gets the function as the last instance left it:
    // FLR first (VFIO_DEVICE_RESET), then the controller reset below.
    if let Err(e) = handle.reset() {
        warn!(
            "{}: function reset failed ({e}); CC.EN reset only",
            handle.name()
        );
    }
    let bar = handle.map_bar(0)?;
    handle.enable_bus_master()?;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let asked = std::env::var(IO_QUEUES_ENV).ok();
    let want = io_queues_wanted(cpus, asked.as_deref());
    let msix = handle.enable_msix(u32::from(want) + 1)?;
    let mut irqs = msix.into_iter();
    let admin_irq = irqs
        .next()
        .ok_or_else(|| io::Error::other("no MSI-X vector for the admin queue"))?;
    let dma = handle.dma().clone();
    let mut alloc = |len: usize| Dma::<[u8]>::zeroed_slice(&dma, len);
    let mut ctrl = Controller::enable(bar, &mut alloc)?;
    let mut wait = |t: Duration| -> io::Result<()> {
        admin_irq.wait(t)?;
        Ok(())
    };
    let id = ctrl.identify_controller(&mut wait)?;
    info!(
        "{}: {} (serial {}, firmware {}), MDTS {}, {} namespace(s){}{}",
        handle.name(),
        id.model,
        id.serial,
        id.firmware,
        id.mdts,
        id.nn,
        if id.has_write_cache() {
            ", volatile write cache"
        } else {
            ""
        },
        if id.has_dsm() {
            ", Dataset Management (discard)"
        } else {
            ""
        },
    );
    let namespaces = ctrl.namespaces(&mut wait)?;
    let count = ctrl.create_io_queues(want, &mut alloc, &mut wait)?;
    let ctrl = Arc::new(Mutex::new(ctrl));
    let disks = namespaces
        .into_iter()
        .map(|ns| {
            info!(
                "{}: namespace {}: {} blocks of {} bytes ({} MiB)",
                handle.name(),
                ns.nsid,
                ns.blocks,
                ns.block_size,
                (ns.blocks * u64::from(ns.block_size)) >> 20
            );
            (ns.nsid, Namespace::new(&ctrl, ns))
        })
        .collect();
    Ok(Started {
        ctrl,
        disks,
        admin_irq,
        io_irqs: irqs.take(usize::from(count)).collect(),
    })
}
