//! DHCPv4 client: smoltcp's DHCP socket until it is configured, then the
//! lease is applied to the interface (address, default route).

use std::fmt;
use std::time::Duration;

use log::debug;
use smoltcp::socket::dhcpv4::{self, RetryConfig};
use smoltcp::wire::{Ipv4Address, Ipv4Cidr};

use crate::stack::Stack;
use crate::Result;

/// What the server gave us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub address: Ipv4Cidr,
    /// Absent when the server offers none (QEMU's user network with
    /// `restrict=on` sends neither router nor DNS).
    pub router: Option<Ipv4Address>,
    pub dns: Vec<Ipv4Address>,
    /// The server's address (source of its answers).
    pub server: Ipv4Address,
}

impl fmt::Display for Lease {
    /// One `key value` line each: `address`, `router`, `dns`, `server`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "address {}", self.address)?;
        match self.router {
            Some(r) => writeln!(f, "router {r}")?,
            None => writeln!(f, "router none")?,
        }
        if self.dns.is_empty() {
            writeln!(f, "dns none")?;
        } else {
            let list: Vec<String> = self.dns.iter().map(|a| a.to_string()).collect();
            writeln!(f, "dns {}", list.join(" "))?;
        }
        writeln!(f, "server {}", self.server)
    }
}

/// Runs DHCP (DISCOVER, OFFER, REQUEST, ACK) for at most `timeout`, applies
/// the lease to the interface and returns it.
pub fn acquire(stack: &mut Stack, timeout: Duration) -> Result<Lease> {
    let deadline = std::time::Instant::now() + timeout;
    let mut socket = dhcpv4::Socket::new();
    // smoltcp waits 10 s before repeating a DISCOVER; a NIC whose link came
    // up just now may have lost the first one, so retry sooner.
    let mut retry = RetryConfig::default();
    retry.discover_timeout = smoltcp::time::Duration::from_secs(2);
    retry.initial_request_timeout = smoltcp::time::Duration::from_secs(2);
    socket.set_retry_config(retry);
    let handle = stack.sockets.add(socket);
    let result = stack.run_until(deadline, "no DHCP lease", |stack| {
        let socket = stack.sockets.get_mut::<dhcpv4::Socket>(handle);
        Ok(match socket.poll() {
            Some(dhcpv4::Event::Configured(config)) => Some(Lease {
                address: config.address,
                router: config.router,
                dns: config.dns_servers.iter().copied().collect(),
                server: config.server.address,
            }),
            Some(dhcpv4::Event::Deconfigured) | None => None,
        })
    });
    // The lease outlives the tool's run (QEMU's is a day), so no renewals.
    stack.sockets.remove(handle);
    let lease = result?;
    debug!("DHCP lease: {lease:?}");
    stack.set_address(lease.address, lease.router)?;
    Ok(lease)
}
