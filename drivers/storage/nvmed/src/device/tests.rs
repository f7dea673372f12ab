//! The controller logic against a simulated NVMe controller in memory,
//! written from the specification: it reads commands from the queues the
//! driver created at the IOVAs it gave, follows PRPs and lists into the
//! driver's buffers, and posts completions with phase tags. Doorbell
//! writes are recorded, and commands run when the SQ tail doorbell is
//! written (or later, when the test says so).

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use block::{BlockDevice, Done, Op};
use syscall::error::{EAGAIN, EINVAL, EIO, EOPNOTSUPP};

use super::queue::CompQueue;
use super::spec::{self, admin, Command, CqEntry, Status};
use super::*;

/// Heap memory standing in for DMA memory at a made-up IOVA.
struct TestBuf {
    ptr: *mut u8,
    layout: Layout,
    iova: u64,
}

impl Drop for TestBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `Bus::alloc` with this layout.
        unsafe { dealloc(self.ptr, self.layout) }
    }
}

impl Buffer for TestBuf {
    fn iova(&self) -> u64 {
        self.iova
    }
    fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: the allocation is live, zeroed and `layout.size()` long.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.layout.size()) }
    }
}

/// What the simulated controller can reach: every buffer by IOVA.
#[derive(Default)]
struct Bus {
    /// iova -> (pointer, length)
    ranges: BTreeMap<u64, (*mut u8, usize)>,
    next_iova: u64,
}

impl Bus {
    fn alloc(&mut self, len: usize) -> TestBuf {
        let size = len.div_ceil(PAGE).max(1) * PAGE;
        let layout = Layout::from_size_align(size, PAGE).unwrap();
        // SAFETY: non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        assert!(!ptr.is_null());
        // A gap page between buffers, so a stray address hits nothing.
        let iova = 0x1000_0000 + self.next_iova;
        self.next_iova += (size + PAGE) as u64;
        self.ranges.insert(iova, (ptr, size));
        TestBuf { ptr, layout, iova }
    }

    /// `len` bytes at `iova`, inside one buffer; panics otherwise (a
    /// driver bug the test should show).
    fn at(&self, iova: u64, len: usize) -> *mut u8 {
        let (&base, &(ptr, size)) = self
            .ranges
            .range(..=iova)
            .next_back()
            .unwrap_or_else(|| panic!("DMA to unmapped {iova:#x}"));
        let off = (iova - base) as usize;
        assert!(off + len <= size, "DMA past a buffer at {iova:#x}+{len}");
        // SAFETY: inside the allocation, checked above.
        unsafe { ptr.add(off) }
    }

    fn read(&self, iova: u64, out: &mut [u8]) {
        let p = self.at(iova, out.len());
        for (i, b) in out.iter_mut().enumerate() {
            // SAFETY: `at` checked the range.
            *b = unsafe { p.add(i).read_volatile() };
        }
    }

    fn write(&self, iova: u64, data: &[u8]) {
        let p = self.at(iova, data.len());
        for (i, b) in data.iter().enumerate() {
            // SAFETY: `at` checked the range.
            unsafe { p.add(i).write_volatile(*b) };
        }
    }
}

struct SimQueue {
    iova: u64,
    size: u16,
    /// SQ: the controller's head; CQ: its tail.
    pos: u16,
    /// SQ: the driver's tail (doorbell); CQ: the driver's head.
    bell: u16,
    /// SQ: the CQ it posts to; CQ: the phase it writes.
    cq_or_phase: u16,
}

impl SimQueue {
    fn new(iova: u64, size: u16, cq_or_phase: u16) -> SimQueue {
        SimQueue {
            iova,
            size,
            pos: 0,
            bell: 0,
            cq_or_phase,
        }
    }
}

/// The simulated controller's state, shared with the test.
struct Sim {
    bus: Bus,
    cap: u64,
    cc: u32,
    csts: u32,
    aqa: u32,
    asq: u64,
    acq: u64,
    sqs: BTreeMap<u16, SimQueue>,
    cqs: BTreeMap<u16, SimQueue>,
    /// Namespaces: id -> (block size, data).
    ns: BTreeMap<u32, (usize, Vec<u8>)>,
    mdts: u8,
    vwc: u8,
    /// Queue pairs granted by Set Features (0's based).
    granted: u16,
    doorbells: Vec<(usize, u32)>,
    /// When false, commands wait for `run()`.
    auto: bool,
    /// Reads at this LBA fail with (type, code).
    fail_lba: Option<(u64, u8, u8)>,
    /// Data commands seen, by opcode, with their PRPs.
    seen: Vec<Command>,
    /// ONCS of Identify Controller (bit 2: Dataset Management).
    oncs: u16,
    /// Dataset Management commands: (CDW11, ranges as (attributes,
    /// blocks, LBA)) as read from the command's PRPs.
    dsm: Vec<(u32, Vec<SimRange>)>,
    /// Bytes read, for the SMART log.
    bytes_read: u64,
}

type SimShared = Rc<RefCell<Sim>>;

/// A Dataset Management range as the simulator read it: (context
/// attributes, blocks, starting LBA).
type SimRange = (u32, u32, u64);

/// BAR0 of the simulated controller.
struct SimRegs(SimShared);

impl Sim {
    fn new(ns: &[(u32, usize, Vec<u8>)]) -> Sim {
        // MQES 63, CQR, TO 1 (500 ms), DSTRD 0, NVM command set.
        let cap = 63 | 1 << 16 | 1 << 24 | 1 << 37;
        Sim {
            bus: Bus::default(),
            cap,
            cc: 0,
            csts: 0,
            aqa: 0,
            asq: 0,
            acq: 0,
            sqs: BTreeMap::new(),
            cqs: BTreeMap::new(),
            ns: ns
                .iter()
                .map(|(id, bs, d)| (*id, (*bs, d.clone())))
                .collect(),
            mdts: 7,
            vwc: 1,
            granted: 63,
            doorbells: Vec::new(),
            auto: true,
            fail_lba: None,
            seen: Vec::new(),
            oncs: 1 << 2,
            dsm: Vec::new(),
            bytes_read: 0,
        }
    }

    fn stride(&self) -> usize {
        4 << spec::cap::dstrd(self.cap)
    }

    fn doorbell(&mut self, off: usize, v: u32) {
        self.doorbells.push((off, v));
        let n = (off - reg::DOORBELLS) / self.stride();
        let qid = (n / 2) as u16;
        if n.is_multiple_of(2) {
            if let Some(q) = self.sqs.get_mut(&qid) {
                q.bell = v as u16;
            }
            if self.auto {
                self.run();
            }
        } else if let Some(q) = self.cqs.get_mut(&qid) {
            q.bell = v as u16;
        }
    }

    /// Runs every command submitted so far, as far as CQ space allows.
    fn run(&mut self) {
        let ids: Vec<u16> = self.sqs.keys().copied().collect();
        for qid in ids {
            while let Some(q) = self.sqs.get(&qid) {
                if q.pos == q.bell {
                    break;
                }
                let cqid = q.cq_or_phase;
                let Some(cq) = self.cqs.get(&cqid) else { break };
                if (cq.pos + 1) % cq.size == cq.bell {
                    break; // CQ full
                }
                let mut raw = [0u8; 64];
                self.bus.read(q.iova + u64::from(q.pos) * 64, &mut raw);
                let q = self.sqs.get_mut(&qid).unwrap();
                q.pos = (q.pos + 1) % q.size;
                let head = q.pos;
                let cmd = Command::read_from_bytes(&raw).unwrap();
                let (dw0, sct, sc) = if qid == 0 {
                    self.admin(&cmd)
                } else {
                    self.io(&cmd)
                };
                self.post(cqid, qid, head, cmd.cid(), dw0, sct, sc);
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn post(&mut self, cqid: u16, sqid: u16, head: u16, cid: u16, dw0: u32, sct: u8, sc: u8) {
        let cq = self.cqs.get_mut(&cqid).unwrap();
        let phase = cq.cq_or_phase & 1;
        let status = phase | u16::from(sc) << 1 | u16::from(sct) << 9;
        let e = CqEntry {
            dw0: U32::new(dw0),
            dw1: U32::new(0),
            sq_head: head.into(),
            sq_id: sqid.into(),
            cid: cid.into(),
            status: status.into(),
        };
        let at = cq.iova + u64::from(cq.pos) * 16;
        cq.pos += 1;
        if cq.pos == cq.size {
            cq.pos = 0;
            cq.cq_or_phase ^= 1;
        }
        self.bus.write(at, e.as_bytes());
    }

    /// Posts a completion no command asked for.
    fn post_stray(&mut self, cqid: u16, cid: u16) {
        let head = self.sqs[&cqid].pos;
        self.post(cqid, cqid, head, cid, 0, 0, 0);
    }

    fn admin(&mut self, c: &Command) -> (u32, u8, u8) {
        let prp1 = c.prp1.get();
        match c.opcode() {
            admin::IDENTIFY => {
                let mut page = vec![0u8; PAGE];
                match c.cdw10.get() {
                    admin::CNS_CONTROLLER => {
                        page[4..24].copy_from_slice(b"SIMSERIAL0001       ");
                        page[24..64].copy_from_slice(&[b' '; 40]);
                        page[24..33].copy_from_slice(b"SIM NVMe ");
                        page[64..72].copy_from_slice(b"1.0     ");
                        page[77] = self.mdts;
                        let nn = self.ns.keys().max().copied().unwrap_or(0);
                        page[516..520].copy_from_slice(&nn.to_le_bytes());
                        page[520..522].copy_from_slice(&self.oncs.to_le_bytes());
                        page[525] = self.vwc;
                    }
                    admin::CNS_ACTIVE_NSIDS => {
                        for (i, id) in self.ns.keys().enumerate() {
                            page[4 * i..4 * i + 4].copy_from_slice(&id.to_le_bytes());
                        }
                    }
                    admin::CNS_NAMESPACE => {
                        let Some((bs, data)) = self.ns.get(&c.nsid.get()) else {
                            return (0, 0, 0x0b);
                        };
                        let blocks = (data.len() / bs) as u64;
                        page[0..8].copy_from_slice(&blocks.to_le_bytes());
                        page[8..16].copy_from_slice(&blocks.to_le_bytes());
                        page[25] = 0; // one format
                        page[26] = 0; // in use: format 0
                        let lbads = bs.trailing_zeros();
                        page[128..132].copy_from_slice(&(lbads << 16).to_le_bytes());
                    }
                    _ => return (0, 0, 0x02),
                }
                self.bus.write(prp1, &page);
                (0, 0, 0)
            }
            admin::GET_LOG_PAGE if c.cdw10.get() & 0xff == admin::LOG_SMART => {
                let mut page = [0u8; 512];
                page[1..3].copy_from_slice(&310u16.to_le_bytes());
                let units = (self.bytes_read / 512).div_ceil(1000);
                page[32..48].copy_from_slice(&u128::from(units).to_le_bytes());
                self.bus.write(prp1, &page);
                (0, 0, 0)
            }
            admin::SET_FEATURES if c.cdw10.get() == admin::FEAT_NUM_QUEUES => {
                let g = u32::from(self.granted);
                let asked = c.cdw11.get() & 0xffff;
                let got = asked.min(g);
                (got | got << 16, 0, 0)
            }
            admin::CREATE_CQ => {
                let qid = c.cdw10.get() as u16;
                let size = (c.cdw10.get() >> 16) as u16 + 1;
                self.cqs.insert(qid, SimQueue::new(prp1, size, 1));
                (0, 0, 0)
            }
            admin::CREATE_SQ => {
                let qid = c.cdw10.get() as u16;
                let size = (c.cdw10.get() >> 16) as u16 + 1;
                let cqid = (c.cdw11.get() >> 16) as u16;
                if !self.cqs.contains_key(&cqid) {
                    return (0, 1, 0x00);
                }
                self.sqs.insert(qid, SimQueue::new(prp1, size, cqid));
                (0, 0, 0)
            }
            _ => (0, 0, 0x01),
        }
    }

    /// The pages a command's PRPs name, for `len` bytes.
    fn pages(&self, c: &Command, len: usize) -> Vec<(u64, usize)> {
        let prp1 = c.prp1.get();
        let first = (PAGE - (prp1 as usize % PAGE)).min(len);
        let mut out = vec![(prp1, first)];
        let mut left = len - first;
        if left == 0 {
            return out;
        }
        if left <= PAGE {
            out.push((c.prp2.get(), left));
            return out;
        }
        let mut list = c.prp2.get();
        while left > 0 {
            let mut e = [0u8; 8];
            self.bus.read(list, &mut e);
            let n = left.min(PAGE);
            out.push((u64::from_le_bytes(e), n));
            left -= n;
            list += 8;
        }
        out
    }

    /// Dataset Management: reads the range list through the PRPs; with
    /// Deallocate, the blocks read back zeros afterwards (DLFEAT 001b).
    fn dsm(&mut self, c: &Command) -> (u32, u8, u8) {
        let n = (c.cdw10.get() & 0xff) as usize + 1;
        let mut list = vec![0u8; n * 16];
        let mut at = 0;
        for (iova, len) in self.pages(c, list.len()) {
            self.bus.read(iova, &mut list[at..at + len]);
            at += len;
        }
        let ranges: Vec<SimRange> = list
            .chunks_exact(16)
            .map(|e| {
                (
                    u32::from_le_bytes(e[0..4].try_into().unwrap()),
                    u32::from_le_bytes(e[4..8].try_into().unwrap()),
                    u64::from_le_bytes(e[8..16].try_into().unwrap()),
                )
            })
            .collect();
        self.dsm.push((c.cdw11.get(), ranges.clone()));
        let Some((bs, data)) = self.ns.get_mut(&c.nsid.get()) else {
            return (0, 0, 0x0b);
        };
        for (_, nlb, slba) in &ranges {
            let (start, len) = (*slba as usize * *bs, *nlb as usize * *bs);
            if start + len > data.len() {
                return (0, 0, 0x80);
            }
        }
        if c.cdw11.get() & spec::io::DSM_AD != 0 {
            for (_, nlb, slba) in ranges {
                let start = slba as usize * *bs;
                data[start..start + nlb as usize * *bs].fill(0);
            }
        }
        (0, 0, 0)
    }

    fn io(&mut self, c: &Command) -> (u32, u8, u8) {
        self.seen.push(*c);
        if c.opcode() == spec::io::DSM {
            return self.dsm(c);
        }
        let Some((bs, data)) = self.ns.get(&c.nsid.get()) else {
            return (0, 0, 0x0b);
        };
        let bs = *bs;
        let lba = u64::from(c.cdw10.get()) | u64::from(c.cdw11.get()) << 32;
        let blocks = (c.cdw12.get() & 0xffff) as usize + 1;
        let len = blocks * bs;
        let start = lba as usize * bs;
        if matches!(c.opcode(), spec::io::READ | spec::io::WRITE) && start + len > data.len() {
            return (0, 0, 0x80);
        }
        match c.opcode() {
            spec::io::FLUSH => (0, 0, 0),
            spec::io::READ => {
                if let Some((bad, sct, sc)) = self.fail_lba {
                    if (lba..lba + blocks as u64).contains(&bad) {
                        return (0, sct, sc);
                    }
                }
                let bytes = data[start..start + len].to_vec();
                self.bytes_read += len as u64;
                let mut at = 0;
                for (iova, n) in self.pages(c, len) {
                    self.bus.write(iova, &bytes[at..at + n]);
                    at += n;
                }
                (0, 0, 0)
            }
            spec::io::WRITE => {
                let mut bytes = vec![0u8; len];
                let mut at = 0;
                for (iova, n) in self.pages(c, len) {
                    self.bus.read(iova, &mut bytes[at..at + n]);
                    at += n;
                }
                let (_, data) = self.ns.get_mut(&c.nsid.get()).unwrap();
                data[start..start + len].copy_from_slice(&bytes);
                (0, 0, 0)
            }
            _ => (0, 0, 0x01),
        }
    }
}

impl Regs for SimRegs {
    fn read32(&self, off: usize) -> u32 {
        let s = self.0.borrow();
        match off {
            reg::CAP => s.cap as u32,
            o if o == reg::CAP + 4 => (s.cap >> 32) as u32,
            reg::VS => 0x0001_0400,
            reg::CC => s.cc,
            reg::CSTS => s.csts,
            _ => 0,
        }
    }

    fn write32(&mut self, off: usize, v: u32) {
        let mut s = self.0.borrow_mut();
        match off {
            reg::CC => {
                let was = s.cc & cc::EN;
                s.cc = v;
                if was == 0 && v & cc::EN != 0 {
                    let (sq, cq) = ((s.aqa & 0xfff) as u16 + 1, (s.aqa >> 16 & 0xfff) as u16 + 1);
                    let (asq, acq) = (s.asq, s.acq);
                    s.cqs.insert(0, SimQueue::new(acq, cq, 1));
                    s.sqs.insert(0, SimQueue::new(asq, sq, 0));
                    s.csts |= csts::RDY;
                } else if was != 0 && v & cc::EN == 0 {
                    s.sqs.clear();
                    s.cqs.clear();
                    s.csts &= !csts::RDY;
                }
            }
            reg::AQA => s.aqa = v,
            reg::ASQ => s.asq = s.asq & !0xffff_ffff | u64::from(v),
            o if o == reg::ASQ + 4 => s.asq = s.asq & 0xffff_ffff | u64::from(v) << 32,
            reg::ACQ => s.acq = s.acq & !0xffff_ffff | u64::from(v),
            o if o == reg::ACQ + 4 => s.acq = s.acq & 0xffff_ffff | u64::from(v) << 32,
            o if o >= reg::DOORBELLS => s.doorbell(o, v),
            _ => {}
        }
    }
}

use zerocopy::{FromBytes, IntoBytes};

type TestCtrl = Controller<SimRegs, TestBuf>;
type TestNs = Namespace<SimRegs, TestBuf>;

fn no_wait() -> impl FnMut(Duration) -> io::Result<()> {
    |_| Err(io::Error::other("the simulated controller answers at once"))
}

/// A controller brought up the way `start` does, over the simulator
/// (single-threaded, `Rc` inside: the `Arc` is only `Shared`'s type).
#[allow(clippy::arc_with_non_send_sync)]
fn bring_up(sim: &SimShared, queues: u16) -> (Arc<Mutex<TestCtrl>>, Vec<TestNs>) {
    let s2 = sim.clone();
    let mut alloc = move |len: usize| Ok(s2.borrow_mut().bus.alloc(len));
    let mut c = Controller::enable(SimRegs(sim.clone()), &mut alloc).unwrap();
    let id = c.identify_controller(&mut no_wait()).unwrap();
    assert_eq!(id.serial, "SIMSERIAL0001");
    assert_eq!(id.model, "SIM NVMe");
    let nss = c.namespaces(&mut no_wait()).unwrap();
    c.create_io_queues(queues, &mut alloc, &mut no_wait())
        .unwrap();
    let c = Arc::new(Mutex::new(c));
    let nss = nss.into_iter().map(|n| Namespace::new(&c, n)).collect();
    (c, nss)
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

fn sim(ns: &[(u32, usize, Vec<u8>)]) -> SimShared {
    Rc::new(RefCell::new(Sim::new(ns)))
}

fn complete_all(ns: &mut TestNs) -> Vec<Done> {
    let mut done = Vec::new();
    ns.complete(&mut done);
    done
}

#[test]
fn bring_up_identifies_namespaces_and_creates_queue_pairs() {
    let s = sim(&[(1, 512, vec![0; 1 << 20]), (3, 4096, vec![0; 2 << 20])]);
    let (c, nss) = bring_up(&s, 2);
    assert_eq!(lock(&c).io_queues(), 2);
    let infos: Vec<_> = nss.iter().map(|n| (n.nsid(), n.info())).collect();
    assert_eq!(infos[0].0, 1);
    assert_eq!((infos[0].1.block_size, infos[0].1.blocks), (512, 2048));
    assert_eq!(infos[1].0, 3);
    assert_eq!((infos[1].1.block_size, infos[1].1.blocks), (4096, 512));
    // MDTS 7 at 4 KiB pages: 512 KiB; the write cache means flushes.
    assert_eq!(infos[0].1.max_transfer, 512 << 10);
    assert!(infos[0].1.can_flush);
    assert_eq!(infos[0].1.queue_depth, SLOTS);
    let sim = s.borrow();
    assert_eq!(sim.sqs.len(), 3, "admin + 2 I/O submission queues");
    assert_eq!(sim.cqs.len(), 3);
}

#[test]
fn reads_and_writes_go_through_prps_to_the_namespace() {
    let disk = pattern(7, 4 << 20);
    let s = sim(&[(1, 512, disk.clone())]);
    let (_c, mut nss) = bring_up(&s, 2);
    let ns = &mut nss[0];
    // One block, two pages, and a full 512 KiB (a PRP list of 127).
    for (i, (lba, blocks)) in [(0u64, 1u32), (9, 16), (100, 1024)].iter().enumerate() {
        ns.submit(
            i as u64,
            Op::Read {
                lba: *lba,
                blocks: *blocks,
            },
        )
        .unwrap();
    }
    let mut done = complete_all(ns);
    done.sort_by_key(|d| d.tag);
    for (d, (lba, blocks)) in done.iter().zip([(0usize, 1usize), (9, 16), (100, 1024)]) {
        let want = &disk[lba * 512..(lba + blocks) * 512];
        assert_eq!(d.result.as_deref().unwrap(), want, "tag {}", d.tag);
    }
    let seen = s.borrow().seen.clone();
    assert_eq!(seen[0].prp2.get(), 0, "one page: no PRP2");
    assert_ne!(seen[2].prp2.get(), 0, "512 KiB: a list");
    // A write of 3 pages lands on the namespace.
    let data = pattern(99, 3 * 4096);
    ns.submit(
        50,
        Op::Write {
            lba: 24,
            data: &data,
        },
    )
    .unwrap();
    let done = complete_all(ns);
    assert_eq!(
        done,
        [Done {
            tag: 50,
            result: Ok(Vec::new())
        }]
    );
    assert_eq!(
        s.borrow().ns[&1].1[24 * 512..24 * 512 + data.len()],
        data[..]
    );
    // And a flush, as a command of its own.
    ns.submit(51, Op::Flush).unwrap();
    assert_eq!(complete_all(ns)[0].result, Ok(Vec::new()));
    assert_eq!(s.borrow().seen.last().unwrap().opcode(), spec::io::FLUSH);
}

#[test]
fn many_in_flight_spread_over_queues_and_the_phase_tag_wraps() {
    let disk = pattern(3, 1 << 20);
    let s = sim(&[(1, 512, disk.clone())]);
    let (_c, mut nss) = bring_up(&s, 2);
    let ns = &mut nss[0];
    s.borrow_mut().auto = false;
    // Fill every slot: 2 queues x 16; the next is EAGAIN.
    for t in 0..32u64 {
        ns.submit(t, Op::Read { lba: t, blocks: 1 }).unwrap();
    }
    assert_eq!(
        ns.submit(99, Op::Read { lba: 0, blocks: 1 })
            .unwrap_err()
            .errno,
        EAGAIN
    );
    let tails: Vec<(usize, u32)> = s.borrow().doorbells.clone();
    // Round robin: queue 1's and queue 2's SQ tail doorbells reached 16.
    assert!(tails.contains(&(doorbell(1, false, 4), 16)), "{tails:?}");
    assert!(tails.contains(&(doorbell(2, false, 4), 16)), "{tails:?}");
    s.borrow_mut().run();
    assert_eq!(complete_all(ns).len(), 32);
    // Each CQ has 32 entries; 200 more reads wrap both several times.
    s.borrow_mut().auto = true;
    let mut got = 0;
    for round in 0..20u64 {
        for t in 0..10u64 {
            let lba = (round * 10 + t) % 2048;
            ns.submit(1000 + lba, Op::Read { lba, blocks: 1 }).unwrap();
        }
        for d in complete_all(ns) {
            let lba = (d.tag - 1000) as usize;
            assert_eq!(d.result.unwrap(), disk[lba * 512..lba * 512 + 512]);
            got += 1;
        }
    }
    assert_eq!(got, 200);
    // The last CQ head doorbells say where the driver stopped reading.
    let bells = s.borrow().doorbells.clone();
    let last_head = |q: u16| {
        bells
            .iter()
            .rev()
            .find(|(o, _)| *o == doorbell(q, true, 4))
            .map(|(_, v)| *v)
    };
    // 232 completions over two queues of 32: 116 each, head 116 % 32.
    assert_eq!(last_head(1), Some(116 % 32));
    assert_eq!(last_head(2), Some(116 % 32));
}

#[test]
fn phase_tag_tells_new_entries_from_old() {
    let mut bus = Bus::default();
    let buf = bus.alloc(4 * 16);
    let iova = buf.iova;
    let mut cq = CompQueue::new(buf, 4);
    assert!(
        cq.pop().is_none(),
        "zeroed: phase 0 is not the first pass's"
    );
    let entry = |cid: u16, phase: u16| CqEntry {
        cid: cid.into(),
        status: phase.into(),
        ..CqEntry::default()
    };
    for i in 0..4u16 {
        bus.write(iova + u64::from(i) * 16, entry(i, 1).as_bytes());
    }
    let cids: Vec<u16> = std::iter::from_fn(|| cq.pop())
        .map(|e| e.cid.get())
        .collect();
    assert_eq!(cids, [0, 1, 2, 3]);
    assert_eq!(cq.head(), 0);
    // The old entries (phase 1) are not taken again on the second pass.
    assert!(cq.pop().is_none());
    bus.write(iova, entry(7, 0).as_bytes());
    assert_eq!(cq.pop().map(|e| e.cid.get()), Some(7));
    assert!(cq.pop().is_none());
}

#[test]
fn unknown_command_ids_are_ignored() {
    let disk = pattern(5, 1 << 20);
    let s = sim(&[(1, 512, disk.clone())]);
    let (_c, mut nss) = bring_up(&s, 2);
    let ns = &mut nss[0];
    // Completions nobody asked for: an id never used, and queue 2's slot
    // 16 reported on queue 1.
    s.borrow_mut().post_stray(1, 999);
    s.borrow_mut().post_stray(1, 16);
    assert!(complete_all(ns).is_empty());
    // The queue still works, and the real request's slot is not confused.
    ns.submit(1, Op::Read { lba: 2, blocks: 1 }).unwrap();
    let done = complete_all(ns);
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].result.as_deref().unwrap(), &disk[1024..1536]);
}

#[test]
fn error_statuses_fail_the_request_and_the_slot_is_reused() {
    let s = sim(&[(1, 512, vec![0; 1 << 20])]);
    let (_c, mut nss) = bring_up(&s, 2);
    let ns = &mut nss[0];
    // Unrecovered read error (media, type 2).
    s.borrow_mut().fail_lba = Some((10, 2, 0x81));
    ns.submit(1, Op::Read { lba: 8, blocks: 4 }).unwrap();
    assert_eq!(complete_all(ns)[0].result.as_ref().unwrap_err().errno, EIO);
    s.borrow_mut().fail_lba = Some((10, 0, 0x01));
    ns.submit(2, Op::Read { lba: 10, blocks: 1 }).unwrap();
    assert_eq!(
        complete_all(ns)[0].result.as_ref().unwrap_err().errno,
        EOPNOTSUPP
    );
    s.borrow_mut().fail_lba = None;
    // Out of range and oversized requests never reach the controller.
    let before = s.borrow().seen.len();
    assert_eq!(
        ns.submit(
            3,
            Op::Read {
                lba: 2047,
                blocks: 2
            }
        )
        .unwrap_err()
        .errno,
        EINVAL
    );
    assert_eq!(
        ns.submit(
            4,
            Op::Read {
                lba: 0,
                blocks: 1025
            }
        )
        .unwrap_err()
        .errno,
        EINVAL
    );
    assert_eq!(
        ns.submit(
            5,
            Op::Write {
                lba: 0,
                data: &[0; 100]
            }
        )
        .unwrap_err()
        .errno,
        EINVAL
    );
    assert_eq!(s.borrow().seen.len(), before);
    // Every slot is free again: a full queue's worth goes in.
    for t in 0..32 {
        ns.submit(100 + t, Op::Read { lba: t, blocks: 1 }).unwrap();
    }
    assert_eq!(complete_all(ns).len(), 32);
}

#[test]
fn status_codes_map_to_errors() {
    let st = |sct: u16, sc: u16| Status::from_field(sc << 1 | sct << 9);
    assert!(st(0, 0).error().is_none());
    assert_eq!(st(0, 0x01).error().unwrap().errno, EOPNOTSUPP);
    assert_eq!(st(0, 0x80).error().unwrap().errno, EINVAL);
    assert_eq!(st(2, 0x81).error().unwrap().errno, EIO);
    assert_eq!(st(7, 0xff).error().unwrap().errno, EIO);
    let dnr = Status::from_field(0x8000 | 0x81 << 1 | 2 << 9);
    assert!(dnr.dnr);
    assert_eq!(
        dnr.to_string(),
        "unrecovered read error (status code type 0x2, status code 0x81, do not retry)"
    );
}

#[test]
fn namespaces_share_the_queues_and_get_their_own_completions() {
    let a = pattern(1, 1 << 20);
    let b = pattern(2, 1 << 20);
    let s = sim(&[(1, 512, a.clone()), (2, 512, b.clone())]);
    let (_c, mut nss) = bring_up(&s, 2);
    nss[0].submit(1, Op::Read { lba: 0, blocks: 1 }).unwrap();
    nss[1].submit(2, Op::Read { lba: 0, blocks: 1 }).unwrap();
    // Namespace 2 reaps both queues but keeps only its own.
    let d2 = complete_all(&mut nss[1]);
    assert_eq!(d2.len(), 1);
    assert_eq!(d2[0].result.as_deref().unwrap(), &b[..512]);
    let d1 = complete_all(&mut nss[0]);
    assert_eq!(d1.len(), 1);
    assert_eq!(d1[0].result.as_deref().unwrap(), &a[..512]);
}

#[test]
fn a_small_mdts_limits_the_transfer_and_fewer_granted_queues_are_used() {
    let s = sim(&[(1, 512, vec![0; 1 << 20])]);
    s.borrow_mut().mdts = 2;
    s.borrow_mut().granted = 0;
    let (c, nss) = bring_up(&s, 4);
    assert_eq!(nss[0].info().max_transfer, 16 << 10);
    assert_eq!(lock(&c).io_queues(), 1);
    // All the slots on the one queue, up to its size less one.
    assert_eq!(nss[0].info().queue_depth, SLOTS.min(IO_QUEUE as usize - 1));
}

#[test]
fn fatal_status_is_reported_and_drop_disables_the_controller() {
    let s = sim(&[(1, 512, vec![0; 1 << 20])]);
    let (c, nss) = bring_up(&s, 2);
    assert!(lock(&c).check_fatal().is_ok());
    s.borrow_mut().csts |= csts::CFS;
    assert!(lock(&c).check_fatal().is_err());
    drop(nss);
    drop(c);
    assert_eq!(s.borrow().cc & cc::EN, 0);
    assert_eq!(s.borrow().csts & csts::RDY, 0);
}

#[test]
fn the_health_file_is_the_smart_log_and_counts_reads() {
    let s = sim(&[(1, 512, vec![0; 4 << 20])]);
    let (c, mut nss) = bring_up(&s, 2);
    let units = |c: &Arc<Mutex<TestCtrl>>| -> u64 {
        let text = String::from_utf8(lock(c).health(&mut no_wait()).unwrap()).unwrap();
        assert!(text.contains("temperature"), "{text}");
        text.lines()
            .find_map(|l| l.strip_prefix("data_units_read"))
            .and_then(|v| v.trim_start_matches([' ', ':']).parse().ok())
            .unwrap()
    };
    assert_eq!(units(&c), 0);
    // 2 MiB: 4096 units of 512 bytes, 4.096 thousands: 5 rounded up.
    for t in 0..4u64 {
        nss[0]
            .submit(
                t,
                Op::Read {
                    lba: t * 1024,
                    blocks: 1024,
                },
            )
            .unwrap();
    }
    assert_eq!(complete_all(&mut nss[0]).len(), 4);
    assert_eq!(units(&c), 5);
}

#[test]
fn discard_is_a_dataset_management_deallocate_with_its_ranges_in_dma() {
    let disk = pattern(5, 4 << 20);
    let s = sim(&[(1, 512, disk.clone()), (2, 4096, vec![7; 1 << 20])]);
    let (_c, mut nss) = bring_up(&s, 2);
    // 256 ranges of 1 GiB each.
    assert_eq!(nss[0].info().max_discard, 256 << 21);
    assert_eq!(nss[1].info().max_discard, 256 << 18);
    let ns = &mut nss[0];
    ns.submit(
        1,
        Op::Discard {
            lba: 100,
            blocks: 50,
        },
    )
    .unwrap();
    assert_eq!(
        complete_all(ns),
        [Done {
            tag: 1,
            result: Ok(Vec::new())
        }]
    );
    let c = *s.borrow().seen.last().unwrap();
    assert_eq!((c.opcode(), c.nsid.get()), (spec::io::DSM, 1));
    assert_eq!(c.cdw10.get(), 0, "one range, 0's based");
    assert_eq!(c.cdw11.get(), 1 << 2, "Attribute - Deallocate only");
    assert_eq!(c.prp2.get(), 0, "a 16-byte list needs one page");
    assert_eq!(c.cdw12.get(), 0);
    assert_eq!(s.borrow().dsm, [(1 << 2, vec![(0, 50, 100)])]);
    let mut model = disk;
    model[100 * 512..150 * 512].fill(0);
    assert!(s.borrow().ns[&1].1 == model);
    // The slot's buffer held the list; a read through it afterwards is
    // the namespace's data.
    for tag in 2..2 + SLOTS as u64 {
        ns.submit(tag, Op::Read { lba: 99, blocks: 2 }).unwrap();
    }
    for d in complete_all(ns) {
        assert_eq!(d.result.as_deref().unwrap(), &model[99 * 512..101 * 512]);
    }
    // Past the end, empty, or more than 256 ranges: refused before the
    // controller sees anything.
    let before = s.borrow().seen.len();
    for (lba, blocks) in [(8190u64, 3u64), (0, 0), (u64::MAX, 2), (0, (256 << 21) + 1)] {
        assert_eq!(
            ns.submit(9, Op::Discard { lba, blocks }).unwrap_err().errno,
            EINVAL,
            "{blocks} at {lba}"
        );
    }
    assert_eq!(s.borrow().seen.len(), before);
}

#[test]
fn without_dataset_management_a_namespace_cannot_discard() {
    let s = sim(&[(1, 512, vec![3; 1 << 20])]);
    s.borrow_mut().oncs = 0;
    let (_c, mut nss) = bring_up(&s, 2);
    assert!(!nss[0].info().can_discard());
    assert_eq!(
        nss[0]
            .submit(1, Op::Discard { lba: 0, blocks: 8 })
            .unwrap_err()
            .errno,
        EOPNOTSUPP
    );
    assert!(s.borrow().seen.is_empty());
    assert!(s.borrow().ns[&1].1.iter().all(|&b| b == 3));
}

#[test]
fn the_io_queue_count_is_one_per_cpu_unless_the_unit_says() {
    assert_eq!(io_queues_wanted(1, None), 2, "at least two by default");
    assert_eq!(io_queues_wanted(3, None), 3);
    assert_eq!(io_queues_wanted(64, None), MAX_IO_QUEUES);
    assert_eq!(io_queues_wanted(2, Some("1")), 1);
    assert_eq!(io_queues_wanted(2, Some(" 4 ")), 4);
    for bad in ["0", "5", "-1", "two", ""] {
        assert_eq!(io_queues_wanted(2, Some(bad)), 2, "{bad:?} ignored");
    }
}
