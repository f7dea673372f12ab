//! The NIC drivers end to end: pcid binds QEMU's e1000 (05.0) and
//! virtio-net (06.0) to vfio-pci and init starts one unprivileged daemon
//! each, serving /scheme/network.*; the guest's `frames` tool sends and
//! checks numbered frames (sequence number, checksum, content regenerated
//! per frame) through those schemes.
//!
//! Two boots: both NICs on one QEMU hub (traffic between them, stats, bad
//! input, link loss), and both NICs on `dgram` netdevs on the host's
//! loopback, where this test is the peer and compares frames byte for byte.

use std::collections::{BTreeMap, HashMap};
use std::net::UdpSocket;
use std::time::{Duration, Instant};

use lab::{Config, Vm};
use serde_json::json;

const E1000: &str = "/scheme/network.pci-0000-00-05.0_e1000";
const VIRTIO: &str = "/scheme/network.pci-0000-00-06.0_virtio_net";
const MAC_E1000: &str = "52:54:00:12:34:05";
const MAC_VIRTIO: &str = "52:54:00:12:34:06";
/// The two scenarios boot one VM each; this keeps them from running at once
/// (the test harness runs a file's tests on parallel threads).
static ONE_VM: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Frames per direction between the two NICs.
const FRAMES: u64 = 10_000;
/// Frames in flight beyond the highest one received (fits every ring).
const WINDOW: u64 = 64;

fn hub_config() -> Config {
    Config::new("network-hub").args(lab::nic_pair_on_hub(0, "05.0", "06.0"))
}

/// Waits (bounded, in the guest) until both schemes serve frames and both
/// links are up; returns the daemons' pids (e1000d, virtio-netd).
fn wait_for_nics(vm: &mut Vm) -> lab::Result<(String, String)> {
    let out = vm.sh_timeout(
        &format!(
            "for i in $(seq 600); do \
               [ \"$(cat {E1000}/link 2>/dev/null)\" = up ] && \
               [ \"$(cat {VIRTIO}/link 2>/dev/null)\" = up ] && exit 0; sleep 0.1; done; \
             ls /scheme; cat {E1000}/link {VIRTIO}/link; exit 1"
        ),
        Duration::from_secs(90),
    )?;
    if !out.success() {
        return Err(format!(
            "NICs not up: {}{}\n{}",
            out.stdout_str(),
            out.stderr_str(),
            vm.console()
        ));
    }
    let e = vm.ok("pidof e1000d")?.trim().to_owned();
    let v = vm.ok("pidof virtio-netd")?.trim().to_owned();
    assert!(
        !e.is_empty() && !e.contains(' '),
        "one e1000d expected: {e:?}"
    );
    assert!(
        !v.is_empty() && !v.contains(' '),
        "one virtio-netd expected: {v:?}"
    );
    Ok((e, v))
}

fn stats(vm: &mut Vm, scheme: &str) -> lab::Result<HashMap<String, u64>> {
    let text = vm.ok(&format!("cat {scheme}/stats"))?;
    let mut m = HashMap::new();
    for line in text.lines() {
        let mut it = line.split_whitespace();
        if let (Some(k), Some(v)) = (it.next(), it.next()) {
            m.insert(
                k.to_owned(),
                v.parse().map_err(|_| format!("bad stats line {line:?}"))?,
            );
        }
    }
    for k in [
        "rx_frames",
        "rx_bytes",
        "tx_frames",
        "tx_bytes",
        "rx_dropped",
        "rx_errors",
        "tx_errors",
    ] {
        if !m.contains_key(k) {
            return Err(format!("{scheme}/stats lacks {k}: {text}"));
        }
    }
    Ok(m)
}

fn delta(after: &HashMap<String, u64>, before: &HashMap<String, u64>, k: &str) -> u64 {
    after[k] - before[k]
}

/// The `key value` pairs of the output line starting with `verb`.
fn summary(out: &str, verb: &str) -> BTreeMap<String, u64> {
    lab::frames_summary(out, verb).unwrap_or_else(|| panic!("no {verb:?} line in {out:?}"))
}

fn num(m: &BTreeMap<String, u64>, k: &str) -> u64 {
    *m.get(k).unwrap_or_else(|| panic!("no number {k} in {m:?}"))
}

/// `frames pair FROM TO`: all `count` frames arrive intact; the stats of
/// both NICs moved by exactly what was sent.
fn pair(vm: &mut Vm, from: &str, to: &str, count: u64, sizes: &str, seed: u32) -> lab::Result<()> {
    pair_checked(vm, from, to, count, sizes, seed, true)
}

/// [`pair`], with the stats check optional (frames of an earlier stream
/// may still be on their way: the receiver ignores them, the stats not).
fn pair_checked(
    vm: &mut Vm,
    from: &str,
    to: &str,
    count: u64,
    sizes: &str,
    seed: u32,
    check_stats: bool,
) -> lab::Result<()> {
    let before = (stats(vm, from)?, stats(vm, to)?);
    let out = vm.sh_timeout(
        &format!(
            "frames pair {from} {to} --count {count} {sizes} --seed {seed} \
             --window {WINDOW} --timeout-ms 20000"
        ),
        Duration::from_secs(900),
    )?;
    let text = out.stdout_str();
    eprintln!("{from} -> {to}: {text}{}", out.stderr_str());
    let sent = summary(&text, "sent");
    let recv = summary(&text, "received");
    assert_eq!(num(&sent, "sent"), count, "{text}");
    assert_eq!(num(&sent, "errors"), 0, "{text}");
    assert_eq!(num(&recv, "received"), count, "{text}");
    for k in ["bad", "lost", "dup", "reordered"] {
        assert_eq!(num(&recv, k), 0, "{k}: {text}");
    }
    assert!(out.success(), "{text}{}", out.stderr_str());
    let bytes = num(&sent, "bytes");
    assert_eq!(num(&recv, "bytes"), bytes);
    if !check_stats {
        return Ok(());
    }
    let after = (stats(vm, from)?, stats(vm, to)?);
    assert_eq!(delta(&after.0, &before.0, "tx_frames"), count);
    assert_eq!(delta(&after.0, &before.0, "tx_bytes"), bytes);
    assert_eq!(delta(&after.1, &before.1, "rx_frames"), count);
    assert_eq!(delta(&after.1, &before.1, "rx_bytes"), bytes);
    for k in ["rx_dropped", "rx_errors", "tx_errors"] {
        assert_eq!(delta(&after.1, &before.1, k), 0, "{to} {k}");
        assert_eq!(delta(&after.0, &before.0, k), 0, "{from} {k}");
    }
    Ok(())
}

fn unprivileged_and_bound(vm: &mut Vm, pids: [(&str, u32); 2]) -> lab::Result<()> {
    for (pid, id) in pids {
        vm.check_driver_privileges(pid, id)?;
    }
    for addr in ["0000:00:05.0", "0000:00:06.0"] {
        vm.check_vfio_bound(addr, &["e1000", "virtio_net", "virtio_pci"])?;
    }
    Ok(())
}

/// Runts and oversize frames get EINVAL; a non-blocking read on an idle
/// link gets EAGAIN.
fn bad_writes_and_idle_reads(vm: &mut Vm, scheme: &str) -> lab::Result<()> {
    for len in [1, 13, 1515, 4000] {
        let out = vm.sh(&format!("frames write {scheme} {len}"))?;
        assert_eq!(
            out.stdout_str().trim(),
            format!("write {len} err EINVAL"),
            "{scheme}"
        );
    }
    let out = vm.sh(&format!("frames write {scheme} 14"))?;
    assert_eq!(out.stdout_str().trim(), "write 14 ok 14", "{scheme}");
    let out = vm.sh(&format!("probe read --nonblock {scheme}/frames 2048"))?;
    assert_eq!(out.stdout_str().trim(), "err EAGAIN", "{scheme}");
    Ok(())
}

/// `frames wait` on `waiter` (idle when it starts polling) is woken by one
/// frame that `send` (a guest command, or a closure on the host) produces.
fn poll_wakes(vm: &mut Vm, waiter: &str, send_cmd: &str) -> lab::Result<()> {
    let out = vm.sh_timeout(
        &format!(
            "rm -f /tmp/w.ready; frames wait {waiter} --timeout-ms 60000 --ready /tmp/w.ready > /tmp/w.out & \
             w=$!; i=0; while [ ! -e /tmp/w.ready ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done; \
             {send_cmd} >/dev/null; wait $w; cat /tmp/w.out"
        ),
        Duration::from_secs(120),
    )?;
    let text = out.stdout_str();
    assert!(
        text.starts_with("poll ready idle_before yes"),
        "{waiter}: {text}{}",
        out.stderr_str()
    );
    Ok(())
}

fn link_is(vm: &mut Vm, scheme: &str, state: &str) -> lab::Result<()> {
    vm.ok(&format!(
        "for i in $(seq 300); do [ \"$(cat {scheme}/link)\" = {state} ] && exit 0; sleep 0.1; done; \
         cat {scheme}/link; exit 1"
    ))
    .map(|_| ())
    .map_err(|e| format!("{scheme} link never {state}: {e}"))
}

/// 1,000 writes while `peer`'s link is down. QEMU drops what reaches a
/// virtio-net whose link is down, so the e1000's writes all complete and
/// nothing arrives. An e1000 whose link is down refuses to receive, and
/// QEMU's hub then holds back the sender's transmit queue (back pressure):
/// virtio-net's TX ring stops draining and its writes block, as they should
/// while the ring is full. Either way the daemon must stay responsive, a
/// blocked writer must be killable, and once the link is back traffic flows
/// both ways again.
fn peer_gone(
    vm: &mut Vm,
    sender: &str,
    peer: &str,
    peer_qdev: &str,
    wire_blocks: bool,
) -> lab::Result<()> {
    vm.qmp("set_link", json!({"name": peer_qdev, "up": false}))?;
    link_is(vm, peer, "down")?;
    let before = stats(vm, peer)?;
    if wire_blocks {
        let out = vm.sh_timeout(
            &format!(
                "timeout 20 frames send {sender} --count 1000 --min 60 --max 1514 --seed 31; \
                 echo rc=$?; probe write --nonblock {sender}/frames {filler}",
                filler = "x".repeat(60)
            ),
            Duration::from_secs(120),
        )?;
        let text = out.stdout_str();
        eprintln!("{sender} with {peer} down: {text}");
        assert!(text.contains("rc="), "{text}{}", out.stderr_str());
        // Still answering: a non-blocking write gets EAGAIN (ring full) or
        // goes through; nothing counted as an error.
        assert!(
            text.contains("err EAGAIN") || text.contains("ok 60"),
            "{text}"
        );
        assert_eq!(stats(vm, sender)?["tx_errors"], 0);
    } else {
        let out = vm.sh_timeout(
            &format!("frames send {sender} --count 1000 --min 60 --max 1514 --seed 31"),
            Duration::from_secs(300),
        )?;
        let text = out.stdout_str();
        let sent = summary(&text, "sent");
        assert_eq!(num(&sent, "sent"), 1000, "{text}{}", out.stderr_str());
        assert_eq!(num(&sent, "errors"), 0, "{text}");
    }
    let after = stats(vm, peer)?;
    assert_eq!(
        delta(&after, &before, "rx_frames"),
        0,
        "frames reached a NIC whose link was down"
    );
    vm.qmp("set_link", json!({"name": peer_qdev, "up": true}))?;
    link_is(vm, peer, "up")?;
    // What the hub held back may still be arriving: the receiver ignores
    // that older stream, but it would muddle a stats comparison.
    pair_checked(
        vm,
        sender,
        peer,
        200,
        "--min 60 --max 1514",
        32,
        !wire_blocks,
    )?;
    pair_checked(
        vm,
        peer,
        sender,
        200,
        "--min 60 --max 1514",
        33,
        !wire_blocks,
    )?;
    Ok(())
}

#[test]
#[ignore = "boots QEMU: run through `make test`"]
fn two_nics_on_one_hub() -> lab::Result<()> {
    let _one = ONE_VM.lock().unwrap_or_else(|e| e.into_inner());
    let mut vm = Vm::boot(hub_config())?;
    let (pe, pv) = wait_for_nics(&mut vm)?;
    assert_eq!(
        vm.ok(&format!("cat {E1000}/mac"))?,
        format!("{MAC_E1000}\n")
    );
    assert_eq!(
        vm.ok(&format!("cat {VIRTIO}/mac"))?,
        format!("{MAC_VIRTIO}\n")
    );
    let listing = vm.ok(&format!("ls {E1000} {VIRTIO}"))?;
    assert_eq!(listing.matches("frames").count(), 2, "{listing}");
    unprivileged_and_bound(&mut vm, [(&pe, 210), (&pv, 211)])?;

    // 10,000 frames of random sizes each way, none lost or damaged.
    let sizes = "--min 60 --max 1514";
    pair(&mut vm, E1000, VIRTIO, FRAMES, sizes, 1)?;
    pair(&mut vm, VIRTIO, E1000, FRAMES, sizes, 2)?;
    // The extremes: minimum-size frames (the NIC may pad; the tool allows
    // it) and full-size ones.
    pair(&mut vm, E1000, VIRTIO, 500, "--size 60", 3)?;
    pair(&mut vm, VIRTIO, E1000, 500, "--size 1514", 4)?;

    for s in [E1000, VIRTIO] {
        bad_writes_and_idle_reads(&mut vm, s)?;
    }
    poll_wakes(&mut vm, VIRTIO, &format!("frames send {E1000} --count 1"))?;
    poll_wakes(&mut vm, E1000, &format!("frames send {VIRTIO} --count 1"))?;

    peer_gone(&mut vm, E1000, VIRTIO, "nic1", false)?;
    peer_gone(&mut vm, VIRTIO, E1000, "nic0", true)?;

    // Nothing above took a daemon down or restarted it.
    assert_eq!(vm.ok("pidof e1000d")?.trim(), pe);
    assert_eq!(vm.ok("pidof virtio-netd")?.trim(), pv);
    let console = vm.console();
    assert!(!console.contains("exited unexpectedly"), "{console}");

    killed_mid_stream(&mut vm)?;
    vm.poweroff(Duration::from_secs(60))?;
    Ok(())
}

/// Both drivers `kill -9`ed while a stream runs between them: the sender
/// and the receiver keep their open `frames` handles, the traffic resumes
/// on them once each driver is back, no frame arrives twice or damaged,
/// and a frame the sender wrote that the dead sending driver had taken is
/// answered `EIO` once and counted in the new instance's `tx_lost`.
fn killed_mid_stream(vm: &mut Vm) -> lab::Result<()> {
    let running = |name: &str| {
        format!(
            "for j in $(seq 300); do dd if=/scheme/init/{name} bs=4k 2>/dev/null | grep -q 'state: running' && break; sleep 0.1; done"
        )
    };
    let count = 3000;
    let script = format!(
        "frames recv {VIRTIO} --count {count} --seed 9 --timeout-ms 15000 --ready /tmp/r.ready > /tmp/r.out 2>&1 & r=$!; \
         while [ ! -e /tmp/r.ready ]; do sleep 0.05; done; \
         frames send {E1000} --count {count} --size 200 --seed 9 --pace-us 3000 > /tmp/s.out 2>&1 & s=$!; \
         sleep 2; kill -9 $(pidof e1000d); {}; sleep 2; kill -9 $(pidof virtio-netd); {}; \
         wait $s; wait $r; cat /tmp/s.out /tmp/r.out",
        running("e1000d@pci-0000-00-05.0"),
        running("virtio-netd@pci-0000-00-06.0"),
    );
    let out = vm.sh_timeout(&script, Duration::from_secs(300))?;
    let text = out.stdout_str();
    let sent = summary(&text, "sent");
    let got = summary(&text, "received");
    // Nothing damaged or twice, and traffic went on after both restarts.
    assert_eq!(num(&got, "bad"), 0, "{text}");
    assert_eq!(num(&got, "dup"), 0, "{text}");
    assert!(num(&got, "received") > count / 2, "{text}");
    assert!(
        num(&got, "received") < count,
        "some frames must be lost: {text}"
    );
    // What the sender was told failed is what the new e1000d counted.
    let e = stats(vm, E1000)?;
    assert_eq!(e["tx_lost"], num(&sent, "errors"), "{text}\n{e:?}");
    eprintln!(
        "network: killed mid-stream: {} of {count} received, {} lost, tx_lost {}",
        num(&got, "received"),
        num(&got, "lost"),
        e["tx_lost"]
    );
    let console = vm.console();
    for scheme in [E1000, VIRTIO] {
        let name = scheme.trim_start_matches("/scheme/");
        assert!(
            console.contains(&format!("scheme {name} taken over")),
            "{name} was not taken over by a new instance"
        );
    }
    Ok(())
}

// ------------------------------------------------------------ host peer

/// The frame format of the guest's `frames` tool, written again here so the
/// host checks the guest's bytes independently.
mod format {
    pub fn next_random(x: u64) -> u64 {
        let mut x = x.max(1);
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn frame_len(stream: u32, seq: u64, min: usize, max: usize) -> usize {
        let r = next_random(u64::from(stream) << 32 ^ seq.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        min + (r % (max - min + 1) as u64) as usize
    }

    pub fn build(src: [u8; 6], stream: u32, seq: u64, len: usize) -> Vec<u8> {
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&src);
        f.extend_from_slice(&[0x88, 0xb5]);
        f.extend_from_slice(b"FRM1");
        f.extend_from_slice(&stream.to_le_bytes());
        f.extend_from_slice(&seq.to_le_bytes());
        f.extend_from_slice(&(len as u16).to_le_bytes());
        f.extend_from_slice(&[0; 4]);
        let mut r = next_random(u64::from(stream) ^ seq.rotate_left(17) ^ 0x5555);
        while f.len() < len {
            r = next_random(r);
            f.extend_from_slice(&r.to_le_bytes()[..(len - f.len()).min(8)]);
        }
        let mut h: u32 = 0x811c_9dc5;
        for &b in f[..32].iter().chain(&f[36..]) {
            h ^= u32::from(b);
            h = h.wrapping_mul(0x0100_0193);
        }
        f[32..36].copy_from_slice(&h.to_le_bytes());
        f
    }
}

fn mac_bytes(s: &str) -> [u8; 6] {
    let mut m = [0u8; 6];
    for (b, p) in m.iter_mut().zip(s.split(':')) {
        *b = u8::from_str_radix(p, 16).expect("mac");
    }
    m
}

/// A free UDP port on loopback (bound once, then released for QEMU).
fn free_port() -> u16 {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
    s.local_addr().expect("addr").port()
}

/// One NIC's link to the host: QEMU listens on `qemu_port` and sends to
/// `host`'s port.
struct HostLink {
    scheme: &'static str,
    mac: [u8; 6],
    qemu_port: u16,
    host: UdpSocket,
}

impl HostLink {
    fn new(scheme: &'static str, mac: &str) -> HostLink {
        let host = UdpSocket::bind("127.0.0.1:0").expect("bind host socket");
        HostLink {
            scheme,
            mac: mac_bytes(mac),
            qemu_port: free_port(),
            host,
        }
    }

    fn netdev(&self, id: &str) -> String {
        format!(
            "dgram,id={id},local.type=inet,local.host=127.0.0.1,local.port={},\
             remote.type=inet,remote.host=127.0.0.1,remote.port={}",
            self.qemu_port,
            self.host.local_addr().expect("addr").port()
        )
    }

    fn send(&self, frame: &[u8]) {
        self.host
            .send_to(frame, ("127.0.0.1", self.qemu_port))
            .expect("send to QEMU");
    }
}

/// Frames from the host, each different: sizes 60..=1514, to the NIC's own
/// MAC or to broadcast.
fn host_frames(link: &HostLink, n: usize, seed: u64) -> Vec<Vec<u8>> {
    let mut r = seed;
    (0..n)
        .map(|i| {
            r = format::next_random(r);
            let len = 60 + (r % 1455) as usize;
            let mut f = Vec::with_capacity(len);
            if i % 2 == 0 {
                f.extend_from_slice(&link.mac);
            } else {
                f.extend_from_slice(&[0xff; 6]);
            }
            f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x99, 0x88, 0xb5]);
            while f.len() < len {
                r = format::next_random(r);
                f.push((r >> 33) as u8);
            }
            f
        })
        .collect()
}

/// Host → guest: the guest dumps what its scheme returned, in hex, and it
/// must be exactly what the host sent, in order.
fn host_to_guest(vm: &mut Vm, link: &HostLink, seed: u64) -> lab::Result<()> {
    let frames = host_frames(link, 64, seed);
    let scheme = link.scheme;
    vm.ok(&format!(
        "rm -f /tmp/d.ready /tmp/d.out; \
         frames dump {scheme} --count 64 --timeout-ms 60000 --ready /tmp/d.ready > /tmp/d.out 2>&1 & \
         i=0; while [ ! -e /tmp/d.ready ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done; \
         [ -e /tmp/d.ready ]"
    ))?;
    for f in &frames {
        link.send(f);
    }
    let out = vm.ok("for i in $(seq 1200); do grep -q '^dumped' /tmp/d.out && break; sleep 0.05; done; cat /tmp/d.out")?;
    let got: Vec<Vec<u8>> = out
        .lines()
        .filter_map(|l| l.strip_prefix("frame "))
        .map(|l| {
            let hex = l.split_whitespace().nth(1).unwrap_or_default();
            (0..hex.len() / 2)
                .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap_or(0))
                .collect()
        })
        .collect();
    assert_eq!(got.len(), frames.len(), "{scheme}: {out}");
    for (i, (g, w)) in got.iter().zip(&frames).enumerate() {
        assert!(
            g == w,
            "{scheme}: frame {i} differs ({} vs {} bytes)",
            g.len(),
            w.len()
        );
    }
    Ok(())
}

/// Guest → host: `count` frames from the guest's `frames send` arrive as
/// datagrams exactly as the format says they must be.
fn guest_to_host(vm: &mut Vm, link: &HostLink, count: u64, seed: u32) -> lab::Result<()> {
    link.host
        .set_read_timeout(Some(Duration::from_millis(200)))
        .map_err(|e| e.to_string())?;
    let host = link.host.try_clone().map_err(|e| e.to_string())?;
    let mac = link.mac;
    let rx = std::thread::spawn(move || {
        let mut got = Vec::new();
        let mut buf = vec![0u8; 65536];
        let mut idle_since = Instant::now();
        while (got.len() as u64) < count && idle_since.elapsed() < Duration::from_secs(60) {
            if let Ok(n) = host.recv(&mut buf) {
                got.push(buf[..n].to_vec());
                idle_since = Instant::now();
            }
        }
        got
    });
    let out = vm.sh_timeout(
        &format!(
            "frames send {} --count {count} --min 60 --max 1514 --seed {seed}",
            link.scheme
        ),
        Duration::from_secs(300),
    )?;
    let text = out.stdout_str();
    assert_eq!(num(&summary(&text, "sent"), "sent"), count, "{text}");
    let got = rx.join().map_err(|_| "receiver panicked".to_owned())?;
    assert_eq!(
        got.len() as u64,
        count,
        "{}: datagrams received",
        link.scheme
    );
    for (seq, g) in got.iter().enumerate() {
        let len = format::frame_len(seed, seq as u64, 60, 1514);
        let want = format::build(mac, seed, seq as u64, len);
        assert!(g == &want, "{}: frame {seq} differs", link.scheme);
    }
    Ok(())
}

/// Frames from the host checked by the guest's own checker, more of them
/// than fit any ring or queue. The host paces itself by what the guest's
/// reader has consumed (its progress file): at most `HOST_WINDOW` frames
/// ahead (plus the 16 the progress file may lag). Unpaced, QEMU stops
/// reading its socket while the guest's ring is full and the socket buffer
/// (212 KB, ~2.5 KB per datagram) overflows, or the reader's queue does:
/// that loss would be the test's, not the driver's.
fn host_stream_to_guest(vm: &mut Vm, link: &HostLink, count: u64, seed: u32) -> lab::Result<()> {
    const HOST_WINDOW: u64 = 32;
    let scheme = link.scheme;
    let base = stats(vm, scheme)?["rx_frames"];
    vm.ok(&format!(
        "rm -f /tmp/r.ready /tmp/r.out /tmp/r.progress; \
         frames recv {scheme} --count {count} --seed {seed} --timeout-ms 30000 --ready /tmp/r.ready \
           --progress /tmp/r.progress > /tmp/r.out 2>&1 & \
         i=0; while [ ! -e /tmp/r.ready ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done; [ -e /tmp/r.ready ]"
    ))?;
    let mut arrived = 0;
    let deadline = Instant::now() + Duration::from_secs(600);
    for seq in 0..count {
        while seq >= arrived + HOST_WINDOW {
            if Instant::now() > deadline {
                return Err(format!("{scheme}: stuck at {arrived} of {count} frames"));
            }
            arrived = vm
                .ok("cat /tmp/r.progress")?
                .trim()
                .parse()
                .map_err(|e| format!("progress: {e}"))?;
        }
        let len = format::frame_len(seed, seq, 60, 1514);
        link.send(&format::build([2, 0, 0, 0, 0, 0x99], seed, seq, len));
    }
    let out = vm.sh_timeout(
        "for i in $(seq 1800); do grep -q '^received' /tmp/r.out && break; sleep 0.1; done; cat /tmp/r.out",
        Duration::from_secs(240),
    )?;
    let text = out.stdout_str();
    let recv = summary(&text, "received");
    let st = stats(vm, scheme)?;
    assert_eq!(num(&recv, "received"), count, "{scheme}: {text} {st:?}");
    for k in ["bad", "dup", "reordered"] {
        assert_eq!(num(&recv, k), 0, "{scheme} {k}: {text}");
    }
    assert_eq!(st["rx_frames"] - base, count, "{scheme}: {st:?}");
    Ok(())
}

#[test]
#[ignore = "boots QEMU: run through `make test`"]
fn host_peer_over_loopback_udp() -> lab::Result<()> {
    let _one = ONE_VM.lock().unwrap_or_else(|e| e.into_inner());
    let e = HostLink::new(E1000, MAC_E1000);
    let v = HostLink::new(VIRTIO, MAC_VIRTIO);
    let cfg = Config::new("network-host")
        .arg(&["-netdev", &e.netdev("d0"), "-netdev", &v.netdev("d1")])
        .args(lab::e1000_args("nic0", "d0", "05.0", MAC_E1000))
        .args(lab::virtio_net_args("nic1", "d1", "06.0", MAC_VIRTIO));
    let mut vm = Vm::boot(cfg)?;
    let (pe, pv) = wait_for_nics(&mut vm)?;

    for (i, link) in [&e, &v].into_iter().enumerate() {
        host_to_guest(&mut vm, link, 100 + i as u64)?;
        guest_to_host(&mut vm, link, 300, 200 + i as u32)?;
        host_stream_to_guest(&mut vm, link, 2000, 300 + i as u32)?;
        // Idle link: nothing is sent from the host now.
        bad_writes_and_idle_reads(&mut vm, link.scheme)?;
        let frame = host_frames(link, 1, 7).remove(0);
        let out = vm.sh_timeout(
            &format!(
                "rm -f /tmp/w.ready; frames wait {} --timeout-ms 60000 --ready /tmp/w.ready > /tmp/w.out 2>&1 & \
                 i=0; while [ ! -e /tmp/w.ready ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done; [ -e /tmp/w.ready ]",
                link.scheme
            ),
            Duration::from_secs(60),
        )?;
        assert!(out.success(), "{}", out.stderr_str());
        link.send(&frame);
        let text = vm.ok(
            "for i in $(seq 600); do [ -s /tmp/w.out ] && break; sleep 0.1; done; cat /tmp/w.out",
        )?;
        assert!(
            text.starts_with("poll ready idle_before yes"),
            "{}: {text}",
            link.scheme
        );
    }

    // The peer goes away: nobody listens on the host port any more. 1,000
    // writes on each NIC still complete, and once the peer is back frames
    // flow again through the same daemons.
    let ports = [
        e.host.local_addr().map_err(|x| x.to_string())?,
        v.host.local_addr().map_err(|x| x.to_string())?,
    ];
    let (qe, qv) = (e.qemu_port, v.qemu_port);
    drop((e, v));
    for s in [E1000, VIRTIO] {
        let out = vm.sh_timeout(
            &format!("frames send {s} --count 1000 --min 60 --max 1514 --seed 41"),
            Duration::from_secs(300),
        )?;
        let text = out.stdout_str();
        let sent = summary(&text, "sent");
        assert_eq!(num(&sent, "sent"), 1000, "{s}: {text}{}", out.stderr_str());
        assert_eq!(num(&sent, "errors"), 0, "{s}: {text}");
    }
    let back = [
        HostLink {
            scheme: E1000,
            mac: mac_bytes(MAC_E1000),
            qemu_port: qe,
            host: UdpSocket::bind(ports[0]).map_err(|x| x.to_string())?,
        },
        HostLink {
            scheme: VIRTIO,
            mac: mac_bytes(MAC_VIRTIO),
            qemu_port: qv,
            host: UdpSocket::bind(ports[1]).map_err(|x| x.to_string())?,
        },
    ];
    for (i, link) in back.iter().enumerate() {
        guest_to_host(&mut vm, link, 50, 500 + i as u32)?;
        host_to_guest(&mut vm, link, 600 + i as u64)?;
    }
    assert_eq!(vm.ok("pidof e1000d")?.trim(), pe);
    assert_eq!(vm.ok("pidof virtio-netd")?.trim(), pv);
    let console = vm.console();
    assert!(!console.contains("exited unexpectedly"), "{console}");
    vm.poweroff(Duration::from_secs(60))?;
    Ok(())
}
