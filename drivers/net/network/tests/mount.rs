//! NetworkScheme on a real FUSE mount with the real kernel (needs root and
//! /dev/fuse), over the in-memory NIC whose "interrupt" is a byte on a
//! socket: every blocking read and write below is parked by the runtime and
//! completed from `on_irq`, as in a driver's event loop.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use network::testing::{loopback_nic, test_frame, LoopbackNic, NicCtl};
use network::{NetworkScheme, MAX_FRAME, RX_QUEUE_FRAMES};
use scheme::testing::{wait_until, with_timeout, TestMount};
use scheme::RootKind;

const BOUND: Duration = Duration::from_secs(20);
const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
const PEER: [u8; 6] = [0x52, 0x54, 0x00, 0xaa, 0xbb, 0xcc];

struct Nic {
    m: TestMount,
    ctl: NicCtl,
}

fn mount(tx_slots: usize) -> Nic {
    let (dev, ctl) = loopback_nic(MAC, tx_slots);
    let (tx, rx) = UnixStream::pair().expect("socketpair");
    ctl.set_irq(tx);
    let m = TestMount::with_irq(
        RootKind::Dir,
        NetworkScheme::new(dev),
        rx.into(),
        |s: &mut NetworkScheme<LoopbackNic>| s.on_irq(),
    )
    .expect("mount network scheme");
    Nic { m, ctl }
}

impl Nic {
    fn frames(&self) -> File {
        OpenOptions::new()
            .read(true)
            .write(true)
            .open(self.m.join("frames"))
            .expect("open frames")
    }

    fn frames_nonblock(&self) -> File {
        OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(self.m.join("frames"))
            .expect("open frames")
    }

    fn stat(&self, key: &str) -> u64 {
        stats(&self.m.join("stats"), key)
    }
}

fn stats(path: &Path, key: &str) -> u64 {
    let text = std::fs::read_to_string(path).expect("read stats");
    for line in text.lines() {
        let mut it = line.split(' ');
        if it.next() == Some(key) {
            return it.next().and_then(|v| v.parse().ok()).expect("value");
        }
    }
    panic!("no {key} in stats: {text:?}");
}

/// Frames `first..first+n` of a numbered series (sizes vary 60..=1514).
fn series(first: u64, n: u64) -> Vec<Vec<u8>> {
    (first..first + n)
        .map(|i| {
            let len = 60 + (i as usize * 7919) % (MAX_FRAME - 59);
            test_frame(PEER, len, i + 1)
        })
        .collect()
}

fn read_frame(f: &mut File) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; 2048];
    let n = f.read(&mut buf)?;
    buf.truncate(n);
    Ok(buf)
}

fn poll(f: &File, events: i16, timeout_ms: i32) -> i16 {
    let mut p = libc::pollfd {
        fd: f.as_raw_fd(),
        events,
        revents: 0,
    };
    // SAFETY: one valid pollfd, alive for the call.
    let r = unsafe { libc::poll(&mut p, 1, timeout_ms) };
    assert!(r >= 0, "poll: {}", std::io::Error::last_os_error());
    p.revents
}

#[test]
fn listing_mac_link_and_modes() {
    let nic = mount(8);
    let mut names: Vec<String> = std::fs::read_dir(nic.m.path())
        .expect("readdir")
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["frames", "link", "mac", "stats"]);
    assert_eq!(
        std::fs::read_to_string(nic.m.join("mac")).unwrap(),
        "52:54:00:12:34:56\n"
    );
    assert_eq!(std::fs::read_to_string(nic.m.join("link")).unwrap(), "up\n");
    nic.ctl.set_link(false);
    assert!(wait_until(BOUND, || std::fs::read_to_string(
        nic.m.join("link")
    )
    .unwrap()
        == "down\n"));
    // Info files are read-only, seekable and say their size.
    let err = OpenOptions::new()
        .write(true)
        .open(nic.m.join("mac"))
        .unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EACCES));
    let mac = File::open(nic.m.join("mac")).unwrap();
    let mut buf = [0u8; 5];
    use std::os::unix::fs::FileExt;
    assert_eq!(mac.read_at(&mut buf, 3).unwrap(), 5);
    assert_eq!(&buf, b"54:00");
    let md = std::fs::metadata(nic.m.join("mac")).unwrap();
    assert_eq!(md.len(), 18);
    assert_eq!(md.permissions().mode() & 0o777, 0o440);
    let md = std::fs::metadata(nic.m.join("frames")).unwrap();
    assert!(md.is_file());
    assert_eq!(md.permissions().mode() & 0o777, 0o660);
    assert_eq!(md.uid(), rustix_uid());
    assert!(std::fs::metadata(nic.m.path()).unwrap().is_dir());
    // The frame file is a stream.
    let mut f = nic.frames();
    use std::io::Seek;
    assert_eq!(
        f.seek(std::io::SeekFrom::Start(1))
            .unwrap_err()
            .raw_os_error(),
        Some(libc::ESPIPE)
    );
    assert_eq!(
        std::fs::metadata(nic.m.join("nope"))
            .unwrap_err()
            .raw_os_error(),
        Some(libc::ENOENT)
    );
}

fn rustix_uid() -> u32 {
    // SAFETY: getuid has no preconditions.
    unsafe { libc::getuid() }
}

#[test]
fn each_read_returns_exactly_one_frame() {
    let nic = mount(8);
    let mut f = nic.frames();
    let frames = vec![
        test_frame(PEER, 14, 1),
        test_frame(PEER, 60, 2),
        test_frame(PEER, 1514, 3),
        test_frame(PEER, 61, 4),
    ];
    nic.ctl.inject(frames.clone());
    for want in &frames {
        let got = read_frame(&mut f).expect("read");
        assert_eq!(&got, want);
    }
    // A short buffer gets the start of the frame; the rest is dropped.
    let big = test_frame(PEER, 1000, 9);
    nic.ctl.inject([big.clone(), test_frame(PEER, 70, 10)]);
    let mut small = [0u8; 100];
    assert_eq!(f.read(&mut small).unwrap(), 100);
    assert_eq!(&small[..], &big[..100]);
    assert_eq!(read_frame(&mut f).unwrap(), test_frame(PEER, 70, 10));
    assert_eq!(nic.stat("rx_truncated"), 1);
    assert_eq!(nic.stat("rx_frames"), 6);
    assert_eq!(nic.stat("rx_bytes"), 14 + 60 + 1514 + 61 + 1000 + 70);
}

#[test]
fn blocking_read_is_woken_by_the_interrupt() {
    let nic = mount(8);
    let mut f = nic.frames();
    let t = std::thread::spawn(move || read_frame(&mut f).expect("read"));
    assert!(wait_until(BOUND, || nic.m.parked() == 1), "read not parked");
    assert!(!t.is_finished());
    let frame = test_frame(PEER, 333, 77);
    nic.ctl.inject([frame.clone()]);
    let got = with_timeout(BOUND, move || t.join().unwrap()).expect("read not woken");
    assert_eq!(got, frame);
}

#[test]
fn nonblocking_read_on_an_idle_link_gives_eagain() {
    let nic = mount(8);
    let mut f = nic.frames_nonblock();
    let err = read_frame(&mut f).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::WouldBlock);
    assert_eq!(nic.m.parked(), 0);
    nic.ctl.inject([test_frame(PEER, 64, 5)]);
    assert!(wait_until(BOUND, || poll(&f, libc::POLLIN, 0)
        & libc::POLLIN
        != 0));
    assert_eq!(read_frame(&mut f).unwrap(), test_frame(PEER, 64, 5));
    assert_eq!(
        read_frame(&mut f).unwrap_err().kind(),
        ErrorKind::WouldBlock
    );
}

#[test]
fn poll_wakes_when_a_frame_arrives() {
    let nic = mount(8);
    let f = nic.frames();
    assert_eq!(poll(&f, libc::POLLIN, 0), 0, "idle handle is not readable");
    assert_eq!(poll(&f, libc::POLLOUT, 0), libc::POLLOUT);
    let (tx, rx) = mpsc::channel();
    let g = f.try_clone().unwrap();
    std::thread::spawn(move || {
        let _ = tx.send(poll(&g, libc::POLLIN, 20_000));
    });
    assert!(wait_until(BOUND, || nic.m.pollers() >= 1), "no poller");
    assert!(rx.try_recv().is_err(), "poll returned before any frame");
    nic.ctl.inject([test_frame(PEER, 100, 1)]);
    let revents = rx.recv_timeout(BOUND).expect("poll not woken");
    assert_eq!(revents & libc::POLLIN, libc::POLLIN);
}

#[test]
fn a_full_tx_ring_parks_the_writer_until_the_interrupt() {
    let nic = mount(4);
    let mut f = nic.frames();
    let sent = series(0, 5);
    for fr in &sent[..4] {
        assert_eq!(f.write(fr).unwrap(), fr.len());
    }
    assert_eq!(nic.ctl.state().tx_ring.len(), 4);
    // Non-blocking writers get EAGAIN, and poll says not writable.
    let mut nb = nic.frames_nonblock();
    assert_eq!(
        nb.write(&sent[4]).unwrap_err().kind(),
        ErrorKind::WouldBlock
    );
    assert_eq!(poll(&nb, libc::POLLOUT, 0), 0);
    let last = sent[4].clone();
    let t = std::thread::spawn(move || f.write(&last).expect("write"));
    assert!(
        wait_until(BOUND, || nic.m.parked() == 1),
        "write not parked"
    );
    assert!(!t.is_finished());
    nic.ctl.fire(); // the device sent the four: the ring has room
    let n = with_timeout(BOUND, move || t.join().unwrap()).expect("write not woken");
    assert_eq!(n, sent[4].len());
    assert!(wait_until(BOUND, || poll(&nb, libc::POLLOUT, 0) == libc::POLLOUT));
    nic.ctl.fire();
    assert!(wait_until(BOUND, || nic.ctl.state().wire.len() == 5));
    assert_eq!(nic.ctl.take_wire(), sent);
    assert_eq!(nic.stat("tx_frames"), 5);
    let bytes: usize = sent.iter().map(Vec::len).sum();
    assert_eq!(nic.stat("tx_bytes"), bytes as u64);
}

#[test]
fn two_readers_each_get_every_frame() {
    let nic = mount(8);
    let mut a = nic.frames();
    let mut b = nic.frames();
    // A write-only handle receives nothing and loses nothing.
    let _w = OpenOptions::new()
        .write(true)
        .open(nic.m.join("frames"))
        .unwrap();
    let frames = series(0, 300);
    for chunk in frames.chunks(50) {
        nic.ctl.inject(chunk.to_vec());
    }
    for want in &frames {
        assert_eq!(&read_frame(&mut a).unwrap(), want);
    }
    for want in &frames {
        assert_eq!(&read_frame(&mut b).unwrap(), want);
    }
    assert_eq!(nic.stat("rx_frames"), 300);
    assert_eq!(nic.stat("rx_dropped"), 0);
}

#[test]
fn a_slow_reader_overflows_alone_and_drops_are_counted() {
    let nic = mount(8);
    let mut fast = nic.frames();
    let mut slow = nic.frames_nonblock();
    let extra = 100u64;
    let total = RX_QUEUE_FRAMES as u64 + extra;
    let frames = series(1000, total);
    let (tx, rx) = mpsc::channel();
    let want = frames.clone();
    let reader = std::thread::spawn(move || {
        for w in &want {
            let got = read_frame(&mut fast).expect("fast read");
            assert_eq!(&got, w, "fast reader lost or reordered a frame");
            let _ = tx.send(());
        }
    });
    // Batches small enough for the fast reader's own queue: wait until it
    // has read each batch before sending the next.
    for chunk in frames.chunks(50) {
        nic.ctl.inject(chunk.to_vec());
        for _ in chunk {
            rx.recv_timeout(BOUND).expect("fast reader stalled");
        }
    }
    with_timeout(BOUND, move || reader.join().unwrap()).expect("fast reader hung");
    // The slow reader kept the oldest frames its queue could hold.
    for w in &frames[..RX_QUEUE_FRAMES] {
        assert_eq!(&read_frame(&mut slow).unwrap(), w);
    }
    assert_eq!(
        read_frame(&mut slow).unwrap_err().kind(),
        ErrorKind::WouldBlock
    );
    assert_eq!(nic.stat("rx_frames"), total);
    assert_eq!(nic.stat("rx_dropped"), extra);
    // New frames reach it again once it has room.
    nic.ctl.inject([test_frame(PEER, 80, 1)]);
    let mut slow_blocking = slow;
    assert!(wait_until(BOUND, || poll(&slow_blocking, libc::POLLIN, 0) != 0));
    assert_eq!(
        read_frame(&mut slow_blocking).unwrap(),
        test_frame(PEER, 80, 1)
    );
}

#[test]
fn frames_with_no_reader_are_dropped_and_counted() {
    let nic = mount(8);
    nic.ctl.inject(series(0, 7));
    assert!(wait_until(BOUND, || nic.stat("rx_frames") == 7));
    assert_eq!(nic.stat("rx_dropped"), 7);
    // A handle opened later sees only later frames.
    let mut f = nic.frames_nonblock();
    assert_eq!(
        read_frame(&mut f).unwrap_err().kind(),
        ErrorKind::WouldBlock
    );
}

#[test]
fn runts_oversize_and_device_errors() {
    let nic = mount(8);
    let mut f = nic.frames();
    for len in [0usize, 1, 13, MAX_FRAME + 1, 9000] {
        let buf = vec![0xa5u8; len];
        match f.write(&buf) {
            Ok(0) if len == 0 => {} // a zero-length write never reaches us
            Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EINVAL), "len {len}"),
            Ok(n) => panic!("{len}-byte write took {n}"),
        }
    }
    // Smallest and largest are fine.
    f.write_all(&test_frame(PEER, 14, 1)).unwrap();
    f.write_all(&test_frame(PEER, MAX_FRAME, 2)).unwrap();
    assert_eq!(nic.stat("tx_frames"), 2);
    assert_eq!(nic.stat("tx_errors"), 0);
    assert_eq!(nic.ctl.state().tx_ring.len(), 2);
    // A device error fails that write and is counted.
    nic.ctl.state().fail_tx = Some(syscall::error::EIO);
    assert_eq!(
        f.write(&test_frame(PEER, 60, 3))
            .unwrap_err()
            .raw_os_error(),
        Some(libc::EIO)
    );
    assert_eq!(nic.stat("tx_errors"), 1);
    assert_eq!(nic.stat("tx_frames"), 2);
    nic.ctl.state().fail_tx = None;
    f.write_all(&test_frame(PEER, 60, 4)).unwrap();
    assert_eq!(nic.stat("tx_frames"), 3);
}

#[test]
fn loopback_traffic_both_ways_through_one_handle() {
    let nic = mount(16);
    {
        let mut st = nic.ctl.state();
        st.loopback = true;
        st.tx_interrupts = true;
    }
    let mut f = nic.frames();
    // Fewer than a handle's queue holds: the writer is not paced by the
    // reader, only by the ring.
    let frames = series(0, 400);
    let mut w = f.try_clone().unwrap();
    let send = frames.clone();
    // Writes that find the 16-slot ring full are parked and woken by the
    // TX interrupts (the parking itself is tested above).
    let writer = std::thread::spawn(move || {
        for fr in &send {
            w.write_all(fr).expect("write");
        }
    });
    for want in &frames {
        assert_eq!(&read_frame(&mut f).unwrap(), want);
    }
    with_timeout(BOUND, move || writer.join().unwrap()).expect("writer hung");
    assert_eq!(nic.stat("tx_frames"), 400);
    assert_eq!(nic.stat("rx_frames"), 400);
    assert_eq!(nic.stat("rx_dropped"), 0);
}

#[test]
fn other_users_are_refused() {
    use std::os::unix::process::CommandExt;
    let nic = mount(8);
    for name in ["frames", "mac", "stats"] {
        let out = std::process::Command::new("cat")
            .arg(nic.m.join(name))
            .uid(65534)
            .gid(65534)
            .output()
            .expect("run cat");
        assert!(!out.status.success(), "nobody could read {name}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("Permission denied"), "{name}: {err}");
    }
    // Root can, and the listing is open to all.
    assert!(std::fs::read(nic.m.join("stats")).is_ok());
    let out = std::process::Command::new("ls")
        .arg(nic.m.path())
        .uid(65534)
        .gid(65534)
        .output()
        .expect("run ls");
    assert!(out.status.success());
}
