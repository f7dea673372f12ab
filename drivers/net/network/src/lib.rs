//! The `network.*` scheme shared by every NIC driver.
//!
//! A driver implements [`NetworkDevice`] for its hardware, wraps it in a
//! [`NetworkScheme`], registers `network.<pci-name>_<driver>` as a
//! directory scheme, serves it with `scheme::Server`, and after each
//! interrupt calls [`NetworkScheme::on_irq`] and then `Server::wake()`.
//!
//! # Files
//!
//! `/scheme/network.<name>/` is a directory (a FUSE directory cannot be
//! opened for writing, so frames live in a file of their own, not at the
//! root as on Redox):
//!
//! | path | what |
//! | --- | --- |
//! | `frames` ([`FRAMES`]) | the frame stream: open `O_RDWR` (or read/write only) |
//! | `mac` | `52:54:00:12:34:56\n` |
//! | `link` | `up\n` or `down\n` |
//! | `stats` | lines `key value\n`: `rx_frames rx_bytes tx_frames tx_bytes rx_dropped rx_truncated rx_errors tx_errors tx_lost` (since this driver instance started) |
//!
//! `frames` is a stream (not seekable). Each `write` sends exactly one frame
//! of [`MIN_FRAME`]`..=`[`MAX_FRAME`] bytes (Ethernet header and payload, no
//! FCS); anything else is `EINVAL`, and nothing is sent or counted. A write
//! blocks while the device's TX ring is full (`EAGAIN` with `O_NONBLOCK`).
//! Each `read` returns exactly one received frame; it blocks while none is
//! queued for the handle (`EAGAIN` with `O_NONBLOCK`). A buffer shorter than
//! the frame gets the frame's first bytes and the rest is discarded (like a
//! packet socket) and counted in `rx_truncated`. `poll`: readable while the
//! handle has a frame queued; writable unless the last transmit found the TX
//! ring full and no interrupt has come since.
//!
//! # Receive model
//!
//! Every handle open for reading receives every frame (like a packet socket
//! or a tap): each has its own queue of [`RX_QUEUE_FRAMES`] frames. When a
//! handle's queue is full the frame is dropped *for that handle only* and
//! counted in `rx_dropped`; a frame received while no handle is open for
//! reading is dropped and counted too. The device's receive ring is drained
//! completely on every interrupt, so a slow reader never stalls the device,
//! the daemon or the other readers. `rx_frames`/`rx_bytes` count what the
//! device delivered, whoever read it.
//!
//! `mac`, `link` and `stats` are small read-only files (seekable; a read at
//! offset 0 takes a fresh snapshot, later offsets read that snapshot).
//!
//! # Access
//!
//! Every file but the directory itself is open to root and to the daemon's
//! own uid or gid (mode 0660 for `frames`, 0440 for the others); anyone
//! else gets `EACCES`, like a disk.

mod scheme;
#[cfg(any(test, feature = "test-util"))]
pub mod testing;

pub use crate::scheme::NetworkScheme;

/// Largest frame a handle may write or will read: 1500-byte MTU + 14-byte
/// Ethernet header (no FCS, no VLAN tag).
pub const MAX_FRAME: usize = 1514;
/// Smallest: one Ethernet header. Drivers pad shorter-than-60 frames if
/// their hardware needs it.
pub const MIN_FRAME: usize = 14;
/// Frames each reading handle can have queued before new ones are dropped
/// for it.
pub const RX_QUEUE_FRAMES: usize = 512;
/// The frame file's name inside the scheme directory.
pub const FRAMES: &str = "frames";

/// Device-side error counters the driver keeps (descriptor error bits,
/// frames the device reported bad).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DeviceErrors {
    pub rx_errors: u64,
    pub tx_errors: u64,
}

/// A NIC's queues, as the scheme sees them. Single-threaded: called from
/// the driver's event loop only.
pub trait NetworkDevice {
    fn mac_address(&self) -> [u8; 6];
    fn link_up(&self) -> bool;
    /// Called after the device's interrupt fired (and after the driver acked
    /// it): read/clear causes, reclaim finished TX descriptors, note link
    /// changes, refill RX. Must not block.
    fn handle_interrupt(&mut self);
    /// Copies one frame (MIN_FRAME..=MAX_FRAME bytes, already checked) into
    /// a free TX slot and rings the doorbell. `Err(EAGAIN)` when the TX ring
    /// is full (the scheme parks the writer and retries after the next
    /// interrupt). Other errors fail that write (e.g. `EIO` if the device is
    /// gone) and the scheme counts them as tx errors (so `errors()` should
    /// not count them again).
    fn transmit(&mut self, frame: &[u8]) -> syscall::Result<()>;
    /// The next received frame, if any (the driver recycles/refills the RX
    /// buffer it came from). Frames the device flagged bad are counted in
    /// `errors()` and never returned.
    fn receive(&mut self) -> Option<Vec<u8>>;
    fn errors(&self) -> DeviceErrors;
}

/// Formats a MAC address the way `/mac` shows it (`52:54:00:12:34:56`).
pub fn format_mac(mac: [u8; 6]) -> String {
    let parts: Vec<String> = mac.iter().map(|b| format!("{b:02x}")).collect();
    parts.join(":")
}

/// Parses `52:54:00:12:34:56` (what `/mac` holds, without the newline).
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.trim().split(':');
    for b in &mut out {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_text_round_trips() {
        let mac = [0x52, 0x54, 0x00, 0x12, 0xab, 0x06];
        assert_eq!(format_mac(mac), "52:54:00:12:ab:06");
        assert_eq!(parse_mac("52:54:00:12:ab:06\n"), Some(mac));
        assert_eq!(parse_mac("52:54:00:12:ab"), None);
        assert_eq!(parse_mac("52:54:00:12:ab:06:07"), None);
        assert_eq!(parse_mac("52:54:00:12:ab:g6"), None);
        assert_eq!(parse_mac("52:54:00:12:ab:6"), None);
    }
}
