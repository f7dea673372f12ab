//! The kernel's device events (uevents), so pcid follows the bus as
//! functions are hot-plugged and removed.
//!
//! A `NETLINK_KOBJECT_UEVENT` socket bound to the kernel's group (1)
//! receives one datagram per event: `ACTION@DEVPATH`, then `KEY=VALUE`
//! fields, each NUL-terminated (`ACTION=add`, `DEVPATH=…`,
//! `SUBSYSTEM=pci`, `PCI_SLOT_NAME=0000:01:00.0`, …). pcid takes only the
//! kernel's own messages (sender port 0) and acts on `pci` adds and
//! removes by rescanning sysfs: the event says *that* the bus changed,
//! sysfs says what it is now, so a lost, stale or repeated event costs a
//! rescan and nothing else.

use std::io;
use std::os::fd::{AsFd, OwnedFd};

use rustix::net::netlink::{self, SocketAddrNetlink};
use rustix::net::{AddressFamily, RecvFlags, SocketFlags, SocketType};

/// The kernel's uevent multicast group.
const KERNEL_GROUP: u32 = 1;
/// Larger than any uevent the kernel sends (`UEVENT_BUFFER_SIZE` is 2048).
const MAX_EVENT: usize = 8192;

/// One uevent, as far as pcid cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uevent {
    pub action: String,
    pub subsystem: String,
    /// `PCI_SLOT_NAME` (`0000:01:00.0`), for the log.
    pub slot: Option<String>,
}

impl Uevent {
    /// Whether the PCI bus gained or lost a function.
    pub fn changes_the_bus(&self) -> bool {
        self.subsystem == "pci" && matches!(self.action.as_str(), "add" | "remove")
    }
}

/// Parses one datagram; `None` for anything that is not a kernel uevent
/// (udev's own messages start with `libudev`, and garbage is dropped).
pub fn parse(msg: &[u8]) -> Option<Uevent> {
    let mut fields = msg.split(|&b| b == 0).filter(|f| !f.is_empty());
    let head = std::str::from_utf8(fields.next()?).ok()?;
    let (action, _devpath) = head.split_once('@')?;
    let mut event = Uevent {
        action: action.to_owned(),
        subsystem: String::new(),
        slot: None,
    };
    for f in fields {
        let Ok(f) = std::str::from_utf8(f) else {
            continue;
        };
        match f.split_once('=') {
            Some(("ACTION", v)) => event.action = v.to_owned(),
            Some(("SUBSYSTEM", v)) => event.subsystem = v.to_owned(),
            Some(("PCI_SLOT_NAME", v)) => event.slot = Some(v.to_owned()),
            _ => {}
        }
    }
    Some(event)
}

/// The listening socket, non-blocking.
pub fn open() -> io::Result<OwnedFd> {
    let fd = rustix::net::socket_with(
        AddressFamily::NETLINK,
        SocketType::DGRAM,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        Some(netlink::KOBJECT_UEVENT),
    )?;
    rustix::net::bind(&fd, &SocketAddrNetlink::new(0, KERNEL_GROUP))?;
    Ok(fd)
}

/// Every event waiting on `fd`, the kernel's only.
pub fn drain(fd: impl AsFd) -> io::Result<Vec<Uevent>> {
    let mut events = Vec::new();
    let mut buf = vec![0u8; MAX_EVENT];
    loop {
        match rustix::net::recvfrom(&fd, &mut buf[..], RecvFlags::DONTWAIT) {
            Ok((_, len, from)) => {
                // Only the kernel (port 0) is believed: any process may
                // send to the group's members.
                let kernel = match from.map(SocketAddrNetlink::try_from) {
                    Some(Ok(a)) => a.pid() == 0,
                    _ => false,
                };
                if !kernel {
                    log::debug!("uevent socket: a message not from the kernel, dropped");
                    continue;
                }
                match buf.get(..len.min(MAX_EVENT)).and_then(parse) {
                    Some(e) => events.push(e),
                    None => log::debug!("uevent socket: a message that is no uevent, dropped"),
                }
            }
            Err(rustix::io::Errno::AGAIN) => return Ok(events),
            Err(rustix::io::Errno::INTR) => continue,
            // The kernel dropped events for us (ENOBUFS): a rescan finds
            // what they said.
            Err(rustix::io::Errno::NOBUFS) => {
                log::warn!("uevent socket overran; rescanning");
                events.push(Uevent {
                    action: "add".into(),
                    subsystem: "pci".into(),
                    slot: None,
                });
            }
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_uevents_parse() {
        let msg = b"add@/devices/pci0000:00/0000:00:02.0/0000:01:00.0\0ACTION=add\0\
DEVPATH=/devices/pci0000:00/0000:00:02.0/0000:01:00.0\0SUBSYSTEM=pci\0\
PCI_CLASS=10000\0PCI_ID=1AF4:1042\0PCI_SLOT_NAME=0000:01:00.0\0SEQNUM=1234\0";
        let e = parse(msg).unwrap();
        assert_eq!(e.action, "add");
        assert_eq!(e.subsystem, "pci");
        assert_eq!(e.slot.as_deref(), Some("0000:01:00.0"));
        assert!(e.changes_the_bus());

        let remove = b"remove@/devices/x\0ACTION=remove\0SUBSYSTEM=pci\0";
        assert!(parse(remove).unwrap().changes_the_bus());
        // Binding a driver, or another subsystem, is no change of the bus.
        let bind = b"bind@/devices/x\0ACTION=bind\0SUBSYSTEM=pci\0";
        assert!(!parse(bind).unwrap().changes_the_bus());
        let vfio = b"remove@/devices/virtual/vfio/12\0ACTION=remove\0SUBSYSTEM=vfio\0";
        assert!(!parse(vfio).unwrap().changes_the_bus());
    }

    #[test]
    fn garbage_is_no_uevent() {
        for bad in [
            &b""[..],
            b"\0\0\0",
            b"libudev\0\xfe\xed\xca\xfe",
            b"no at sign here\0SUBSYSTEM=pci\0",
            b"\xff\xfe@x\0",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
        // Unreadable fields are skipped, the rest still counts.
        let e = parse(b"add@/x\0\xff\xff\0SUBSYSTEM=pci\0").unwrap();
        assert!(e.changes_the_bus());
    }
}
