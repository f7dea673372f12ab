//! frames: sends, receives and checks numbered test frames, through a
//! `network.*` scheme or through a Linux AF_PACKET socket (the in-kernel
//! drivers' side of the benchmark), so both get the very same code.
//!
//!   frames send TARGET [--count N] [--min A --max B | --size S] [--seed S] [--pace-us U] [--dst MAC]
//!   frames recv TARGET [--count N] [--seed S] [--timeout-ms T] [--ready FILE] [--progress FILE]
//!   frames pair FROM TO [--count N] [--min A --max B | --size S] [--seed S] [--window W] [--timeout-ms T]
//!   frames write TARGET LEN [--repeat K]
//!   frames dump TARGET [--count N] [--timeout-ms T] [--ready FILE]
//!   frames wait TARGET [--timeout-ms T] [--ready FILE]
//!
//! TARGET is a scheme directory (`/scheme/network.…`, its `frames` file is
//! used), a frame file, or `packet:IFNAME` (AF_PACKET, needs root and the
//! interface up).
//!
//! Every frame: destination (broadcast unless `--dst`), source (the
//! scheme's `mac`, or 02:00:00:00:00:01), EtherType 0x88b5 (IEEE local
//! experimental), then a 22-byte header: magic `FRM1`, stream id (the
//! seed, u32 LE), sequence number (u64 LE), frame length (u16 LE), FNV-1a
//! checksum (u32 LE) over everything but itself, then a payload derived from
//! (stream, sequence). A receiver regenerates the expected frame from the
//! header and compares byte for byte, so loss, duplication, reordering and
//! corruption are each counted. Frames of other EtherTypes or streams are
//! ignored (`foreign`). Sizes are random in `min..=max` per sequence number.
//!
//! `recv` waits until it has `count` good frames of its stream, or
//! `timeout-ms` passes without any frame. `pair` runs a receiver thread on TO
//! and sends on FROM with at most `window` frames beyond the highest one
//! received in flight, so the sender never overruns the receiving side
//! (a lost frame does not stall it: the window moves with what arrives).
//! `write` writes LEN filler bytes (LEN may be a runt or oversize) and
//! reports the result (`--repeat`: K writes, with counts). `dump` prints
//! each received frame of EtherType 0x88b5 in hex, whatever its content (for
//! byte-for-byte checks by a peer). `wait` polls for readability and says
//! whether it came, and how fast (the handle was idle when it started).
//! `--ready FILE` is written once the endpoint is open, so a peer knows
//! when frames will be seen. `--progress FILE` (recv) keeps the number of
//! good frames received so far in FILE (updated every 16), so a peer
//! elsewhere can pace itself by what this reader has consumed.
//!
//! Output, one line per side, `key value` pairs after a verb:
//!   sent N bytes B errors E secs S fps F mbps M
//!   received N bytes B bad X lost L dup D reordered R foreign F secs S fps F mbps M
//!   write LEN ok N | write LEN err ENAME
//!   frame LEN HEX (per frame) then dumped N
//!   poll ready idle_before yes|no ms M | poll timeout
//! (`mbps` is megabytes per second of frame bytes, headers included).
//! Exit status 0 when everything expected arrived intact.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::fs::{open, Mode, OFlags};
use rustix::io::Errno;
use rustix::net::{AddressFamily, SocketType};

const ETHERTYPE: u16 = 0x88b5;
const MAGIC: &[u8; 4] = b"FRM1";
/// Ethernet header (14) + our header (22).
const HDR: usize = 36;
const MAX_FRAME: usize = 1514;
const BROADCAST: [u8; 6] = [0xff; 6];
const DEFAULT_SRC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];

fn fail(msg: &str) -> ! {
    eprintln!("frames: {msg}");
    std::process::exit(2);
}

fn errno_name(e: Errno) -> String {
    let known = [
        (Errno::AGAIN, "EAGAIN"),
        (Errno::INVAL, "EINVAL"),
        (Errno::IO, "EIO"),
        (Errno::NOENT, "ENOENT"),
        (Errno::ACCESS, "EACCES"),
        (Errno::BADF, "EBADF"),
        (Errno::MSGSIZE, "EMSGSIZE"),
        (Errno::NOTCONN, "ENOTCONN"),
        (Errno::NODEV, "ENODEV"),
        (Errno::NXIO, "ENXIO"),
        (Errno::INTR, "EINTR"),
    ];
    known
        .iter()
        .find(|(k, _)| *k == e)
        .map(|(_, n)| (*n).to_owned())
        .unwrap_or_else(|| format!("E{}", e.raw_os_error()))
}

// ---------------------------------------------------------------- frames

/// xorshift64*.
fn next_random(x: u64) -> u64 {
    let mut x = x.max(1);
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    x.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

fn fnv1a(parts: &[&[u8]]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for p in parts {
        for &b in *p {
            h ^= u32::from(b);
            h = h.wrapping_mul(0x0100_0193);
        }
    }
    h
}

/// Frame length for sequence number `seq`, in `min..=max`.
fn frame_len(stream: u32, seq: u64, min: usize, max: usize) -> usize {
    let r = next_random(u64::from(stream) << 32 ^ seq.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    min + (r % (max - min + 1) as u64) as usize
}

/// The frame for (`stream`, `seq`) of `len` bytes.
fn build(dst: [u8; 6], src: [u8; 6], stream: u32, seq: u64, len: usize) -> Vec<u8> {
    let mut f = Vec::with_capacity(len);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ETHERTYPE.to_be_bytes());
    f.extend_from_slice(MAGIC);
    f.extend_from_slice(&stream.to_le_bytes());
    f.extend_from_slice(&seq.to_le_bytes());
    f.extend_from_slice(&(len as u16).to_le_bytes());
    f.extend_from_slice(&[0; 4]);
    let mut r = next_random(u64::from(stream) ^ seq.rotate_left(17) ^ 0x5555);
    while f.len() < len {
        r = next_random(r);
        f.extend_from_slice(&r.to_le_bytes()[..(len - f.len()).min(8)]);
    }
    let sum = fnv1a(&[&f[..32], &f[36..]]);
    f[32..36].copy_from_slice(&sum.to_le_bytes());
    f
}

enum Verdict {
    /// Ours and intact: sequence number and length.
    Good(u64, usize),
    /// Ours (magic and stream match) but damaged.
    Bad,
    /// Someone else's traffic.
    Foreign,
}

fn check(frame: &[u8], stream: u32) -> Verdict {
    if frame.len() < HDR || frame[12..14] != ETHERTYPE.to_be_bytes() || &frame[14..18] != MAGIC {
        return Verdict::Foreign;
    }
    let le32 = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    if le32(&frame[18..22]) != stream {
        return Verdict::Foreign;
    }
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&frame[22..30]);
    let seq = u64::from_le_bytes(seq);
    let len = usize::from(u16::from_le_bytes([frame[30], frame[31]]));
    // Frames shorter than 60 bytes may come back padded by the NIC.
    let padded_ok = len < 60 && frame.len() == 60;
    if len < HDR || (frame.len() != len && !padded_ok) {
        return Verdict::Bad;
    }
    let mut src = [0u8; 6];
    src.copy_from_slice(&frame[6..12]);
    let mut dst = [0u8; 6];
    dst.copy_from_slice(&frame[0..6]);
    if frame[..len] != build(dst, src, stream, seq, len)[..] {
        return Verdict::Bad;
    }
    Verdict::Good(seq, len)
}

// ------------------------------------------------------------- endpoints

/// `struct sockaddr_ll` from `<linux/if_packet.h>`.
#[repr(C)]
struct SockaddrLl {
    family: u16,
    protocol: u16,
    ifindex: i32,
    hatype: u16,
    pkttype: u8,
    halen: u8,
    addr: [u8; 8],
}

// SAFETY: `with_sockaddr` passes a pointer to a live, fully initialised
// `sockaddr_ll` and its exact size, valid for the duration of `f`.
unsafe impl rustix::net::addr::SocketAddrArg for SockaddrLl {
    unsafe fn with_sockaddr<R>(
        &self,
        f: impl FnOnce(
            *const rustix::net::addr::SocketAddrOpaque,
            rustix::net::addr::SocketAddrLen,
        ) -> R,
    ) -> R {
        f(
            (self as *const SockaddrLl).cast(),
            std::mem::size_of::<SockaddrLl>() as u32,
        )
    }
}

struct Endpoint {
    fd: OwnedFd,
    mac: [u8; 6],
    name: String,
}

fn open_endpoint(target: &str) -> Endpoint {
    if let Some(ifname) = target.strip_prefix("packet:") {
        return open_packet(ifname);
    }
    let path = std::path::Path::new(target);
    let (file, dir) = if path.is_dir() {
        (path.join("frames"), path.to_path_buf())
    } else {
        (
            path.to_path_buf(),
            path.parent().map(|p| p.to_path_buf()).unwrap_or_default(),
        )
    };
    // Non-blocking, and every wait a bounded poll: a read that poll found
    // ready can still wait after a driver restart (the frame it was about
    // to get was lost with the dead instance), and must not block past
    // the timeout.
    let fd = open(
        &file,
        OFlags::RDWR | OFlags::CLOEXEC | OFlags::NONBLOCK,
        Mode::empty(),
    )
    .unwrap_or_else(|e| fail(&format!("cannot open {}: {e}", file.display())));
    let mac = std::fs::read_to_string(dir.join("mac"))
        .ok()
        .and_then(|s| parse_mac(&s))
        .unwrap_or(DEFAULT_SRC);
    Endpoint {
        fd,
        mac,
        name: file.display().to_string(),
    }
}

fn open_packet(ifname: &str) -> Endpoint {
    let proto = ETHERTYPE.to_be();
    let protocol = rustix::net::Protocol::from_raw(
        std::num::NonZeroU32::new(u32::from(proto)).unwrap_or(std::num::NonZeroU32::MIN),
    );
    let fd = rustix::net::socket(AddressFamily::PACKET, SocketType::RAW, Some(protocol))
        .unwrap_or_else(|e| fail(&format!("AF_PACKET socket: {e} (needs root)")));
    let ifindex = rustix::net::netdevice::name_to_index(&fd, ifname)
        .unwrap_or_else(|e| fail(&format!("no interface {ifname}: {e}")));
    let addr = SockaddrLl {
        family: AddressFamily::PACKET.as_raw(),
        protocol: proto,
        ifindex: ifindex as i32,
        hatype: 0,
        pkttype: 0,
        halen: 0,
        addr: [0; 8],
    };
    rustix::net::bind(&fd, &addr).unwrap_or_else(|e| fail(&format!("bind {ifname}: {e}")));
    // Room for a window of full-size frames (the default holds ~100); the
    // forced variant passes rmem_max, as root may.
    if rustix::net::sockopt::set_socket_recv_buffer_size_force(&fd, 4 << 20).is_err() {
        let _ = rustix::net::sockopt::set_socket_recv_buffer_size(&fd, 4 << 20);
    }
    let _ = rustix::net::sockopt::set_socket_send_buffer_size(&fd, 4 << 20);
    let mac = std::fs::read_to_string(format!("/sys/class/net/{ifname}/address"))
        .ok()
        .and_then(|s| parse_mac(&s))
        .unwrap_or(DEFAULT_SRC);
    Endpoint {
        fd,
        mac,
        name: format!("packet:{ifname}"),
    }
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.trim().split(':');
    for b in &mut out {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

/// How long a write may wait for room in the transmit ring.
const SEND_BOUND: Duration = Duration::from_secs(10);

/// Writes one frame (retrying after signals, waiting in `poll` while the
/// transmit ring is full, and for a packet socket whose queue is full,
/// after a short wait); `ETIMEDOUT` if there is no room within
/// [`SEND_BOUND`].
fn send_one(fd: &OwnedFd, frame: &[u8]) -> Result<(), Errno> {
    let deadline = Instant::now() + SEND_BOUND;
    loop {
        match rustix::io::write(fd, frame) {
            Ok(_) => return Ok(()),
            Err(Errno::INTR) => continue,
            Err(Errno::NOBUFS) => std::thread::sleep(Duration::from_micros(200)),
            Err(Errno::AGAIN) => {
                if Instant::now() >= deadline {
                    return Err(Errno::TIMEDOUT);
                }
                let ts = Timespec {
                    tv_sec: 0,
                    tv_nsec: 100_000_000,
                };
                let mut fds = [PollFd::new(fd, PollFlags::OUT)];
                let _ = poll(&mut fds, Some(&ts));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Waits up to `timeout` for a frame; `Ok(None)` on timeout.
fn recv_one(fd: &OwnedFd, buf: &mut [u8], timeout: Duration) -> Result<Option<usize>, Errno> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ts = Timespec {
            tv_sec: left.as_secs() as i64,
            tv_nsec: i64::from(left.subsec_nanos()),
        };
        let mut fds = [PollFd::new(fd, PollFlags::IN)];
        match poll(&mut fds, Some(&ts)) {
            Ok(0) => return Ok(None),
            Ok(_) => {}
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e),
        }
        match rustix::io::read(fd.as_fd(), &mut *buf) {
            Ok(n) => return Ok(Some(n)),
            Err(Errno::INTR | Errno::AGAIN) => {
                if left.is_zero() {
                    return Ok(None);
                }
            }
            Err(e) => return Err(e),
        }
    }
}

// ---------------------------------------------------------------- options

struct Opts {
    count: u64,
    min: usize,
    max: usize,
    seed: u32,
    pace: Duration,
    window: u64,
    timeout: Duration,
    dst: [u8; 6],
    ready: Option<String>,
    progress: Option<String>,
    repeat: u64,
    positional: Vec<String>,
}

fn parse_opts(args: &[String]) -> Opts {
    let mut o = Opts {
        count: 1000,
        min: 60,
        max: MAX_FRAME,
        seed: 1,
        pace: Duration::ZERO,
        window: 32,
        timeout: Duration::from_secs(10),
        dst: BROADCAST,
        ready: None,
        progress: None,
        repeat: 1,
        positional: Vec::new(),
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || {
            it.next()
                .cloned()
                .unwrap_or_else(|| fail(&format!("{a} needs a value")))
        };
        let num = |s: String| -> u64 {
            s.parse()
                .unwrap_or_else(|_| fail(&format!("bad number {s:?} for {a}")))
        };
        match a.as_str() {
            "--count" => o.count = num(val()),
            "--min" => o.min = num(val()) as usize,
            "--max" => o.max = num(val()) as usize,
            "--size" => {
                let s = num(val()) as usize;
                o.min = s;
                o.max = s;
            }
            "--seed" => o.seed = num(val()) as u32,
            "--pace-us" => o.pace = Duration::from_micros(num(val())),
            "--window" => o.window = num(val()).max(1),
            "--timeout-ms" => o.timeout = Duration::from_millis(num(val())),
            "--dst" => {
                let v = val();
                o.dst = parse_mac(&v).unwrap_or_else(|| fail(&format!("bad MAC {v}")));
            }
            "--ready" => o.ready = Some(val()),
            "--progress" => o.progress = Some(val()),
            "--repeat" => o.repeat = num(val()),
            s if s.starts_with("--") => fail(&format!("unknown option {s}")),
            _ => o.positional.push(a.clone()),
        }
    }
    if o.min < HDR || o.max > MAX_FRAME || o.min > o.max {
        fail(&format!(
            "sizes must satisfy {HDR} <= min <= max <= {MAX_FRAME}"
        ));
    }
    o
}

fn rate(n: u64, bytes: u64, secs: f64) -> String {
    let secs = secs.max(1e-9);
    format!(
        "secs {secs:.3} fps {:.1} mbps {:.3}",
        n as f64 / secs,
        bytes as f64 / secs / 1e6
    )
}

// ------------------------------------------------------------------ sides

struct SendReport {
    sent: u64,
    bytes: u64,
    errors: u64,
    secs: f64,
}

impl SendReport {
    fn line(&self) -> String {
        format!(
            "sent {} bytes {} errors {} {}",
            self.sent,
            self.bytes,
            self.errors,
            rate(self.sent, self.bytes, self.secs)
        )
    }
}

/// What the receiver has seen; shared with a pair's sender for its window.
#[derive(Default)]
struct RecvState {
    good: u64,
    bytes: u64,
    bad: u64,
    dup: u64,
    reordered: u64,
    foreign: u64,
    /// Highest sequence number received + 1.
    next: u64,
    done: bool,
    first: Option<Instant>,
    last: Option<Instant>,
}

impl RecvState {
    fn line(&self, count: u64) -> String {
        let secs = match (self.first, self.last) {
            (Some(a), Some(b)) => (b - a).as_secs_f64(),
            _ => 0.0,
        };
        format!(
            "received {} bytes {} bad {} lost {} dup {} reordered {} foreign {} {}",
            self.good,
            self.bytes,
            self.bad,
            count.saturating_sub(self.good),
            self.dup,
            self.reordered,
            self.foreign,
            rate(self.good, self.bytes, secs)
        )
    }
}

struct Shared {
    state: Mutex<RecvState>,
    moved: Condvar,
}

fn lock(s: &Shared) -> std::sync::MutexGuard<'_, RecvState> {
    s.state.lock().unwrap_or_else(|e| e.into_inner())
}

/// Receives `count` frames of `stream`, or until `timeout` passes idle.
fn receive(
    ep: &Endpoint,
    stream: u32,
    count: u64,
    timeout: Duration,
    shared: &Shared,
    progress: Option<&str>,
) {
    let report = |good: u64| {
        if let Some(p) = progress {
            // Written whole and renamed, so a reader never sees half a number.
            let tmp = format!("{p}.tmp");
            if std::fs::write(&tmp, format!("{good}\n")).is_ok() {
                let _ = std::fs::rename(&tmp, p);
            }
        }
    };
    report(0);
    let mut seen = vec![false; count as usize];
    let mut buf = vec![0u8; 2048];
    loop {
        if lock(shared).good >= count {
            break;
        }
        let n = match recv_one(&ep.fd, &mut buf, timeout) {
            Ok(Some(n)) => n,
            Ok(None) => break,
            Err(e) => {
                eprintln!("frames: read {}: {e}", ep.name);
                break;
            }
        };
        let now = Instant::now();
        let mut st = lock(shared);
        match check(&buf[..n], stream) {
            Verdict::Foreign => st.foreign += 1,
            Verdict::Bad => st.bad += 1,
            Verdict::Good(seq, len) => {
                match seen.get_mut(seq as usize) {
                    None => st.bad += 1,
                    Some(true) => st.dup += 1,
                    Some(s) => {
                        *s = true;
                        st.good += 1;
                        st.bytes += len as u64;
                        if seq + 1 < st.next {
                            st.reordered += 1;
                        }
                        st.next = st.next.max(seq + 1);
                        st.first.get_or_insert(now);
                        st.last = Some(now);
                        if st.good.is_multiple_of(16) {
                            report(st.good);
                        }
                    }
                }
                shared.moved.notify_all();
            }
        }
    }
    let good = {
        let mut st = lock(shared);
        st.done = true;
        st.good
    };
    report(good);
    shared.moved.notify_all();
}

/// Sends `o.count` frames; with `window`, waits while more than `window`
/// frames are beyond the highest one the receiver has seen.
fn send(ep: &Endpoint, o: &Opts, window: Option<&Shared>) -> SendReport {
    let mut r = SendReport {
        sent: 0,
        bytes: 0,
        errors: 0,
        secs: 0.0,
    };
    let start = Instant::now();
    for seq in 0..o.count {
        if let Some(shared) = window {
            let mut st = lock(shared);
            while seq >= st.next + o.window && !st.done {
                // Bounded: the receiver sets `done` after its idle timeout.
                st = shared
                    .moved
                    .wait_timeout(st, Duration::from_millis(100))
                    .map(|(g, _)| g)
                    .unwrap_or_else(|e| e.into_inner().0);
            }
            if st.done {
                break;
            }
        }
        let len = frame_len(o.seed, seq, o.min, o.max);
        let frame = build(o.dst, ep.mac, o.seed, seq, len);
        match send_one(&ep.fd, &frame) {
            Ok(()) => {
                r.sent += 1;
                r.bytes += len as u64;
            }
            Err(e) => {
                r.errors += 1;
                if r.errors <= 3 {
                    eprintln!("frames: write {} ({len} bytes): {e}", ep.name);
                }
            }
        }
        if !o.pace.is_zero() {
            std::thread::sleep(o.pace);
        }
    }
    r.secs = start.elapsed().as_secs_f64();
    r
}

fn signal_ready(o: &Opts) {
    if let Some(p) = &o.ready {
        if let Err(e) = std::fs::write(p, b"ready\n") {
            fail(&format!("cannot write {p}: {e}"));
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(cmd) = args.first() else {
        fail("usage: frames send|recv|pair|write … (see the source's doc comment)");
    };
    let o = parse_opts(&args[1..]);
    let pos = |i: usize| -> &str {
        o.positional
            .get(i)
            .map(String::as_str)
            .unwrap_or_else(|| fail(&format!("{cmd}: missing argument {}", i + 1)))
    };
    let ok = match cmd.as_str() {
        "send" => {
            let ep = open_endpoint(pos(0));
            signal_ready(&o);
            let r = send(&ep, &o, None);
            println!("{}", r.line());
            r.errors == 0
        }
        "recv" => {
            let ep = open_endpoint(pos(0));
            signal_ready(&o);
            let shared = Shared {
                state: Mutex::new(RecvState::default()),
                moved: Condvar::new(),
            };
            receive(
                &ep,
                o.seed,
                o.count,
                o.timeout,
                &shared,
                o.progress.as_deref(),
            );
            let st = lock(&shared);
            println!("{}", st.line(o.count));
            st.good == o.count && st.bad == 0 && st.dup == 0
        }
        "pair" => {
            let from = open_endpoint(pos(0));
            let to = open_endpoint(pos(1));
            signal_ready(&o);
            let shared = Arc::new(Shared {
                state: Mutex::new(RecvState::default()),
                moved: Condvar::new(),
            });
            let (s2, count, timeout, stream) = (shared.clone(), o.count, o.timeout, o.seed);
            let rx = std::thread::spawn(move || receive(&to, stream, count, timeout, &s2, None));
            let r = send(&from, &o, Some(&shared));
            if rx.join().is_err() {
                fail("receiver thread panicked");
            }
            let st = lock(&shared);
            println!("{}", r.line());
            println!("{}", st.line(o.count));
            r.errors == 0 && st.good == o.count && st.bad == 0 && st.dup == 0
        }
        "write" => {
            let ep = open_endpoint(pos(0));
            let len: usize = pos(1)
                .parse()
                .unwrap_or_else(|_| fail("write: LEN must be a number"));
            let mut frame = vec![0xa5u8; len];
            if len >= 14 {
                frame[..6].copy_from_slice(&o.dst);
                frame[6..12].copy_from_slice(&ep.mac);
                frame[12..14].copy_from_slice(&ETHERTYPE.to_be_bytes());
            }
            let mut all_ok = true;
            let mut last = String::new();
            let mut counts = (0u64, 0u64);
            for _ in 0..o.repeat.max(1) {
                match rustix::io::write(&ep.fd, &frame) {
                    Ok(n) => {
                        counts.0 += 1;
                        last = format!("write {len} ok {n}");
                    }
                    Err(e) => {
                        counts.1 += 1;
                        all_ok = false;
                        last = format!("write {len} err {}", errno_name(e));
                    }
                }
            }
            if o.repeat > 1 {
                println!("{last} ok_count {} err_count {}", counts.0, counts.1);
            } else {
                println!("{last}");
            }
            all_ok
        }
        "dump" => {
            let ep = open_endpoint(pos(0));
            signal_ready(&o);
            let mut buf = vec![0u8; 2048];
            let mut n_dumped = 0u64;
            while n_dumped < o.count {
                match recv_one(&ep.fd, &mut buf, o.timeout) {
                    Ok(Some(n)) => {
                        let f = &buf[..n];
                        if n < 14 || f[12..14] != ETHERTYPE.to_be_bytes() {
                            continue;
                        }
                        let hex: String = f.iter().map(|b| format!("{b:02x}")).collect();
                        println!("frame {n} {hex}");
                        n_dumped += 1;
                    }
                    Ok(None) => break,
                    Err(e) => {
                        eprintln!("frames: read {}: {e}", ep.name);
                        break;
                    }
                }
            }
            println!("dumped {n_dumped}");
            n_dumped == o.count
        }
        "wait" => {
            let ep = open_endpoint(pos(0));
            let readable = |t: &Timespec| {
                let mut fds = [PollFd::new(&ep.fd, PollFlags::IN)];
                matches!(poll(&mut fds, Some(t)), Ok(n) if n > 0)
            };
            let zero = Timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            let idle = !readable(&zero);
            signal_ready(&o);
            let start = Instant::now();
            let mut ready = false;
            while !ready && start.elapsed() < o.timeout {
                let left = o.timeout.saturating_sub(start.elapsed());
                ready = readable(&Timespec {
                    tv_sec: left.as_secs() as i64,
                    tv_nsec: i64::from(left.subsec_nanos()),
                });
            }
            if ready {
                println!(
                    "poll ready idle_before {} ms {}",
                    if idle { "yes" } else { "no" },
                    start.elapsed().as_millis()
                );
            } else {
                println!("poll timeout");
            }
            ready && idle
        }
        other => fail(&format!("unknown command {other}")),
    };
    std::process::exit(if ok { 0 } else { 1 });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_check_and_damage_is_seen() {
        for seq in 0..200u64 {
            let len = frame_len(7, seq, 36, 1514);
            assert!((36..=1514).contains(&len));
            let f = build(BROADCAST, DEFAULT_SRC, 7, seq, len);
            assert_eq!(f.len(), len);
            assert!(matches!(check(&f, 7), Verdict::Good(s, l) if s == seq && l == len));
            assert!(matches!(check(&f, 8), Verdict::Foreign));
            let mut g = f.clone();
            let i = HDR + (seq as usize % (len - HDR).max(1));
            if i < len {
                g[i] ^= 1;
                assert!(matches!(check(&g, 7), Verdict::Bad));
            }
            let mut short = f.clone();
            short.pop();
            assert!(matches!(check(&short, 7), Verdict::Bad));
        }
        // A 40-byte frame padded to 60 still checks.
        let mut f = build(BROADCAST, DEFAULT_SRC, 1, 3, 40);
        f.resize(60, 0);
        assert!(matches!(check(&f, 1), Verdict::Good(3, 40)));
        let mut other = build(BROADCAST, DEFAULT_SRC, 1, 3, 100);
        other[12] = 0x08;
        assert!(matches!(check(&other, 1), Verdict::Foreign));
    }
}
