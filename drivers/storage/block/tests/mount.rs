//! DiskScheme on a real FUSE mount with the real kernel (needs root and
//! /dev/fuse), over the in-memory device that completes only when its
//! "interrupt" fires: every read, write and fsync below goes through the
//! runtime's deferred replies.

mod common;

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use block::testing::{mem_disk, next_random, Firing, MemDisk, MemDiskCtl, Order};
use block::{DiskScheme, BLKDISCARD, BLKDISCARD_LINUX, BLKGETSIZE64, BLKSSZGET};
use common::{pattern, sgdisk_image, with_mbr};
use scheme::testing::{wait_until, with_timeout, TestMount};
use scheme::RootKind;

const BOUND: Duration = Duration::from_secs(20);

struct Disk {
    m: TestMount,
    ctl: MemDiskCtl,
    _firing: Option<Firing>,
}

/// Mounts one disk holding `img`; with `fire`, a thread completes device
/// operations every millisecond, in random order.
fn mount(img: Vec<u8>, max_transfer: usize, depth: usize, fire: bool) -> Disk {
    let (dev, ctl) = mem_disk(img, max_transfer, depth);
    let c = ctl.clone();
    let scheme = DiskScheme::new(vec![dev], &mut |_| {
        c.fire(Order::Submitted);
        Ok(())
    });
    let (tx, rx) = UnixStream::pair().expect("socketpair");
    ctl.set_irq(tx);
    let m = TestMount::with_irq(
        RootKind::Dir,
        scheme,
        rx.into(),
        |s: &mut DiskScheme<MemDisk>| s.on_irq(),
    )
    .expect("mount disk scheme");
    let firing = fire.then(|| ctl.fire_periodically(Duration::from_millis(1), 42));
    Disk {
        m,
        ctl,
        _firing: firing,
    }
}

fn ioctl(f: &File, cmd: u32, arg: *mut u8) -> Result<i32, i32> {
    // SAFETY: `arg` is null or points to a buffer at least as large as the
    // command's _IOC_SIZE, alive for the call.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), cmd as _, arg) };
    if r < 0 {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    } else {
        Ok(r)
    }
}

#[test]
fn whole_disk_and_partitions_read_back_the_backing_bytes() {
    let img = sgdisk_image();
    let d = mount(img.clone(), 64 * 1024, 8, true);
    let mut names: Vec<String> = std::fs::read_dir(d.m.path())
        .expect("readdir")
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["0", "0p1", "0p3"]);
    let p = d.m.join("0");
    let all = with_timeout(BOUND, move || std::fs::read(p).expect("read disk")).expect("hung");
    assert!(all == img, "whole-disk read differs");
    let p1 = std::fs::read(d.m.join("0p1")).expect("read p1");
    assert!(p1 == img[2048 * 512..4096 * 512]);
    let p3 = std::fs::read(d.m.join("0p3")).expect("read p3");
    assert!(p3 == img[4096 * 512..8192 * 512]);
    let md = std::fs::metadata(d.m.join("0p3")).unwrap();
    assert_eq!(md.len(), 2 << 20);
    assert!(md.is_file());
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    assert_eq!(md.permissions().mode() & 0o777, 0o660);
    assert_eq!(md.blksize(), 512);
    assert!(std::fs::metadata(d.m.path()).unwrap().is_dir());
    assert!(d.ctl.state().bad_ops.is_empty());
}

#[test]
fn ends_unknown_names_and_the_root() {
    let img = with_mbr(pattern(256 * 512, 22));
    let size = img.len() as u64;
    let d = mount(img.clone(), 4096, 4, true);
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(d.m.join("0"))
        .expect("open");
    let mut buf = [0u8; 100];
    // Reads at or past the end: 0 bytes; across it: short.
    assert_eq!(f.read_at(&mut buf, size).unwrap(), 0);
    assert_eq!(f.read_at(&mut buf, size + 4096).unwrap(), 0);
    assert_eq!(f.read_at(&mut buf, size - 7).unwrap(), 7);
    assert_eq!(&buf[..7], &img[img.len() - 7..]);
    let mut g = File::open(d.m.join("0")).unwrap();
    g.seek(SeekFrom::End(-3)).unwrap();
    let mut rest = Vec::new();
    g.read_to_end(&mut rest).unwrap();
    assert_eq!(rest, &img[img.len() - 3..]);
    // Writes at or past the end: ENOSPC; across it: what fits.
    assert_eq!(
        f.write_at(b"x", size).unwrap_err().raw_os_error(),
        Some(libc::ENOSPC)
    );
    assert_eq!(f.write_at(b"abcdef", size - 2).unwrap(), 2);
    // Partition 3 is bounded by its own extent.
    let p3 = OpenOptions::new()
        .read(true)
        .write(true)
        .open(d.m.join("0p3"))
        .unwrap();
    assert_eq!(p3.read_at(&mut buf, 50 * 512).unwrap(), 0);
    assert_eq!(
        p3.write_at(b"x", 50 * 512).unwrap_err().raw_os_error(),
        Some(libc::ENOSPC)
    );
    // Unknown names.
    for bad in ["1", "0p2", "0p4", "disk", "00"] {
        let e = File::open(d.m.join(bad)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound, "{bad}");
    }
    // The root is a directory, not writable as a file.
    let e = OpenOptions::new().write(true).open(d.m.path()).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EISDIR));
}

#[test]
fn ioctls_and_fsync() {
    let d = mount(vec![0u8; 64 * 512], 4096, 4, true);
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(d.m.join("0"))
        .unwrap();
    let mut size = 0u64;
    assert_eq!(
        ioctl(&f, BLKGETSIZE64, &mut size as *mut u64 as *mut u8),
        Ok(0)
    );
    assert_eq!(size, 64 * 512);
    assert_eq!(ioctl(&f, BLKSSZGET, std::ptr::null_mut()), Ok(512));
    let mut r = 5u64;
    for _ in 0..50 {
        r = next_random(r);
        // Commands without data (any data would need a real buffer).
        let cmd = scheme::ioctl::io((r >> 8) as u8, r as u8);
        if cmd == BLKSSZGET || cmd == BLKDISCARD_LINUX {
            continue;
        }
        assert_eq!(
            ioctl(&f, cmd, std::ptr::null_mut()),
            Err(libc::ENOTTY),
            "{cmd:#x}"
        );
    }
    let mut junk = [0u8; 64];
    let cmd = scheme::ioctl::iowr(b'Q', 7, 64);
    assert_eq!(ioctl(&f, cmd, junk.as_mut_ptr()), Err(libc::ENOTTY));
    // fsync reaches the device as a flush.
    assert_eq!(d.ctl.state().flushes, 0);
    f.write_at(b"data", 1000).unwrap();
    f.sync_all().expect("fsync");
    assert_eq!(d.ctl.state().flushes, 1);
    assert_eq!(&d.ctl.state().data[1000..1004], b"data");
}

#[test]
fn a_discard_through_the_kernel_waits_for_the_device_and_zeroes_the_range() {
    let img = pattern(64 * 512, 31);
    let d = mount(img.clone(), 4096, 4, true);
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(d.m.join("0"))
        .unwrap();
    let mut range = [2 * 512u64, 3 * 512];
    assert_eq!(ioctl(&f, BLKDISCARD, range.as_mut_ptr().cast()), Ok(0));
    let mut model = img;
    model[2 * 512..5 * 512].fill(0);
    let mut back = vec![0u8; model.len()];
    f.read_exact_at(&mut back, 0).unwrap();
    assert!(back == model, "discarded range does not read back zeros");
    assert_eq!(d.ctl.state().discards, 1);
    // Unaligned: EINVAL. Linux's _IO encoding brings no range: EINVAL.
    let mut bad = [1u64, 512];
    assert_eq!(
        ioctl(&f, BLKDISCARD, bad.as_mut_ptr().cast()),
        Err(libc::EINVAL)
    );
    assert_eq!(
        ioctl(&f, BLKDISCARD_LINUX, range.as_mut_ptr().cast()),
        Err(libc::EINVAL)
    );
    assert!(d.ctl.state().data == model);
}

#[test]
fn random_unaligned_writes_from_several_threads() {
    const SIZE: usize = 1 << 20;
    const THREADS: usize = 4;
    // Stripes of an odd size: neighbours owned by different threads share
    // blocks, so lost read-modify-write updates would show.
    const STRIPE: usize = 700;
    let img = pattern(SIZE, 23);
    let d = mount(img.clone(), 8192, 16, true);
    let path = d.m.join("0");
    let mut threads = Vec::new();
    for t in 0..THREADS {
        let path = path.clone();
        threads.push(std::thread::spawn(move || {
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
                .unwrap();
            let mut writes = Vec::new();
            let mut r = 1000 + t as u64;
            for _ in 0..150 {
                r = next_random(r);
                let stripes = SIZE / STRIPE;
                let s = ((r as usize) % (stripes / THREADS)) * THREADS + t;
                r = next_random(r);
                let off = s * STRIPE + (r as usize) % STRIPE;
                r = next_random(r);
                let len = 1 + (r as usize) % (s * STRIPE + STRIPE - off);
                let data = pattern(len, r);
                f.write_all_at(&data, off as u64).unwrap();
                writes.push((off, data));
            }
            writes
        }));
    }
    let mut model = img;
    for t in threads {
        let writes = with_timeout(BOUND, move || t.join().unwrap()).expect("writer hung");
        // Each thread's writes are sequential; threads own disjoint bytes.
        for (off, data) in writes {
            model[off..off + data.len()].copy_from_slice(&data);
        }
    }
    let back = std::fs::read(&path).unwrap();
    assert!(back == model, "read-back differs from the model");
    let st = d.ctl.state();
    assert!(st.data == model, "device bytes differ from the model");
    assert!(st.bad_ops.is_empty(), "{:?}", st.bad_ops);
    // Linux 6.2+ honours FOPEN_PARALLEL_DIRECT_WRITES: writes to one file
    // really were in flight together.
    if kernel_at_least(6, 2) {
        assert!(
            st.max_pending_writes >= 2,
            "writes never overlapped in time ({})",
            st.max_pending_writes
        );
    }
}

fn kernel_at_least(major: u32, minor: u32) -> bool {
    let rel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut it = rel
        .trim()
        .split(['.', '-'])
        .map(|x| x.parse::<u32>().unwrap_or(0));
    let (a, b) = (it.next().unwrap_or(0), it.next().unwrap_or(0));
    (a, b) >= (major, minor)
}

#[test]
fn reads_wait_for_the_interrupt() {
    // No firing thread: a read stays deferred until the test fires.
    let img = pattern(64 * 512, 24);
    let d = mount(img.clone(), 4096, 4, false);
    let p = d.m.join("0");
    let reader = std::thread::spawn(move || {
        let f = File::open(p).unwrap();
        let mut buf = vec![0u8; 3000];
        let n = f.read_at(&mut buf, 123).unwrap();
        buf.truncate(n);
        buf
    });
    assert!(
        wait_until(BOUND, || d.m.deferred() == 1),
        "read not deferred"
    );
    assert!(!reader.is_finished());
    assert!(!d.ctl.pending().is_empty());
    d.ctl.fire(Order::Reversed);
    let got = with_timeout(BOUND, move || reader.join().unwrap()).expect("reader hung");
    assert_eq!(got, &img[123..3123]);
    assert!(wait_until(BOUND, || d.m.deferred() == 0));
}
