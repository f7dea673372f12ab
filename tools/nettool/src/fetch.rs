//! HTTP GET over a smoltcp TCP socket: connect, send the request, stream the
//! body to a sink as it arrives (the receive buffer is drained every round,
//! so the advertised window stays open), stop at the body's end.

use std::io::Write;
use std::time::{Duration, Instant};

use log::debug;
use smoltcp::socket::tcp::{self, RecvError, State};
use smoltcp::wire::IpAddress;

use crate::http::{Response, Url};
use crate::stack::{random_u64, Stack};
use crate::{Error, Result};

/// TCP receive buffer: above 64 KiB, so smoltcp offers window scaling and
/// a fast sender is not throttled to one 64 KiB window per round trip.
pub const RX_BUFFER: usize = 1 << 20;
const TX_BUFFER: usize = 16 * 1024;
/// How long to wait for our FIN to be acknowledged after the body.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy)]
pub struct FetchOptions {
    pub connect_timeout: Duration,
    /// Longest time without a byte from the server.
    pub idle_timeout: Duration,
}

impl Default for FetchOptions {
    fn default() -> Self {
        FetchOptions {
            connect_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct FetchSummary {
    pub status: u16,
    pub reason: String,
    pub bytes: u64,
    /// From the connection's establishment to the body's last byte.
    pub elapsed: Duration,
}

impl FetchSummary {
    /// Body throughput in MB/s (10^6 bytes).
    pub fn mb_per_s(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.bytes as f64 / secs / 1e6
        } else {
            0.0
        }
    }
}

/// Fetches `url`, writing the body to `sink`. A status other than 2xx is an
/// error (`HTTP 404 Not Found`), and nothing of its body is written.
pub fn fetch(
    stack: &mut Stack,
    url: &Url,
    opts: &FetchOptions,
    sink: &mut dyn Write,
) -> Result<FetchSummary> {
    if stack.ipv4_addr().is_none() {
        return Err(Error::Usage("the interface has no address".into()));
    }
    let mut socket = tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; RX_BUFFER]),
        tcp::SocketBuffer::new(vec![0; TX_BUFFER]),
    );
    // No smoltcp timeout: the connect and idle bounds below are ours, so a
    // silent server is reported as a timeout, not as a reset.
    let local_port = 49152 + (random_u64() % 16384) as u16;
    socket
        .connect(
            stack.iface.context(),
            (IpAddress::Ipv4(url.host), url.port),
            local_port,
        )
        .map_err(|e| Error::Usage(format!("cannot connect to {}: {e}", url.authority())))?;
    let handle = stack.sockets.add(socket);
    let result = transfer(stack, handle, url, opts, sink);
    // Close politely (FIN) and give it a moment to be acknowledged; a peer
    // that never answers cannot hold us beyond CLOSE_WAIT.
    let socket = stack.sockets.get_mut::<tcp::Socket>(handle);
    if result.is_ok() {
        socket.close();
        let until = Instant::now() + CLOSE_WAIT;
        let _ = stack.run_until(until, "close", |stack| {
            let s = stack.sockets.get::<tcp::Socket>(handle).state();
            Ok(matches!(s, State::Closed | State::TimeWait | State::FinWait2).then_some(()))
        });
    } else {
        socket.abort();
        let _ = stack.flush();
    }
    stack.sockets.remove(handle);
    result
}

fn transfer(
    stack: &mut Stack,
    handle: smoltcp::iface::SocketHandle,
    url: &Url,
    opts: &FetchOptions,
    sink: &mut dyn Write,
) -> Result<FetchSummary> {
    let target = url.authority();
    // Connect.
    let deadline = Instant::now() + opts.connect_timeout;
    stack.run_until(deadline, &format!("connecting to {target}"), |stack| {
        let socket = stack.sockets.get::<tcp::Socket>(handle);
        match socket.state() {
            State::SynSent | State::SynReceived => Ok(None),
            State::Closed => Err(Error::Protocol(format!(
                "connection to {target} refused (reset)"
            ))),
            _ => Ok(Some(())),
        }
    })?;
    debug!("connected to {target}");
    let started = Instant::now();

    let request = url.request();
    let mut sent = 0;
    let mut response = Response::success_only();
    let mut last_progress = Instant::now();
    let mut write_sink = |data: &[u8]| {
        sink.write_all(data)
            .map_err(|e| Error::Io(format!("cannot write the body: {e}")))
    };
    // The deadline moves with every byte received (idle timeout), so the
    // loop runs in idle-timeout slices.
    loop {
        let slice_end = last_progress + opts.idle_timeout;
        let outcome = stack.run_until(slice_end, "", |stack| {
            let socket = stack.sockets.get_mut::<tcp::Socket>(handle);
            if sent < request.len() && socket.may_send() {
                sent += socket
                    .send_slice(&request[sent..])
                    .map_err(|e| Error::Protocol(format!("sending the request: {e}")))?;
            }
            let mut progressed = false;
            loop {
                let got = socket.recv(|buf| {
                    let n = buf.len();
                    (n, response.feed(buf, &mut write_sink).map(|_| n))
                });
                match got {
                    Ok(Ok(0)) => break,
                    Ok(Ok(_)) => progressed = true,
                    Ok(Err(e)) => return Err(e),
                    Err(RecvError::Finished) => {
                        response.finish()?;
                        break;
                    }
                    Err(RecvError::InvalidState) => {
                        return Err(Error::Protocol(format!(
                            "connection to {target} reset after {} body bytes",
                            response.body_bytes()
                        )));
                    }
                }
            }
            if response.is_done() {
                return Ok(Some(true));
            }
            if socket.state() == State::Closed {
                return Err(Error::Protocol(format!(
                    "connection to {target} closed (timed out or reset) after {} body bytes",
                    response.body_bytes()
                )));
            }
            Ok(progressed.then_some(false))
        });
        match outcome {
            Ok(true) => break,
            Ok(false) => last_progress = Instant::now(),
            Err(Error::Timeout(_)) => {
                return Err(Error::Timeout(format!(
                    "no data from {target} for {:?} (after {} body bytes)",
                    opts.idle_timeout,
                    response.body_bytes()
                )))
            }
            Err(e) => return Err(e),
        }
    }
    let elapsed = started.elapsed();
    debug!(
        "transfer: {elapsed:?}, {:?}, {:?}",
        stack.loop_stats(),
        stack.device.stats()
    );
    sink.flush()
        .map_err(|e| Error::Io(format!("cannot write the body: {e}")))?;
    if response.extra_bytes() > 0 {
        debug!(
            "{} bytes after the response ignored",
            response.extra_bytes()
        );
    }
    // Done implies a 2xx head (success_only).
    let (status, reason) = response
        .head()
        .map(|h| (h.status, h.reason.clone()))
        .unwrap_or_default();
    Ok(FetchSummary {
        status,
        reason,
        bytes: response.body_bytes(),
        elapsed,
    })
}
