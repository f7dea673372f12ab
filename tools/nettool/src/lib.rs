//! `nettool`: a network stack (smoltcp) over a `/scheme/network.*` frame
//! handle, as a command-line tool: `dhcp`, `ping` and `fetch` (HTTP GET).
//!
//! The library holds everything but argument parsing, so the host tests can
//! drive the same code over a `SOCK_SEQPACKET` pair instead of a scheme:
//!
//! - [`phy::FrameDevice`]: smoltcp's `phy::Device` over any file descriptor
//!   where one `read(2)` is one frame and one `write(2)` sends one frame;
//! - [`stack::Stack`]: the interface, its sockets and the wait loop
//!   (`poll(2)` on the frame fd for `poll_delay`, every wait bounded);
//! - [`dhcp`], [`ping`], [`fetch`]: the three operations;
//! - [`http`]: URL parsing and a streaming HTTP/1.x response decoder.

pub mod dhcp;
pub mod fetch;
pub mod http;
pub mod phy;
pub mod ping;
pub mod stack;

use std::fmt;
use std::path::{Path, PathBuf};

/// The frame file inside a network scheme directory (`network::FRAMES`;
/// nettool speaks the file protocol only and does not link the scheme crate).
pub const FRAMES_FILE: &str = "frames";
/// Largest frame the scheme carries: 1500-byte MTU + Ethernet header.
pub const MAX_FRAME: usize = 1514;

/// What went wrong, with a message meant for a person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The command line was wrong (exit status 2).
    Usage(String),
    /// An operation did not finish in its time bound.
    Timeout(String),
    /// The frame handle or an output file failed.
    Io(String),
    /// The peer misbehaved or refused (bad HTTP, reset, refused, no reply).
    Protocol(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Usage(m) => write!(f, "usage: {m}"),
            Error::Timeout(m) => write!(f, "timed out: {m}"),
            Error::Io(m) | Error::Protocol(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;

/// The files of one network scheme.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemePaths {
    pub frames: PathBuf,
    pub mac: PathBuf,
}

/// Resolves a scheme argument: a bare name (`network.pci-0000-00-05.0_e1000`)
/// lives under `/scheme/`; an absolute path names the scheme directory, or
/// its `frames` file directly.
pub fn scheme_paths(arg: &str) -> SchemePaths {
    let mut dir = if arg.starts_with('/') {
        PathBuf::from(arg)
    } else {
        Path::new("/scheme").join(arg)
    };
    if dir.file_name().is_some_and(|n| n == FRAMES_FILE) {
        dir.pop();
    }
    SchemePaths {
        frames: dir.join(FRAMES_FILE),
        mac: dir.join("mac"),
    }
}

/// Parses a MAC address in the scheme's text form (`52:54:00:12:34:56\n`).
/// smoltcp panics on a non-unicast hardware address, so those are refused
/// here.
pub fn parse_mac(text: &str) -> Result<smoltcp::wire::EthernetAddress> {
    let text = text.trim();
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in mac.iter_mut() {
        let part = parts
            .next()
            .filter(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(|| Error::Protocol(format!("bad MAC address {text:?}")))?;
        *byte = u8::from_str_radix(part, 16)
            .map_err(|_| Error::Protocol(format!("bad MAC address {text:?}")))?;
    }
    if parts.next().is_some() {
        return Err(Error::Protocol(format!("bad MAC address {text:?}")));
    }
    let addr = smoltcp::wire::EthernetAddress(mac);
    if !addr.is_unicast() || mac == [0; 6] {
        return Err(Error::Protocol(format!(
            "MAC address {addr} is not a unicast address"
        )));
    }
    Ok(addr)
}

/// Reads and parses the scheme's `mac` file.
pub fn read_mac(path: &Path) -> Result<smoltcp::wire::EthernetAddress> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Io(format!("cannot read {}: {e}", path.display())))?;
    parse_mac(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scheme_arguments() {
        let p = scheme_paths("network.pci-0000-00-05.0_e1000");
        assert_eq!(
            p.frames,
            Path::new("/scheme/network.pci-0000-00-05.0_e1000/frames")
        );
        assert_eq!(
            p.mac,
            Path::new("/scheme/network.pci-0000-00-05.0_e1000/mac")
        );
        assert_eq!(
            scheme_paths("/scheme/network.x/"),
            scheme_paths("network.x")
        );
        assert_eq!(
            scheme_paths("/scheme/network.x/frames"),
            scheme_paths("network.x")
        );
        assert_eq!(scheme_paths("/tmp/n").frames, Path::new("/tmp/n/frames"));
    }

    #[test]
    fn mac_text() {
        assert_eq!(
            parse_mac("52:54:00:12:34:05\n").unwrap().0,
            [0x52, 0x54, 0, 0x12, 0x34, 5]
        );
        for bad in [
            "",
            "52:54:00:12:34",
            "52:54:00:12:34:05:06",
            "52:54:00:12:34:5",
            "52:54:00:12:34:zz",
            "ff:ff:ff:ff:ff:ff",
            "01:00:5e:00:00:01",
            "00:00:00:00:00:00",
            "525400123405",
            "52:54:00:12:34:+5",
        ] {
            assert!(parse_mac(bad).is_err(), "{bad:?} accepted");
        }
    }
}
