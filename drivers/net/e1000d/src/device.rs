//! Intel 82540EM (QEMU's `e1000`) through its registers: reset, MAC from
//! the EEPROM cross-checked with receive address 0, legacy receive and
//! transmit rings in DMA memory (IOVAs in the function's own IOMMU domain),
//! interrupts on INTx. Register facts are from the PCI/PCI-X Family of
//! Gigabit Ethernet Controllers Software Developer's Manual (8254x SDM),
//! chapter 13; QEMU's model behaves as noted where it differs.
//!
//! The ring bookkeeping lives in [`ring`] (host-tested); this file owns the
//! registers and implements [`NetworkDevice`].

use std::io;
use std::time::Duration;

use common::barrier::wmb;
use common::dma::Dma;
use common::io::MmioRegion;
use common::irq::Irq;
use common::{poll_until, Throttle};
use log::{debug, error, info, warn};
use network::{DeviceErrors, NetworkDevice};
use pcid_interface::PciFunctionHandle;
use syscall::error::{Error, EAGAIN, EINVAL, EIO};

pub mod ring;

use ring::{RxDesc, RxPoll, RxRing, TxDesc, TxFull, TxRing, BUF_SIZE};

/// Intel.
pub const VENDOR: u16 = 0x8086;
/// 82540EM desktop adapter (what QEMU's `e1000` is). Other 8254x parts
/// differ in EERD layout and PHY handling: not claimed.
pub const DEVICES: &[u16] = &[0x100e];

/// Descriptors per ring (a multiple of 8: RDLEN/TDLEN must be a multiple
/// of 128 bytes). 256 x 2 KiB buffers per direction.
pub const RX_DESCS: usize = 256;
pub const TX_DESCS: usize = 256;
/// Hand consumed receive buffers back at least this often while draining,
/// so a long drain does not starve the device.
const REFILL_BATCH: usize = 32;

/// Register offsets in BAR 0 (SDM table 13-2).
pub mod reg {
    pub const CTRL: usize = 0x0000;
    pub const STATUS: usize = 0x0008;
    pub const EERD: usize = 0x0014;
    pub const ICR: usize = 0x00c0;
    pub const ITR: usize = 0x00c4;
    pub const IMS: usize = 0x00d0;
    pub const IMC: usize = 0x00d8;
    pub const RCTL: usize = 0x0100;
    pub const TCTL: usize = 0x0400;
    pub const TIPG: usize = 0x0410;
    pub const RDBAL: usize = 0x2800;
    pub const RDBAH: usize = 0x2804;
    pub const RDLEN: usize = 0x2808;
    pub const RDH: usize = 0x2810;
    pub const RDT: usize = 0x2818;
    pub const RDTR: usize = 0x2820;
    pub const RADV: usize = 0x282c;
    pub const TDBAL: usize = 0x3800;
    pub const TDBAH: usize = 0x3804;
    pub const TDLEN: usize = 0x3808;
    pub const TDH: usize = 0x3810;
    pub const TDT: usize = 0x3818;
    pub const TIDV: usize = 0x3820;
    pub const TADV: usize = 0x382c;
    /// Multicast table array: 128 words.
    pub const MTA: usize = 0x5200;
    pub const MTA_WORDS: usize = 128;
    /// Receive address `n` (0..16): low and high halves.
    pub const fn ral(n: usize) -> usize {
        0x5400 + 8 * n
    }
    pub const fn rah(n: usize) -> usize {
        0x5404 + 8 * n
    }
    pub const RAR_ENTRIES: usize = 16;
    /// The BAR must reach past the receive address table.
    pub const MIN_BAR: usize = 0x5480;
}

/// Device control (SDM 13.4.1).
mod ctrl {
    pub const LRST: u32 = 1 << 3;
    pub const ASDE: u32 = 1 << 5;
    pub const SLU: u32 = 1 << 6;
    pub const ILOS: u32 = 1 << 7;
    pub const RST: u32 = 1 << 26;
    pub const VME: u32 = 1 << 30;
    pub const PHY_RST: u32 = 1 << 31;
}

/// Device status (SDM 13.4.2).
mod status {
    pub const FD: u32 = 1 << 0;
    pub const LU: u32 = 1 << 1;
    pub const SPEED_SHIFT: u32 = 6;
}

/// EEPROM read register on the 82540EM (SDM 13.4.4): start bit 0, done
/// bit 4, word address in 15:8, data in 31:16.
mod eerd {
    pub const START: u32 = 1 << 0;
    pub const DONE: u32 = 1 << 4;
    pub const ADDR_SHIFT: u32 = 8;
    pub const DATA_SHIFT: u32 = 16;
}

/// Interrupt cause bits, the same in ICR/IMS/IMC (SDM 13.4.17).
pub mod icr {
    pub const TXDW: u32 = 1 << 0;
    pub const LSC: u32 = 1 << 2;
    pub const RXDMT0: u32 = 1 << 4;
    pub const RXO: u32 = 1 << 6;
    pub const RXT0: u32 = 1 << 7;
    /// What we ask for: frames in, frames sent, link change, receive ring
    /// running low, receive overrun.
    pub const WANTED: u32 = RXT0 | TXDW | LSC | RXDMT0 | RXO;
}

/// Receive control (SDM 13.4.22).
mod rctl {
    pub const EN: u32 = 1 << 1;
    /// Accept broadcast.
    pub const BAM: u32 = 1 << 15;
    /// Strip the FCS: frames come up without their 4-byte CRC.
    pub const SECRC: u32 = 1 << 26;
    // BSIZE = 00 with BSEX = 0: 2048-byte buffers; RDMTS = 00: RXDMT0 at
    // half the ring; LPE = 0: no long frames; UPE/MPE = 0: no promiscuity.
}

/// Transmit control (SDM 13.4.33) and inter-packet gap (13.4.34).
mod tctl {
    pub const EN: u32 = 1 << 1;
    /// Pad short packets to 64 bytes with the FCS. QEMU ignores it, so
    /// the ring pads in software too.
    pub const PSP: u32 = 1 << 3;
    /// Collision threshold 15 (the manual's recommended value).
    pub const CT: u32 = 0x0f << 4;
    /// Collision distance 64 byte times: full duplex.
    pub const COLD: u32 = 0x40 << 12;
    /// IPGT 10, IPGR1 8, IPGR2 6: the 82540EM copper values.
    pub const TIPG: u32 = 10 | (8 << 10) | (6 << 20);
}

/// Receive address high: address valid.
const RAH_AV: u32 = 1 << 31;

/// The EEPROM: 64 words; words 0..3 are the MAC, and all 64 sum to 0xBABA.
pub mod eeprom {
    use std::fmt;

    pub const WORDS: usize = 64;
    pub const SUM: u16 = 0xbaba;

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum EepromError {
        /// The words did not sum to 0xBABA (they summed to this).
        Checksum(u16),
        /// Zero, broadcast or multicast: not a station address.
        BadMac([u8; 6]),
        /// EERD never reported done for this word.
        Timeout(usize),
    }

    impl fmt::Display for EepromError {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            match self {
                EepromError::Checksum(sum) => {
                    write!(f, "checksum {sum:#06x}, expected {SUM:#06x}")
                }
                EepromError::BadMac(m) => write!(f, "{} is not a station address", format_mac(m)),
                EepromError::Timeout(w) => write!(f, "word {w} never read"),
            }
        }
    }

    /// `52:54:00:12:34:56`.
    pub fn format_mac(m: &[u8; 6]) -> String {
        m.iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    }

    /// A MAC a NIC may own: not all zeros, not a group (multicast or
    /// broadcast) address.
    pub fn is_station_address(m: &[u8; 6]) -> bool {
        m != &[0; 6] && m[0] & 1 == 0
    }

    /// The station address from an EEPROM image, checksum verified.
    /// Word `i` holds bytes `2i` (low) and `2i + 1` (high).
    pub fn mac_from_words(words: &[u16; WORDS]) -> Result<[u8; 6], EepromError> {
        let sum = words.iter().fold(0u16, |a, &w| a.wrapping_add(w));
        if sum != SUM {
            return Err(EepromError::Checksum(sum));
        }
        let mut mac = [0u8; 6];
        for (i, w) in words[..3].iter().enumerate() {
            mac[2 * i..2 * i + 2].copy_from_slice(&w.to_le_bytes());
        }
        if !is_station_address(&mac) {
            return Err(EepromError::BadMac(mac));
        }
        Ok(mac)
    }

    /// Receive address registers for `mac`: (RAL, RAH without AV).
    pub fn rar_from_mac(m: &[u8; 6]) -> (u32, u32) {
        (
            u32::from_le_bytes([m[0], m[1], m[2], m[3]]),
            u32::from(u16::from_le_bytes([m[4], m[5]])),
        )
    }

    /// The address in a receive address register pair, if marked valid.
    pub fn mac_from_rar(ral: u32, rah: u32) -> Option<[u8; 6]> {
        if rah & super::RAH_AV == 0 {
            return None;
        }
        let l = ral.to_le_bytes();
        let h = rah.to_le_bytes();
        Some([l[0], l[1], l[2], l[3], h[0], h[1]])
    }

    /// Picks the station address: the EEPROM's if it is sound (saying so
    /// if RAR0 disagrees), else a valid RAR0 (the device loads it from the
    /// EEPROM at power-up), else none. Returns the address and a warning.
    pub fn choose_mac(
        eeprom: Result<[u8; 6], EepromError>,
        rar0: Option<[u8; 6]>,
    ) -> Result<([u8; 6], Option<String>), String> {
        match (eeprom, rar0) {
            (Ok(m), Some(r)) if r == m => Ok((m, None)),
            (Ok(m), Some(r)) => Ok((
                m,
                Some(format!(
                    "RAR0 held {}, the EEPROM says {}: using the EEPROM's",
                    format_mac(&r),
                    format_mac(&m)
                )),
            )),
            (Ok(m), None) => Ok((
                m,
                Some("RAR0 was not valid after reset: programming it from the EEPROM".into()),
            )),
            (Err(e), Some(r)) if is_station_address(&r) => Ok((
                r,
                Some(format!(
                    "EEPROM unusable ({e}): using RAR0's {}",
                    format_mac(&r)
                )),
            )),
            (Err(e), r) => Err(format!(
                "no station address: EEPROM {e}, RAR0 {}",
                r.map(|r| format_mac(&r))
                    .unwrap_or_else(|| "not valid".into())
            )),
        }
    }
}

type Rx = RxRing<Dma<[RxDesc]>, Dma<[u8]>>;
type Tx = TxRing<Dma<[TxDesc]>, Dma<[u8]>>;

/// One 82540EM, up and running.
pub struct E1000 {
    regs: MmioRegion,
    rx: Rx,
    tx: Tx,
    mac: [u8; 6],
    link: bool,
    /// The device stopped answering (registers read all ones).
    gone: bool,
    errors: DeviceErrors,
    /// Descriptors `receive` may still consume before the next interrupt:
    /// a device that keeps completing descriptors cannot keep us here.
    rx_budget: usize,
    /// Ring strays already counted into `errors`.
    rx_strays: u64,
    tx_strays: u64,
    log_rx_drop: Throttle,
    log_tx_fail: Throttle,
    log_overrun: Throttle,
    log_bad_head: Throttle,
    log_stray: Throttle,
}

/// Stops receive, transmit and interrupts. A restarted driver meets the
/// device as the dead instance left it (QEMU's e1000 ignores CTRL.RST and
/// a function on the root bus may have no VFIO reset), rings pointing at
/// IOVAs that no longer exist.
fn quiesce(regs: &mut MmioRegion) {
    regs.write32(reg::IMC, u32::MAX);
    regs.write32(reg::RCTL, 0);
    regs.write32(reg::TCTL, 0);
    // Posted writes reach the device before a read returns.
    let _ = regs.read32(reg::STATUS);
}

/// Global reset (CTRL.RST): the MAC and its FIFOs; the EEPROM is read
/// again, so RAR0 holds the EEPROM's address afterwards.
fn reset(regs: &mut MmioRegion) -> io::Result<()> {
    // Let DMA in progress finish before the reset (the manual's advice).
    std::thread::sleep(Duration::from_millis(10));
    let c = regs.read32(reg::CTRL);
    regs.write32(reg::CTRL, c | ctrl::RST);
    // At least 1 us before touching the device again; the EEPROM reload
    // takes longer.
    std::thread::sleep(Duration::from_millis(5));
    if !poll_until(Duration::from_millis(500), || {
        regs.read32(reg::CTRL) & ctrl::RST == 0
    }) {
        return Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "CTRL.RST did not clear within 500 ms",
        ));
    }
    regs.write32(reg::IMC, u32::MAX);
    let _ = regs.read32(reg::ICR);
    Ok(())
}

/// Reads the 64 EEPROM words through EERD.
fn read_eeprom(regs: &mut MmioRegion) -> Result<[u16; eeprom::WORDS], eeprom::EepromError> {
    let mut words = [0u16; eeprom::WORDS];
    for (i, w) in words.iter_mut().enumerate() {
        regs.write32(reg::EERD, eerd::START | ((i as u32) << eerd::ADDR_SHIFT));
        let mut v = 0;
        if !poll_until(Duration::from_millis(20), || {
            v = regs.read32(reg::EERD);
            v & eerd::DONE != 0
        }) {
            return Err(eeprom::EepromError::Timeout(i));
        }
        *w = (v >> eerd::DATA_SHIFT) as u16;
    }
    Ok(words)
}

/// Brings up the 82540EM behind `handle`; returns it and its INTx line.
pub fn start(handle: &PciFunctionHandle) -> io::Result<(E1000, Irq)> {
    let name = handle.name().to_owned();
    if handle.info().irq_pin == 0 {
        return Err(io::Error::other(format!("{name}: no INTx pin")));
    }
    let mut regs = handle.map_bar(0)?;
    if regs.len() < reg::MIN_BAR {
        return Err(io::Error::other(format!(
            "{name}: BAR 0 is {:#x} bytes, too small for an 8254x",
            regs.len()
        )));
    }
    handle.enable_bus_master()?;
    quiesce(&mut regs);
    match handle.device().info() {
        Ok(i) if i.can_reset() => match handle.reset() {
            Ok(()) => debug!("{name}: function reset through VFIO"),
            Err(e) => debug!("{name}: VFIO reset failed ({e}); CTRL.RST only"),
        },
        _ => debug!("{name}: no VFIO reset for this function; CTRL.RST only"),
    }
    // A function reset clears the command register: set it again.
    handle.enable_bus_master()?;
    reset(&mut regs)?;

    let words = read_eeprom(&mut regs);
    if let Ok(w) = &words {
        debug!("{name}: EEPROM {w:04x?}");
    }
    let from_eeprom = words.and_then(|w| eeprom::mac_from_words(&w));
    let rar0 = eeprom::mac_from_rar(regs.read32(reg::ral(0)), regs.read32(reg::rah(0)));
    let (mac, note) = eeprom::choose_mac(from_eeprom, rar0).map_err(io::Error::other)?;
    if let Some(note) = note {
        warn!("{name}: {note}");
    }

    // Link: set link up, let the MAC follow the PHY's speed; clear the
    // bits that hold the link down or turn on VLAN handling.
    let c = regs.read32(reg::CTRL);
    regs.write32(
        reg::CTRL,
        (c | ctrl::SLU | ctrl::ASDE)
            & !(ctrl::LRST | ctrl::PHY_RST | ctrl::ILOS | ctrl::VME | ctrl::RST),
    );

    // Addresses: ours in RAR0 (low half first: AV in the high half makes
    // the entry live), no other entries, no multicast groups.
    let (ral, rah) = eeprom::rar_from_mac(&mac);
    regs.write32(reg::ral(0), ral);
    regs.write32(reg::rah(0), rah | RAH_AV);
    for n in 1..reg::RAR_ENTRIES {
        regs.write32(reg::rah(n), 0);
        regs.write32(reg::ral(n), 0);
    }
    for i in 0..reg::MTA_WORDS {
        regs.write32(reg::MTA + 4 * i, 0);
    }
    let check = eeprom::mac_from_rar(regs.read32(reg::ral(0)), regs.read32(reg::rah(0)));
    if check != Some(mac) {
        return Err(io::Error::other(format!(
            "{name}: RAR0 reads back {check:02x?} after programming {}",
            eeprom::format_mac(&mac)
        )));
    }

    let dma = handle.dma();
    let rx = RxRing::new(
        Dma::<[RxDesc]>::zeroed_slice(dma, RX_DESCS)?,
        Dma::<[u8]>::zeroed_slice(dma, RX_DESCS * BUF_SIZE)?,
    )
    .map_err(io::Error::other)?;
    let tx = TxRing::new(
        Dma::<[TxDesc]>::zeroed_slice(dma, TX_DESCS)?,
        Dma::<[u8]>::zeroed_slice(dma, TX_DESCS * BUF_SIZE)?,
    )
    .map_err(io::Error::other)?;

    // No interrupt delays: one interrupt per event (QEMU still spaces them
    // by its own minimum).
    for r in [reg::ITR, reg::RDTR, reg::RADV, reg::TIDV, reg::TADV] {
        regs.write32(r, 0);
    }
    let rx_iova = rx.desc_iova();
    regs.write32(reg::RDBAL, rx_iova as u32);
    regs.write32(reg::RDBAH, (rx_iova >> 32) as u32);
    regs.write32(reg::RDLEN, (RX_DESCS * size_of::<RxDesc>()) as u32);
    regs.write32(reg::RDH, 0);
    let tx_iova = tx.desc_iova();
    regs.write32(reg::TDBAL, tx_iova as u32);
    regs.write32(reg::TDBAH, (tx_iova >> 32) as u32);
    regs.write32(reg::TDLEN, (TX_DESCS * size_of::<TxDesc>()) as u32);
    regs.write32(reg::TDH, 0);
    regs.write32(reg::TDT, 0);
    regs.write32(reg::TIPG, tctl::TIPG);
    regs.write32(reg::TCTL, tctl::EN | tctl::PSP | tctl::CT | tctl::COLD);

    // The line first, then the causes that raise it: nothing is missed.
    let irq = handle.enable_intx()?;
    // Descriptors are in memory before the device may fetch them.
    wmb();
    regs.write32(reg::RDT, rx.published_tail());
    regs.write32(reg::RCTL, rctl::EN | rctl::BAM | rctl::SECRC);
    let _ = regs.read32(reg::ICR);
    regs.write32(reg::IMS, icr::WANTED);

    let mut nic = E1000 {
        regs,
        rx,
        tx,
        mac,
        link: false,
        gone: false,
        errors: DeviceErrors::default(),
        rx_budget: RX_DESCS,
        rx_strays: 0,
        tx_strays: 0,
        log_rx_drop: Throttle::default(),
        log_tx_fail: Throttle::default(),
        log_overrun: Throttle::default(),
        log_bad_head: Throttle::default(),
        log_stray: Throttle::default(),
    };
    nic.update_link();
    if !nic.link {
        info!("link down (waiting for a link-status change)");
    }
    info!(
        "{name}: 82540EM, MAC {}, {RX_DESCS} RX and {TX_DESCS} TX descriptors, INTx",
        eeprom::format_mac(&mac)
    );
    Ok((nic, irq))
}

impl E1000 {
    /// Reads STATUS.LU and logs a change.
    fn update_link(&mut self) {
        let s = self.regs.read32(reg::STATUS);
        if s == u32::MAX {
            self.device_gone("STATUS");
            return;
        }
        let up = s & status::LU != 0;
        if up == self.link {
            debug!(
                "link status change; link still {}",
                if up { "up" } else { "down" }
            );
            return;
        }
        self.link = up;
        if up {
            let speed = match (s >> status::SPEED_SHIFT) & 3 {
                0 => 10,
                1 => 100,
                _ => 1000,
            };
            let duplex = if s & status::FD != 0 { "full" } else { "half" };
            info!("link up, {speed} Mb/s {duplex} duplex");
        } else {
            info!("link down");
        }
    }

    fn device_gone(&mut self, what: &str) {
        if !self.gone {
            error!("{what} reads all ones: the device is gone; failing I/O from now on");
        }
        self.gone = true;
        self.link = false;
    }

    /// Frees finished transmit descriptors; counts failed ones.
    fn reclaim_tx(&mut self) {
        let r = self.tx.reclaim();
        if r.failed > 0 {
            self.errors.tx_errors += r.failed;
            if let Some(n) = self.log_tx_fail.hit() {
                warn!("transmit failed (collision/underrun status): {n} so far");
            }
        }
    }

    /// Counts descriptors the device wrote while we owned them.
    fn note_strays(&mut self) {
        let (rx, tx) = (self.rx.strays(), self.tx.strays());
        if rx == self.rx_strays && tx == self.tx_strays {
            return;
        }
        self.errors.rx_errors += rx - self.rx_strays;
        self.errors.tx_errors += tx - self.tx_strays;
        self.rx_strays = rx;
        self.tx_strays = tx;
        if let Some(n) = self.log_stray.hit() {
            warn!(
                "the device wrote descriptors it did not own ({rx} RX, {tx} TX so far; \
                 {n} occurrences): ignored"
            );
        }
    }

    /// Hands consumed receive buffers back to the device.
    fn refill_rx(&mut self) {
        if let Some(tail) = self.rx.refill() {
            self.note_strays();
            wmb();
            self.regs.write32(reg::RDT, tail);
        }
    }

    /// RDH and TDH must lie where the rings say the device can be.
    fn check_heads(&mut self) {
        let rdh = self.regs.read32(reg::RDH);
        let tdh = self.regs.read32(reg::TDH);
        let rx_ok = self.rx.head_plausible(rdh);
        let tx_ok = self.tx.head_plausible(tdh);
        if rx_ok && tx_ok {
            return;
        }
        if !rx_ok {
            self.errors.rx_errors += 1;
        }
        if !tx_ok {
            self.errors.tx_errors += 1;
        }
        if let Some(n) = self.log_bad_head.hit() {
            warn!(
                "device head registers out of place (RDH {rdh}{}, TDH {tdh}{}; {n} times): ignored",
                if rx_ok { "" } else { " bogus" },
                if tx_ok { "" } else { " bogus" },
            );
        }
    }
}

impl NetworkDevice for E1000 {
    fn mac_address(&self) -> [u8; 6] {
        self.mac
    }

    fn link_up(&self) -> bool {
        self.link
    }

    fn handle_interrupt(&mut self) {
        self.rx_budget = self.rx.size();
        if self.gone {
            return;
        }
        // Reading ICR clears it and drops the line; the caller unmasks
        // INTx after this.
        let cause = self.regs.read32(reg::ICR);
        if cause == u32::MAX {
            self.device_gone("ICR");
            return;
        }
        if cause & icr::LSC != 0 {
            self.update_link();
        }
        if cause & icr::RXO != 0 {
            // The device had no buffer for a frame and dropped it.
            self.errors.rx_errors += 1;
            if let Some(n) = self.log_overrun.hit() {
                warn!("receive overrun: the device dropped frames ({n} so far)");
            }
        }
        self.reclaim_tx();
        self.check_heads();
        self.note_strays();
        // RXT0/RXDMT0: `receive` drains and refills.
    }

    fn transmit(&mut self, frame: &[u8]) -> syscall::Result<()> {
        if self.gone {
            return Err(Error::new(EIO));
        }
        let tail = match self.tx.push(frame) {
            Ok(t) => t,
            Err(TxFull::Full) => {
                // The interrupt may not have come yet for what finished.
                self.reclaim_tx();
                match self.tx.push(frame) {
                    Ok(t) => t,
                    Err(TxFull::Full) => return Err(Error::new(EAGAIN)),
                    Err(TxFull::BadLength(_)) => return Err(Error::new(EINVAL)),
                }
            }
            Err(TxFull::BadLength(_)) => return Err(Error::new(EINVAL)),
        };
        self.note_strays();
        wmb();
        self.regs.write32(reg::TDT, tail);
        Ok(())
    }

    fn receive(&mut self) -> Option<Vec<u8>> {
        if self.gone {
            return None;
        }
        loop {
            if self.rx_budget == 0 {
                self.refill_rx();
                return None;
            }
            self.rx_budget -= 1;
            match self.rx.poll() {
                RxPoll::Frame(f) => {
                    if self.rx.pending_refill() >= REFILL_BATCH {
                        self.refill_rx();
                    }
                    return Some(f);
                }
                RxPoll::Dropped(why) => {
                    self.errors.rx_errors += 1;
                    if let Some(n) = self.log_rx_drop.hit() {
                        warn!("received frame dropped: {why:?} ({n} so far)");
                    }
                }
                RxPoll::Skipped => {}
                RxPoll::Empty => {
                    self.refill_rx();
                    return None;
                }
            }
        }
    }

    fn errors(&self) -> DeviceErrors {
        self.errors
    }
}

impl Drop for E1000 {
    /// Stops the device's DMA before the rings and buffers are unmapped.
    fn drop(&mut self) {
        quiesce(&mut self.regs);
    }
}

#[cfg(test)]
mod tests;
