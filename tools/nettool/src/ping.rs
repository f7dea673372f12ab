//! ICMP echo: send `count` requests `interval` apart, match replies by
//! identifier and sequence number, check the echoed payload byte for byte.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, Instant};

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::socket::icmp;
use smoltcp::wire::{Icmpv4Packet, Icmpv4Repr, IpAddress, Ipv4Address};

use crate::stack::{random_u64, Stack};
use crate::{Error, Result};

#[derive(Debug, Clone, Copy)]
pub struct PingOptions {
    pub count: u16,
    pub interval: Duration,
    /// How long to wait for each reply.
    pub timeout: Duration,
    /// Payload bytes per request.
    pub size: usize,
}

impl Default for PingOptions {
    fn default() -> Self {
        PingOptions {
            count: 4,
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(3),
            size: 56,
        }
    }
}

/// Largest payload: one frame (1500-byte IP packet, 20-byte IP header,
/// 8-byte ICMP header).
pub const MAX_SIZE: usize = 1472;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct PingSummary {
    pub transmitted: u32,
    pub received: u32,
    /// Replies whose payload differed from the request's.
    pub corrupt: u32,
    pub rtt_min: Option<Duration>,
    pub rtt_max: Option<Duration>,
    pub rtt_total: Duration,
}

impl PingSummary {
    pub fn rtt_avg(&self) -> Option<Duration> {
        (self.received > 0).then(|| self.rtt_total / self.received)
    }
}

/// The payload of request `seq`: reproducible, so the reply can be checked.
fn payload(ident: u16, seq: u16, size: usize) -> Vec<u8> {
    let mut x = (u64::from(ident) << 16 | u64::from(seq)) | 1 << 40;
    (0..size)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn print(out: &mut dyn Write, line: std::fmt::Arguments<'_>) -> Result<()> {
    out.write_fmt(line)
        .and_then(|_| out.write_all(b"\n"))
        .map_err(|e| Error::Io(format!("cannot write output: {e}")))
}

/// Pings `target`, printing a line per reply or loss to `out`.
pub fn ping(
    stack: &mut Stack,
    target: Ipv4Address,
    opts: &PingOptions,
    out: &mut dyn Write,
) -> Result<PingSummary> {
    if opts.size > MAX_SIZE {
        return Err(Error::Usage(format!(
            "payload larger than {MAX_SIZE} bytes"
        )));
    }
    if stack.ipv4_addr().is_none() {
        return Err(Error::Usage("the interface has no address".into()));
    }
    let slots = 16;
    let per = opts.size + 64;
    let rx = icmp::PacketBuffer::new(
        vec![icmp::PacketMetadata::EMPTY; slots],
        vec![0; slots * per],
    );
    let tx = icmp::PacketBuffer::new(
        vec![icmp::PacketMetadata::EMPTY; slots],
        vec![0; slots * per],
    );
    let mut socket = icmp::Socket::new(rx, tx);
    let ident = random_u64() as u16;
    socket
        .bind(icmp::Endpoint::Ident(ident))
        .map_err(|e| Error::Io(format!("cannot bind the ICMP socket: {e}")))?;
    let handle = stack.sockets.add(socket);

    let checksum = ChecksumCapabilities::default();
    let mut summary = PingSummary::default();
    let mut next_seq: u16 = 0;
    let mut next_send = Instant::now();
    let mut waiting: BTreeMap<u16, Instant> = BTreeMap::new();
    // Bounded: the last request goes out after (count-1) intervals and
    // waits at most `timeout`; the slack covers a slow first ARP.
    let deadline = Instant::now()
        + opts.interval * u32::from(opts.count.saturating_sub(1))
        + opts.timeout
        + Duration::from_secs(1);
    print(out, format_args!("PING {target}: {} data bytes", opts.size))?;
    let result = stack.run_until(deadline, "ping did not finish", |stack| {
        let now = Instant::now();
        let socket = stack.sockets.get_mut::<icmp::Socket>(handle);
        while socket.can_recv() {
            let (data, from) = socket
                .recv()
                .map_err(|e| Error::Io(format!("ICMP receive: {e}")))?;
            let Ok(packet) = Icmpv4Packet::new_checked(data) else {
                continue;
            };
            let Ok(Icmpv4Repr::EchoReply {
                ident: id,
                seq_no,
                data,
            }) = Icmpv4Repr::parse(&packet, &checksum)
            else {
                continue;
            };
            if id != ident || from != IpAddress::Ipv4(target) {
                continue;
            }
            let Some(sent) = waiting.remove(&seq_no) else {
                continue; // late or duplicate
            };
            if data != payload(ident, seq_no, opts.size).as_slice() {
                summary.corrupt += 1;
                print(
                    out,
                    format_args!("reply from {from}: icmp_seq={seq_no} payload differs"),
                )?;
                continue;
            }
            let rtt = now.duration_since(sent);
            summary.received += 1;
            summary.rtt_total += rtt;
            summary.rtt_min = Some(summary.rtt_min.map_or(rtt, |m| m.min(rtt)));
            summary.rtt_max = Some(summary.rtt_max.map_or(rtt, |m| m.max(rtt)));
            print(
                out,
                format_args!(
                    "{} bytes from {from}: icmp_seq={seq_no} time={:.2} ms",
                    data.len() + 8,
                    rtt.as_secs_f64() * 1000.0
                ),
            )?;
        }
        let expired: Vec<u16> = waiting
            .iter()
            .filter(|(_, &t)| now.duration_since(t) >= opts.timeout)
            .map(|(&s, _)| s)
            .collect();
        for seq in expired {
            waiting.remove(&seq);
            print(out, format_args!("no reply to icmp_seq={seq}"))?;
        }
        if next_seq < opts.count && now >= next_send && socket.can_send() {
            let repr = Icmpv4Repr::EchoRequest {
                ident,
                seq_no: next_seq,
                data: &payload(ident, next_seq, opts.size),
            };
            let buf = socket
                .send(repr.buffer_len(), IpAddress::Ipv4(target))
                .map_err(|e| Error::Io(format!("cannot send to {target}: {e}")))?;
            repr.emit(&mut Icmpv4Packet::new_unchecked(buf), &checksum);
            waiting.insert(next_seq, now);
            summary.transmitted += 1;
            next_seq += 1;
            next_send += opts.interval;
        }
        if next_seq < opts.count {
            stack.wake_at(next_send);
        }
        if let Some(oldest) = waiting.values().min() {
            stack.wake_at(*oldest + opts.timeout);
        }
        Ok((next_seq == opts.count && waiting.is_empty()).then_some(()))
    });
    stack.sockets.remove(handle);
    result?;
    let loss = if summary.transmitted == 0 {
        0.0
    } else {
        100.0 * f64::from(summary.transmitted - summary.received) / f64::from(summary.transmitted)
    };
    print(
        out,
        format_args!(
            "{} packets transmitted, {} received, {loss:.0}% packet loss",
            summary.transmitted, summary.received
        ),
    )?;
    if let (Some(min), Some(avg), Some(max)) = (summary.rtt_min, summary.rtt_avg(), summary.rtt_max)
    {
        print(
            out,
            format_args!(
                "rtt min/avg/max = {:.2}/{:.2}/{:.2} ms",
                min.as_secs_f64() * 1000.0,
                avg.as_secs_f64() * 1000.0,
                max.as_secs_f64() * 1000.0
            ),
        )?;
    }
    Ok(summary)
}
