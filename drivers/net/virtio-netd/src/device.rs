//! virtio-net (virtio 1.1 section 5.1) on one receive queue (0) and one
//! transmit queue (1).
//!
//! # Buffers: one whole frame per buffer (no MRG_RXBUF, no big buffers)
//!
//! We negotiate none of the GUEST_TSO/GUEST_UFO offloads, so the device
//! never hands us a frame longer than 1514 bytes plus the 12-byte
//! `virtio_net_hdr` (VERSION_1 always has `num_buffers`): 1526 bytes. Every
//! receive buffer is one 2 KiB device-writable descriptor that holds a whole
//! frame, so every used entry is exactly one frame. MRG_RXBUF would only let
//! a frame span several buffers, which frames this small never need, and it
//! would add `num_buffers` reassembly that a misbehaving device could make
//! inconsistent; "big buffers" (64 KiB chains) only matter with the GSO
//! offloads we do not take. Frames longer than 1514 that fit the 2 KiB
//! buffer are dropped and counted as receive errors.
//!
//! The receive ring is filled at start and every buffer goes back into it
//! as soon as its frame has been copied out, so the device always has the
//! whole ring to fill. Transmit copies each frame behind a zeroed header
//! into one of the transmit slots (one readable descriptor each) and rings
//! the doorbell; finished slots are reclaimed before every transmit. The
//! transmit queue's interrupt is suppressed while slots are free (it would
//! only wake the daemon to reclaim what the next transmit reclaims anyway)
//! and asked for when the ring is full, so a writer parked on `EAGAIN` is
//! woken when room appears.
//!
//! The logic is generic over [`Port`] (queues + configuration) and
//! [`Buffer`] (DMA memory), so the tests run it on the host against a
//! simulated device.

use std::fmt;
use std::io;

use log::{debug, error, info, warn};
use network::{format_mac, DeviceErrors, NetworkDevice, MAX_FRAME, MIN_FRAME};
use syscall::error::{Error, EAGAIN, EINVAL, EIO};

use common::dma::Dma;
use common::irq::Irq;
use pcid_interface::PciFunctionHandle;
use virtio_core::spec::bit;
use virtio_core::{Buffer, PciPort, Port, VirtioDevice};

/// Virtio device type of a network device.
pub const DEVICE_TYPE: u16 = 1;

/// virtio-net feature bits (spec 5.1.3).
pub mod feature {
    pub const MAC: u32 = 5;
    pub const STATUS: u32 = 16;
}

/// Features we ask for (VERSION_1 and ACCESS_PLATFORM are virtio-core's).
/// No checksum or segmentation offloads: frames travel complete, with
/// their checksums, both ways.
pub const WANTED: u64 = bit(feature::MAC) | bit(feature::STATUS);

/// Offsets in `struct virtio_net_config`.
mod cfg {
    pub const MAC: usize = 0;
    pub const STATUS: usize = 6;
}

/// `status` bit: the link is up.
const S_LINK_UP: u16 = 1;

/// `struct virtio_net_hdr` with VERSION_1 (num_buffers included): flags,
/// gso_type, hdr_len, gso_size, csum_start, csum_offset, num_buffers.
pub const HDR_LEN: usize = 12;
/// `flags` bit: the checksum is partial and must be completed (only sent
/// with GUEST_CSUM, which we do not negotiate).
const HDR_F_NEEDS_CSUM: u8 = 1;
/// `gso_type` of an ordinary frame.
const GSO_NONE: u8 = 0;

/// Bytes of one receive buffer or transmit slot: header + largest frame
/// (1526) with room, at a stride that keeps buffers from straddling pages.
pub const BUF_SIZE: usize = 2048;
/// Ring entries we ask for per queue (the device may offer fewer); QEMU's
/// default is 256.
pub const QUEUE_SIZE: u16 = 256;
/// Refilled receive buffers are announced to the device at least this
/// often while a burst is being drained, not only at its end.
const KICK_BATCH: usize = 32;

/// The device's queues (spec 5.1.2): receiveq1 and transmitq1.
pub const RX: usize = 0;
pub const TX: usize = 1;

/// The fields of the device configuration we use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetConfig {
    pub mac: [u8; 6],
    /// `status` (0 unless VIRTIO_NET_F_STATUS was negotiated).
    pub status: u16,
}

impl NetConfig {
    /// Reads it through the transport (generation-checked there).
    pub fn read(cfg: &virtio_core::DeviceConfig<'_>, features: u64) -> io::Result<NetConfig> {
        let mut mac = [0u8; 6];
        for (i, b) in mac.iter_mut().enumerate() {
            *b = cfg.read_u8(cfg::MAC + i)?;
        }
        let status = if features & bit(feature::STATUS) != 0 {
            cfg.read_u16(cfg::STATUS)?
        } else {
            0
        };
        Ok(NetConfig { mac, status })
    }
}

/// Counts an error and logs it, but only the 1st, 2nd, 4th, 8th, …
/// occurrence, so a device that misbehaves on every frame cannot flood
/// the log.
fn count_error(counter: &mut u64, what: fmt::Arguments<'_>) {
    *counter += 1;
    if counter.is_power_of_two() {
        warn!("virtio-net: {what} ({counter} such errors so far)");
    }
}

/// One virtio-net NIC.
pub struct VirtioNet<P: Port<Config = NetConfig>, B: Buffer> {
    // Declared first so it is dropped first: a real port resets the device
    // before the buffers below are unmapped.
    port: P,
    /// `BUF_SIZE` bytes per receive buffer.
    rx_mem: B,
    /// `BUF_SIZE` bytes per transmit slot.
    tx_mem: B,
    mac: [u8; 6],
    has_status: bool,
    link_up: bool,
    /// Receive ring token -> buffer.
    rx_by_token: Vec<Option<usize>>,
    /// Receive buffers not in the ring (waiting to go back in).
    rx_idle: Vec<usize>,
    /// Buffers added to the receive ring since the last doorbell.
    rx_unkicked: usize,
    /// Frames `receive` may still take in this round (one round: the calls
    /// until it returns `None`; a queue's worth), so a flood cannot keep
    /// the daemon from its requests.
    rx_budget: usize,
    /// The budget ran out with frames possibly left in the used ring.
    rx_backlog: bool,
    /// Transmit ring token -> slot.
    tx_by_token: Vec<Option<usize>>,
    tx_free: Vec<usize>,
    /// Whether we asked for transmit interrupts (only while the ring is
    /// full).
    tx_irq_on: bool,
    rx_errors: u64,
    tx_errors: u64,
}

impl<P: Port<Config = NetConfig>, B: Buffer> VirtioNet<P, B> {
    /// Reads the configuration, allocates every buffer with `alloc`
    /// (receive buffers, then transmit slots) and fills the receive ring.
    /// The device must already be running (DRIVER_OK): the fill rings the
    /// doorbell.
    pub fn new(port: P, mut alloc: impl FnMut(usize) -> io::Result<B>) -> io::Result<Self> {
        let features = port.features();
        if features & bit(feature::MAC) == 0 {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "device has no MAC address (VIRTIO_NET_F_MAC not offered)",
            ));
        }
        let config = port.read_config()?;
        let has_status = features & bit(feature::STATUS) != 0;
        // Without VIRTIO_NET_F_STATUS the link is to be assumed up.
        let link_up = !has_status || config.status & S_LINK_UP != 0;
        let rx_count = usize::from(port.queue_size(RX));
        let tx_count = usize::from(port.queue_size(TX));
        if rx_count == 0 || tx_count == 0 {
            return Err(io::Error::other("virtio-net queue of size 0"));
        }
        let mut rx_mem = alloc(rx_count * BUF_SIZE)?;
        let mut tx_mem = alloc(tx_count * BUF_SIZE)?;
        // Checked once, so buffer indexing below cannot go out of bounds.
        if rx_mem.bytes().len() < rx_count * BUF_SIZE || tx_mem.bytes().len() < tx_count * BUF_SIZE
        {
            return Err(io::Error::other("buffer allocation shorter than asked for"));
        }
        if config.mac[0] & 1 != 0 {
            warn!(
                "virtio-net: device MAC {} is a multicast address",
                format_mac(config.mac)
            );
        }
        info!(
            "virtio-net: MAC {}, link {}{}, {rx_count} receive buffers, {tx_count} transmit slots",
            format_mac(config.mac),
            if link_up { "up" } else { "down" },
            if has_status {
                ""
            } else {
                " (assumed: no STATUS)"
            },
        );
        let mut nic = VirtioNet {
            port,
            rx_mem,
            tx_mem,
            mac: config.mac,
            has_status,
            link_up,
            rx_by_token: vec![None; rx_count],
            rx_idle: (0..rx_count).rev().collect(),
            rx_unkicked: 0,
            rx_budget: rx_count,
            rx_backlog: false,
            tx_by_token: vec![None; tx_count],
            tx_free: (0..tx_count).rev().collect(),
            tx_irq_on: true,
            rx_errors: 0,
            tx_errors: 0,
        };
        nic.set_tx_interrupts(false);
        nic.refill();
        nic.kick_rx();
        if !nic.rx_idle.is_empty() {
            return Err(io::Error::other(format!(
                "only {} of {rx_count} receive buffers fit the ring",
                rx_count - nic.rx_idle.len()
            )));
        }
        Ok(nic)
    }

    /// Puts every idle receive buffer back into the ring (no doorbell).
    fn refill(&mut self) {
        while let Some(b) = self.rx_idle.pop() {
            let iova = self.rx_mem.iova() + (b * BUF_SIZE) as u64;
            match self.port.add(RX, &[(iova, BUF_SIZE as u32, true)]) {
                Ok(token) => match self.rx_by_token.get_mut(usize::from(token)) {
                    Some(entry) => {
                        *entry = Some(b);
                        self.rx_unkicked += 1;
                    }
                    // The ring handed out a token beyond its size: a bug.
                    // The buffer is in the ring and cannot be taken back;
                    // it is lost to us, not reused while the device has it.
                    None => error!("virtio-net: receive ring token {token} out of range"),
                },
                Err(e) => {
                    self.rx_idle.push(b);
                    if e.kind() != io::ErrorKind::WouldBlock {
                        error!("virtio-net: re-adding a receive buffer failed: {e}");
                    }
                    break;
                }
            }
        }
    }

    fn kick_rx(&mut self) {
        if self.rx_unkicked > 0 {
            self.port.kick(RX);
            self.rx_unkicked = 0;
        }
    }

    fn set_tx_interrupts(&mut self, on: bool) {
        if self.tx_irq_on != on {
            self.port.set_interrupts(TX, on);
            self.tx_irq_on = on;
        }
    }

    /// A free transmit slot, reclaiming finished ones first. With none, asks
    /// for the transmit interrupt and looks once more: a slot finished
    /// before the device saw the request raises no interrupt.
    fn free_tx_slot(&mut self) -> Option<usize> {
        self.reclaim_tx();
        if self.tx_free.is_empty() {
            self.set_tx_interrupts(true);
            self.reclaim_tx();
        }
        let slot = self.tx_free.pop()?;
        self.set_tx_interrupts(false);
        Some(slot)
    }

    /// Takes finished transmit slots back.
    fn reclaim_tx(&mut self) {
        while let Some((token, _)) = self.port.pop_used(TX) {
            match self
                .tx_by_token
                .get_mut(usize::from(token))
                .and_then(Option::take)
            {
                Some(slot) => self.tx_free.push(slot),
                None => count_error(
                    &mut self.tx_errors,
                    format_args!("transmit completion for unknown token {token}"),
                ),
            }
        }
    }

    /// Checks what the device wrote into receive buffer `b` (`len` bytes,
    /// as it claims) and copies the frame out, without the header.
    fn take_frame(&mut self, b: usize, len: u32) -> Option<Vec<u8>> {
        let len = len as usize;
        if len > BUF_SIZE {
            count_error(
                &mut self.rx_errors,
                format_args!("device claims {len} bytes in a {BUF_SIZE}-byte receive buffer"),
            );
            return None;
        }
        if !(HDR_LEN + MIN_FRAME..=HDR_LEN + MAX_FRAME).contains(&len) {
            count_error(
                &mut self.rx_errors,
                format_args!(
                    "received {len} bytes: not a {HDR_LEN}-byte header and a frame of {MIN_FRAME}..={MAX_FRAME} bytes"
                ),
            );
            return None;
        }
        let start = b * BUF_SIZE;
        let bytes = &self.rx_mem.bytes()[start..start + len];
        let (flags, gso_type) = (bytes[0], bytes[1]);
        if flags & HDR_F_NEEDS_CSUM != 0 || gso_type != GSO_NONE {
            count_error(
                &mut self.rx_errors,
                format_args!(
                    "received frame with offloads we did not negotiate (flags {flags:#x}, gso {gso_type:#x})"
                ),
            );
            return None;
        }
        // num_buffers is not checked: without MRG_RXBUF QEMU leaves it
        // unwritten, and one buffer always holds the whole frame here.
        Some(bytes[HDR_LEN..].to_vec())
    }

    /// Whether the last round of `receive` stopped at its budget rather
    /// than at an empty ring: the event loop should run another round.
    pub fn rx_backlog(&self) -> bool {
        self.rx_backlog
    }

    /// Re-reads the link state after a configuration-change interrupt and
    /// logs a change. Returns the new state if it changed. An error only if
    /// the device has stopped working (DEVICE_NEEDS_RESET): nothing but a
    /// reset brings it back. A configuration that cannot be read is logged
    /// and the link state kept.
    pub fn config_changed(&mut self) -> io::Result<Option<bool>> {
        if self.port.needs_reset() {
            self.link_up = false;
            return Err(io::Error::other(
                "device set DEVICE_NEEDS_RESET: it has stopped working",
            ));
        }
        let config = match self.port.read_config() {
            Ok(c) => c,
            Err(e) => {
                warn!("virtio-net: re-reading the configuration failed: {e}");
                return Ok(None);
            }
        };
        if config.mac != self.mac {
            warn!(
                "virtio-net: device MAC changed to {}; still using {}",
                format_mac(config.mac),
                format_mac(self.mac)
            );
        }
        let up = !self.has_status || config.status & S_LINK_UP != 0;
        if up == self.link_up {
            debug!("virtio-net: configuration change, link unchanged");
            return Ok(None);
        }
        self.link_up = up;
        info!("virtio-net: link {}", if up { "up" } else { "down" });
        Ok(Some(up))
    }

    /// Transmit slots the device has not finished yet.
    #[cfg(test)]
    pub fn tx_in_flight(&self) -> usize {
        self.tx_by_token.iter().filter(|t| t.is_some()).count()
    }

    /// Receive buffers currently in the ring.
    #[cfg(test)]
    pub fn rx_posted(&self) -> usize {
        self.rx_by_token.iter().filter(|t| t.is_some()).count()
    }
}

impl<P: Port<Config = NetConfig>, B: Buffer> NetworkDevice for VirtioNet<P, B> {
    fn mac_address(&self) -> [u8; 6] {
        self.mac
    }

    fn link_up(&self) -> bool {
        self.link_up
    }

    /// MSI-X says which queue fired, and there is no cause register to
    /// clear: reclaim transmit slots (and stop transmit interrupts once
    /// there is room) and put back any receive buffer that is still out.
    /// Received frames stay in the used ring until
    /// [`NetworkDevice::receive`] takes them.
    fn handle_interrupt(&mut self) {
        self.reclaim_tx();
        if !self.tx_free.is_empty() {
            self.set_tx_interrupts(false);
        }
        self.refill();
        self.kick_rx();
    }

    fn transmit(&mut self, frame: &[u8]) -> syscall::Result<()> {
        if !(MIN_FRAME..=MAX_FRAME).contains(&frame.len()) {
            return Err(Error::new(EINVAL));
        }
        // None: the interrupt is on, and wakes the parked writer.
        let Some(slot) = self.free_tx_slot() else {
            return Err(Error::new(EAGAIN));
        };
        let start = slot * BUF_SIZE;
        let end = start + HDR_LEN + frame.len();
        let mem = self.tx_mem.bytes();
        // No offloads: an all-zero header (flags 0, GSO_NONE).
        mem[start..start + HDR_LEN].fill(0);
        mem[start + HDR_LEN..end].copy_from_slice(frame);
        let iova = self.tx_mem.iova() + start as u64;
        // end - start <= HDR_LEN + MAX_FRAME: fits u32.
        match self.port.add(TX, &[(iova, (end - start) as u32, false)]) {
            Ok(token) => {
                self.port.kick(TX);
                match self.tx_by_token.get_mut(usize::from(token)) {
                    Some(entry) => {
                        *entry = Some(slot);
                        Ok(())
                    }
                    None => {
                        // Queued, but the slot cannot be tracked: it stays
                        // out of use rather than be overwritten in flight.
                        error!("virtio-net: transmit ring token {token} out of range");
                        Err(Error::new(EIO))
                    }
                }
            }
            Err(e) => {
                self.tx_free.push(slot);
                if e.kind() == io::ErrorKind::WouldBlock {
                    Err(Error::new(EAGAIN))
                } else {
                    error!("virtio-net: queueing a frame failed: {e}");
                    Err(Error::new(EIO))
                }
            }
        }
    }

    fn receive(&mut self) -> Option<Vec<u8>> {
        loop {
            if self.rx_budget == 0 {
                // MSI-X does not fire again for entries already used: the
                // event loop comes back for them (`rx_backlog`) after it
                // has served its requests.
                self.rx_backlog = true;
                self.rx_budget = self.rx_by_token.len();
                self.kick_rx();
                return None;
            }
            self.rx_budget -= 1;
            let Some((token, len)) = self.port.pop_used(RX) else {
                self.rx_backlog = false;
                self.rx_budget = self.rx_by_token.len();
                self.kick_rx();
                return None;
            };
            let Some(b) = self
                .rx_by_token
                .get_mut(usize::from(token))
                .and_then(Option::take)
            else {
                count_error(
                    &mut self.rx_errors,
                    format_args!("receive completion for unknown token {token}"),
                );
                continue;
            };
            let frame = self.take_frame(b, len);
            // The frame is copied out: the buffer goes straight back.
            self.rx_idle.push(b);
            self.refill();
            if self.rx_unkicked >= KICK_BATCH {
                self.kick_rx();
            }
            if frame.is_some() {
                return frame;
            }
        }
    }

    fn errors(&self) -> DeviceErrors {
        DeviceErrors {
            rx_errors: self.rx_errors + self.port.bad_completions(RX),
            tx_errors: self.tx_errors + self.port.bad_completions(TX),
        }
    }
}

#[cfg(test)]
mod tests;

/// A virtio-net NIC on PCI.
pub type Nic = VirtioNet<PciPort<NetConfig>, Dma<[u8]>>;

/// The NIC's interrupts: MSI-X vector 0 (configuration), 1 (receive
/// queue), 2 (transmit queue).
pub struct Irqs {
    pub config: Irq,
    pub rx: Irq,
    pub tx: Irq,
}

/// Brings up the virtio-net function behind `handle`.
pub fn start(handle: &PciFunctionHandle) -> io::Result<(Nic, Irqs)> {
    let VirtioDevice {
        transport,
        queues,
        config_irq,
        queue_irqs,
        features,
    } = virtio_core::start(handle, WANTED, &[QUEUE_SIZE, QUEUE_SIZE])?;
    debug!("virtio-net: features {features:#x}");
    let mut queues = queues.into_iter();
    let mut queue_irqs = queue_irqs.into_iter();
    let (Some(rx), Some(tx), Some(rx_irq), Some(tx_irq)) = (
        queues.next(),
        queues.next(),
        queue_irqs.next(),
        queue_irqs.next(),
    ) else {
        // Reset the device before the queues' memory goes away.
        drop(transport);
        return Err(io::Error::other(
            "virtio-core did not start a receive and a transmit queue",
        ));
    };
    let dma = handle.dma().clone();
    let port = PciPort::new(transport, vec![rx, tx], NetConfig::read);
    let nic = VirtioNet::new(port, |len| Dma::<[u8]>::zeroed_slice(&dma, len))?;
    Ok((
        nic,
        Irqs {
            config: config_irq,
            rx: rx_irq,
            tx: tx_irq,
        },
    ))
}
