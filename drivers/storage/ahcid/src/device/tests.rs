//! Host tests of a port against a simulated AHCI port in memory: the
//! simulation keeps the port registers with the specification's access
//! rules (PxIS and PxSERR write-1-to-clear, PxSACT and PxCI write-1-to-set,
//! CR/FR following ST/FRE, COMRESET through PxSCTL.DET) and, when the test
//! says so, carries out issued commands by reading the command list,
//! tables and PRDTs the driver built, from the driver's own buffers by
//! IOVA, against an in-memory disk. Errors behave as QEMU's model: a
//! failed NCQ command keeps its PxSACT bit and leaves ERR in PxTFD and its
//! tag's bit in PxSERR; a failed non-queued command raises TFES.

use std::cell::RefCell;
use std::rc::Rc;

use block::{BlockDevice, Done, Op};
use syscall::error::{EAGAIN, EINVAL, EIO};
use virtio_core::testing::{BufferMap, Desc, TestBuf};

use super::fis::{self, ata, parse_identify};
use super::port::{AhciPort, Attached, PortRegs, CHUNK, META_BYTES, POOL_BYTES};
use super::regs::{cmd, is, port, sig};

/// IDENTIFY data shaped like QEMU's ide-hd: model, serial, LBA48
/// capacity, NCQ depth 32 (if `ncq`), write cache, FLUSH CACHE EXT.
pub fn identify_words(sectors: u64, ncq: bool) -> Vec<u8> {
    let mut w = [0u16; 256];
    let put_str = |w: &mut [u16; 256], at: usize, words: usize, s: &str| {
        let mut b = s.as_bytes().to_vec();
        b.resize(words * 2, b' ');
        for i in 0..words {
            w[at + i] = u16::from_be_bytes([b[2 * i], b[2 * i + 1]]);
        }
    };
    put_str(&mut w, 10, 10, "QM00001");
    put_str(&mut w, 23, 4, "2.5+");
    put_str(&mut w, 27, 20, "QEMU HARDDISK");
    w[49] = 1 << 9 | 1 << 8;
    w[60] = 0xffff;
    w[61] = 0x0fff;
    if ncq {
        w[75] = 31;
        w[76] = 1 << 8;
    }
    w[82] = 1 << 5;
    w[83] = 0x4000 | 1 << 10 | 1 << 12 | 1 << 13;
    w[85] = 1 << 5;
    w[86] = 1 << 10 | 1 << 13;
    w[87] = 0x4000;
    for i in 0..4 {
        w[100 + i] = (sectors >> (16 * i)) as u16;
    }
    w.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// One command the simulation carried out, as the driver described it.
#[derive(Debug, Clone)]
struct Seen {
    command: u8,
    lba: u64,
    sectors: u32,
    prds: usize,
    queued: bool,
}

#[derive(Default)]
struct State {
    is: u32,
    ie: u32,
    cmd: u32,
    tfd: u32,
    sig: u32,
    ssts: u32,
    sctl: u32,
    serr: u32,
    sact: u32,
    ci: u32,
    clb: u64,
    fb: u64,
    /// NCQ commands taken from PxCI, not yet carried out.
    ncq: u32,
    disk: Vec<u8>,
    identify: Vec<u8>,
    fail_lba: Option<u64>,
    /// After a COMRESET the link does not come back.
    link_lost_on_reset: bool,
    comresets: usize,
    seen: Vec<Seen>,
    /// PxIS values the driver wrote (to clear them).
    is_writes: Vec<u32>,
    /// PxCI written for a queued command before its PxSACT bit.
    order_errors: usize,
    mem: Option<BufferMap>,
}

#[derive(Clone)]
struct Sim(Rc<RefCell<State>>);

struct SimPort(Rc<RefCell<State>>);

impl PortRegs for SimPort {
    fn read(&self, reg: usize) -> u32 {
        let s = self.0.borrow();
        match reg {
            port::CLB => s.clb as u32,
            port::CLBU => (s.clb >> 32) as u32,
            port::FB => s.fb as u32,
            port::FBU => (s.fb >> 32) as u32,
            port::IS => s.is,
            port::IE => s.ie,
            port::CMD => s.cmd,
            port::TFD => s.tfd,
            port::SIG => s.sig,
            port::SSTS => s.ssts,
            port::SCTL => s.sctl,
            port::SERR => s.serr,
            port::SACT => s.sact,
            port::CI => s.ci | s.ncq_in_ci(),
            _ => 0,
        }
    }

    fn write(&mut self, reg: usize, v: u32) {
        let mut s = self.0.borrow_mut();
        match reg {
            port::CLB => s.clb = (s.clb & !0xffff_ffff) | u64::from(v),
            port::CLBU => s.clb = (s.clb & 0xffff_ffff) | u64::from(v) << 32,
            port::FB => s.fb = (s.fb & !0xffff_ffff) | u64::from(v),
            port::FBU => s.fb = (s.fb & 0xffff_ffff) | u64::from(v) << 32,
            port::IS => {
                s.is_writes.push(v);
                s.is &= !v;
            }
            port::IE => s.ie = v,
            port::CMD => {
                let was_fre = s.cmd & cmd::FRE != 0;
                let mut c = v & !(cmd::CR | cmd::FR);
                if c & cmd::ST != 0 {
                    c |= cmd::CR;
                }
                if c & cmd::FRE != 0 {
                    c |= cmd::FR;
                    if !was_fre && s.ssts & 0xf == 3 {
                        // The device's first D2H FIS: signature and status.
                        s.tfd = 0x50;
                    }
                }
                s.cmd = c;
            }
            port::SCTL => {
                if s.sctl & 0xf == 1 && v & 0xf == 0 {
                    s.comresets += 1;
                    s.sact = 0;
                    s.ncq = 0;
                    s.tfd = 0x50;
                    if s.link_lost_on_reset {
                        s.ssts = 0;
                    }
                }
                s.sctl = v;
            }
            port::SERR => s.serr &= !v,
            port::SACT => s.sact |= v,
            port::CI => {
                if s.cmd & cmd::ST == 0 {
                    return;
                }
                for slot in 0..32 {
                    if v & (1 << slot) == 0 {
                        continue;
                    }
                    let queued = fis::ata::READ_FPDMA_QUEUED <= s.command_of(slot)
                        && s.command_of(slot) <= fis::ata::WRITE_FPDMA_QUEUED;
                    if queued {
                        // The HBA sends it at once and clears PxCI.
                        if s.sact & (1 << slot) == 0 {
                            s.order_errors += 1;
                        }
                        s.ncq |= 1 << slot;
                    } else {
                        s.ci |= 1 << slot;
                    }
                }
            }
            _ => {}
        }
    }
}

impl State {
    /// The queued commands are out of PxCI once taken: none left there.
    fn ncq_in_ci(&self) -> u32 {
        0
    }

    fn mem(&self) -> &BufferMap {
        self.mem.as_ref().expect("memory map")
    }

    fn read_mem(&self, iova: u64, len: usize) -> Vec<u8> {
        self.mem().read(&Desc {
            addr: iova,
            len: len as u32,
            writable: false,
        })
    }

    fn write_mem(&self, iova: u64, data: &[u8]) {
        self.mem().write(
            &Desc {
                addr: iova,
                len: data.len() as u32,
                writable: true,
            },
            data,
        )
    }

    fn header(&self, slot: usize) -> (u32, u64) {
        let h = self.read_mem(self.clb + 32 * slot as u64, 32);
        let dw0 = u32::from_le_bytes(h[0..4].try_into().unwrap());
        let table = u64::from_le_bytes(h[8..16].try_into().unwrap());
        (dw0, table)
    }

    fn command_of(&self, slot: usize) -> u8 {
        let (_, table) = self.header(slot);
        self.read_mem(table, 20)[2]
    }

    /// Carries out the command in `slot`; whether it succeeded.
    fn execute(&mut self, slot: usize, queued: bool) -> bool {
        let (dw0, table) = self.header(slot);
        assert_eq!(dw0 & 0x1f, 5, "a register FIS is 5 dwords");
        let write = dw0 & (1 << 6) != 0;
        let prdtl = (dw0 >> 16) as usize;
        let f = self.read_mem(table, 20);
        assert_eq!(f[0], 0x27);
        assert_eq!(f[1], 0x80);
        let lba = u64::from_le_bytes([f[4], f[5], f[6], f[8], f[9], f[10], 0, 0]);
        let sectors = if queued {
            assert_eq!(usize::from(f[12] >> 3), slot, "NCQ tag is the slot");
            u32::from(u16::from_le_bytes([f[3], f[11]]))
        } else {
            u32::from(u16::from_le_bytes([f[12], f[13]]))
        };
        let mut prds = Vec::new();
        for i in 0..prdtl {
            let e = self.read_mem(table + 0x80 + 16 * i as u64, 16);
            let iova = u64::from_le_bytes(e[0..8].try_into().unwrap());
            let dbc = u32::from_le_bytes(e[12..16].try_into().unwrap());
            assert_eq!(dbc & 1, 1, "even byte counts");
            assert_eq!(iova & 1, 0, "word-aligned addresses");
            prds.push((iova, (dbc & 0x3f_ffff) as usize + 1));
        }
        self.seen.push(Seen {
            command: f[2],
            lba,
            sectors,
            prds: prds.len(),
            queued,
        });
        let failing = self
            .fail_lba
            .is_some_and(|x| x >= lba && x < lba + u64::from(sectors.max(1)));
        let bytes: usize = prds.iter().map(|p| p.1).sum();
        match f[2] {
            ata::IDENTIFY_DEVICE => {
                assert_eq!(bytes, 512);
                let id = self.identify.clone();
                self.write_mem(prds[0].0, &id[..prds[0].1]);
                true
            }
            ata::FLUSH_CACHE_EXT => {
                assert_eq!(prdtl, 0);
                true
            }
            ata::READ_DMA_EXT
            | ata::READ_FPDMA_QUEUED
            | ata::WRITE_DMA_EXT
            | ata::WRITE_FPDMA_QUEUED => {
                assert_eq!(bytes, sectors as usize * 512, "PRDT covers the count");
                assert_eq!(
                    write,
                    matches!(f[2], ata::WRITE_DMA_EXT | ata::WRITE_FPDMA_QUEUED)
                );
                if failing {
                    return false;
                }
                let mut at = lba as usize * 512;
                for (iova, len) in prds {
                    if write {
                        let d = self.read_mem(iova, len);
                        self.disk[at..at + len].copy_from_slice(&d);
                    } else {
                        let d = self.disk[at..at + len].to_vec();
                        self.write_mem(iova, &d);
                    }
                    at += len;
                }
                true
            }
            other => panic!("unexpected command {other:#x}"),
        }
    }
}

impl Sim {
    fn new(mem: &BufferMap, disk: Vec<u8>, ncq: bool) -> Sim {
        let sectors = (disk.len() / 512) as u64;
        Sim(Rc::new(RefCell::new(State {
            ssts: 0x113,
            sig: sig::ATA,
            tfd: 0x7f,
            identify: identify_words(sectors, ncq),
            disk,
            mem: Some(mem.clone()),
            ..State::default()
        })))
    }

    fn port(&self) -> SimPort {
        SimPort(self.0.clone())
    }

    fn state(&self) -> std::cell::RefMut<'_, State> {
        self.0.borrow_mut()
    }

    /// Slots with a command waiting to be carried out, lowest first.
    fn waiting(&self) -> Vec<usize> {
        let s = self.0.borrow();
        (0..32).filter(|b| (s.ci | s.ncq) & (1 << b) != 0).collect()
    }

    /// Carries out the commands in `slots`, in that order, as the device
    /// would, and raises their completion status.
    fn run(&self, slots: &[usize]) {
        for &slot in slots {
            let mut s = self.0.borrow_mut();
            let bit = 1u32 << slot;
            let queued = s.ncq & bit != 0;
            assert!(queued || s.ci & bit != 0, "slot {slot} not issued");
            let ok = s.execute(slot, queued);
            if queued {
                s.ncq &= !bit;
                if ok {
                    s.sact &= !bit;
                    s.tfd = 0x50;
                } else {
                    s.tfd = 0x51 | 0x04 << 8;
                    s.serr |= bit;
                }
                s.is |= is::SDBS;
            } else {
                s.ci &= !bit;
                if ok {
                    s.tfd = 0x50;
                    s.is |= is::DHRS;
                } else {
                    s.tfd = 0x51 | 0x04 << 8;
                    s.is |= is::TFES | is::DHRS;
                }
            }
        }
    }

    fn run_all(&self) {
        let w = self.waiting();
        self.run(&w);
    }
}

type Port = AhciPort<SimPort, TestBuf>;

fn new_port(sim: &Sim, mem: &BufferMap) -> Port {
    AhciPort::new(
        sim.port(),
        2,
        mem.alloc(META_BYTES).unwrap(),
        mem.alloc(POOL_BYTES).unwrap(),
        32,
        true,
        true,
    )
    .unwrap()
}

/// A started, identified port over a simulated disk of `sectors`.
fn rig(sectors: usize, ncq: bool) -> (Port, Sim) {
    let mem = BufferMap::new();
    let disk = bytes_pattern(sectors * 512);
    let sim = Sim::new(&mem, disk, ncq);
    let mut p = new_port(&sim, &mem);
    assert_eq!(p.start().unwrap(), Attached::Ata);
    p.start_identify().unwrap();
    sim.run_all();
    let mut stray = Vec::new();
    p.complete(&mut stray);
    assert!(stray.is_empty());
    let raw = p.take_identify().expect("IDENTIFY done").unwrap();
    p.configure(&parse_identify(&raw).unwrap()).unwrap();
    sim.state().seen.clear();
    (p, sim)
}

/// Bytes that differ at every offset, so misplaced data shows.
fn bytes_pattern(len: usize) -> Vec<u8> {
    let mut x = 0x9e37;
    (0..len)
        .map(|_| {
            x = block::testing::next_random(x);
            (x >> 56) as u8
        })
        .collect()
}

fn drain(p: &mut Port) -> Vec<Done> {
    let mut out = Vec::new();
    p.complete(&mut out);
    out
}

fn read_data(done: &[Done], tag: u64) -> Vec<u8> {
    let d = done.iter().find(|d| d.tag == tag).expect("tag completed");
    d.result.clone().expect("read succeeded")
}

#[test]
fn start_programs_the_port_and_finds_ata_atapi_and_empty_ports() {
    let mem = BufferMap::new();
    let sim = Sim::new(&mem, vec![0; 4096], true);
    let mut p = new_port(&sim, &mem);
    assert_eq!(p.start().unwrap(), Attached::Ata);
    {
        let s = sim.state();
        assert_ne!(s.clb, 0);
        assert_eq!(s.clb % 1024, 0, "command list 1 KiB aligned");
        assert_eq!(s.fb, s.clb + 0x400, "received FIS area after it");
        assert_eq!(s.cmd & (cmd::ST | cmd::FRE), cmd::ST | cmd::FRE);
        assert_eq!(s.ie, is::WANTED);
    }

    let sim = Sim::new(&mem, vec![0; 4096], true);
    sim.state().sig = sig::ATAPI;
    let mut p = new_port(&sim, &mem);
    assert_eq!(p.start().unwrap(), Attached::Atapi);
    assert_eq!(sim.state().cmd & (cmd::ST | cmd::FRE), 0, "left stopped");

    let sim = Sim::new(&mem, vec![0; 4096], true);
    sim.state().ssts = 0;
    let mut p = new_port(&sim, &mem);
    assert_eq!(p.start().unwrap(), Attached::Nothing { det: 0, ipm: 0 });
}

#[test]
fn a_32_bit_hba_refuses_memory_above_4_gib() {
    let mem = BufferMap::new();
    let sim = Sim::new(&mem, vec![0; 4096], true);
    // BufferMap's IOVAs start at 4 GiB.
    let r = AhciPort::new(
        sim.port(),
        0,
        mem.alloc(META_BYTES).unwrap(),
        mem.alloc(POOL_BYTES).unwrap(),
        32,
        true,
        false,
    );
    assert!(r.is_err());
}

#[test]
fn identify_configures_ncq_depth_and_geometry() {
    let (p, _sim) = rig(4096, true);
    assert_eq!(p.queueing(), (true, 32));
    let info = p.info();
    assert_eq!((info.block_size, info.blocks), (512, 4096));
    assert!(info.can_flush);
    assert_eq!(info.queue_depth, 32);
    assert_eq!(info.max_transfer, 1 << 20);
}

#[test]
fn ncq_commands_complete_out_of_order_from_pxsact() {
    let (mut p, sim) = rig(4096, true);
    let expect = sim.state().disk.clone();
    p.submit(1, Op::Read { lba: 0, blocks: 8 }).unwrap();
    p.submit(
        2,
        Op::Read {
            lba: 100,
            blocks: 3,
        },
    )
    .unwrap();
    p.submit(
        3,
        Op::Read {
            lba: 4000,
            blocks: 96,
        },
    )
    .unwrap();
    let waiting = sim.waiting();
    assert_eq!(waiting.len(), 3, "three slots in flight");
    assert_eq!(sim.state().sact.count_ones(), 3);
    // The device finishes the last one first.
    sim.run(&[waiting[2]]);
    let done = drain(&mut p);
    assert_eq!(done.len(), 1);
    assert_eq!(read_data(&done, 3), expect[4000 * 512..4096 * 512]);
    sim.run(&[waiting[0], waiting[1]]);
    let done = drain(&mut p);
    assert_eq!(read_data(&done, 1), expect[..8 * 512]);
    assert_eq!(read_data(&done, 2), expect[100 * 512..103 * 512]);
    let s = sim.state();
    assert_eq!(s.order_errors, 0, "PxSACT before PxCI");
    assert!(s
        .seen
        .iter()
        .all(|c| c.queued && c.command == ata::READ_FPDMA_QUEUED));
    assert_eq!(s.sact, 0);
    assert_eq!(
        *s.is_writes.last().unwrap(),
        is::SDBS,
        "PxIS cleared by writing back"
    );
    assert_eq!(s.is, 0);
}

#[test]
fn a_write_reaches_the_disk_through_its_prdt() {
    let (mut p, sim) = rig(4096, true);
    let data = bytes_pattern(3 * 512);
    p.submit(
        7,
        Op::Write {
            lba: 10,
            data: &data,
        },
    )
    .unwrap();
    sim.run_all();
    let done = drain(&mut p);
    assert_eq!(
        done,
        [Done {
            tag: 7,
            result: Ok(Vec::new())
        }]
    );
    assert_eq!(sim.state().disk[10 * 512..13 * 512], data[..]);
    assert_eq!(sim.state().seen[0].command, ata::WRITE_FPDMA_QUEUED);
}

#[test]
fn every_slot_fills_then_eagain_until_one_completes() {
    let (mut p, sim) = rig(4096, true);
    for t in 0..32u64 {
        p.submit(t, Op::Read { lba: t, blocks: 1 }).unwrap();
    }
    assert_eq!(sim.state().sact, u32::MAX);
    let e = p.submit(99, Op::Read { lba: 0, blocks: 1 }).unwrap_err();
    assert_eq!(e.errno, EAGAIN);
    sim.run(&[17]);
    assert_eq!(drain(&mut p).len(), 1);
    p.submit(99, Op::Read { lba: 0, blocks: 1 }).unwrap();
    assert_eq!(sim.waiting(), (0..32).collect::<Vec<_>>(), "slot 17 reused");
    sim.run_all();
    assert_eq!(drain(&mut p).len(), 32);
    assert_eq!(p.chunks_in_use(), 0);
}

#[test]
fn a_fragmented_pool_gives_a_multi_entry_prdt() {
    let (mut p, sim) = rig(8192, true);
    let expect = sim.state().disk.clone();
    // Three one-chunk reads, the middle one done: chunks 0 and 2 lent.
    for t in 0..3u64 {
        p.submit(t, Op::Read { lba: t, blocks: 1 }).unwrap();
    }
    sim.run(&[1]);
    drain(&mut p);
    // Three chunks' worth: chunk 1, then 3 and 4 (adjacent): two entries.
    let blocks = (3 * CHUNK / 512) as u32;
    let before = sim.waiting();
    p.submit(9, Op::Read { lba: 1000, blocks }).unwrap();
    let slot = sim
        .waiting()
        .into_iter()
        .find(|s| !before.contains(s))
        .unwrap();
    sim.run(&[slot]);
    let done = drain(&mut p);
    let got = read_data(&done, 9);
    assert_eq!(got, expect[1000 * 512..1000 * 512 + 3 * CHUNK]);
    assert_eq!(sim.state().seen.last().unwrap().prds, 2);
    // The largest transfer, 1 MiB, in contiguous chunks: one entry.
    sim.run_all();
    drain(&mut p);
    p.submit(
        10,
        Op::Read {
            lba: 0,
            blocks: 2048,
        },
    )
    .unwrap();
    sim.run_all();
    assert_eq!(read_data(&drain(&mut p), 10), expect[..1 << 20]);
    assert_eq!(sim.state().seen.last().unwrap().prds, 1);
}

#[test]
fn bad_requests_are_refused_without_touching_the_device() {
    let (mut p, sim) = rig(4096, true);
    for op in [
        Op::Read {
            lba: 4095,
            blocks: 2,
        },
        Op::Read {
            lba: u64::MAX,
            blocks: 1,
        },
        Op::Read { lba: 0, blocks: 0 },
        Op::Read {
            lba: 0,
            blocks: 2049,
        },
        Op::Write {
            lba: 0,
            data: &[0; 100],
        },
    ] {
        assert_eq!(p.submit(1, op).unwrap_err().errno, EINVAL, "{op:?}");
    }
    assert!(sim.waiting().is_empty());
    assert_eq!(p.chunks_in_use(), 0);
}

#[test]
fn a_flush_waits_for_ncq_to_drain_and_queued_commands_wait_for_it() {
    let (mut p, sim) = rig(4096, true);
    p.submit(1, Op::Read { lba: 0, blocks: 1 }).unwrap();
    assert_eq!(p.submit(2, Op::Flush).unwrap_err().errno, EAGAIN);
    sim.run_all();
    assert_eq!(drain(&mut p).len(), 1);
    p.submit(2, Op::Flush).unwrap();
    assert_eq!(sim.state().sact, 0, "non-queued: PxCI only");
    assert_eq!(
        p.submit(3, Op::Read { lba: 0, blocks: 1 })
            .unwrap_err()
            .errno,
        EAGAIN
    );
    sim.run_all();
    assert_eq!(
        drain(&mut p),
        [Done {
            tag: 2,
            result: Ok(Vec::new())
        }]
    );
    p.submit(3, Op::Read { lba: 0, blocks: 1 }).unwrap();
    let s = sim.state();
    assert_eq!(s.seen[1].command, ata::FLUSH_CACHE_EXT);
    assert!(!s.seen[1].queued);
}

#[test]
fn without_ncq_reads_and_writes_use_dma_ext_in_several_slots() {
    let (mut p, sim) = rig(4096, false);
    assert_eq!(p.queueing(), (false, 32));
    let data = bytes_pattern(1024);
    p.submit(
        1,
        Op::Write {
            lba: 5,
            data: &data,
        },
    )
    .unwrap();
    p.submit(2, Op::Read { lba: 5, blocks: 2 }).unwrap();
    assert_eq!(sim.waiting().len(), 2);
    assert_eq!(sim.state().sact, 0);
    sim.run_all();
    let done = drain(&mut p);
    assert_eq!(read_data(&done, 2), data);
    let s = sim.state();
    let cmds: Vec<(u8, u64, u32)> = s
        .seen
        .iter()
        .map(|c| (c.command, c.lba, c.sectors))
        .collect();
    assert_eq!(
        cmds,
        [(ata::WRITE_DMA_EXT, 5, 2), (ata::READ_DMA_EXT, 5, 2)]
    );
}

#[test]
fn an_ncq_error_fails_that_command_with_eio_and_the_port_recovers() {
    let (mut p, sim) = rig(4096, true);
    let expect = sim.state().disk.clone();
    sim.state().fail_lba = Some(50);
    p.submit(1, Op::Read { lba: 48, blocks: 4 }).unwrap();
    p.submit(2, Op::Read { lba: 0, blocks: 1 }).unwrap();
    p.submit(3, Op::Read { lba: 9, blocks: 1 }).unwrap();
    let w = sim.waiting();
    // One innocent command finishes, then the bad one fails; the third
    // is still in flight.
    sim.run(&[w[1], w[0]]);
    let done = drain(&mut p);
    assert_eq!(read_data(&done, 2), expect[..512]);
    assert_eq!(done.len(), 1, "the failed and the pending one are retried");
    assert_eq!(sim.state().comresets, 1);
    assert_eq!(p.recoveries(), 1);
    // The retry fails again: EIO; the innocent one succeeds on its retry.
    let w = sim.waiting();
    assert_eq!(w.len(), 2);
    sim.run(&w);
    let done = drain(&mut p);
    let bad = done.iter().find(|d| d.tag == 1).unwrap();
    assert_eq!(bad.result.as_ref().unwrap_err().errno, EIO);
    assert_eq!(read_data(&done, 3), expect[9 * 512..10 * 512]);
    assert_eq!(sim.state().comresets, 2);
    // The port keeps serving.
    sim.state().fail_lba = None;
    p.submit(4, Op::Read { lba: 48, blocks: 4 }).unwrap();
    sim.run_all();
    assert_eq!(read_data(&drain(&mut p), 4), expect[48 * 512..52 * 512]);
    assert_eq!(p.chunks_in_use(), 0);
    let s = sim.state();
    assert_eq!(s.serr, 0, "PxSERR cleared");
    assert_eq!(s.cmd & cmd::ST, cmd::ST, "restarted");
}

#[test]
fn a_task_file_error_on_a_non_queued_command_is_eio_after_one_retry() {
    let (mut p, sim) = rig(4096, false);
    sim.state().fail_lba = Some(7);
    p.submit(1, Op::Read { lba: 7, blocks: 1 }).unwrap();
    sim.run_all();
    assert!(drain(&mut p).is_empty(), "retried");
    sim.run_all();
    let done = drain(&mut p);
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].result.as_ref().unwrap_err().errno, EIO);
    assert_eq!(p.recoveries(), 2);
    assert_eq!(sim.state().comresets, 2);
}

#[test]
fn a_port_whose_recovery_fails_answers_eio_from_then_on() {
    let (mut p, sim) = rig(4096, true);
    sim.state().fail_lba = Some(0);
    sim.state().link_lost_on_reset = true;
    p.submit(1, Op::Read { lba: 0, blocks: 1 }).unwrap();
    p.submit(2, Op::Read { lba: 9, blocks: 1 }).unwrap();
    let w = sim.waiting();
    sim.run(&[w[0]]);
    let done = drain(&mut p);
    assert_eq!(done.len(), 2, "both outstanding commands failed");
    assert!(done
        .iter()
        .all(|d| d.result.as_ref().unwrap_err().errno == EIO));
    assert_eq!(
        p.submit(3, Op::Read { lba: 9, blocks: 1 })
            .unwrap_err()
            .errno,
        EIO
    );
}

#[test]
fn link_events_are_cleared_and_need_no_recovery() {
    let (mut p, sim) = rig(4096, true);
    sim.state().is = is::PCS | is::PRCS;
    sim.state().serr = 1 << 16;
    assert!(drain(&mut p).is_empty());
    assert_eq!(sim.state().is, 0);
    assert_eq!(sim.state().comresets, 0);
}
