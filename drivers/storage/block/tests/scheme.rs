//! DiskScheme driven directly (no FUSE) over the asynchronous in-memory
//! device: deferral, splitting, queueing, read-modify-write, ordering of
//! overlapping writes, bounds, errors, ioctls and names.

mod common;

use block::partition::Partition;
use block::testing::{mem_disk, mem_disk_with, next_random, MemDisk, MemDiskCtl, Order, Pending};
use block::{DiskInfo, DiskScheme, Done, BLKDISCARD, BLKDISCARD_LINUX, BLKGETSIZE64, BLKSSZGET};
use common::{pattern, with_mbr};
use scheme::{CallerCtx, Completed, Completion, Scheme, Stat};
use syscall::error::{
    EACCES, EBADF, EINPROGRESS, EINVAL, EIO, EISDIR, ENOENT, ENOSPC, ENOTDIR, ENOTTY, EOPNOTSUPP,
    EROFS,
};
use syscall::flag::{MODE_DIR, MODE_FILE, O_DIRECTORY, O_RDONLY, O_RDWR, O_STAT, O_WRONLY};

fn ctx(request: u64) -> CallerCtx {
    CallerCtx {
        uid: 0,
        gid: 0,
        pid: 1,
        request,
    }
}

struct Rig {
    s: DiskScheme<MemDisk>,
    ctl: MemDiskCtl,
    next: u64,
}

impl Rig {
    fn new(data: Vec<u8>, max_transfer: usize, depth: usize) -> Rig {
        let (d, ctl) = mem_disk(data, max_transfer, depth);
        Rig::over(d, ctl)
    }

    fn over(d: MemDisk, ctl: MemDiskCtl) -> Rig {
        let c = ctl.clone();
        let s = DiskScheme::new(vec![d], &mut |i| {
            assert_eq!(i, 0);
            c.fire(Order::Submitted);
            Ok(())
        });
        // Start-up reads are done and left nothing behind.
        assert_eq!(s.in_flight(), 0);
        assert!(ctl.pending().is_empty());
        Rig { s, ctl, next: 100 }
    }

    fn open(&mut self, path: &str, flags: usize) -> Result<usize, i32> {
        self.s
            .openat(path, flags, &ctx(1))
            .map(|o| o.id)
            .map_err(|e| e.errno)
    }

    fn req(&mut self) -> u64 {
        self.next += 2;
        self.next
    }

    /// Starts a read; returns its request id (it must be deferred).
    fn start_read(&mut self, id: usize, offset: u64, len: usize) -> u64 {
        let r = self.req();
        let mut buf = vec![0u8; len];
        let e = self.s.read(id, &mut buf, offset, 0, &ctx(r)).unwrap_err();
        assert_eq!(e.errno, EINPROGRESS);
        r
    }

    fn start_write(&mut self, id: usize, offset: u64, data: &[u8]) -> u64 {
        let r = self.req();
        let e = self.s.write(id, data, offset, 0, &ctx(r)).unwrap_err();
        assert_eq!(e.errno, EINPROGRESS);
        r
    }

    /// Fires interrupts (in `order`) until nothing is in flight; returns
    /// every completion.
    fn settle(&mut self, order: Order) -> Vec<Completion> {
        let mut out = Vec::new();
        for round in 0..10_000u64 {
            self.s.take_completions(&mut out);
            if self.s.in_flight() == 0 {
                self.s.take_completions(&mut out);
                return out;
            }
            let order = match order {
                Order::Shuffled(seed) => Order::Shuffled(seed ^ round),
                o => o,
            };
            self.ctl.fire(order);
            self.s.on_irq();
        }
        panic!("requests never finished");
    }

    fn read(&mut self, id: usize, offset: u64, len: usize, order: Order) -> Vec<u8> {
        let r = self.start_read(id, offset, len);
        let c = self.settle(order);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].request, r);
        match &c[0].result {
            Ok(Completed::Read(d)) => d.clone(),
            other => panic!("read gave {other:?}"),
        }
    }

    fn write(&mut self, id: usize, offset: u64, data: &[u8], order: Order) -> usize {
        let r = self.start_write(id, offset, data);
        let c = self.settle(order);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].request, r);
        match c[0].result {
            Ok(Completed::Written(n)) => n,
            ref other => panic!("write gave {other:?}"),
        }
    }

    fn data(&self) -> Vec<u8> {
        self.ctl.state().data.clone()
    }
}

#[test]
fn reads_at_any_offset_and_length_are_split_and_queued() {
    let img = pattern(64 * 1024, 1);
    // 4 KiB transfers, two at a time: a 20 KiB read is 5+ operations.
    let mut rig = Rig::new(img.clone(), 4096, 2);
    let id = rig.open("0", O_RDONLY).unwrap();
    let mut seed = 7;
    for (off, len) in [
        (0u64, 512usize),
        (1, 1),
        (511, 2),
        (1000, 20_000),
        (4096, 4096),
        (65_535, 1),
        (3, 65_533),
    ] {
        seed = next_random(seed);
        let got = rig.read(id, off, len, Order::Shuffled(seed));
        assert_eq!(
            got,
            &img[off as usize..off as usize + len],
            "read {len} at {off}"
        );
    }
    let st = rig.ctl.state();
    assert!(st.bad_ops.is_empty(), "{:?}", st.bad_ops);
    assert!(
        st.max_pending <= 2,
        "queue depth exceeded: {}",
        st.max_pending
    );
}

#[test]
fn many_reads_in_flight_complete_out_of_order() {
    let img = pattern(32 * 1024, 2);
    let mut rig = Rig::new(img.clone(), 8192, 64);
    let id = rig.open("0", O_RDONLY).unwrap();
    let reqs: Vec<(u64, u64, usize)> = (0..10u64)
        .map(|i| {
            let (off, len) = (i * 3000 + 7, 1234 + i as usize * 100);
            (rig.start_read(id, off, len), off, len)
        })
        .collect();
    assert_eq!(rig.s.in_flight(), 10);
    assert_eq!(
        rig.ctl.pending().len(),
        10,
        "one operation each, all at once"
    );
    let done = rig.settle(Order::Reversed);
    assert_eq!(done.len(), 10);
    for (r, off, len) in reqs {
        let c = done.iter().find(|c| c.request == r).expect("completed");
        assert_eq!(
            c.result,
            Ok(Completed::Read(
                img[off as usize..off as usize + len].to_vec()
            ))
        );
    }
}

#[test]
fn unaligned_writes_read_modify_write_the_edges() {
    let img = pattern(16 * 1024, 3);
    let mut rig = Rig::new(img.clone(), 2048, 4);
    let id = rig.open("0", O_RDWR).unwrap();
    let mut model = img;
    let mut seed = 11;
    for (off, len) in [
        (0u64, 512usize), // aligned
        (100, 1),         // inside one block
        (510, 4),         // across a boundary
        (700, 3000),      // several blocks, both edges partial, split
        (1024, 1000),     // aligned start, partial end
        (1500, 548),      // partial start, aligned end
        (16 * 1024 - 5, 5),
    ] {
        let data = pattern(len, off + 99);
        seed = next_random(seed);
        assert_eq!(rig.write(id, off, &data, Order::Shuffled(seed)), len);
        model[off as usize..off as usize + len].copy_from_slice(&data);
        assert_eq!(rig.data(), model, "after writing {len} at {off}");
    }
    // The 1-byte write read its block once and wrote it once.
    let st = rig.ctl.state();
    assert!(st.bad_ops.is_empty(), "{:?}", st.bad_ops);
}

#[test]
fn overlapping_writes_wait_for_each_other_and_lose_nothing() {
    let img = vec![0u8; 8192];
    let mut rig = Rig::new(img, 4096, 16);
    let id = rig.open("0", O_RDWR).unwrap();
    // A and B share block 0 (different bytes); C is far away.
    let a = rig.start_write(id, 100, &[0xaa; 100]);
    let b = rig.start_write(id, 300, &[0xbb; 100]);
    let c = rig.start_write(id, 4096, &[0xcc; 512]);
    let p = rig.ctl.pending();
    // A's edge read and C's write are at the device; B waits for A.
    assert_eq!(p.len(), 2, "{p:?}");
    assert!(p.contains(&(p[0].0, Pending::Read { lba: 0, blocks: 1 })));
    assert!(p
        .iter()
        .any(|(_, op)| matches!(op, Pending::Write { lba: 8, .. })));
    // A's read comes back: A writes block 0, B still waits.
    rig.ctl.fire_some(1, Order::Submitted);
    rig.s.on_irq();
    let p = rig.ctl.pending();
    assert_eq!(p.len(), 2, "{p:?}");
    assert!(p
        .iter()
        .any(|(_, op)| matches!(op, Pending::Write { lba: 0, .. })));
    assert!(!p.iter().any(|(_, op)| matches!(op, Pending::Read { .. })));
    let done = rig.settle(Order::Reversed);
    let mut got: Vec<u64> = done.iter().map(|c| c.request).collect();
    got.sort();
    assert_eq!(got, vec![a, b, c]);
    assert!(done
        .iter()
        .all(|c| matches!(c.result, Ok(Completed::Written(_)))));
    let data = rig.data();
    assert!(data[100..200].iter().all(|&x| x == 0xaa));
    assert!(data[300..400].iter().all(|&x| x == 0xbb));
    assert!(data[200..300].iter().all(|&x| x == 0));
    assert!(data[4096..4608].iter().all(|&x| x == 0xcc));
}

#[test]
fn random_concurrent_writes_match_a_sequential_model() {
    let size = 32 * 1024;
    let img = pattern(size, 4);
    let mut rig = Rig::new(img.clone(), 1024, 8);
    let id = rig.open("0", O_RDWR).unwrap();
    let mut model = img;
    let mut r = 5u64;
    for _round in 0..30 {
        // A batch of overlapping writes in flight together: applying them
        // in arrival order must give the device's final bytes.
        for _ in 0..8 {
            r = next_random(r);
            let off = (r % (size as u64 - 1)) as usize;
            r = next_random(r);
            let len = 1 + (r % 3000) as usize;
            let len = len.min(size - off);
            let data = pattern(len, r);
            rig.start_write(id, off as u64, &data);
            model[off..off + len].copy_from_slice(&data);
        }
        r = next_random(r);
        let done = rig.settle(Order::Shuffled(r));
        assert_eq!(done.len(), 8);
        assert!(done.iter().all(|c| c.result.is_ok()), "{done:?}");
        assert!(rig.data() == model, "lost or misordered update");
    }
    assert!(rig.ctl.state().bad_ops.is_empty());
}

#[test]
fn a_device_refusing_with_eagain_gets_the_operation_again() {
    let img = pattern(64 * 1024, 6);
    let mut rig = Rig::new(img.clone(), 4096, 8);
    // The device advertises 8 but takes 1.
    rig.ctl.state().limit = 1;
    let id = rig.open("0", O_RDWR).unwrap();
    let got = rig.read(id, 10, 30_000, Order::Submitted);
    assert_eq!(got, &img[10..30_010]);
    let data = pattern(20_000, 8);
    assert_eq!(rig.write(id, 5, &data, Order::Submitted), 20_000);
    assert_eq!(&rig.data()[5..20_005], &data[..]);
    let st = rig.ctl.state();
    assert!(st.refused > 0, "the device never refused");
    assert!(st.bad_ops.is_empty(), "{:?}", st.bad_ops);
}

#[test]
fn bounds_of_disks_and_partitions() {
    let img = with_mbr(pattern(256 * 512, 9));
    let mut rig = Rig::new(img.clone(), 4096, 4);
    assert_eq!(
        rig.s.partitions(0),
        &[
            Partition {
                number: 1,
                start_lba: 64,
                blocks: 100
            },
            Partition {
                number: 3,
                start_lba: 200,
                blocks: 50
            }
        ]
    );
    let size = img.len() as u64;
    let disk = rig.open("0", O_RDWR).unwrap();
    let mut buf = [0u8; 100];
    // Past the end: 0 bytes, synchronously.
    assert_eq!(rig.s.read(disk, &mut buf, size, 0, &ctx(5)), Ok(0));
    assert_eq!(rig.s.read(disk, &mut buf, size + 1000, 0, &ctx(5)), Ok(0));
    assert_eq!(rig.s.read(disk, &mut [], 0, 0, &ctx(5)), Ok(0));
    // Crossing the end: short.
    assert_eq!(
        rig.read(disk, size - 10, 100, Order::Submitted),
        &img[img.len() - 10..]
    );
    // Writes at or past the end: ENOSPC; crossing: what fits.
    assert_eq!(
        rig.s.write(disk, b"x", size, 0, &ctx(7)).unwrap_err().errno,
        ENOSPC
    );
    assert_eq!(
        rig.s
            .write(disk, b"x", size + 9, 0, &ctx(7))
            .unwrap_err()
            .errno,
        ENOSPC
    );
    assert_eq!(rig.s.write(disk, b"", 5, 0, &ctx(7)), Ok(0));
    assert_eq!(rig.write(disk, size - 3, b"abcdef", Order::Submitted), 3);
    assert_eq!(&rig.data()[img.len() - 3..], b"abc");

    // Partition 3: 50 blocks from LBA 200.
    let p3 = rig.open("0p3", O_RDWR).unwrap();
    let psize = 50 * 512;
    let got = rig.read(p3, 0, psize as usize + 100, Order::Submitted);
    assert_eq!(got, &img[200 * 512..250 * 512]);
    assert_eq!(rig.s.read(p3, &mut buf, psize, 0, &ctx(9)), Ok(0));
    assert_eq!(
        rig.s.write(p3, b"x", psize, 0, &ctx(9)).unwrap_err().errno,
        ENOSPC
    );
    // A write crossing the partition's end stops at it, not at the disk's.
    assert_eq!(rig.write(p3, psize - 2, b"WXYZ", Order::Submitted), 2);
    let data = rig.data();
    assert_eq!(&data[250 * 512 - 2..250 * 512], b"WX");
    assert_eq!(data[250 * 512], img[250 * 512]);
    // Partition 1 sees its own bytes.
    let p1 = rig.open("0p1", O_RDONLY).unwrap();
    assert_eq!(
        rig.read(p1, 1, 10, Order::Submitted),
        &img[64 * 512 + 1..64 * 512 + 11]
    );

    let mut st = Stat::default();
    rig.s.fstat(p3, &mut st, &ctx(1)).unwrap();
    assert_eq!(st.st_size, psize);
    assert_eq!(st.st_mode, MODE_FILE | 0o660);
    assert_eq!(st.st_blksize, 512);
    rig.s.fstat(disk, &mut st, &ctx(1)).unwrap();
    assert_eq!(st.st_size, size);
}

#[test]
fn names_modes_and_access() {
    let img = with_mbr(vec![0u8; 256 * 512]);
    let mut rig = Rig::new(img, 4096, 4);
    for bad in [
        "1", "0p2", "0p9", "00", "01", "0p", "p1", "0p01", "x", "0p1p2", "0/1", "-1", "+0",
    ] {
        assert_eq!(rig.open(bad, O_RDONLY), Err(ENOENT), "{bad}");
    }
    assert_eq!(rig.open("", O_RDWR), Err(EISDIR));
    assert_eq!(rig.open("", O_WRONLY), Err(EISDIR));
    assert_eq!(rig.open("0", O_RDONLY | O_DIRECTORY), Err(ENOTDIR));
    let root = rig.open("", O_RDONLY | O_DIRECTORY).unwrap();
    let mut st = Stat::default();
    rig.s.fstat(root, &mut st, &ctx(1)).unwrap();
    assert_eq!(st.st_mode & MODE_DIR, MODE_DIR);
    let mut buf = [0u8; 4];
    assert_eq!(
        rig.s.read(root, &mut buf, 0, 0, &ctx(2)).unwrap_err().errno,
        EISDIR
    );

    // Strangers are refused; root, the owner and the group are not.
    rig.s.set_owner(500, 600);
    let who = |uid, gid| CallerCtx {
        uid,
        gid,
        pid: 1,
        request: 0,
    };
    assert_eq!(
        rig.s
            .openat("0", O_RDONLY, &who(1000, 1000))
            .unwrap_err()
            .errno,
        EACCES
    );
    assert!(
        rig.s.openat("0", O_STAT, &who(1000, 1000)).is_ok(),
        "stat is free"
    );
    assert!(rig.s.openat("0p1", O_RDWR, &who(500, 1)).is_ok());
    assert!(rig.s.openat("0p1", O_RDWR, &who(7, 600)).is_ok());
    assert!(rig.s.openat("0p1", O_RDWR, &who(0, 0)).is_ok());
    let st_only = rig.s.openat("0", O_STAT, &who(1000, 1000)).unwrap().id;
    rig.s.fstat(st_only, &mut st, &ctx(1)).unwrap();
    assert_eq!((st.st_uid, st.st_gid), (500, 600));
    // A stat-only or read-only handle cannot write, a write-only one not read.
    assert_eq!(
        rig.s
            .read(st_only, &mut buf, 0, 0, &ctx(3))
            .unwrap_err()
            .errno,
        EBADF
    );
    let ro = rig.open("0", O_RDONLY).unwrap();
    assert_eq!(
        rig.s.write(ro, b"x", 0, 0, &ctx(3)).unwrap_err().errno,
        EBADF
    );
    let wo = rig.open("0", O_WRONLY).unwrap();
    assert_eq!(
        rig.s.read(wo, &mut buf, 0, 0, &ctx(3)).unwrap_err().errno,
        EBADF
    );
    // Closed handles are gone.
    rig.s.on_close(wo);
    assert_eq!(
        rig.s.write(wo, b"x", 0, 0, &ctx(3)).unwrap_err().errno,
        EBADF
    );
    // ftruncate within the size is a no-op, beyond it an error.
    assert_eq!(rig.s.ftruncate(ro, 0, &ctx(3)), Ok(()));
    assert_eq!(
        rig.s.ftruncate(ro, 1 << 40, &ctx(3)).unwrap_err().errno,
        EINVAL
    );
}

#[test]
fn read_only_disks_refuse_writers() {
    let info = DiskInfo {
        block_size: 512,
        blocks: 16,
        max_transfer: 4096,
        queue_depth: 2,
        read_only: true,
        can_flush: false,
        max_discard: 0,
    };
    let (d, ctl) = mem_disk_with(vec![0; 16 * 512], info);
    let mut rig = Rig::over(d, ctl);
    assert_eq!(rig.open("0", O_RDWR), Err(EROFS));
    assert_eq!(rig.open("0", O_WRONLY), Err(EROFS));
    let id = rig.open("0", O_RDONLY).unwrap();
    // No volatile cache: fsync is done at once, nothing reaches the device.
    assert_eq!(rig.s.fsync(id, &ctx(3)), Ok(()));
    assert_eq!(rig.ctl.state().flushes, 0);
}

#[test]
fn fsync_flushes_the_device() {
    let mut rig = Rig::new(vec![0; 8192], 4096, 2);
    let id = rig.open("0", O_RDWR).unwrap();
    let e = rig.s.fsync(id, &ctx(41)).unwrap_err();
    assert_eq!(e.errno, EINPROGRESS);
    assert_eq!(
        rig.ctl.pending(),
        vec![(rig.ctl.pending()[0].0, Pending::Flush)]
    );
    let done = rig.settle(Order::Submitted);
    assert_eq!(
        done,
        vec![Completion {
            request: 41,
            result: Ok(Completed::Synced)
        }]
    );
    assert_eq!(rig.ctl.state().flushes, 1);
}

#[test]
fn device_errors_fail_the_request_and_leave_the_disk_alone() {
    let img = pattern(16 * 512, 12);
    let mut rig = Rig::new(img.clone(), 1024, 4);
    let id = rig.open("0", O_RDWR).unwrap();
    rig.ctl.state().fail_lba = Some(5);
    // A read touching block 5 fails; one beside it works.
    let r = rig.start_read(id, 4 * 512, 1024);
    let done = rig.settle(Order::Submitted);
    assert_eq!(
        done,
        vec![Completion {
            request: r,
            result: Err(syscall::Error::new(EIO))
        }]
    );
    assert_eq!(rig.read(id, 0, 100, Order::Submitted), &img[..100]);
    // An unaligned write whose edge read fails writes nothing.
    let w = rig.start_write(id, 5 * 512 + 3, b"hello");
    let done = rig.settle(Order::Submitted);
    assert_eq!(
        done,
        vec![Completion {
            request: w,
            result: Err(syscall::Error::new(EIO))
        }]
    );
    assert_eq!(rig.data(), img);
    assert_eq!(rig.ctl.state().writes, 0);
}

#[test]
fn garbage_from_the_device_is_survived() {
    let img = pattern(8 * 512, 13);
    let mut rig = Rig::new(img.clone(), 4096, 4);
    let id = rig.open("0", O_RDWR).unwrap();
    // An unknown tag is ignored.
    rig.ctl.state().done.push(Done {
        tag: 987_654,
        result: Ok(vec![1, 2, 3]),
    });
    rig.s.on_irq();
    // A read answered with the wrong amount of data fails with EIO.
    let r = rig.start_read(id, 0, 512);
    {
        let mut st = rig.ctl.state();
        let (tag, _) = st.pending.remove(0);
        st.done.push(Done {
            tag,
            result: Ok(vec![0; 3]),
        });
    }
    rig.s.on_irq();
    let mut out = Vec::new();
    rig.s.take_completions(&mut out);
    assert_eq!(
        out,
        vec![Completion {
            request: r,
            result: Err(syscall::Error::new(EIO))
        }]
    );
    assert_eq!(rig.s.in_flight(), 0);
    // And the scheme goes on.
    assert_eq!(rig.read(id, 1, 2, Order::Submitted), &img[1..3]);
}

#[test]
fn ioctls() {
    let mut rig = Rig::new(vec![0; 64 * 512], 4096, 2);
    let id = rig.open("0", O_RDONLY).unwrap();
    let mut payload = [0u8; 8];
    assert_eq!(BLKGETSIZE64, 0x8008_1272);
    assert_eq!(BLKSSZGET, 0x1268);
    assert_eq!(
        rig.s
            .call(id, &mut payload, &[BLKGETSIZE64.into(), 0], &ctx(1)),
        Ok(0)
    );
    assert_eq!(u64::from_ne_bytes(payload), 64 * 512);
    assert_eq!(
        rig.s.call(id, &mut [], &[BLKSSZGET.into(), 0], &ctx(1)),
        Ok(512)
    );
    assert_eq!(
        rig.s
            .call(id, &mut [0; 2], &[BLKGETSIZE64.into(), 0], &ctx(1))
            .unwrap_err()
            .errno,
        EINVAL
    );
    let mut r = 77u64;
    for _ in 0..1000 {
        r = next_random(r);
        if [BLKGETSIZE64, BLKSSZGET, BLKDISCARD, BLKDISCARD_LINUX].contains(&(r as u32)) {
            continue;
        }
        let mut p = vec![0u8; (r >> 40) as usize % 64];
        let e = rig.s.call(id, &mut p, &[r, r >> 3], &ctx(1)).unwrap_err();
        assert_eq!(e.errno, ENOTTY);
    }
    assert_eq!(
        rig.s
            .call(id, &mut payload, &[], &ctx(1))
            .unwrap_err()
            .errno,
        ENOTTY
    );
    let root = rig.open("", O_RDONLY).unwrap();
    assert_eq!(
        rig.s
            .call(root, &mut payload, &[BLKGETSIZE64.into()], &ctx(1))
            .unwrap_err()
            .errno,
        ENOTTY
    );
}

#[test]
fn nonsense_geometry_never_panics() {
    for (bs, blocks, max, depth) in [
        (0u32, 100u64, 0usize, 0usize),
        (1000, 8, 4096, 1),
        (512, u64::MAX, 0, 0),
    ] {
        let info = DiskInfo {
            block_size: bs,
            blocks,
            max_transfer: max,
            queue_depth: depth,
            read_only: false,
            can_flush: true,
            max_discard: 0,
        };
        let (d, ctl) = mem_disk_with(vec![0; 4096], info);
        let c = ctl.clone();
        let mut s = DiskScheme::new(vec![d], &mut |_| {
            c.fire(Order::Submitted);
            Ok(())
        });
        let id = s.openat("0", O_RDWR, &ctx(1)).unwrap().id;
        let mut st = Stat::default();
        s.fstat(id, &mut st, &ctx(1)).unwrap();
        let mut buf = [0u8; 16];
        // Whatever happens, it is an answer, not a panic.
        let _ = s.read(id, &mut buf, 0, 0, &ctx(2));
        let _ = s.write(id, &buf, 0, 0, &ctx(3));
        for _ in 0..10 {
            ctl.fire(Order::Submitted);
            s.on_irq();
        }
        let mut out = Vec::new();
        s.take_completions(&mut out);
    }
}

#[test]
fn a_failing_wait_leaves_the_disk_whole() {
    let img = with_mbr(pattern(256 * 512, 14));
    let (d, ctl) = mem_disk(img, 4096, 2);
    let s = DiskScheme::new(vec![d], &mut |_| Err(std::io::Error::other("no irq")));
    assert!(s.partitions(0).is_empty());
    assert_eq!(s.disks(), 1);
    // The abandoned start-up read stays with the device; nothing panics.
    assert_eq!(ctl.pending().len(), 1);
}

#[test]
fn four_kib_blocks() {
    let info = DiskInfo {
        block_size: 4096,
        blocks: 16,
        max_transfer: 8192,
        queue_depth: 3,
        read_only: false,
        can_flush: true,
        max_discard: 0,
    };
    let img = pattern(16 * 4096, 15);
    let (d, ctl) = mem_disk_with(img.clone(), info);
    let mut rig = Rig::over(d, ctl);
    let id = rig.open("0", O_RDWR).unwrap();
    let mut model = img;
    for (off, len) in [(1u64, 5000usize), (4095, 2), (8192, 4096), (10_000, 30_000)] {
        let data = pattern(len, off);
        assert_eq!(rig.write(id, off, &data, Order::Reversed), len);
        model[off as usize..off as usize + len].copy_from_slice(&data);
        assert_eq!(
            rig.read(id, off - 1, len + 1, Order::Reversed),
            &model[off as usize - 1..off as usize + len]
        );
    }
    assert_eq!(rig.data(), model);
    let mut st = Stat::default();
    rig.s.fstat(id, &mut st, &ctx(1)).unwrap();
    assert_eq!(st.st_blksize, 4096);
    assert_eq!(
        rig.s.call(id, &mut [], &[BLKSSZGET.into()], &ctx(1)),
        Ok(4096)
    );
    assert!(rig.ctl.state().bad_ops.is_empty());
}

#[test]
fn disks_can_be_numbered_by_the_driver() {
    // An AHCI HBA with disks on ports 0 and 2: served as /0 and /2.
    let (d0, c0) = mem_disk(pattern(64 * 512, 1), 4096, 4);
    let (d2, c2) = mem_disk(with_mbr(pattern(256 * 512, 2)), 4096, 4);
    let (dup, _) = mem_disk(vec![0; 8 * 512], 4096, 4);
    let mut s = DiskScheme::numbered(vec![(0, d0), (2, d2), (2, dup)], &mut |i| {
        let _ = match i {
            0 => c0.fire(Order::Submitted),
            _ => c2.fire(Order::Submitted),
        };
        Ok(())
    });
    assert_eq!(s.numbers(), [0, 2], "the duplicate 2 is left out");
    assert_eq!(s.partitions(1).len(), 2, "index 1 is disk 2, with its MBR");
    for bad in ["1", "3", "0p1", "02"] {
        assert_eq!(
            s.openat(bad, O_RDONLY, &ctx(1)).unwrap_err().errno,
            ENOENT,
            "{bad}"
        );
    }
    let id = s.openat("2p1", O_RDONLY, &ctx(1)).unwrap().id;
    let mut st = Stat::default();
    s.fstat(id, &mut st, &ctx(1)).unwrap();
    assert_eq!(st.st_size, 100 * 512, "partition 1 of disk 2");
    let id = s.openat("2", O_RDONLY, &ctx(1)).unwrap().id;
    let mut buf = [0u8; 16];
    let e = s.read(id, &mut buf, 512, 0, &ctx(77)).unwrap_err();
    assert_eq!(e.errno, EINPROGRESS);
    c2.fire(Order::Submitted);
    s.on_irq();
    let mut out = Vec::new();
    s.take_completions(&mut out);
    assert_eq!(out.len(), 1);
    match &out[0].result {
        Ok(Completed::Read(d)) => assert_eq!(d[..], with_mbr(pattern(256 * 512, 2))[512..528]),
        other => panic!("{other:?}"),
    }
    assert!(c0.pending().is_empty(), "disk 0 untouched");
}

/// Asks for a discard of `len` bytes at `offset` on handle `id`.
fn discard_call(rig: &mut Rig, id: usize, offset: u64, len: u64) -> Result<u64, i32> {
    let r = rig.req();
    let mut range = [offset.to_ne_bytes(), len.to_ne_bytes()].concat();
    match rig.s.call(id, &mut range, &[BLKDISCARD.into(), 0], &ctx(r)) {
        Err(e) if e.errno == EINPROGRESS => Ok(r),
        Err(e) => Err(e.errno),
        Ok(v) => panic!("discard answered at once with {v}"),
    }
}

impl Rig {
    /// A discard, settled; its answer.
    fn discard(&mut self, id: usize, offset: u64, len: u64) -> Result<(), i32> {
        let r = discard_call(self, id, offset, len)?;
        let c = self.settle(Order::Shuffled(offset ^ len));
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].request, r);
        assert_eq!(c[0].result, Ok(Completed::Called(0)));
        Ok(())
    }
}

#[test]
fn an_aligned_discard_reads_back_zeros_and_large_ones_are_split() {
    assert_eq!(BLKDISCARD, 0x4010_1277);
    assert_eq!(BLKDISCARD_LINUX, 0x1277);
    let img = pattern(256 * 512, 21);
    // MemDisk discards at most 64 blocks per operation: 150 blocks is 3.
    let mut rig = Rig::new(img.clone(), 4096, 2);
    let id = rig.open("0", O_RDWR).unwrap();
    rig.discard(id, 10 * 512, 150 * 512).unwrap();
    let mut model = img;
    model[10 * 512..160 * 512].fill(0);
    assert_eq!(rig.read(id, 0, 256 * 512, Order::Reversed), model);
    assert_eq!(rig.data(), model);
    let st = rig.ctl.state();
    assert_eq!(st.discards, 3);
    assert!(st.bad_ops.is_empty(), "{:?}", st.bad_ops);
    assert!(st.max_pending <= 2);
}

#[test]
fn a_partition_discard_is_translated_and_bounded_by_the_partition() {
    // Partition 1: LBA 64, 100 blocks.
    let img = with_mbr(pattern(256 * 512, 22));
    let mut rig = Rig::new(img.clone(), 4096, 4);
    let id = rig.open("0p1", O_RDWR).unwrap();
    rig.discard(id, 4 * 512, 8 * 512).unwrap();
    let mut model = img;
    model[68 * 512..76 * 512].fill(0);
    assert_eq!(rig.data(), model);
    // Inside the disk but past the partition's end: refused.
    assert_eq!(discard_call(&mut rig, id, 96 * 512, 8 * 512), Err(EINVAL));
    rig.discard(id, 96 * 512, 4 * 512).unwrap();
    model[160 * 512..164 * 512].fill(0);
    assert_eq!(rig.data(), model);
}

#[test]
fn misaligned_empty_and_out_of_range_discards_are_refused_and_change_nothing() {
    let img = pattern(64 * 512, 23);
    let mut rig = Rig::new(img.clone(), 4096, 2);
    let id = rig.open("0", O_RDWR).unwrap();
    let size = 64 * 512u64;
    for (offset, len) in [
        (1u64, 512u64),
        (0, 511),
        (512, 0),
        (0, 513),
        (size - 512, 1024),
        (size, 512),
        (u64::MAX - 511, 1024),
        (512, u64::MAX - 511),
    ] {
        assert_eq!(
            discard_call(&mut rig, id, offset, len),
            Err(EINVAL),
            "{len} at {offset}"
        );
    }
    // A short range, and Linux's own BLKDISCARD (its range never reaches a
    // FUSE server): EINVAL.
    let e = rig
        .s
        .call(id, &mut [0; 8], &[BLKDISCARD.into(), 0], &ctx(9));
    assert_eq!(e.unwrap_err().errno, EINVAL);
    let e = rig
        .s
        .call(id, &mut [], &[BLKDISCARD_LINUX.into(), 0x1000], &ctx(9));
    assert_eq!(e.unwrap_err().errno, EINVAL);
    // A handle not open for writing may not discard (as on Linux).
    let ro = rig.open("0", O_RDONLY).unwrap();
    assert_eq!(discard_call(&mut rig, ro, 0, 512), Err(EBADF));
    assert_eq!(rig.s.in_flight(), 0);
    assert!(rig.ctl.pending().is_empty());
    assert_eq!(rig.data(), img);
    assert!(rig.ctl.state().bad_ops.is_empty());
}

#[test]
fn a_device_without_discard_answers_eopnotsupp() {
    let info = DiskInfo {
        block_size: 512,
        blocks: 16,
        max_transfer: 4096,
        queue_depth: 2,
        read_only: false,
        can_flush: false,
        max_discard: 0,
    };
    let img = pattern(16 * 512, 24);
    let (d, ctl) = mem_disk_with(img.clone(), info);
    let mut rig = Rig::over(d, ctl);
    let id = rig.open("0", O_RDWR).unwrap();
    assert_eq!(discard_call(&mut rig, id, 0, 512), Err(EOPNOTSUPP));
    assert!(rig.ctl.pending().is_empty());
    assert_eq!(rig.data(), img);
}

#[test]
fn discards_and_overlapping_writes_run_in_arrival_order() {
    let img = pattern(64 * 512, 25);
    let mut rig = Rig::new(img.clone(), 4096, 8);
    let id = rig.open("0", O_RDWR).unwrap();
    let mut model = img;
    // A write (blocks 0..4, unaligned end: RMW), then a discard of 2..6:
    // the discard waits for the write, so blocks 2..6 end up zero.
    let data = pattern(4 * 512 - 100, 26);
    let w = rig.start_write(id, 0, &data);
    let d = discard_call(&mut rig, id, 2 * 512, 4 * 512).unwrap();
    assert!(
        !rig.ctl
            .pending()
            .iter()
            .any(|(_, p)| matches!(p, Pending::Discard { .. })),
        "the discard went to the device beside an overlapping write"
    );
    // Then a write over 5..7 that must wait for the discard.
    let data2 = pattern(2 * 512, 27);
    let w2 = rig.start_write(id, 5 * 512, &data2);
    // A discard elsewhere does not wait.
    let far = discard_call(&mut rig, id, 40 * 512, 512).unwrap();
    assert!(rig
        .ctl
        .pending()
        .iter()
        .any(|(_, p)| *p == Pending::Discard { lba: 40, blocks: 1 }));
    let done = rig.settle(Order::Reversed);
    for r in [w, d, w2, far] {
        let c = done.iter().find(|c| c.request == r).expect("answered");
        assert!(c.result.is_ok(), "{:?}", c.result);
    }
    model[..data.len()].copy_from_slice(&data);
    model[2 * 512..6 * 512].fill(0);
    model[5 * 512..7 * 512].copy_from_slice(&data2);
    model[40 * 512..41 * 512].fill(0);
    assert_eq!(rig.data(), model);
    assert!(rig.ctl.state().bad_ops.is_empty());
}
