//! An AHCI HBA (QEMU's `ahci`, ICH9 8086:2922) through ABAR (BAR 5):
//! reset, AHCI mode, capabilities and implemented ports, one MSI vector
//! (INTx if MSI cannot be had), and per port with an ATA disk an
//! [`AhciPort`] (`port.rs`: slots, NCQ, errors). FIS and table layouts are
//! in `fis.rs`, the register map in `regs.rs`. Section numbers are the
//! AHCI 1.3.1 specification's.

use std::cell::RefCell;
use std::io;
use std::rc::Rc;
use std::time::{Duration, Instant};

use block::BlockDevice;
use common::dma::Dma;
use common::io::MmioRegion;
use common::irq::Irq;
use common::poll_until;
use log::{info, warn};
use pcid_interface::PciFunctionHandle;

pub mod fis;
pub mod port;
pub mod regs;
#[cfg(test)]
mod tests;

use port::{AhciPort, Attached, PortRegs, META_BYTES, POOL_BYTES};
use regs::{cap, ghc, hba, sata};

/// Intel.
pub const VENDOR: u16 = 0x8086;
/// ICH9 AHCI (QEMU's `ahci`/`ich9-ahci`). Other AHCI HBAs would likely
/// work but are not claimed untested.
pub const DEVICES: &[u16] = &[0x2922];
/// ABAR: the HBA's memory registers.
const ABAR: u8 = 5;
/// GHC.HR must clear within 1 s (section 10.4.3).
const RESET_TIMEOUT: Duration = Duration::from_secs(1);

/// Port registers in the shared ABAR mapping.
pub struct MmioPort {
    bar: Rc<RefCell<MmioRegion>>,
    base: usize,
}

impl PortRegs for MmioPort {
    fn read(&self, reg: usize) -> u32 {
        self.bar.borrow().read32(self.base + reg)
    }
    fn write(&mut self, reg: usize, v: u32) {
        self.bar.borrow_mut().write32(self.base + reg, v);
    }
}

/// One disk: a port of the HBA in DMA memory of the function's domain.
pub type Disk = AhciPort<MmioPort, Dma<[u8]>>;

/// The HBA's global registers, for the interrupt handler.
pub struct Hba {
    bar: Rc<RefCell<MmioRegion>>,
}

impl Hba {
    /// Ports with an interrupt pending (IS).
    pub fn pending(&self) -> u32 {
        self.bar.borrow().read32(hba::IS)
    }

    /// Clears IS bits (write 1 to clear); after the ports' PxIS, so a
    /// port's status is never left set with its IS bit clear.
    pub fn acknowledge(&self, ports: u32) {
        if ports != 0 {
            self.bar.borrow_mut().write32(hba::IS, ports);
        }
    }
}

/// What [`start`] brings up.
pub struct Controller {
    pub hba: Hba,
    pub disks: Vec<Disk>,
    pub irq: Irq,
    /// DMA memory pinned, in bytes (RLIMIT_MEMLOCK must cover it).
    pub pinned: usize,
}

/// Resets the HBA (section 10.4.3): GHC.HR, bounded; AHCI mode on before
/// and after (some HBAs take HR only in AHCI mode).
fn reset(bar: &mut MmioRegion) -> io::Result<()> {
    bar.write32(hba::GHC, ghc::AE);
    bar.write32(hba::GHC, ghc::AE | ghc::HR);
    if !poll_until(RESET_TIMEOUT, || bar.read32(hba::GHC) & ghc::HR == 0) {
        return Err(io::Error::other("GHC.HR still set 1 s after an HBA reset"));
    }
    bar.write32(hba::GHC, ghc::AE);
    Ok(())
}

/// Brings up the HBA behind `handle`: every port with an ATA disk
/// started and identified, within `timeout` for IDENTIFY.
pub fn start(handle: &PciFunctionHandle, timeout: Duration) -> io::Result<Controller> {
    let name = handle.name().to_owned();
    // A restarted driver meets what its predecessor left: the function is
    // reset first. Behind a PCIe root port a conventional PCI function's
    // only VFIO reset is a secondary bus reset, which it has alone there.
    match handle.device().info() {
        Ok(i) if i.can_reset() => match handle.reset() {
            Ok(()) => info!("{name}: function reset through VFIO"),
            Err(e) => warn!("{name}: VFIO reset failed ({e}); GHC.HR only"),
        },
        _ => info!("{name}: no VFIO reset for this function; GHC.HR only"),
    }
    handle.enable_bus_master()?;
    let mut bar = handle.map_bar(ABAR)?;
    if bar.len() < hba::port(0) {
        return Err(io::Error::other(format!(
            "{name}: ABAR is {:#x} bytes, too small for an AHCI HBA",
            bar.len()
        )));
    }
    reset(&mut bar)?;
    let caps = bar.read32(hba::CAP);
    let pi = bar.read32(hba::PI);
    let vs = bar.read32(hba::VS);
    let slots = ((caps >> cap::NCS_SHIFT) & cap::NCS_MASK) as usize + 1;
    let ncq = caps & cap::SNCQ != 0;
    let s64a = caps & cap::S64A != 0;
    info!(
        "{name}: AHCI {}.{}, {} ports (PI {pi:#x}), {slots} command slots{}{}",
        vs >> 16,
        (vs >> 8) & 0xff,
        (caps & cap::NP_MASK) + 1,
        if ncq { ", NCQ" } else { "" },
        if s64a { ", 64-bit DMA" } else { "" },
    );

    // The vector first, then the causes that raise it.
    let irq = match handle.enable_msi(1) {
        Ok(mut v) if !v.is_empty() => {
            info!("{name}: MSI, one vector");
            v.remove(0)
        }
        other => {
            if let Err(e) = other {
                info!("{name}: no MSI ({e}); INTx");
            }
            handle.enable_intx()?
        }
    };

    let bar = Rc::new(RefCell::new(bar));
    let dma = handle.dma().clone();
    let mut disks = Vec::new();
    let mut pinned = 0;
    for p in 0..hba::MAX_PORTS {
        if pi & (1 << p) == 0 {
            continue;
        }
        if bar.borrow().len() < hba::port(p) + 0x80 {
            warn!("{name}: port {p} lies beyond ABAR; skipped");
            continue;
        }
        let regs = MmioPort {
            bar: bar.clone(),
            base: hba::port(p),
        };
        let ssts = regs.read(regs::port::SSTS);
        if ssts & sata::DET_MASK != sata::DET_PRESENT {
            info!("port {p}: no device (PxSSTS {ssts:#x})");
            continue;
        }
        let meta = Dma::<[u8]>::zeroed_slice(&dma, META_BYTES)?;
        let pool = Dma::<[u8]>::zeroed_slice(&dma, POOL_BYTES)?;
        let held = meta.len().next_multiple_of(common::PAGE_SIZE) + pool.len();
        let mut disk = AhciPort::new(regs, p as u32, meta, pool, slots, ncq, s64a)?;
        match disk.start() {
            Ok(Attached::Ata) => {
                pinned += held;
                disks.push(disk);
            }
            Ok(Attached::Atapi) => info!("port {p}: ATAPI device: not served"),
            Ok(Attached::Nothing { det, ipm }) => {
                info!("port {p}: no device (DET {det}, IPM {ipm})")
            }
            Ok(Attached::Other(sig)) => info!("port {p}: signature {sig:#010x}: not served"),
            Err(e) => warn!("port {p}: {e}; not served"),
        }
    }
    // Interrupts on only now every started port has its PxIE set.
    bar.borrow_mut().write32(hba::GHC, ghc::AE | ghc::IE);
    let hba = Hba { bar };
    let disks = identify_all(&hba, disks, &irq, timeout);
    Ok(Controller {
        hba,
        disks,
        irq,
        pinned,
    })
}

/// Sends IDENTIFY DEVICE to every disk at once and configures each from
/// its answer; disks that do not answer, or answer nonsense, are dropped.
fn identify_all(hba: &Hba, disks: Vec<Disk>, irq: &Irq, timeout: Duration) -> Vec<Disk> {
    let mut waiting: Vec<Disk> = Vec::new();
    for mut d in disks {
        match d.start_identify() {
            Ok(()) => waiting.push(d),
            Err(e) => warn!("port {}: {e}; not served", d.number()),
        }
    }
    let deadline = Instant::now() + timeout;
    let mut ready = Vec::new();
    let mut stray = Vec::new();
    while !waiting.is_empty() {
        let pending = hba.pending();
        let mut still = Vec::new();
        for mut d in waiting {
            d.complete(&mut stray);
            match d.take_identify() {
                None => still.push(d),
                Some(Err(e)) => warn!("port {}: IDENTIFY failed: {e}; not served", d.number()),
                Some(Ok(raw)) => match fis::parse_identify(&raw) {
                    None => warn!("port {}: IDENTIFY data is not an ATA disk's", d.number()),
                    Some(id) => match d.configure(&id) {
                        Ok(()) => {
                            let (ncq, depth) = d.queueing();
                            info!(
                                "port {}: {:?} serial {:?} firmware {:?}: {} sectors of {} bytes ({} MiB), {}, {}{}",
                                d.number(),
                                id.model,
                                id.serial,
                                id.firmware,
                                id.sectors,
                                id.sector_size,
                                (id.sectors * u64::from(id.sector_size)) >> 20,
                                if ncq {
                                    format!("NCQ depth {depth}")
                                } else {
                                    format!("DMA EXT, {depth} slots")
                                },
                                if id.write_cache { "write cache" } else { "no write cache" },
                                if id.flush_ext { ", FLUSH CACHE EXT" } else { "" },
                            );
                            ready.push(d);
                        }
                        Err(e) => warn!("{e}; not served"),
                    },
                },
            }
        }
        waiting = still;
        hba.acknowledge(pending);
        if waiting.is_empty() {
            break;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let fired = irq.ack().and_then(|()| irq.wait(left));
        match fired {
            Ok(0) => {
                for d in &waiting {
                    warn!("port {}: no answer to IDENTIFY; not served", d.number());
                }
                break;
            }
            Ok(_) => {}
            Err(e) => {
                warn!("waiting for IDENTIFY: {e}");
                break;
            }
        }
    }
    for d in stray {
        warn!("completion for tag {} during start-up dropped", d.tag);
    }
    ready
}
