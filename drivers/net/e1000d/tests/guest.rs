//! e1000d in the guest, started by pcid through init, against a peer on the
//! host: QEMU's e1000 sits on a `dgram` netdev whose far end is a UDP socket
//! in this test, so every Ethernet frame is one datagram each way.
//!
//! Proves: the MAC in `/mac`; frames written to `frames` reach the host
//! byte for byte (short ones padded to 60 with zeros); frames from the host
//! reach a reader in the guest byte for byte, one per read, and the NIC's
//! address filter holds back frames for other stations; QMP `set_link`
//! down/up shows in `/link` and the log, and frames written while the link
//! is down go nowhere without wedging the driver; `/stats`; the daemon
//! unprivileged and sandboxed, the function bound to vfio-pci; the INTx
//! count in /proc/interrupts rising; no IOMMU faults.
//!
//! A second boot puts two e1000s on one QEMU hub and runs thousands of
//! numbered frames through both daemons each way (`frames pair`).
//!
//! ```sh
//! make image && cargo test --release -p e1000d --test guest -- --ignored --nocapture
//! ```

use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use lab::{pattern, Config, Vm};
use serde_json::json;

const NIC: &str = "/scheme/network.pci-0000-00-05.0_e1000";
const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x05];
const MAC_TEXT: &str = "52:54:00:12:34:05";
const LOG: &str = "/var/log/e1000d@pci-0000-00-05.0.log";
/// Our own EtherType (IEEE local experimental 1).
const ETHERTYPE: [u8; 2] = [0x88, 0xb5];
const BROADCAST: [u8; 6] = [0xff; 6];
/// A station on the host side.
const HOST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0xaa, 0xbb, 0xcc];
/// Writes while the link is down.
const DOWN_WRITES: usize = 200;

/// One VM at a time: the tests in this file boot one each.
static ONE_VM: Mutex<()> = Mutex::new(());

fn frame(dst: [u8; 6], src: [u8; 6], seed: u64, len: usize) -> Vec<u8> {
    let mut f = Vec::with_capacity(len);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ETHERTYPE);
    f.extend(pattern(seed, len.saturating_sub(14)));
    f.truncate(len);
    f
}

/// What the wire carries for a frame the guest wrote: at least 60 bytes.
fn padded(f: &[u8]) -> Vec<u8> {
    let mut p = f.to_vec();
    if p.len() < 60 {
        p.resize(60, 0);
    }
    p
}

fn hex_bytes(text: &str) -> Vec<u8> {
    text.split_whitespace()
        .filter_map(|h| u8::from_str_radix(h, 16).ok())
        .collect()
}

/// The summed count of the e1000's INTx line in /proc/interrupts.
fn intx_count(vm: &mut Vm) -> lab::Result<u64> {
    let line = vm.ok("grep 'vfio-intx(0000:00:05.0)' /proc/interrupts")?;
    Ok(line
        .split_whitespace()
        .skip(1)
        .map_while(|w| w.parse::<u64>().ok())
        .sum())
}

fn stats(vm: &mut Vm) -> lab::Result<BTreeMap<String, u64>> {
    stats_of(vm, NIC)
}

fn stats_of(vm: &mut Vm, nic: &str) -> lab::Result<BTreeMap<String, u64>> {
    let text = vm.ok(&format!("cat {nic}/stats"))?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_owned(), v.trim().parse().ok()?))
        })
        .collect())
}

/// Polls `/link` until it reads `want` (bounded).
fn wait_link(vm: &mut Vm, want: &str) -> lab::Result<Duration> {
    let t0 = Instant::now();
    let out = vm.sh_timeout(
        &format!(
            "i=0; while [ $i -lt 600 ]; do \
               [ \"$(cat {NIC}/link)\" = {want} ] && exit 0; sleep 0.1; i=$((i+1)); \
             done; cat {NIC}/link; exit 1"
        ),
        Duration::from_secs(90),
    )?;
    if !out.success() {
        return Err(format!(
            "/link never became {want}: {}",
            out.stdout_str().trim()
        ));
    }
    Ok(t0.elapsed())
}

fn recv(sock: &UdpSocket) -> lab::Result<(Vec<u8>, SocketAddr)> {
    let mut buf = vec![0u8; 65536];
    let (n, from) = sock
        .recv_from(&mut buf)
        .map_err(|e| format!("no frame from the guest: {e}"))?;
    buf.truncate(n);
    Ok((buf, from))
}

#[test]
#[ignore = "boots QEMU: run through `make test`"]
fn e1000d_exchanges_frames_with_a_host_peer() -> lab::Result<()> {
    let _one = ONE_VM.lock().unwrap_or_else(|p| p.into_inner());
    let sock = UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    sock.set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(|e| e.to_string())?;
    let host_port = sock.local_addr().map_err(|e| e.to_string())?.port();

    // Frames the guest sends: a bare header, runts, the 60-byte minimum
    // and around it, and the largest.
    let tx_sizes = [14usize, 42, 59, 60, 61, 128, 1000, 1514];
    let tx: Vec<Vec<u8>> = tx_sizes
        .iter()
        .enumerate()
        .map(|(i, &len)| {
            let dst = if i % 2 == 0 { BROADCAST } else { HOST_MAC };
            frame(dst, MAC, 100 + i as u64, len)
        })
        .collect();
    let marker = frame(HOST_MAC, MAC, 999, 77);

    let mut cfg = Config::new("e1000d-guest")
        .arg(&[
            "-netdev",
            // QEMU binds an ephemeral local port; the first frame the guest
            // sends tells us which.
            &format!(
                "dgram,id=n0,local.type=inet,local.host=127.0.0.1,local.port=0,\
                 remote.type=inet,remote.host=127.0.0.1,remote.port={host_port}"
            ),
        ])
        .args(lab::e1000_args("nic0", "n0", "05.0", MAC_TEXT))
        .file("/root/marker", &marker, 0o644);
    for (i, f) in tx.iter().enumerate() {
        cfg = cfg.file(&format!("/root/tx/{i:02}"), f, 0o644);
    }
    let mut vm = Vm::boot(cfg)?;
    let result = scenario(&mut vm, &sock, &tx, &marker);
    let console = vm.console();
    let _ = vm.poweroff(Duration::from_secs(30));
    result?;
    assert!(
        !console.contains("exited unexpectedly"),
        "a service died:\n{console}"
    );
    assert!(!console.contains("DMAR: [DMA"), "IOMMU faults:\n{console}");
    Ok(())
}

fn scenario(vm: &mut Vm, sock: &UdpSocket, tx: &[Vec<u8>], marker: &[u8]) -> lab::Result<()> {
    // One daemon, its scheme, its MAC, link up.
    let pid = vm.ok("pidof e1000d")?.trim().to_owned();
    assert!(
        !pid.is_empty() && !pid.contains(' '),
        "one e1000d expected: {pid:?}"
    );
    let ls = vm.ok(&format!("ls {NIC}"))?;
    for f in ["frames", "mac", "link", "stats"] {
        assert!(ls.split_whitespace().any(|x| x == f), "{f} missing: {ls}");
    }
    assert_eq!(vm.ok(&format!("cat {NIC}/mac"))?, format!("{MAC_TEXT}\n"));
    wait_link(vm, "up")?;
    let log = vm.ok(&format!("cat {LOG}"))?;
    assert!(log.contains(&format!("MAC {MAC_TEXT}")), "{log}");
    assert!(log.contains("link up"), "{log}");

    unprivileged_and_bound(vm, &pid)?;
    let irqs_before = intx_count(vm)?;

    // An idle link: a non-blocking read has nothing.
    let out = vm.sh(&format!("probe read --nonblock {NIC}/frames 2048"))?;
    assert_eq!(out.stdout_str().trim(), "err EAGAIN");

    // Guest -> host: each write one datagram, in order, byte for byte.
    vm.ok(&format!(
        "for f in /root/tx/*; do dd if=$f bs=2048 count=1 1<>{NIC}/frames 2>/dev/null || exit 1; done"
    ))?;
    let mut qemu_addr = None;
    for (i, f) in tx.iter().enumerate() {
        let (got, from) = recv(sock)?;
        assert_eq!(
            got,
            padded(f),
            "frame {i} ({} bytes) arrived changed",
            f.len()
        );
        qemu_addr = Some(from);
    }
    let qemu_addr = qemu_addr.ok_or("no frames sent")?;

    // Host -> guest, to a reader that is already waiting.
    let to_us_a = frame(MAC, HOST_MAC, 200, 100);
    let elsewhere = frame([0x52, 0x54, 0x00, 0x99, 0x99, 0x99], HOST_MAC, 201, 80);
    let bcast = frame(BROADCAST, HOST_MAC, 202, 1514);
    let runt = frame(MAC, HOST_MAC, 203, 20);
    let oversize = frame(MAC, HOST_MAC, 204, 1600);
    let min = frame(MAC, HOST_MAC, 205, 60);
    let mid = frame(BROADCAST, HOST_MAC, 206, 1000);
    let sent = [&to_us_a, &elsewhere, &bcast, &runt, &oversize, &min, &mid];
    // What the reader must see: not the frame for another station, not
    // the one longer than the MTU (the NIC drops it: no long-packet mode),
    // and the runt padded to 60 by the device.
    let expected: Vec<Vec<u8>> = vec![
        to_us_a.clone(),
        bcast.clone(),
        padded(&runt),
        min.clone(),
        mid.clone(),
    ];
    vm.ok(&format!(
        "dd if={NIC}/frames of=/tmp/rx bs=2048 count={} 2>/tmp/rx.err </dev/null & echo $! >/tmp/rx.pid; \
         i=0; while [ $i -lt 300 ]; do \
           ls -l /proc/$(cat /tmp/rx.pid)/fd 2>/dev/null | grep -q frames && exit 0; \
           sleep 0.1; i=$((i+1)); \
         done; exit 1",
        expected.len()
    ))?;
    for f in sent {
        sock.send_to(f, qemu_addr).map_err(|e| e.to_string())?;
    }
    let out = vm.sh_timeout(
        "p=$(cat /tmp/rx.pid); i=0; while kill -0 $p 2>/dev/null; do \
           [ $i -ge 600 ] && { kill $p; exit 1; }; sleep 0.1; i=$((i+1)); done; \
         cat /tmp/rx.err; od -An -v -tx1 /tmp/rx",
        Duration::from_secs(90),
    )?;
    let text = out.stdout_str();
    assert!(out.success(), "the reader did not get every frame:\n{text}");
    assert!(
        text.contains(&format!("0+{} records in", expected.len())),
        "one read per frame expected:\n{text}"
    );
    let dump = text
        .lines()
        .filter(|l| !l.contains("records") && !l.contains("bytes"))
        .collect::<Vec<_>>()
        .join(" ");
    assert_eq!(
        hex_bytes(&dump),
        expected.concat(),
        "received frames differ"
    );

    // Link down: reflected, logged; writes go nowhere but do not wedge.
    vm.qmp("set_link", json!({"name": "nic0", "up": false}))?;
    wait_link(vm, "down")?;
    vm.ok(&format!(
        "i=0; while [ $i -lt {DOWN_WRITES} ]; do \
           dd if=/root/tx/03 bs=2048 count=1 1<>{NIC}/frames 2>/dev/null || exit 1; i=$((i+1)); \
         done"
    ))?;
    vm.qmp("set_link", json!({"name": "nic0", "up": true}))?;
    let took = wait_link(vm, "up")?;
    eprintln!("link came back after {took:?}");
    vm.ok(&format!(
        "dd if=/root/marker bs=2048 count=1 1<>{NIC}/frames 2>/dev/null"
    ))?;
    // The next datagram is the marker: nothing written while the link was
    // down leaked out afterwards.
    let (got, _) = recv(sock)?;
    assert_eq!(got, marker, "expected the marker frame after link up");
    let log = vm.ok(&format!("cat {LOG}"))?;
    assert!(log.contains("link down"), "{log}");
    assert!(
        log.matches("link up").count() >= 2,
        "link up not logged again:\n{log}"
    );

    let s = stats(vm)?;
    eprintln!("stats: {s:?}");
    let want_tx = (tx.len() + DOWN_WRITES + 1) as u64;
    assert_eq!(s.get("tx_frames"), Some(&want_tx), "{s:?}");
    let tx_bytes: u64 = tx.iter().map(|f| f.len() as u64).sum::<u64>()
        + (DOWN_WRITES * tx[3].len() + marker.len()) as u64;
    assert_eq!(s.get("tx_bytes"), Some(&tx_bytes), "{s:?}");
    assert_eq!(s.get("rx_frames"), Some(&(expected.len() as u64)), "{s:?}");
    let rx_bytes: u64 = expected.iter().map(|f| f.len() as u64).sum();
    assert_eq!(s.get("rx_bytes"), Some(&rx_bytes), "{s:?}");
    for k in ["rx_errors", "tx_errors", "rx_dropped"] {
        assert_eq!(s.get(k), Some(&0), "{k}: {s:?}");
    }

    let irqs_after = intx_count(vm)?;
    eprintln!("INTx count {irqs_before} -> {irqs_after}");
    assert!(
        irqs_after > irqs_before,
        "no interrupts counted: {irqs_before} -> {irqs_after}"
    );

    // Still the same daemon.
    assert_eq!(vm.ok("pidof e1000d")?.trim(), pid);
    Ok(())
}

fn unprivileged_and_bound(vm: &mut Vm, pid: &str) -> lab::Result<()> {
    vm.check_driver_privileges(pid, 210)?;
    vm.check_vfio_bound("0000:00:05.0", &["e1000"])
}

/// Two e1000s on one QEMU hub, each with its own e1000d: numbered frames of
/// random sizes through both rings many times over (each ring has 256
/// descriptors), both directions, none lost or corrupted (`frames` checks
/// each one), and each daemon's stats agree with what the other sent.
#[test]
#[ignore = "boots QEMU: run through `make test`"]
fn two_e1000s_on_a_hub() -> lab::Result<()> {
    const A: &str = "/scheme/network.pci-0000-00-05.0_e1000";
    const B: &str = "/scheme/network.pci-0000-00-07.0_e1000";
    const COUNT: u64 = 2000;
    let _one = ONE_VM.lock().unwrap_or_else(|p| p.into_inner());
    let cfg = Config::new("e1000d-hub")
        .arg(&[
            "-netdev",
            "hubport,id=h0,hubid=0",
            "-netdev",
            "hubport,id=h1,hubid=0",
        ])
        .args(lab::e1000_args("nic0", "h0", "05.0", MAC_TEXT))
        .args(lab::e1000_args("nic1", "h1", "07.0", "52:54:00:12:34:07"));
    let mut vm = Vm::boot(cfg)?;
    let result = (|| -> lab::Result<()> {
        assert_eq!(
            vm.ok("pidof e1000d")?.split_whitespace().count(),
            2,
            "one daemon per function"
        );
        for (from, to, seed) in [(A, B, 1), (B, A, 2)] {
            let out = vm.sh_timeout(
                &format!(
                    "frames pair {from} {to} --count {COUNT} --min 60 --max 1514 \
                     --seed {seed} --timeout-ms 30000"
                ),
                Duration::from_secs(600),
            )?;
            let text = out.stdout_str();
            eprintln!("{from} -> {to}: {}", text.trim());
            assert!(out.success(), "{text}\n{}", out.stderr_str());
            assert!(
                text.contains(&format!("received {COUNT} "))
                    && text.contains(" bad 0 lost 0 dup 0 reordered 0"),
                "{text}"
            );
        }
        let (sa, sb) = (stats_of(&mut vm, A)?, stats_of(&mut vm, B)?);
        for (k_tx, k_rx) in [("tx_frames", "rx_frames"), ("tx_bytes", "rx_bytes")] {
            assert_eq!(
                sa.get(k_tx),
                sb.get(k_rx),
                "A {k_tx} vs B {k_rx}: {sa:?} {sb:?}"
            );
            assert_eq!(
                sb.get(k_tx),
                sa.get(k_rx),
                "B {k_tx} vs A {k_rx}: {sa:?} {sb:?}"
            );
        }
        assert_eq!(sa.get("tx_frames"), Some(&COUNT), "{sa:?}");
        for s in [&sa, &sb] {
            for k in ["rx_errors", "tx_errors", "rx_dropped"] {
                assert_eq!(s.get(k), Some(&0), "{k}: {s:?}");
            }
        }
        Ok(())
    })();
    let console = vm.console();
    let _ = vm.poweroff(Duration::from_secs(30));
    result?;
    assert!(
        !console.contains("exited unexpectedly"),
        "a service died:\n{console}"
    );
    assert!(!console.contains("DMAR: [DMA"), "IOMMU faults:\n{console}");
    Ok(())
}
