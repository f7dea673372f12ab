//! hostile-peer: the lab's hostile driver, for proving that init and pcid
//! survive whatever a driver sends them (`tests/lab/tests/peers.rs`).
//!
//! A lab rule makes pcid start it for QEMU's `pci-testdev`, so it holds
//! what a real driver holds: its control channel to init, and fds 4, 5, 6
//! (VFIO container, VFIO device, pcid channel). It waits until the file
//! named by `--go` exists, then, from a seeded generator, sends on both
//! channels: random bytes, valid requests cut short, packets longer than
//! the peer accepts, requests it has no right to make (another driver's
//! `gone`, `spawn` of a template it does not enumerate, a scheme name
//! that is not its own, config writes), packets carrying too many fds
//! or fds of its own device, and a flood it never reads the answers to.
//! At the end it checks that pcid still answers its `Info` correctly and
//! prints `hostile: …` totals; then it waits for the `--stop` file
//! (so the lab can count fds while it still holds its channels) and exits.
//!
//! Empty packets are not sent: on a `SOCK_SEQPACKET` socket a reader cannot
//! tell one from a hang-up, and a driver that hangs up only loses its own
//! channel.
//!
//! Last it writes `--output N` bytes of lines to its stdout, fast, as a
//! daemon gone mad would.
//!
//! Usage: `hostile-peer --seed S --packets N [--output BYTES] --go PATH --stop PATH`.

use std::collections::BTreeMap;
use std::io::{IoSlice, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::io::Errno;
use rustix::net::{recv, sendmsg, RecvFlags, SendAncillaryBuffer, SendAncillaryMessage, SendFlags};

/// How long the peer waits for the lab's go and stop files.
const WAIT_BOUND: Duration = Duration::from_secs(300);

/// Requests init understands, with arguments this peer has no right to.
const FORBIDDEN_CONTROL: &[&str] = &[
    "register null file",
    "register disk.evil dir",
    "register init dir",
    "spawn virtio-blkd pci-0000-00-04.0",
    "spawn hostile-peer pci-0000-00-09.0",
    "spawn-io rtcd acpi-PNP0B00-0 70-71",
    "spawn-io rtcd acpi-PNP0B00-0 0-ffff",
    "gone virtio-blkd pci-0000-00-04.0",
    "gone pcid x",
    "gone virtio-netd pci-0000-00-06.0",
    "pong 18446744073709551615",
    "ready",
];

/// Requests pcid's channel must refuse: writes (the channel has none),
/// reads outside config space, variants that do not exist.
const FORBIDDEN_PCID: &[&str] = &[
    r#"{"ConfigWrite":{"offset":4,"data":[0,0]}}"#,
    r#"{"WriteConfig":{"offset":16,"value":4294967295}}"#,
    r#"{"ConfigRead":{"offset":4095,"len":2}}"#,
    r#"{"ConfigRead":{"offset":0,"len":65535}}"#,
    r#"{"ConfigRead":{"offset":65535,"len":65535}}"#,
    r#"{"ConfigRead":{"offset":-1,"len":4}}"#,
    r#"{"Bind":"0000:00:04.0"}"#,
    r#""Info""#,
    r#"{"Info":null}"#,
];

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

/// What one channel saw.
#[derive(Default)]
struct Tally {
    sent: u64,
    /// The socket was full (the peer never reads): waited, then went on.
    backpressure: u64,
    fds_passed: u64,
    replies: u64,
    by_kind: BTreeMap<&'static str, u64>,
}

impl Tally {
    fn count(&mut self, kind: &'static str) {
        *self.by_kind.entry(kind).or_default() += 1;
    }

    fn print(&self, channel: &str) {
        let kinds: Vec<String> = self
            .by_kind
            .iter()
            .map(|(k, n)| format!("{k}={n}"))
            .collect();
        println!(
            "hostile: {channel} sent {} backpressure {} fds {} replies {} [{}]",
            self.sent,
            self.backpressure,
            self.fds_passed,
            self.replies,
            kinds.join(" ")
        );
    }
}

/// Sends one packet with `fds` attached, without blocking; a full socket
/// is counted and waited on (bounded), never a reason to stop.
fn send(sock: BorrowedFd<'_>, msg: &[u8], fds: &[BorrowedFd<'_>], t: &mut Tally) {
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(fds.len().max(1)))];
    let mut anc = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !anc.push(SendAncillaryMessage::ScmRights(fds)) {
        return;
    }
    for _ in 0..50 {
        match sendmsg(
            sock,
            &[IoSlice::new(msg)],
            &mut anc,
            SendFlags::DONTWAIT | SendFlags::NOSIGNAL,
        ) {
            Ok(_) => {
                t.sent += 1;
                t.fds_passed += fds.len() as u64;
                return;
            }
            Err(Errno::AGAIN) => {
                t.backpressure += 1;
                // Let the reader catch up, as a flood's sender must.
                let mut p = [PollFd::new(&sock, PollFlags::OUT)];
                let _ = poll(&mut p, Some(&ms(100)));
            }
            Err(Errno::INTR) => {}
            Err(_) => {
                // Too long for the socket (EMSGSIZE) and the like: refused
                // before the peer saw it.
                t.count("refused-by-kernel");
                return;
            }
        }
    }
}

fn ms(n: i64) -> Timespec {
    Timespec {
        tv_sec: n / 1000,
        tv_nsec: (n % 1000) * 1_000_000,
    }
}

/// Reads every reply waiting; returns them.
fn drain(sock: BorrowedFd<'_>, t: &mut Tally) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 65536];
    while let Ok((n, _)) = recv(sock, &mut buf, RecvFlags::DONTWAIT) {
        if n == 0 {
            break;
        }
        t.replies += 1;
        out.push(buf[..n].to_vec());
    }
    out
}

fn wait_for(path: &str) -> bool {
    let end = Instant::now() + WAIT_BOUND;
    while Instant::now() < end {
        if Path::new(path).exists() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// One random packet for a channel: returns its kind, for the tally.
fn pick(rng: &mut Rng, forbidden: &[&str], valid: &[&str], max: usize) -> (&'static str, Vec<u8>) {
    match rng.below(5) {
        0 => {
            let len = 1 + rng.below(max + 100);
            ("garbage", rng.bytes(len))
        }
        1 => {
            let v = valid[rng.below(valid.len())].as_bytes();
            ("cut", v[..1 + rng.below(v.len() - 1)].to_vec())
        }
        2 => {
            let mut v = forbidden[rng.below(forbidden.len())].as_bytes().to_vec();
            v.resize(max + 1 + rng.below(4 * max), b' ');
            ("oversized", v)
        }
        3 => (
            "forbidden",
            forbidden[rng.below(forbidden.len())].as_bytes().to_vec(),
        ),
        _ => {
            // A valid request with bytes flipped.
            let mut v = valid[rng.below(valid.len())].as_bytes().to_vec();
            for _ in 0..1 + rng.below(3) {
                let i = rng.below(v.len());
                v[i] ^= 1 << rng.below(8);
            }
            ("mutated", v)
        }
    }
}

fn attack(
    sock: BorrowedFd<'_>,
    own: &[BorrowedFd<'_>],
    rng: &mut Rng,
    packets: usize,
    forbidden: &[&str],
    valid: &[&str],
    max: usize,
) -> Tally {
    let mut t = Tally::default();
    for n in 0..packets {
        let (kind, msg) = pick(rng, forbidden, valid, max);
        // One packet in eight carries fds: its own device, its channels,
        // sometimes more than the peer takes.
        let fds: Vec<BorrowedFd<'_>> = if n % 8 == 7 && !own.is_empty() {
            let count = 1 + rng.below(12);
            (0..count).map(|i| own[i % own.len()]).collect()
        } else {
            Vec::new()
        };
        if !fds.is_empty() {
            t.count("with-fds");
        }
        t.count(kind);
        send(sock, &msg, &fds, &mut t);
        // Read answers only now and then: most of the flood goes unread.
        if n % 256 == 255 {
            drain(sock, &mut t);
        }
    }
    t
}

/// Sends one request and returns the reply pcid gives it (bounded wait).
fn ask_pcid(pcid: BorrowedFd<'_>, request: &str) -> Option<pcid_interface::ChannelReply> {
    let mut t = Tally::default();
    drain(pcid, &mut t);
    send(pcid, request.as_bytes(), &[], &mut t);
    let mut p = [PollFd::new(&pcid, PollFlags::IN)];
    let _ = poll(&mut p, Some(&ms(10_000)));
    drain(pcid, &mut t)
        .iter()
        .find_map(|r| serde_json::from_slice(r).ok())
}

fn arg(args: &[String], flag: &str) -> Option<String> {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let seed = arg(&args, "--seed")
        .and_then(|s| s.parse().ok())
        .unwrap_or(1u64);
    let packets = arg(&args, "--packets")
        .and_then(|s| s.parse().ok())
        .unwrap_or(2000usize);
    let (Some(go), Some(stop)) = (arg(&args, "--go"), arg(&args, "--stop")) else {
        eprintln!("usage: hostile-peer --seed S --packets N --go PATH --stop PATH");
        return ExitCode::from(2);
    };
    let daemon = match daemon::Daemon::from_env() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("hostile: {e}");
            return ExitCode::from(2);
        }
    };
    let passed: Vec<OwnedFd> = match daemon::take_passed_fds() {
        Ok(f) if f.len() == 3 => f,
        Ok(f) => {
            eprintln!("hostile: expected 3 passed fds, got {}", f.len());
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("hostile: {e}");
            return ExitCode::from(2);
        }
    };
    let control = daemon.control_fd();
    let pcid = passed[2].as_fd();
    println!("hostile: holding control channel and fds 4 5 6; waiting for {go}");
    if !wait_for(&go) {
        eprintln!("hostile: {go} never appeared");
        return ExitCode::from(1);
    }
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let own: Vec<BorrowedFd<'_>> = passed.iter().map(|f| f.as_fd()).chain([control]).collect();
    println!("hostile: seed {seed}, {packets} packets per channel");

    let ctl = attack(
        control,
        &own,
        &mut rng,
        packets,
        FORBIDDEN_CONTROL,
        &[
            "register disk.x dir",
            "spawn virtio-blkd pci-0000-00-04.0 a b",
            "pong 17",
        ],
        daemon::proto::MAX_MESSAGE,
    );
    let mut pci = attack(
        pcid,
        &own,
        &mut rng,
        packets,
        FORBIDDEN_PCID,
        &[r#""Info""#, r#"{"ConfigRead":{"offset":0,"len":64}}"#],
        4096,
    );
    // Let both catch up (bounded), then count what came back.
    std::thread::sleep(Duration::from_millis(500));
    let mut ctl = ctl;
    drain(control, &mut ctl);
    drain(pcid, &mut pci);
    ctl.print("control");
    pci.print("pcid");

    // Writes are refused one by one, and pcid still answers this driver,
    // correctly.
    for write in &FORBIDDEN_PCID[..2] {
        match ask_pcid(pcid, write) {
            Some(pcid_interface::ChannelReply::Error(e)) => {
                println!("hostile: pcid refused {write}: {e}")
            }
            other => println!("hostile: pcid DID NOT refuse {write}: {other:?}"),
        }
    }
    match ask_pcid(pcid, r#""Info""#) {
        Some(pcid_interface::ChannelReply::Info(i)) => println!(
            "hostile: pcid still answers: {:04x}:{:04x} at {}",
            i.vendor, i.device, i.address
        ),
        other => println!("hostile: pcid did not answer Info after the attack: {other:?}"),
    }
    // Output init must forward without stalling or filling memory.
    let flood = arg(&args, "--output")
        .and_then(|s| s.parse().ok())
        .unwrap_or(0usize);
    if flood > 0 {
        println!("hostile: writing {flood} bytes of output");
        let mut out = std::io::stdout().lock();
        let line = format!("flood {}\n", "x".repeat(94));
        for _ in 0..flood / line.len() {
            if out.write_all(line.as_bytes()).is_err() {
                break;
            }
        }
        let _ = out.flush();
        drop(out);
    }
    println!("hostile: done; waiting for {stop}");
    if !wait_for(&stop) {
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}
