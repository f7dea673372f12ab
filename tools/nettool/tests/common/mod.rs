//! A peer for nettool's host tests: a second smoltcp stack playing QEMU's
//! user network at 10.0.2.2 with a small DHCP server, echo replies
//! (smoltcp's own) and an HTTP server on port 80.
#![allow(dead_code)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nettool::phy::FrameDevice;
use nettool::stack::Stack;
use rustix::net::{socketpair, AddressFamily, SocketFlags, SocketType};
use smoltcp::socket::{tcp, udp};
use smoltcp::wire::{
    DhcpMessageType, DhcpOption, DhcpPacket, DhcpRepr, EthernetAddress, Ipv4Address, Ipv4Cidr,
};

pub const SERVER: Ipv4Address = Ipv4Address::new(10, 0, 2, 2);
pub const CLIENT: Ipv4Address = Ipv4Address::new(10, 0, 2, 15);
pub const CLIENT_MAC: EthernetAddress = EthernetAddress([0x52, 0x54, 0, 0x12, 0x34, 0x05]);
pub const PEER_MAC: EthernetAddress = EthernetAddress([0x52, 0x55, 10, 0, 2, 2]);

/// What the peer does.
#[derive(Clone, Default)]
pub struct PeerConfig {
    /// Answer DHCP (with a router option unless `no_router`).
    pub dhcp: bool,
    pub no_router: bool,
    /// Raw HTTP response sent to whoever connects to port 80, after the
    /// request's blank line; the peer closes after sending it unless
    /// `keep_open`.
    pub http: Option<Vec<u8>>,
    pub keep_open: bool,
}

pub struct Peer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Vec<u8>>>,
}

impl Peer {
    /// Stops the peer and returns the HTTP request it received.
    pub fn finish(mut self) -> Vec<u8> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread
            .take()
            .map(|t| t.join().unwrap())
            .unwrap_or_default()
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub fn dhcp_reply(request: &[u8], no_router: bool) -> Option<Vec<u8>> {
    let packet = DhcpPacket::new_checked(request).ok()?;
    let repr = DhcpRepr::parse(&packet).ok()?;
    let message_type = match repr.message_type {
        DhcpMessageType::Discover => DhcpMessageType::Offer,
        DhcpMessageType::Request => DhcpMessageType::Ack,
        _ => return None,
    };
    let dns = [DhcpOption {
        kind: 6,
        data: &[10, 0, 2, 3],
    }];
    let reply = DhcpRepr {
        message_type,
        transaction_id: repr.transaction_id,
        secs: 0,
        client_hardware_address: repr.client_hardware_address,
        client_ip: Ipv4Address::UNSPECIFIED,
        your_ip: CLIENT,
        server_ip: SERVER,
        router: (!no_router).then_some(SERVER),
        subnet_mask: Some(Ipv4Address::new(255, 255, 255, 0)),
        relay_agent_ip: Ipv4Address::UNSPECIFIED,
        broadcast: false,
        requested_ip: None,
        client_identifier: None,
        server_identifier: Some(SERVER),
        parameter_request_list: None,
        dns_servers: None,
        max_size: None,
        lease_duration: Some(86400),
        renew_duration: None,
        rebind_duration: None,
        additional_options: if no_router { &[] } else { &dns },
    };
    let mut buf = vec![0; reply.buffer_len()];
    reply
        .emit(&mut DhcpPacket::new_unchecked(&mut buf[..]))
        .ok()?;
    Some(buf)
}

/// A frame wire: a `SOCK_SEQPACKET` pair as two devices.
pub fn wire() -> (FrameDevice, FrameDevice) {
    let (a, b) = socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )
    .unwrap();
    (
        FrameDevice::from_fd(a).unwrap(),
        FrameDevice::from_fd(b).unwrap(),
    )
}

/// Runs the peer on `device` in a thread until stopped or the wire closes.
pub fn start_peer(cfg: PeerConfig, device: FrameDevice) -> Peer {
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let thread = std::thread::spawn(move || {
        let mut stack = Stack::new(device, PEER_MAC).unwrap();
        stack.set_address(Ipv4Cidr::new(SERVER, 24), None).unwrap();
        let mut udp = udp::Socket::new(
            udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 8], vec![0; 8192]),
            udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 8], vec![0; 8192]),
        );
        udp.bind(67).unwrap();
        let udp = stack.sockets.add(udp);
        let mut tcp = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; 64 * 1024]),
            tcp::SocketBuffer::new(vec![0; 256 * 1024]),
        );
        tcp.listen(80).unwrap();
        let tcp = stack.sockets.add(tcp);
        let mut request = Vec::new();
        let mut sent = 0;
        let mut closed = false;
        let far = Instant::now() + Duration::from_secs(600);
        let _ = stack.run_until(far, "peer", |stack| {
            if stop2.load(Ordering::SeqCst) {
                return Ok(Some(()));
            }
            // Wake regularly to notice `stop`.
            stack.wake_at(Instant::now() + Duration::from_millis(20));
            let s = stack.sockets.get_mut::<udp::Socket>(udp);
            while let Ok((data, _)) = s.recv() {
                if !cfg.dhcp {
                    continue;
                }
                if let Some(reply) = dhcp_reply(data, cfg.no_router) {
                    s.send_slice(&reply, (Ipv4Address::BROADCAST, 68)).unwrap();
                }
            }
            let s = stack.sockets.get_mut::<tcp::Socket>(tcp);
            while s.can_recv() {
                s.recv(|b| {
                    request.extend_from_slice(b);
                    (b.len(), ())
                })
                .unwrap();
            }
            let asked = request.windows(4).any(|w| w == b"\r\n\r\n");
            if let (true, Some(resp)) = (asked, &cfg.http) {
                if sent < resp.len() && s.may_send() {
                    sent += s.send_slice(&resp[sent..]).unwrap();
                }
                if sent == resp.len() && !cfg.keep_open && !closed {
                    s.close();
                    closed = true;
                }
            }
            Ok(None)
        });
        request
    });
    Peer {
        stop,
        thread: Some(thread),
    }
}

pub fn pattern(len: usize) -> Vec<u8> {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

pub fn static_addr(stack: &mut Stack) {
    stack
        .set_address(Ipv4Cidr::new(CLIENT, 24), Some(SERVER))
        .unwrap();
}

pub fn http_ok(body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "HTTP/1.0 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}
