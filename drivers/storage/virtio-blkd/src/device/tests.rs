//! VirtioBlk against a simulated virtio-blk device on a real split ring in
//! host memory: the device side parses our descriptor chains as the spec
//! says and serves them from an in-memory disk image.

use syscall::error::{EAGAIN, EINVAL, EIO, EOPNOTSUPP, EROFS};
use virtio_core::testing::{ring, BufferMap, Desc, PortCtl, SimDevice, TestBuf, TestPort};

use super::*;

/// What the simulated device does with the next requests.
#[derive(Clone, Copy, PartialEq)]
enum Behaviour {
    Normal,
    /// Completes without writing the status byte.
    Silent,
    /// Answers every request UNSUPP.
    Unsupported,
}

struct Sim {
    dev: SimDevice,
    bufs: BufferMap,
    disk: Vec<u8>,
    serial: Vec<u8>,
    behaviour: Behaviour,
    /// Chains fetched but not completed yet: (head, bytes written).
    ready: Vec<(u16, u32)>,
    /// Every chain seen, for inspection.
    seen: Vec<Vec<Desc>>,
}

impl Sim {
    /// Takes every available request and executes it (completion comes
    /// later, in `complete`).
    fn fetch(&mut self) {
        for (head, descs) in self.dev.fetch() {
            assert!(descs.len() >= 2, "request without header and status");
            let header = &descs[0];
            let status = &descs[descs.len() - 1];
            assert!(!header.writable && header.len == 16);
            assert!(status.writable && status.len == 1);
            let h = self.bufs.read(header);
            let kind = u32::from_le_bytes(h[0..4].try_into().unwrap());
            let sector = u64::from_le_bytes(h[8..16].try_into().unwrap());
            let data = &descs[1..descs.len() - 1];
            let mut written = 0u32;
            let st = match (self.behaviour, kind) {
                (Behaviour::Unsupported, _) => status::UNSUPP,
                (_, req::IN) => {
                    let mut off = sector as usize * 512;
                    let total: usize = data.iter().map(|d| d.len as usize).sum();
                    if off + total > self.disk.len() {
                        status::IOERR
                    } else {
                        for d in data {
                            let chunk = self.disk[off..off + d.len as usize].to_vec();
                            self.bufs.write(d, &chunk);
                            off += d.len as usize;
                            written += d.len;
                        }
                        status::OK
                    }
                }
                (_, req::OUT) => {
                    let mut off = sector as usize * 512;
                    let mut ok = true;
                    for d in data {
                        assert!(!d.writable);
                        let bytes = self.bufs.read(d);
                        if off + bytes.len() > self.disk.len() {
                            ok = false;
                            break;
                        }
                        self.disk[off..off + bytes.len()].copy_from_slice(&bytes);
                        off += bytes.len();
                    }
                    if ok {
                        status::OK
                    } else {
                        status::IOERR
                    }
                }
                (_, req::FLUSH) => {
                    assert!(data.is_empty());
                    status::OK
                }
                (_, req::GET_ID) => {
                    assert_eq!(data.len(), 1);
                    assert_eq!(data[0].len as usize, ID_BYTES);
                    let mut id = self.serial.clone();
                    id.resize(ID_BYTES, 0);
                    self.bufs.write(&data[0], &id);
                    written += ID_BYTES as u32;
                    status::OK
                }
                _ => status::UNSUPP,
            };
            if self.behaviour != Behaviour::Silent {
                self.bufs.write(status, &[st]);
                written += 1;
            }
            self.ready.push((head, written));
            self.seen.push(descs);
        }
    }

    /// Completes what was fetched, newest first (out of order).
    fn complete_reversed(&mut self) {
        while let Some((head, len)) = self.ready.pop() {
            self.dev.complete(u32::from(head), len);
        }
    }

    /// fetch + complete: one device "interrupt".
    fn run(&mut self) {
        self.fetch();
        self.complete_reversed();
    }
}

type Blk = VirtioBlk<TestPort<BlkConfig>, TestBuf>;

/// The disk, its simulated device, and its port's controls (configuration,
/// status, doorbells).
type Setup = (Blk, Sim, PortCtl<BlkConfig>);

fn setup(features: u64, config: BlkConfig, queue: u16) -> Setup {
    let r = ring(queue);
    let dev = SimDevice::new(&r);
    let (port, ctl) = TestPort::new(vec![r], features, config);
    let bufs = BufferMap::new();
    let blk = VirtioBlk::new(port, |len| bufs.alloc(len)).unwrap();
    let disk: Vec<u8> = (0..config.capacity as usize * 512)
        .map(|i| (i * 7 + i / 512) as u8)
        .collect();
    let sim = Sim {
        dev,
        bufs,
        disk,
        serial: b"virtio-test-serial".to_vec(),
        behaviour: Behaviour::Normal,
        ready: Vec::new(),
        seen: Vec::new(),
    };
    (blk, sim, ctl)
}

fn cfg(capacity_sectors: u64) -> BlkConfig {
    BlkConfig {
        capacity: capacity_sectors,
        ..BlkConfig::default()
    }
}

fn drain(blk: &mut Blk) -> Vec<Done> {
    let mut done = Vec::new();
    blk.complete(&mut done);
    done
}

#[test]
fn limits_from_features_and_config() {
    // Nothing negotiated: 512-byte blocks, one 128 KiB segment, 3
    // descriptors per request.
    let l = Limits::new(0, &cfg(2048), 256).unwrap();
    assert_eq!(
        l,
        Limits {
            block_size: 512,
            blocks: 2048,
            max_transfer: 128 * 1024,
            seg_size: 128 * 1024,
            depth: 85,
            read_only: false,
            can_flush: false,
        }
    );
    // BLK_SIZE: capacity stays in 512-byte sectors.
    let c = BlkConfig {
        blk_size: 4096,
        ..cfg(2048)
    };
    let l = Limits::new(
        bit(feature::BLK_SIZE) | bit(feature::RO) | bit(feature::FLUSH),
        &c,
        256,
    )
    .unwrap();
    assert_eq!(
        (l.block_size, l.blocks, l.read_only, l.can_flush),
        (4096, 256, true, true)
    );
    // A nonsense block size is ignored.
    let c = BlkConfig {
        blk_size: 1000,
        ..cfg(2048)
    };
    assert_eq!(
        Limits::new(bit(feature::BLK_SIZE), &c, 256)
            .unwrap()
            .block_size,
        512
    );
    // SIZE_MAX 4 KiB, SEG_MAX 8: 32 KiB in 8 segments, 10 descriptors each.
    let c = BlkConfig {
        size_max: 4096,
        seg_max: 8,
        ..cfg(2048)
    };
    let l = Limits::new(bit(feature::SIZE_MAX) | bit(feature::SEG_MAX), &c, 256).unwrap();
    assert_eq!((l.max_transfer, l.seg_size, l.depth), (32 * 1024, 4096, 25));
    // The same limits unnegotiated are not applied.
    assert_eq!(Limits::new(0, &c, 256).unwrap().max_transfer, 128 * 1024);
    // Small segments, many allowed: the ring bounds the chain.
    let c = BlkConfig {
        size_max: 512,
        seg_max: 1000,
        ..cfg(2048)
    };
    let l = Limits::new(bit(feature::SIZE_MAX) | bit(feature::SEG_MAX), &c, 16).unwrap();
    assert_eq!((l.max_transfer, l.depth), (14 * 512, 1));
    // Not even one block fits.
    let c = BlkConfig {
        size_max: 100,
        seg_max: 1,
        ..cfg(2048)
    };
    assert!(Limits::new(bit(feature::SIZE_MAX) | bit(feature::SEG_MAX), &c, 256).is_err());
    assert!(Limits::new(0, &cfg(2048), 2).is_err());
    // Depth is capped (bounce buffers are locked memory).
    assert_eq!(Limits::new(0, &cfg(2048), 1024).unwrap().depth, MAX_DEPTH);
}

#[test]
fn write_then_read_back() {
    let (mut blk, mut sim, ctl) = setup(0, cfg(2048), 64);
    let info = blk.info();
    assert_eq!(
        (info.block_size, info.blocks, info.queue_depth),
        (512, 2048, 21)
    );
    let data: Vec<u8> = (0..1024).map(|i| (i % 251) as u8).collect();
    blk.submit(
        7,
        Op::Write {
            lba: 10,
            data: &data,
        },
    )
    .unwrap();
    assert_eq!(ctl.kicks(), [1]);
    assert!(
        drain(&mut blk).is_empty(),
        "nothing finished before the device ran"
    );
    sim.run();
    let done = drain(&mut blk);
    assert_eq!(
        done,
        vec![Done {
            tag: 7,
            result: Ok(Vec::new())
        }]
    );
    assert_eq!(&sim.disk[10 * 512..12 * 512], &data[..]);
    // The chain: header, one read-only data segment, status.
    let chain = sim.seen.last().unwrap();
    assert_eq!(chain.len(), 3);
    assert_eq!(chain[1].len, 1024);
    assert!(!chain[1].writable);

    blk.submit(8, Op::Read { lba: 10, blocks: 2 }).unwrap();
    sim.run();
    let done = drain(&mut blk);
    assert_eq!(
        done,
        vec![Done {
            tag: 8,
            result: Ok(data.clone())
        }]
    );
    assert!(sim.seen.last().unwrap()[1].writable);
}

#[test]
fn many_in_flight_complete_out_of_order() {
    let (mut blk, mut sim, _) = setup(0, cfg(4096), 64);
    let depth = blk.info().queue_depth;
    for i in 0..depth as u64 {
        blk.submit(
            100 + i,
            Op::Read {
                lba: i * 3,
                blocks: 1 + (i % 4) as u32,
            },
        )
        .unwrap();
    }
    // The queue is full now: the next one is refused, not lost.
    let e = blk.submit(999, Op::Read { lba: 0, blocks: 1 }).unwrap_err();
    assert_eq!(e.errno, EAGAIN);
    let e = blk
        .submit(
            999,
            Op::Write {
                lba: 0,
                data: &[0; 512],
            },
        )
        .unwrap_err();
    assert_eq!(e.errno, EAGAIN);
    sim.run();
    let done = drain(&mut blk);
    assert_eq!(done.len(), depth);
    // Reversed order, each with its own data.
    assert_eq!(done[0].tag, 100 + depth as u64 - 1);
    for d in &done {
        let i = d.tag - 100;
        let blocks = 1 + (i % 4) as usize;
        let off = (i * 3) as usize * 512;
        assert_eq!(
            d.result.as_ref().unwrap(),
            &sim.disk[off..off + blocks * 512]
        );
    }
    // Everything is free again.
    for i in 0..depth as u64 {
        blk.submit(i, Op::Read { lba: 0, blocks: 1 }).unwrap();
    }
}

#[test]
fn device_errors_become_errnos() {
    let (mut blk, mut sim, ctl) = setup(bit(feature::FLUSH), cfg(64), 16);
    // The device shrank behind our back: its IOERR reaches the caller.
    sim.disk.truncate(32 * 512);
    blk.submit(1, Op::Read { lba: 40, blocks: 1 }).unwrap();
    sim.run();
    assert_eq!(drain(&mut blk)[0].result, Err(Error::new(EIO)));
    sim.behaviour = Behaviour::Unsupported;
    blk.submit(2, Op::Flush).unwrap();
    sim.run();
    assert_eq!(drain(&mut blk)[0].result, Err(Error::new(EOPNOTSUPP)));
    sim.behaviour = Behaviour::Silent;
    blk.submit(3, Op::Read { lba: 0, blocks: 1 }).unwrap();
    sim.run();
    assert_eq!(
        drain(&mut blk)[0].result,
        Err(Error::new(EIO)),
        "status never written"
    );
    sim.behaviour = Behaviour::Normal;
    blk.submit(4, Op::Flush).unwrap();
    sim.run();
    assert_eq!(drain(&mut blk)[0].result, Ok(Vec::new()));
    // Capacity change.
    ctl.set_config(cfg(128));
    assert_eq!(blk.refresh_capacity().unwrap(), (64, 128));
    assert_eq!(blk.info().blocks, 128);
}

#[test]
fn bad_requests_are_refused_before_the_device() {
    let (mut blk, sim, ctl) = setup(0, cfg(64), 16);
    let max_blocks = (blk.info().max_transfer / 512) as u32;
    let cases: Vec<(Op<'_>, i32)> = vec![
        (Op::Read { lba: 0, blocks: 0 }, EINVAL),
        (Op::Read { lba: 63, blocks: 2 }, EINVAL),
        (
            Op::Read {
                lba: u64::MAX,
                blocks: 1,
            },
            EINVAL,
        ),
        (
            Op::Read {
                lba: 0,
                blocks: max_blocks + 1,
            },
            EINVAL,
        ),
        (
            Op::Write {
                lba: 0,
                data: &[1; 100],
            },
            EINVAL,
        ),
        (Op::Write { lba: 0, data: &[] }, EINVAL),
        (
            Op::Write {
                lba: 64,
                data: &[1; 512],
            },
            EINVAL,
        ),
        (Op::Flush, EOPNOTSUPP),
        (Op::Discard { lba: 0, blocks: 8 }, EOPNOTSUPP),
    ];
    for (op, errno) in cases {
        assert_eq!(blk.submit(1, op).unwrap_err().errno, errno, "{op:?}");
    }
    assert_eq!(ctl.kicks(), [0]);
    drop(sim);

    let (mut ro, _sim, _) = setup(bit(feature::RO), cfg(64), 16);
    assert!(ro.info().read_only);
    assert_eq!(
        ro.submit(
            1,
            Op::Write {
                lba: 0,
                data: &[0; 512]
            }
        )
        .unwrap_err()
        .errno,
        EROFS
    );
}

#[test]
fn large_blocks_and_small_segments() {
    let c = BlkConfig {
        blk_size: 4096,
        size_max: 4096,
        seg_max: 64,
        ..cfg(1024)
    };
    let features = bit(feature::BLK_SIZE) | bit(feature::SIZE_MAX) | bit(feature::SEG_MAX);
    let (mut blk, mut sim, _) = setup(features, c, 64);
    let info = blk.info();
    assert_eq!(
        (info.block_size, info.blocks, info.max_transfer),
        (4096, 128, 128 * 1024)
    );
    let data: Vec<u8> = (0..32 * 1024).map(|i| (i / 4096 + i % 13) as u8).collect();
    blk.submit(
        5,
        Op::Write {
            lba: 3,
            data: &data,
        },
    )
    .unwrap();
    sim.run();
    assert_eq!(drain(&mut blk)[0].result, Ok(Vec::new()));
    // lba 3 of 4 KiB blocks is sector 24.
    assert_eq!(&sim.disk[24 * 512..24 * 512 + data.len()], &data[..]);
    let chain = sim.seen.last().unwrap();
    assert_eq!(chain.len(), 2 + 8);
    assert!(chain[1..9].iter().all(|d| d.len == 4096));
    blk.submit(6, Op::Read { lba: 3, blocks: 8 }).unwrap();
    sim.run();
    assert_eq!(drain(&mut blk)[0].result, Ok(data));
}

#[test]
fn serial_number() {
    let (mut blk, mut sim, _) = setup(0, cfg(64), 16);
    let id = blk
        .identify(Duration::from_secs(5), |_| {
            sim.run();
            Ok(1)
        })
        .unwrap();
    assert_eq!(id.as_deref(), Some("virtio-test-serial"));

    // A full 20-byte serial has no terminator.
    sim.serial = b"ABCDEFGHIJKLMNOPQRST-too-long".to_vec();
    sim.serial.truncate(ID_BYTES);
    let id = blk
        .identify(Duration::from_secs(5), |_| {
            sim.run();
            Ok(1)
        })
        .unwrap();
    assert_eq!(id.as_deref(), Some("ABCDEFGHIJKLMNOPQRST"));

    sim.behaviour = Behaviour::Unsupported;
    let id = blk
        .identify(Duration::from_secs(5), |_| {
            sim.run();
            Ok(1)
        })
        .unwrap();
    assert_eq!(id, None);

    // A device that never answers: bounded by the timeout, and no Done
    // ever surfaces for the internal request.
    let mut waits = 0;
    let e = blk
        .identify(Duration::from_millis(50), |t| {
            waits += 1;
            std::thread::sleep(t.min(Duration::from_millis(5)));
            Ok(0)
        })
        .unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::TimedOut);
    assert!(waits >= 1);
    sim.behaviour = Behaviour::Normal;
    sim.run();
    assert!(drain(&mut blk).is_empty());
}

/// The configuration interrupt: a new capacity is taken in, and a device
/// that set DEVICE_NEEDS_RESET is an error (the daemon exits on it, to be
/// restarted on a reset device), as in virtio-netd.
#[test]
fn a_device_needing_a_reset_is_an_error_on_the_config_interrupt() {
    let (mut blk, _sim, ctl) = setup(0, cfg(64), 16);
    ctl.set_config(cfg(128));
    blk.config_changed().unwrap();
    assert_eq!(blk.info().blocks, 128);
    // A configuration that cannot be read is logged; the disk goes on.
    ctl.set_fail_config(true);
    blk.config_changed().unwrap();
    assert_eq!(blk.info().blocks, 128);
    ctl.set_needs_reset(true);
    let e = blk.config_changed().unwrap_err();
    assert!(e.to_string().contains("DEVICE_NEEDS_RESET"), "{e}");
}
