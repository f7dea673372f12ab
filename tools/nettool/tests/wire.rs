//! nettool's stack against a second smoltcp stack (tests/common) over a
//! `SOCK_SEQPACKET` pair: one packet = one frame, as on the scheme's
//! `frames` file.

mod common;

use std::time::{Duration, Instant};

use common::*;
use nettool::dhcp;
use nettool::fetch::{fetch, FetchOptions};
use nettool::http::Url;
use nettool::ping::{ping, PingOptions};
use nettool::stack::Stack;
use nettool::Error;
use smoltcp::wire::{Ipv4Address, Ipv4Cidr};

fn client(cfg: PeerConfig) -> (Stack, Peer) {
    let (mine, theirs) = wire();
    let peer = start_peer(cfg, theirs);
    (Stack::new(mine, CLIENT_MAC).unwrap(), peer)
}

#[test]
fn dhcp_gets_the_lease() {
    let (mut stack, peer) = client(PeerConfig {
        dhcp: true,
        ..PeerConfig::default()
    });
    let lease = dhcp::acquire(&mut stack, Duration::from_secs(20)).unwrap();
    assert_eq!(lease.address, Ipv4Cidr::new(CLIENT, 24));
    assert_eq!(lease.router, Some(SERVER));
    assert_eq!(lease.dns, vec![Ipv4Address::new(10, 0, 2, 3)]);
    assert_eq!(lease.server, SERVER);
    assert_eq!(stack.ipv4_addr(), Some(CLIENT));
    assert_eq!(
        lease.to_string(),
        "address 10.0.2.15/24\nrouter 10.0.2.2\ndns 10.0.2.3\nserver 10.0.2.2\n"
    );
    drop(peer);
}

#[test]
fn dhcp_without_router_then_ping_the_server() {
    // QEMU's restrict=on: no router, no DNS in the lease.
    let (mut stack, peer) = client(PeerConfig {
        dhcp: true,
        no_router: true,
        ..PeerConfig::default()
    });
    let lease = dhcp::acquire(&mut stack, Duration::from_secs(20)).unwrap();
    assert_eq!(lease.router, None);
    assert!(lease.dns.is_empty());
    assert!(lease.to_string().contains("router none\ndns none\n"));
    let mut out = Vec::new();
    let opts = PingOptions {
        count: 3,
        interval: Duration::from_millis(50),
        ..PingOptions::default()
    };
    let summary = ping(&mut stack, lease.server, &opts, &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert_eq!(
        (summary.transmitted, summary.received, summary.corrupt),
        (3, 3, 0),
        "{text}"
    );
    for seq in 0..3 {
        assert!(
            text.contains(&format!("64 bytes from 10.0.2.2: icmp_seq={seq} ")),
            "{text}"
        );
    }
    assert!(
        text.contains("3 packets transmitted, 3 received, 0% packet loss"),
        "{text}"
    );
    drop(peer);
}

#[test]
fn ping_large_payload_and_lost_replies() {
    let (mut stack, peer) = client(PeerConfig::default());
    static_addr(&mut stack);
    let mut out = Vec::new();
    let opts = PingOptions {
        count: 2,
        interval: Duration::from_millis(10),
        timeout: Duration::from_secs(2),
        size: nettool::ping::MAX_SIZE,
    };
    let s = ping(&mut stack, SERVER, &opts, &mut out).unwrap();
    assert_eq!(s.received, 2, "{}", String::from_utf8_lossy(&out));
    // Nobody at .99: ARP is never answered, every request is lost, and the
    // whole run stays within its bound.
    let mut out = Vec::new();
    let opts = PingOptions {
        count: 2,
        interval: Duration::from_millis(100),
        timeout: Duration::from_millis(500),
        size: 56,
    };
    let t = Instant::now();
    let s = ping(&mut stack, Ipv4Address::new(10, 0, 2, 99), &opts, &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert_eq!(s.received, 0, "{text}");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert!(
        text.contains("2 packets transmitted, 0 received, 100% packet loss"),
        "{text}"
    );
    drop(peer);
}

fn fetch_from(
    cfg: PeerConfig,
    url: &str,
) -> (
    nettool::Result<nettool::fetch::FetchSummary>,
    Vec<u8>,
    Vec<u8>,
) {
    let (mut stack, peer) = client(cfg);
    static_addr(&mut stack);
    let mut body = Vec::new();
    let opts = FetchOptions {
        connect_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(3),
    };
    let r = fetch(&mut stack, &Url::parse(url).unwrap(), &opts, &mut body);
    let request = peer.finish();
    (r, body, request)
}

#[test]
fn fetch_a_large_body_with_content_length() {
    let data = pattern(4 << 20);
    // keep_open: like QEMU's guestfwd, the server never closes; the body
    // ends by its length.
    let (r, body, request) = fetch_from(
        PeerConfig {
            http: Some(http_ok(&data)),
            keep_open: true,
            ..PeerConfig::default()
        },
        "http://10.0.2.2/big.bin",
    );
    let s = r.unwrap();
    assert_eq!(s.status, 200);
    assert_eq!(s.bytes, data.len() as u64);
    assert!(body == data, "body differs");
    let request = String::from_utf8(request).unwrap();
    assert!(
        request.starts_with("GET /big.bin HTTP/1.1\r\nHost: 10.0.2.2\r\n"),
        "{request}"
    );
    eprintln!("host fetch over a socketpair: {:.1} MB/s", s.mb_per_s());
}

#[test]
fn fetch_chunked_and_close_delimited_bodies() {
    let data = pattern(300_000);
    let mut chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for piece in data.chunks(7000) {
        chunked.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        chunked.extend_from_slice(piece);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let (r, body, _) = fetch_from(
        PeerConfig {
            http: Some(chunked),
            keep_open: true,
            ..PeerConfig::default()
        },
        "http://10.0.2.2/",
    );
    assert_eq!(r.unwrap().bytes, data.len() as u64);
    assert!(body == data);

    let mut close = b"HTTP/1.0 200 OK\r\n\r\n".to_vec();
    close.extend_from_slice(&data);
    let (r, body, _) = fetch_from(
        PeerConfig {
            http: Some(close),
            ..PeerConfig::default()
        },
        "http://10.0.2.2/",
    );
    assert_eq!(r.unwrap().bytes, data.len() as u64);
    assert!(body == data);
}

#[test]
fn fetch_failures_are_reported() {
    // Nothing listens on 81: the peer resets the SYN.
    let (r, _, _) = fetch_from(PeerConfig::default(), "http://10.0.2.2:81/");
    match r {
        Err(Error::Protocol(m)) => assert!(m.contains("refused"), "{m}"),
        other => panic!("{other:?}"),
    }
    // The server closes after 1000 of 5000 bytes.
    let mut short = b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n".to_vec();
    short.extend_from_slice(&[1; 1000]);
    let (r, _, _) = fetch_from(
        PeerConfig {
            http: Some(short.clone()),
            ..PeerConfig::default()
        },
        "http://10.0.2.2/",
    );
    match r {
        Err(Error::Protocol(m)) => assert!(m.contains("1000 of 5000"), "{m}"),
        other => panic!("{other:?}"),
    }
    // ... or stays silent: the idle timeout (3 s here) ends it.
    let t = Instant::now();
    let (r, _, _) = fetch_from(
        PeerConfig {
            http: Some(short),
            keep_open: true,
            ..PeerConfig::default()
        },
        "http://10.0.2.2/",
    );
    assert!(matches!(r, Err(Error::Timeout(_))), "{r:?}");
    assert!(t.elapsed() < Duration::from_secs(15), "{:?}", t.elapsed());
    // An error page: an error, and its body is not written.
    let (r, body, _) = fetch_from(
        PeerConfig {
            http: Some(b"HTTP/1.1 404 Not Found\r\nContent-Length: 4\r\n\r\ngone".to_vec()),
            ..PeerConfig::default()
        },
        "http://10.0.2.2/missing",
    );
    assert_eq!(r.unwrap_err(), Error::Protocol("HTTP 404 Not Found".into()));
    assert!(body.is_empty());
    // No such host on the link: the connect times out.
    let (mut stack, peer) = client(PeerConfig::default());
    static_addr(&mut stack);
    let opts = FetchOptions {
        connect_timeout: Duration::from_secs(2),
        idle_timeout: Duration::from_secs(2),
    };
    let r = fetch(
        &mut stack,
        &Url::parse("http://10.0.2.99/").unwrap(),
        &opts,
        &mut Vec::new(),
    );
    assert!(matches!(r, Err(Error::Timeout(_))), "{r:?}");
    drop(peer);
}

#[test]
fn dhcp_times_out_against_a_silent_network() {
    let (mut stack, peer) = client(PeerConfig::default());
    let t = Instant::now();
    let r = dhcp::acquire(&mut stack, Duration::from_secs(2));
    assert_eq!(r, Err(Error::Timeout("no DHCP lease".into())));
    let took = t.elapsed();
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(6),
        "{took:?}"
    );
    // The DISCOVERs went out (the first at once, one retry after 2 s).
    assert!(stack.device.stats().tx_frames >= 1);
    drop(peer);
}

#[test]
fn a_closed_wire_fails_the_operation() {
    let (mut stack, peer) = client(PeerConfig::default());
    drop(peer); // the peer's end is closed with its thread
    let r = dhcp::acquire(&mut stack, Duration::from_secs(20));
    match r {
        Err(Error::Io(m)) => assert!(m.contains("closed"), "{m}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn garbage_frames_do_not_disturb_dhcp() {
    // Random frames (runts, broadcast junk, truncated IPv4/ARP) interleaved
    // with the real exchange: smoltcp drops them, nettool goes on.
    let (mine, theirs) = wire();
    // Junk goes straight into nettool's end of the wire, from a second
    // writer on the peer's socket.
    let junk_fd = rustix::io::dup(&theirs).unwrap();
    let peer = start_peer(
        PeerConfig {
            dhcp: true,
            ..PeerConfig::default()
        },
        theirs,
    );
    let mut stack = Stack::new(mine, CLIENT_MAC).unwrap();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut written = 0;
    for i in 0..2000usize {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let len = 14 + (x as usize % 1500);
        let mut frame: Vec<u8> = (0..len).map(|k| (x >> (k % 56)) as u8 ^ k as u8).collect();
        // Aim some at us, as broadcast IPv4 and ARP, so they are parsed.
        if i % 2 == 0 {
            frame[..6].copy_from_slice(&[0xff; 6]);
            frame[12..14].copy_from_slice(if i % 4 == 0 {
                &[0x08, 0x00]
            } else {
                &[0x08, 0x06]
            });
        }
        // The fd is non-blocking: stop when the socket buffer is full.
        if rustix::io::write(&junk_fd, &frame).is_err() {
            break;
        }
        written += 1;
    }
    assert!(written >= 50, "only {written} junk frames queued");
    let lease = dhcp::acquire(&mut stack, Duration::from_secs(20)).unwrap();
    assert_eq!(lease.address, Ipv4Cidr::new(CLIENT, 24));
    drop(peer);
}
