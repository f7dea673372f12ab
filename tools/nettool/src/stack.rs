//! The interface, its sockets, a monotonic clock and the wait loop.
//!
//! Every operation is a [`Stack::run_until`]: poll the interface, ask the
//! operation whether it is done, and otherwise sleep in `poll(2)` on the
//! frame fd until smoltcp's next timer (`poll_delay`) or the operation's
//! deadline, whichever is first. Nothing spins and nothing waits unbounded.

use std::time::Duration;

use log::debug;
use smoltcp::iface::{Config, Interface, SocketSet};
use smoltcp::wire::{EthernetAddress, IpCidr, Ipv4Address, Ipv4Cidr};

use crate::phy::FrameDevice;
use crate::{Error, Result};

/// After this many zero-delay rounds in a row, sleep at least
/// [`MIN_SLEEP`]: a guard against spinning should smoltcp keep asking to be
/// polled "now" without making progress.
const ZERO_DELAY_STREAK: u32 = 64;
const MIN_SLEEP: Duration = Duration::from_millis(1);

/// A smoltcp interface over a frame handle.
pub struct Stack {
    pub iface: Interface,
    pub device: FrameDevice,
    pub sockets: SocketSet<'static>,
    epoch: std::time::Instant,
    zero_streak: u32,
    /// An operation's own timer (see [`Stack::wake_at`]).
    wake: Option<std::time::Instant>,
    loop_stats: LoopStats,
}

/// Where the time went, for `-v`.
#[derive(Debug, Default, Clone, Copy)]
pub struct LoopStats {
    /// Interface polls.
    pub polls: u64,
    /// Sleeps in `poll(2)`, and their total time.
    pub sleeps: u64,
    pub slept: Duration,
}

/// A random 64-bit value (TCP sequence numbers, ports, DHCP and ping ids).
pub fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    // getrandom(2) only fails before the kernel's pool is seeded, or if
    // interrupted; fall back to the clock, which is random enough here.
    match rustix::rand::getrandom(&mut b, rustix::rand::GetRandomFlags::empty()) {
        Ok(8) => u64::from_ne_bytes(b),
        _ => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64 ^ u64::from(std::process::id()) << 32)
            .unwrap_or(0x9e37_79b9_7f4a_7c15),
    }
}

impl Stack {
    /// An interface with hardware address `mac` (must be unicast) and no IP
    /// address yet.
    pub fn new(mut device: FrameDevice, mac: EthernetAddress) -> Result<Stack> {
        if !mac.is_unicast() {
            return Err(Error::Protocol(format!("{mac} is not a unicast MAC")));
        }
        let mut config = Config::new(mac.into());
        config.random_seed = random_u64();
        let epoch = std::time::Instant::now();
        let iface = Interface::new(config, &mut device, smoltcp::time::Instant::ZERO);
        Ok(Stack {
            iface,
            device,
            sockets: SocketSet::new(Vec::new()),
            epoch,
            zero_streak: 0,
            wake: None,
            loop_stats: LoopStats::default(),
        })
    }

    /// smoltcp's time: microseconds of the monotonic clock since start (the
    /// wall clock may jump; this never does).
    pub fn now(&self) -> smoltcp::time::Instant {
        smoltcp::time::Instant::from_micros(self.epoch.elapsed().as_micros() as i64)
    }

    /// Gives the interface a fixed address and, optionally, a default
    /// gateway (what DHCP would have done).
    pub fn set_address(&mut self, cidr: Ipv4Cidr, gateway: Option<Ipv4Address>) -> Result<()> {
        let mut full = false;
        self.iface.update_ip_addrs(|addrs| {
            addrs.clear();
            full = addrs.push(IpCidr::Ipv4(cidr)).is_err();
        });
        if full {
            return Err(Error::Usage(format!("cannot add address {cidr}")));
        }
        let routes = self.iface.routes_mut();
        routes.remove_default_ipv4_route();
        if let Some(gw) = gateway {
            routes
                .add_default_ipv4_route(gw)
                .map_err(|_| Error::Usage(format!("cannot add route via {gw}")))?;
        }
        Ok(())
    }

    pub fn loop_stats(&self) -> LoopStats {
        self.loop_stats
    }

    /// The interface's IPv4 address, if it has one.
    pub fn ipv4_addr(&self) -> Option<Ipv4Address> {
        self.iface.ipv4_addr()
    }

    /// Lets the interface process every queued frame and send what its
    /// sockets have; fails if the frame handle failed.
    pub fn poll(&mut self) -> Result<()> {
        let now = self.now();
        self.loop_stats.polls += 1;
        self.iface.poll(now, &mut self.device, &mut self.sockets);
        match self.device.take_error() {
            Some(e) => Err(Error::Io(format!("frame handle: {e}"))),
            None => Ok(()),
        }
    }

    /// Sends what the sockets have queued, without taking frames in.
    pub fn flush(&mut self) -> Result<()> {
        let now = self.now();
        self.iface
            .poll_egress(now, &mut self.device, &mut self.sockets);
        match self.device.take_error() {
            Some(e) => Err(Error::Io(format!("frame handle: {e}"))),
            None => Ok(()),
        }
    }

    /// Asks the next [`Stack::wait`] to return by `at` (an operation's own
    /// timer, e.g. when the next ping is due); the earliest request wins.
    pub fn wake_at(&mut self, at: std::time::Instant) {
        self.wake = Some(self.wake.map_or(at, |w| w.min(at)));
    }

    /// Sleeps until a frame arrives, smoltcp has a timer due, the time given
    /// to [`Stack::wake_at`], or `deadline`.
    pub fn wait(&mut self, deadline: std::time::Instant) -> Result<()> {
        let until = self.wake.take().map_or(deadline, |w| w.min(deadline));
        let left = until.saturating_duration_since(std::time::Instant::now());
        let now = self.now();
        let mut delay = match self.iface.poll_delay(now, &self.sockets) {
            Some(d) => Duration::from_micros(d.total_micros()).min(left),
            None => left,
        };
        if delay.is_zero() {
            self.zero_streak += 1;
            if self.zero_streak >= ZERO_DELAY_STREAK {
                delay = MIN_SLEEP.min(left);
            }
        } else {
            self.zero_streak = 0;
        }
        let started = std::time::Instant::now();
        let r = self
            .device
            .wait(delay)
            .map_err(|e| Error::Io(format!("poll on the frame handle: {e}")));
        self.loop_stats.sleeps += 1;
        self.loop_stats.slept += started.elapsed();
        r
    }

    /// Polls until `step` returns `Some`, failing with
    /// [`Error::Timeout`]`(what)` at `deadline`. `step` runs after every
    /// poll; it may queue packets (they go out on the next round at once).
    pub fn run_until<T>(
        &mut self,
        deadline: std::time::Instant,
        what: &str,
        mut step: impl FnMut(&mut Stack) -> Result<Option<T>>,
    ) -> Result<T> {
        loop {
            self.poll()?;
            if let Some(v) = step(self)? {
                return Ok(v);
            }
            if std::time::Instant::now() >= deadline {
                debug!("{what}: deadline passed; {:?}", self.device.stats());
                return Err(Error::Timeout(what.to_owned()));
            }
            // Send what `step` queued before sleeping (egress only: frames
            // taken in now would sit unseen by `step` until the next wake).
            self.flush()?;
            self.wait(deadline)?;
        }
    }
}
