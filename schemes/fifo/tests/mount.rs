//! fifod's scheme on a real FUSE mount with the real kernel (needs root and
//! /dev/fuse): blocking, O_NONBLOCK, poll/epoll, interrupts, ioctls.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fifod::{FifoScheme, CAPACITY, FIFO_CLEAR, FIFO_GET_LEN};
use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;
use scheme::ioctl;
use scheme::testing::{wait_until, with_timeout, TestMount};
use scheme::RootKind;

const BOUND: Duration = Duration::from_secs(10);

fn mount() -> TestMount {
    TestMount::new(RootKind::Dir, FifoScheme::new()).expect("mount fifo scheme")
}

fn open(path: &Path, flags: OFlags) -> OwnedFd {
    rustix::fs::open(path, flags | OFlags::CLOEXEC, Mode::empty()).expect("open")
}

/// Raw ioctl with an optional in/out buffer; returns errno on failure.
fn raw_ioctl(fd: &impl AsRawFd, cmd: u32, arg: *mut u8) -> Result<i32, i32> {
    // SAFETY: `arg` is either null (commands without data) or points to a
    // buffer at least as large as the command's _IOC_SIZE, owned by the
    // caller for the duration of the call.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), cmd as _, arg) };
    if r < 0 {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    } else {
        Ok(r)
    }
}

#[test]
fn blocked_reader_is_woken_by_writer() {
    let m = mount();
    let p = m.join("wake");
    let reader = open(&p, OFlags::RDONLY);
    let t = std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        let n = rustix::io::read(&reader, &mut buf).expect("read");
        buf[..n].to_vec()
    });
    assert!(wait_until(BOUND, || m.parked() == 1), "read was not parked");
    let mut w = OpenOptions::new().write(true).open(&p).expect("open w");
    w.write_all(b"hello").expect("write");
    let got = with_timeout(BOUND, move || t.join().expect("reader")).expect("reader still blocked");
    assert_eq!(got, b"hello");
    assert_eq!(m.parked(), 0);
}

#[test]
fn nonblocking_read_on_empty_gives_eagain() {
    let m = mount();
    let p = m.join("nb");
    let fd = open(&p, OFlags::RDWR | OFlags::NONBLOCK);
    let mut buf = [0u8; 8];
    assert_eq!(rustix::io::read(&fd, &mut buf), Err(Errno::AGAIN));
    // Flags set later with fcntl count too (they travel in each request).
    let fd2 = open(&p, OFlags::RDONLY);
    rustix::fs::fcntl_setfl(&fd2, OFlags::NONBLOCK).expect("fcntl");
    assert_eq!(rustix::io::read(&fd2, &mut buf), Err(Errno::AGAIN));
    // A full FIFO refuses non-blocking writes the same way, after taking
    // what fits.
    let big = vec![1u8; CAPACITY + 10];
    assert_eq!(rustix::io::write(&fd, &big), Ok(CAPACITY));
    assert_eq!(rustix::io::write(&fd, b"x"), Err(Errno::AGAIN));
    assert_eq!(m.parked(), 0);
}

#[test]
fn poll_and_epoll_wake_when_data_arrives() {
    let m = mount();
    let p = m.join("poll");
    let fd = open(&p, OFlags::RDONLY | OFlags::NONBLOCK);
    // Empty FIFO: writable, not readable.
    {
        let mut fds = [PollFd::new(&fd, PollFlags::IN | PollFlags::OUT)];
        let zero = Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        rustix::event::poll(&mut fds, Some(&zero)).expect("poll");
        assert_eq!(fds[0].revents(), PollFlags::OUT);
    }
    let t = std::thread::spawn(move || {
        let mut fds = [PollFd::new(&fd, PollFlags::IN)];
        let t = Timespec {
            tv_sec: 10,
            tv_nsec: 0,
        };
        let n = rustix::event::poll(&mut fds, Some(&t)).expect("poll");
        (n, fds[0].revents())
    });
    assert!(
        wait_until(BOUND, || m.pollers() >= 1),
        "poll did not register"
    );
    let start = Instant::now();
    std::fs::write(&p, b"x").expect("write");
    let (n, rev) = t.join().expect("poller");
    assert_eq!(n, 1, "poll timed out instead of being woken");
    assert!(rev.contains(PollFlags::IN));
    assert!(start.elapsed() < Duration::from_secs(5));

    // epoll on a second FIFO.
    let q = m.join("epoll");
    let fd = open(&q, OFlags::RDONLY | OFlags::NONBLOCK);
    let ep =
        rustix::event::epoll::create(rustix::event::epoll::CreateFlags::CLOEXEC).expect("epoll");
    rustix::event::epoll::add(
        &ep,
        &fd,
        rustix::event::epoll::EventData::new_u64(7),
        rustix::event::epoll::EventFlags::IN,
    )
    .expect("epoll add");
    // epoll_ctl(ADD) already polled with SCHEDULE_NOTIFY: registered.
    let t = std::thread::spawn(move || {
        let mut events = Vec::with_capacity(4);
        let t = Timespec {
            tv_sec: 10,
            tv_nsec: 0,
        };
        rustix::event::epoll::wait(&ep, rustix::buffer::spare_capacity(&mut events), Some(&t))
            .expect("epoll_wait");
        events.iter().map(|e| e.data.u64()).collect::<Vec<_>>()
    });
    std::fs::write(&q, b"y").expect("write");
    assert_eq!(t.join().expect("epoller"), vec![7]);
    let mut buf = [0u8; 4];
    assert_eq!(rustix::io::read(&fd, &mut buf), Ok(1));
}

extern "C" fn on_sigusr1(_: libc::c_int) {}

#[test]
fn signal_interrupts_a_parked_read_with_eintr() {
    // A handler without SA_RESTART: the interrupted read returns EINTR.
    // SAFETY: installing a handler that does nothing is async-signal-safe;
    // the sigaction struct is fully initialised by zeroed() and the fields set.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_sigusr1 as extern "C" fn(libc::c_int) as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        sa.sa_flags = 0;
        assert_eq!(libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut()), 0);
    }
    let m = mount();
    let p = m.join("intr");
    let reader = open(&p, OFlags::RDONLY);
    let (tx, rx) = std::sync::mpsc::channel();
    let t = std::thread::spawn(move || {
        // SAFETY: pthread_self has no preconditions.
        tx.send(unsafe { libc::pthread_self() }).expect("send");
        let mut buf = [0u8; 8];
        rustix::io::read(&reader, &mut buf)
    });
    let tid = rx.recv_timeout(BOUND).expect("reader thread started");
    assert!(wait_until(BOUND, || m.parked() == 1), "read was not parked");
    // SAFETY: the thread is alive until it is joined below.
    assert_eq!(unsafe { libc::pthread_kill(tid, libc::SIGUSR1) }, 0);
    let res =
        with_timeout(BOUND, move || t.join().expect("reader")).expect("reader not interrupted");
    assert_eq!(res, Err(Errno::INTR));
    assert!(wait_until(BOUND, || m.parked() == 0));
    // The connection keeps working (interrupts were not disabled).
    std::fs::write(&p, b"ok").expect("write");
    let mut f = File::open(&p).expect("open");
    let mut buf = [0u8; 2];
    f.read_exact(&mut buf).expect("read");
    assert_eq!(&buf, b"ok");
}

#[test]
fn process_blocked_in_read_is_killable() {
    let m = mount();
    let p = m.join("kill");
    let mut child = Command::new("cat")
        .arg(&p)
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn cat");
    assert!(
        wait_until(BOUND, || m.parked() == 1),
        "cat's read was not parked"
    );
    child.kill().expect("SIGKILL");
    let mut status = None;
    assert!(
        wait_until(BOUND, || {
            status = child.try_wait().expect("wait");
            status.is_some()
        }),
        "killed child was not reaped"
    );
    assert_eq!(m.parked(), 0);
    // Nothing was consumed on its behalf.
    std::fs::write(&p, b"z").expect("write");
    let fd = open(&p, OFlags::RDONLY | OFlags::NONBLOCK);
    let mut buf = [0u8; 4];
    assert_eq!(rustix::io::read(&fd, &mut buf), Ok(1));
}

const RECORD: usize = 16;

fn record(i: u64) -> [u8; RECORD] {
    let mut r = [0u8; RECORD];
    r[..8].copy_from_slice(&i.to_le_bytes());
    r[8..].copy_from_slice(&(!i).to_le_bytes());
    r
}

#[test]
fn two_readers_neither_lose_nor_duplicate() {
    let m = mount();
    let p = m.join("share");
    const N: u64 = 5000;
    let mut readers = Vec::new();
    for _ in 0..2 {
        let fd = open(&p, OFlags::RDONLY);
        readers.push(std::thread::spawn(move || {
            let mut got = Vec::new();
            loop {
                let mut r = [0u8; RECORD];
                // Every write and every read moves whole records, so each
                // read returns exactly one.
                let n = rustix::io::read(&fd, &mut r).expect("read");
                assert_eq!(n, RECORD, "short read");
                let i = u64::from_le_bytes(r[..8].try_into().expect("8 bytes"));
                assert_eq!(r, record(i), "corrupt record");
                if i == u64::MAX {
                    return got;
                }
                got.push(i);
            }
        }));
    }
    let path = p.clone();
    let writer = std::thread::spawn(move || {
        let mut w = OpenOptions::new().write(true).open(&path).expect("open w");
        let mut batch = Vec::new();
        for i in 0..N {
            batch.extend_from_slice(&record(i));
            if batch.len() >= 7 * RECORD {
                w.write_all(&batch).expect("write");
                batch.clear();
            }
        }
        batch.extend_from_slice(&record(u64::MAX));
        batch.extend_from_slice(&record(u64::MAX));
        w.write_all(&batch).expect("write");
    });
    let results = with_timeout(Duration::from_secs(60), move || {
        writer.join().expect("writer");
        readers
            .into_iter()
            .map(|r| r.join().expect("reader"))
            .collect::<Vec<_>>()
    })
    .expect("readers did not finish");
    let mut all: Vec<u64> = results.iter().flatten().copied().collect();
    for r in &results {
        assert!(
            r.windows(2).all(|w| w[0] < w[1]),
            "a reader saw records out of order"
        );
    }
    all.sort_unstable();
    assert_eq!(all, (0..N).collect::<Vec<_>>());
}

#[test]
fn blocked_writer_takes_what_fits_and_clear_wakes_it() {
    let m = mount();
    let p = m.join("full");
    let fd = open(&p, OFlags::RDWR);
    // Partial write: only CAPACITY bytes fit.
    assert_eq!(
        rustix::io::write(&fd, &vec![b'a'; CAPACITY + 100]),
        Ok(CAPACITY)
    );
    let mut len = [0u8; 4];
    assert_eq!(raw_ioctl(&fd, FIFO_GET_LEN, len.as_mut_ptr()), Ok(0));
    assert_eq!(u32::from_ne_bytes(len) as usize, CAPACITY);
    let w = open(&p, OFlags::WRONLY);
    let t = std::thread::spawn(move || rustix::io::write(&w, b"after clear"));
    assert!(
        wait_until(BOUND, || m.parked() == 1),
        "write was not parked"
    );
    assert_eq!(raw_ioctl(&fd, FIFO_CLEAR, std::ptr::null_mut()), Ok(0));
    let res = with_timeout(BOUND, move || t.join().expect("writer")).expect("writer still blocked");
    assert_eq!(res, Ok(11));
    let mut buf = [0u8; 64];
    let n = rustix::io::read(&fd, &mut buf).expect("read");
    assert_eq!(&buf[..n], b"after clear");
}

#[test]
fn garbage_ioctls_fail_cleanly_and_the_server_stays_up() {
    let m = mount();
    let p = m.join("ioctl");
    let fd = open(&p, OFlags::RDWR | OFlags::NONBLOCK);
    let mut buf = [0u8; 256];
    for cmd in [
        0x1234_5678,
        ioctl::io(b'F', 200),
        ioctl::iowr(b'Z', 99, 128),
        ioctl::ior(b'F', 1, 4), // FIFO_CLEAR's number with a wrong direction/size
        ioctl::iow(b'F', 2, 4),
    ] {
        let r = raw_ioctl(&fd, cmd, buf.as_mut_ptr());
        assert!(
            matches!(r, Err(libc::ENOTTY) | Err(libc::EINVAL)),
            "cmd {cmd:#x} gave {r:?}"
        );
    }
    std::fs::write(&p, b"still here").expect("write");
    let n = rustix::io::read(&fd, &mut buf).expect("read");
    assert_eq!(&buf[..n], b"still here");
}

#[test]
fn directory_lists_fifos_and_stat_works() {
    let m = mount();
    for name in ["one", "two"] {
        drop(File::create(m.join(name)).expect("create"));
    }
    std::fs::write(m.join("two"), b"abc").expect("write");
    let mut names: Vec<String> = std::fs::read_dir(m.path())
        .expect("readdir")
        .map(|e| e.expect("entry").file_name().into_string().expect("utf8"))
        .collect();
    names.sort();
    assert_eq!(names, ["one", "two"]);
    let md = std::fs::metadata(m.join("two")).expect("stat");
    assert!(md.is_file());
    assert_eq!(md.len(), 3);
    assert!(std::fs::metadata(m.path()).expect("stat root").is_dir());
    // Any name can be opened; a name under a FIFO cannot.
    assert!(File::open(m.join("two/x")).is_err());
    // A stat of a missing name does not create it; an open does, empty.
    let listed = |m: &TestMount| {
        std::fs::read_dir(m.path())
            .expect("readdir")
            .any(|e| e.expect("entry").file_name() == "fresh")
    };
    assert_eq!(
        std::fs::metadata(m.join("fresh"))
            .expect("stat fresh")
            .len(),
        0
    );
    assert!(!listed(&m), "a stat created the FIFO");
    let fd = File::open(m.join("fresh")).expect("open fresh");
    assert!(listed(&m), "the open did not create the FIFO");
    assert_eq!(fd.metadata().expect("fstat fresh").len(), 0);
    // O_EXCL on an existing FIFO.
    let e = OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(0)
        .open(m.join("one"))
        .expect_err("O_EXCL");
    assert_eq!(e.raw_os_error(), Some(libc::EEXIST));
}
