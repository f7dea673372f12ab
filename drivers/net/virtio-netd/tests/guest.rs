//! virtio-netd in the guest, started by pcid through init, with a peer on
//! the host: QEMU's `dgram` netdev carries each Ethernet frame as one UDP
//! datagram between the NIC and a socket this test holds on loopback.
//! Frames go out and come in byte for byte; the link is taken down and up
//! through QMP (a configuration interrupt); the daemon runs unprivileged on
//! a vfio-pci function with its MSI-X vectors counted in /proc/interrupts.
//! A peer that stops reading (a `stream` netdev) fills the transmit ring:
//! writers wait and resume on the transmit interrupt. And a device without
//! `iommu_platform=on` is refused clearly.

use std::io::Read;
use std::net::{TcpListener, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;
use std::time::Instant;

use lab::{pattern, Config, Vm};
use serde_json::json;

const NET: &str = "/scheme/network.pci-0000-00-06.0_virtio_net";
const LOG: &str = "/var/log/virtio-netd@pci-0000-00-06.0.log";
const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x06];
const MAC_TEXT: &str = "52:54:00:12:34:06";
/// The host peer's (made-up) address.
const PEER: [u8; 6] = [0x52, 0x54, 0x00, 0xaa, 0xbb, 0x01];
/// IEEE local experimental EtherType: nothing else speaks it.
const ETHERTYPE: [u8; 2] = [0x88, 0xb5];
const OUT: usize = 40;
const IN: usize = 40;
/// Frames written while the link is down.
const WHILE_DOWN: usize = 5;
/// Frames reflected by the host in the stress part (many times the
/// 256-entry rings and the 512-frame handle queues).
const STRESS: usize = 3000;
const PEER_TIMEOUT: Duration = Duration::from_secs(240);

fn frame(dst: [u8; 6], src: [u8; 6], seed: u64, len: usize) -> Vec<u8> {
    let mut f = Vec::with_capacity(len);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ETHERTYPE);
    f.extend_from_slice(&pattern(seed, len.saturating_sub(14)));
    f.truncate(len);
    f
}

/// Frame sizes: the extremes first, then a spread in between.
fn sizes(n: usize, seed: u64) -> Vec<usize> {
    let r = pattern(seed, 2 * n);
    (0..n)
        .map(|i| match i {
            0 => 14,
            1 => 60,
            2 => 1514,
            _ => 14 + usize::from(u16::from_le_bytes([r[2 * i], r[2 * i + 1]])) % 1501,
        })
        .collect()
}

fn io_err(e: std::io::Error) -> String {
    e.to_string()
}

/// Receives one datagram (bounded by the socket's read timeout).
fn recv(sock: &UdpSocket) -> lab::Result<Vec<u8>> {
    let mut buf = vec![0u8; 65536];
    let (n, _) = sock
        .recv_from(&mut buf)
        .map_err(|e| format!("host peer: {e}"))?;
    buf.truncate(n);
    Ok(buf)
}

/// The summed per-CPU counts of each MSI-X vector of 06.0, by vector.
fn msix_counts(vm: &mut Vm) -> lab::Result<[u64; 3]> {
    let text = vm.ok("grep '0000:00:06.0' /proc/interrupts")?;
    let mut counts = [0u64; 3];
    for (v, count) in counts.iter_mut().enumerate() {
        let name = format!("vfio-msix[{v}](0000:00:06.0)");
        let line = text
            .lines()
            .find(|l| l.contains(&name))
            .ok_or_else(|| format!("no {name} in /proc/interrupts:\n{text}"))?;
        // "IRQ: count count ... chip ...": the counts follow the colon.
        let (_, rest) = line.split_once(':').unwrap_or_default();
        *count = rest
            .split_whitespace()
            .map_while(|w| w.parse::<u64>().ok())
            .sum();
    }
    Ok(counts)
}

fn stats(vm: &mut Vm) -> lab::Result<std::collections::HashMap<String, u64>> {
    let text = vm.ok(&format!("cat {NET}/stats"))?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_owned(), v.trim().parse().ok()?))
        })
        .collect())
}

/// Waits in the guest (bounded) until `/link` reads `want`.
fn wait_link(vm: &mut Vm, want: &str) -> lab::Result<()> {
    vm.ok(&format!(
        "i=0; while [ \"$(cat {NET}/link)\" != {want} ]; do \
           i=$((i+1)); [ $i -lt 600 ] || exit 1; sleep 0.1; done"
    ))
    .map(drop)
    .map_err(|e| format!("link never went {want}: {e}"))
}

#[test]
#[ignore = "boots QEMU: run through `make test`"]
fn virtio_netd_exchanges_frames_with_a_host_peer() -> lab::Result<()> {
    let sock = UdpSocket::bind("127.0.0.1:0").map_err(io_err)?;
    sock.set_read_timeout(Some(PEER_TIMEOUT)).map_err(io_err)?;
    let host_port = sock.local_addr().map_err(io_err)?.port();
    // A free port for QEMU's end (released just before QEMU binds it).
    let qemu_port = UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map_err(io_err)?
        .port();

    let out: Vec<Vec<u8>> = sizes(OUT, 11)
        .into_iter()
        .enumerate()
        .map(|(i, n)| frame([0xff; 6], MAC, 1000 + i as u64, n))
        .collect();
    let inbound: Vec<Vec<u8>> = sizes(IN, 12)
        .into_iter()
        .enumerate()
        .map(|(i, n)| frame(MAC, PEER, 2000 + i as u64, n))
        .collect();
    let down: Vec<Vec<u8>> = (0..WHILE_DOWN)
        .map(|i| frame([0xff; 6], MAC, 3000 + i as u64, 100))
        .collect();
    let marker = frame([0xff; 6], MAC, 4000, 77);

    let mut cfg = Config::new("virtio-netd-guest")
        .arg(&[
            "-netdev",
            &format!(
                "dgram,id=n1,local.type=inet,local.host=127.0.0.1,local.port={qemu_port},\
                 remote.type=inet,remote.host=127.0.0.1,remote.port={host_port}"
            ),
        ])
        .args(lab::virtio_net_args("nic1", "n1", "06.0", MAC_TEXT))
        .file("/root/big", &frame([0xff; 6], MAC, 5, 1515), 0o644)
        .file("/root/runt", &frame([0xff; 6], MAC, 6, 13), 0o644)
        .file("/root/marker", &marker, 0o644);
    for (i, f) in out.iter().enumerate() {
        cfg = cfg.file(&format!("/root/out/{i:03}"), f, 0o644);
    }
    for (i, f) in inbound.iter().enumerate() {
        cfg = cfg.file(&format!("/root/in/{i:03}"), f, 0o644);
    }
    for (i, f) in down.iter().enumerate() {
        cfg = cfg.file(&format!("/root/down/{i:03}"), f, 0o644);
    }
    let mut vm = Vm::boot(cfg)?;

    let log = vm.ok(&format!("cat {LOG}"))?;
    assert!(log.contains(&format!("MAC {MAC_TEXT}, link up")), "{log}");
    assert_eq!(vm.ok(&format!("cat {NET}/mac"))?, format!("{MAC_TEXT}\n"));
    assert_eq!(vm.ok(&format!("cat {NET}/link"))?, "up\n");

    // The peer answers the guest's first frame (sent on the handle that
    // then reads, so it is open before anything comes in) with the inbound
    // frames, and collects everything the guest sends.
    let inbound2 = inbound.clone();
    let peer: JoinHandle<lab::Result<(Vec<Vec<u8>>, UdpSocket)>> = std::thread::spawn(move || {
        let mut got = vec![recv(&sock)?];
        for f in &inbound2 {
            sock.send_to(f, ("127.0.0.1", qemu_port))
                .map_err(|e| format!("host peer send: {e}"))?;
        }
        while got.len() < OUT {
            got.push(recv(&sock)?);
        }
        Ok((got, sock))
    });
    let script = format!(
        "set -e
         exec 3<>{NET}/frames
         for f in /root/out/*; do dd if=$f bs=2048 2>/dev/null >&3; done
         mkdir -p /tmp/in
         i=0
         while [ $i -lt {IN} ]; do
           dd bs=2048 count=1 of=/tmp/in/$(printf %03d $i) <&3 2>/dev/null
           i=$((i+1))
         done
         for f in /root/in/*; do cmp $f /tmp/in/${{f##*/}}; done
         echo exchanged"
    );
    let result = vm.sh_timeout(&script, PEER_TIMEOUT + Duration::from_secs(60))?;
    let (got, sock) = peer
        .join()
        .map_err(|_| "host peer panicked".to_string())??;
    assert!(
        result.success() && result.stdout_str().contains("exchanged"),
        "guest side: {result:?}\n{}",
        result.stderr_str()
    );
    assert_eq!(got.len(), OUT);
    for (i, (g, want)) in got.iter().zip(&out).enumerate() {
        assert!(
            g == want,
            "outbound frame {i} differs ({} vs {} bytes)",
            g.len(),
            want.len()
        );
    }

    let s = stats(&mut vm)?;
    let bytes = |v: &[Vec<u8>]| v.iter().map(|f| f.len() as u64).sum::<u64>();
    assert_eq!(s["tx_frames"], OUT as u64, "{s:?}");
    assert_eq!(s["tx_bytes"], bytes(&out), "{s:?}");
    assert_eq!(s["rx_frames"], IN as u64, "{s:?}");
    assert_eq!(s["rx_bytes"], bytes(&inbound), "{s:?}");
    for k in ["rx_dropped", "rx_errors", "tx_errors"] {
        assert_eq!(s[k], 0, "{k}: {s:?}");
    }

    // Oversize and runt writes are refused and not counted.
    for f in ["/root/big", "/root/runt"] {
        let r = vm.sh(&format!(
            "dd if={f} of={NET}/frames bs=4096 conv=notrunc 2>&1"
        ))?;
        assert!(!r.success(), "{f} was accepted");
        assert!(r.stdout_str().contains("Invalid argument"), "{f}: {r:?}");
    }
    assert_eq!(stats(&mut vm)?["tx_frames"], OUT as u64);

    // Link down and up from QEMU: each a configuration interrupt (vector
    // 0), seen in /link and logged. Frames written while down are taken
    // (the device drops them) and do not wedge the driver.
    let before = msix_counts(&mut vm)?;
    vm.qmp("set_link", json!({"name": "nic1", "up": false}))?;
    wait_link(&mut vm, "down")?;
    vm.ok(&format!(
        "set -e; for f in /root/down/*; do dd if=$f of={NET}/frames bs=2048 conv=notrunc 2>/dev/null; done"
    ))?;
    vm.qmp("set_link", json!({"name": "nic1", "up": true}))?;
    wait_link(&mut vm, "up")?;
    vm.ok(&format!(
        "dd if=/root/marker of={NET}/frames bs=2048 conv=notrunc 2>/dev/null"
    ))?;
    let next = recv(&sock)?;
    assert!(
        next == marker,
        "a frame written while the link was down arrived"
    );
    let after = msix_counts(&mut vm)?;
    assert!(
        after[0] >= before[0] + 2,
        "config vector: {before:?} -> {after:?}"
    );
    // The transmit vector is only asked for while the ring is full (see
    // `writers_wait_for_a_full_transmit_ring`); receive must have fired.
    assert!(after[1] > 0, "receive vector: {after:?}");
    let log = vm.ok(&format!("cat {LOG}"))?;
    let down_at = log.find("link down").ok_or_else(|| log.clone())?;
    assert!(log[down_at..].contains("link up"), "{log}");
    let s = stats(&mut vm)?;
    assert_eq!(s["tx_frames"], (OUT + WHILE_DOWN + 1) as u64, "{s:?}");
    assert_eq!(s["tx_errors"], 0, "{s:?}");

    // Many times the ring sizes through the real device: the host reflects
    // every frame back, `frames pair` sends on one handle and checks on
    // another (within a window, so nothing overruns), and the receive ring
    // must be refilled as it drains for all of them to come back.
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let reflector: JoinHandle<lab::Result<u64>> = std::thread::spawn(move || {
        // The timeout only paces checks of the stop flag.
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .map_err(io_err)?;
        let mut buf = vec![0u8; 65536];
        let mut n = 0;
        loop {
            match sock.recv_from(&mut buf) {
                Ok((len, _)) => {
                    sock.send_to(&buf[..len], ("127.0.0.1", qemu_port))
                        .map_err(|e| format!("reflector send: {e}"))?;
                    n += 1;
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    if stop2.load(Ordering::Relaxed) {
                        return Ok(n);
                    }
                }
                Err(e) => return Err(format!("reflector: {e}")),
            }
        }
    });
    let before = stats(&mut vm)?;
    let pair = vm.sh_timeout(
        &format!(
            "frames pair {NET} {NET} --count {STRESS} --min 60 --max 1514 --seed 77 \
             --window 64 --timeout-ms 30000"
        ),
        Duration::from_secs(300),
    );
    stop.store(true, Ordering::Relaxed);
    let reflected = reflector
        .join()
        .map_err(|_| "reflector panicked".to_string())??;
    let pair = pair?;
    eprintln!("frames pair: {}", pair.stdout_str().trim());
    eprintln!("MSI-X counts (config, rx, tx): {:?}", msix_counts(&mut vm)?);
    assert!(
        pair.success(),
        "frames pair: {}\n{}",
        pair.stdout_str(),
        pair.stderr_str()
    );
    let after = stats(&mut vm)?;
    let delta = |k: &str| after[k] - before[k];
    assert_eq!(reflected, STRESS as u64);
    assert_eq!(delta("tx_frames"), STRESS as u64, "{after:?}");
    assert_eq!(delta("rx_frames"), STRESS as u64, "{after:?}");
    // The sending handle reads nothing: its queue keeps the first 512
    // frames and drops the rest; the checking handle drops none.
    assert_eq!(
        delta("rx_dropped"),
        (STRESS - network::RX_QUEUE_FRAMES) as u64,
        "{after:?}"
    );
    for k in ["rx_errors", "tx_errors"] {
        assert_eq!(after[k], 0, "{k}: {after:?}");
    }

    // Unprivileged, sandboxed, on vfio-pci; Linux's driver never loaded.
    let pid = vm.ok("pidof virtio-netd")?;
    vm.check_driver_privileges(&pid, 211)?;
    vm.check_vfio_bound("0000:00:06.0", &["virtio_net", "virtio_pci"])?;

    let status = vm.poweroff(Duration::from_secs(60))?;
    assert!(status.success(), "qemu: {status}");
    Ok(())
}

#[test]
#[ignore = "boots QEMU: run through `make test`"]
fn virtio_net_bypassing_the_iommu_is_refused() -> lab::Result<()> {
    let cfg = Config::new("virtio-netd-noiommu").arg(&[
        "-netdev",
        "hubport,id=n1,hubid=0",
        "-device",
        "virtio-net-pci,netdev=n1,addr=06.0,disable-legacy=on",
    ]);
    let mut vm = Vm::boot(cfg)?;
    let log = vm.ok(&format!("cat {LOG}"))?;
    assert!(log.contains("VIRTIO_F_ACCESS_PLATFORM"), "{log}");
    let schemes = vm.ok("ls /scheme")?;
    assert!(!schemes.contains("network."), "{schemes}");
    vm.poweroff(Duration::from_secs(60))?;
    Ok(())
}

/// Frames sent into a peer that does not read.
const BACKLOG: usize = 8000;

/// The host peer of a `stream` netdev: accepts QEMU's connection, reads
/// nothing until told to, then reads `count` frames (each behind a 4-byte
/// big-endian length) and checks they are `frames`' stream in order.
fn slow_peer(listener: TcpListener, go: mpsc::Receiver<()>, count: usize) -> lab::Result<usize> {
    let (mut conn, _) = listener.accept().map_err(io_err)?;
    conn.set_read_timeout(Some(PEER_TIMEOUT)).map_err(io_err)?;
    go.recv_timeout(PEER_TIMEOUT)
        .map_err(|e| format!("never told to read: {e}"))?;
    let mut frame = vec![0u8; 65536];
    for i in 0..count {
        let mut len = [0u8; 4];
        conn.read_exact(&mut len)
            .map_err(|e| format!("frame {i}: {e}"))?;
        let len = u32::from_be_bytes(len) as usize;
        if len != 1514 {
            return Err(format!("frame {i}: {len} bytes, not 1514"));
        }
        conn.read_exact(&mut frame[..len])
            .map_err(|e| format!("frame {i}: {e}"))?;
        let seq = u64::from_le_bytes(frame[22..30].try_into().unwrap_or_default());
        if frame[12..14] != ETHERTYPE || &frame[14..18] != b"FRM1" || seq != i as u64 {
            return Err(format!("frame {i}: not the next frame (sequence {seq})"));
        }
    }
    Ok(count)
}

#[test]
#[ignore = "boots QEMU: run through `make test`"]
fn writers_wait_for_a_full_transmit_ring() -> lab::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(io_err)?;
    let port = listener.local_addr().map_err(io_err)?.port();
    let cfg = Config::new("virtio-netd-backpressure")
        .arg(&[
            "-netdev",
            &format!("stream,id=n1,server=off,addr.type=inet,addr.host=127.0.0.1,addr.port={port}"),
        ])
        .args(lab::virtio_net_args("nic1", "n1", "06.0", MAC_TEXT));
    let (go, go_rx) = mpsc::channel();
    let peer = std::thread::spawn(move || slow_peer(listener, go_rx, BACKLOG));
    let mut vm = Vm::boot(cfg)?;
    let before = msix_counts(&mut vm)?;
    vm.ok(&format!(
        "frames send {NET} --count {BACKLOG} --size 1514 --seed 5 >/tmp/send.out 2>&1 &"
    ))?;
    // Wait until the writes stall: the socket buffers, QEMU and then the
    // 256-entry ring are full. Stalled = no progress for 2 s (a sender
    // making progress writes hundreds of frames a second even under TCG).
    let deadline = Instant::now() + PEER_TIMEOUT;
    let mut last = (u64::MAX, Instant::now());
    loop {
        let sent = stats(&mut vm)?["tx_frames"];
        if sent != last.0 {
            last = (sent, Instant::now());
        } else if sent > 256 && last.1.elapsed() >= Duration::from_secs(2) {
            break;
        }
        if sent >= BACKLOG as u64 {
            return Err(format!(
                "all {BACKLOG} frames were taken without the peer reading"
            ));
        }
        if Instant::now() > deadline {
            return Err(format!("writes never stalled ({sent} sent)"));
        }
    }
    let stalled_at = last.0;
    let state = vm.ok("cat /tmp/send.out; cat /proc/$(pidof frames)/wchan")?;
    assert!(!state.contains("sent"), "the sender finished: {state}");
    // The peer reads: every frame arrives in order, the parked writer is
    // woken by the transmit interrupt, and the sender finishes.
    go.send(()).map_err(|e| e.to_string())?;
    let got = peer.join().map_err(|_| "peer panicked".to_string())??;
    assert_eq!(got, BACKLOG);
    let out = vm.ok("i=0; until grep -q sent /tmp/send.out; do \
           i=$((i+1)); [ $i -lt 600 ] || exit 1; sleep 0.1; done; cat /tmp/send.out")?;
    assert!(out.contains(&format!("sent {BACKLOG} ")), "{out}");
    assert!(out.contains(" errors 0 "), "{out}");
    let after = msix_counts(&mut vm)?;
    assert!(
        after[2] > before[2],
        "no transmit interrupt although the ring filled at {stalled_at}: {before:?} -> {after:?}"
    );
    let s = stats(&mut vm)?;
    assert_eq!(s["tx_frames"], BACKLOG as u64, "{s:?}");
    assert_eq!(s["tx_errors"], 0, "{s:?}");
    eprintln!("stalled at {stalled_at} frames; MSI-X {before:?} -> {after:?}");
    vm.poweroff(Duration::from_secs(60))?;
    Ok(())
}
