//! `configwrite`: a driver that has started serving writes its own
//! function's config space through its VFIO device fd, as a compromised
//! driver could (the pcid channel takes no writes at all), and logs what
//! VFIO reads back for each: `fault: configwrite NAME @0xOFF/WIDTH: wrote
//! 0x…, VFIO reads 0x…, was 0x…`. What reached the hardware the lab test
//! reads from outside (sysfs).
//!
//! At the first event it serves (`first writes`), left in place so the
//! test can look: every present BAR set to the neighbour's BAR address
//! (`neighbour=`, read from its sysfs `resource` before the sandbox), the
//! ROM BAR likewise and enabled, the interrupt line, the capability
//! pointer and the first vendor capability's next pointer cleared, MSI-X
//! disabled and masked in its message control, MSI-X table entry 1 (a
//! queue's vector) aimed at a made-up x86 interrupt through the BAR, MSI's
//! address and data if the function has MSI. Undone at once, because the
//! driver needs them: memory decode off (with a BAR read tried meanwhile)
//! and INTx disable on.
//!
//! Then two steps, each on `SIGUSR1` (the test's go, once it has looked):
//! 1. MSI-X table entry 1 written through an mmap of its BAR, which VFIO
//!    allows (the whole BAR is mappable): aimed at x86 vector 0xd0 in the
//!    compatibility format, which no interrupt remapping entry names.
//! 2. The entry put back; bus mastering off, then on again. QEMU's virtio
//!    devices stop when bus mastering goes off (they drop DRIVER_OK), so
//!    the driver then ends itself and its successor gets a reset device.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

use super::{lock, plan, Kind};
use crate::io::MmioRegion;
use crate::vfio::{Device, BAR0_REGION};

/// Config-space offsets and bits (PCI Local Bus 3.0, 6.2; MSI 6.8).
mod reg {
    pub const COMMAND: u64 = 0x04;
    pub const BAR0: u64 = 0x10;
    pub const ROM: u64 = 0x30;
    pub const CAP_PTR: u64 = 0x34;
    pub const INTERRUPT_LINE: u64 = 0x3c;
    pub const CMD_MEMORY: u32 = 1 << 1;
    pub const CMD_BUS_MASTER: u32 = 1 << 2;
    pub const CMD_INTX_DISABLE: u32 = 1 << 10;
    pub const CAP_VENDOR: u8 = 0x09;
    pub const CAP_MSI: u8 = 0x05;
    pub const CAP_MSIX: u8 = 0x11;
    pub const MSIX_ENABLE: u32 = 1 << 15;
    pub const MSIX_FUNCTION_MASK: u32 = 1 << 14;
    pub const MSI_64BIT: u32 = 1 << 7;
}

/// Linux's IORESOURCE_MEM, in a sysfs `resource` line's flags.
const IORESOURCE_MEM: u64 = 0x200;
/// Aimed at when there is no neighbour to copy: below the IOAPIC, in the
/// PCI hole of q35.
const FALLBACK_MMIO: u64 = 0xfe00_0000;
/// A compatibility-format x86 interrupt (APIC 0, physical; vector 0xd0,
/// which Linux leaves free): what MSI-X entry 1 is aimed at.
const FORGED_MSI: (u64, u32) = (0xfee0_0000, 0xd0);
/// The MSI-X table entry written: 1, a queue's (virtio's vector 1).
const ENTRY: u64 = 1;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    FirstWrites,
    /// Waiting for the first go: the MSI-X table through the mmap.
    Table,
    /// Waiting for the second: the entry back, then bus mastering.
    BusMaster,
}

struct State {
    dev: Device,
    /// The neighbour's resources as sysfs lists them: (start, flags), by
    /// index (BAR0..5, ROM, …).
    neighbour: Vec<(u64, u64)>,
    phase: Phase,
    /// The MSI-X table: its BAR and offset there, once found.
    table: Option<(u32, u64)>,
    /// The BAR holding it, mapped, and entry `ENTRY` as it was.
    mapped: Option<(MmioRegion, [u32; 4])>,
}

static STATE: Mutex<Option<State>> = Mutex::new(None);
/// Counts `SIGUSR1`s: the test's go for each next step.
static GO: AtomicU32 = AtomicU32::new(0);

extern "C" fn on_go(_: libc::c_int) {
    GO.fetch_add(1, Ordering::Relaxed);
}

/// The VFIO device was just opened (before the sandbox): keeps a handle on
/// it, reads the neighbour's BARs, and installs the go signal.
pub fn device_opened(dev: &Device) {
    let Some(plan) = plan().filter(|p| p.has(Kind::ConfigWrite)) else {
        return;
    };
    let dev = match dev.try_clone() {
        Ok(d) => d,
        Err(e) => {
            log::error!("fault: configwrite cannot keep the device: {e}");
            return;
        }
    };
    let neighbour = match &plan.neighbour {
        Some(addr) => {
            let path = format!("/sys/bus/pci/devices/{addr}/resource");
            match std::fs::read_to_string(&path) {
                Ok(text) => parse_resources(&text),
                Err(e) => {
                    log::error!("fault: configwrite: {path}: {e}");
                    Vec::new()
                }
            }
        }
        None => Vec::new(),
    };
    // SAFETY: the handler only stores to an atomic, which is
    // async-signal-safe; `sa` is fully initialised (zeroed, then the
    // handler and an empty mask set).
    let installed = unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_go as extern "C" fn(libc::c_int) as libc::sighandler_t;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut())
    };
    if installed != 0 {
        log::error!(
            "fault: configwrite: sigaction(SIGUSR1): {}",
            std::io::Error::last_os_error()
        );
    }
    log::warn!(
        "fault: configwrite armed; neighbour {:?} at {:x?}",
        plan.neighbour,
        neighbour.iter().map(|r| r.0).collect::<Vec<_>>()
    );
    *lock(&STATE) = Some(State {
        dev,
        neighbour,
        phase: Phase::FirstWrites,
        table: None,
        mapped: None,
    });
}

/// Lines of `0xSTART 0xEND 0xFLAGS`, as sysfs writes a `resource` file.
fn parse_resources(text: &str) -> Vec<(u64, u64)> {
    text.lines()
        .map(|l| {
            let w: Vec<u64> = l.split_whitespace().filter_map(super::parse_u64).collect();
            (
                w.first().copied().unwrap_or(0),
                w.get(2).copied().unwrap_or(0),
            )
        })
        .collect()
}

/// From the event loop.
pub(super) fn serving() {
    let mut st = lock(&STATE);
    let Some(s) = st.as_mut() else {
        return;
    };
    let go = GO.load(Ordering::Relaxed);
    match s.phase {
        Phase::FirstWrites => {
            first_writes(s);
            s.phase = Phase::Table;
            log::warn!("fault: configwrite: first writes done; the MSI-X table waits for SIGUSR1");
        }
        Phase::Table if go >= 1 => {
            forge_entry(s);
            s.phase = Phase::BusMaster;
            log::warn!("fault: configwrite: the entry stays until SIGUSR1; then bus master");
        }
        Phase::BusMaster if go >= 2 => {
            if let Some((region, saved)) = s.mapped.as_mut() {
                write_entry(region, s.table.map_or(0, |t| t.1), *saved);
                log::warn!("fault: configwrite: MSI-X entry {ENTRY} put back");
            }
            bus_master(s);
            log::warn!(
                "fault: configwrite: done; ending so the device is reset (QEMU's virtio stops at bus master off)"
            );
            std::process::abort();
        }
        Phase::Table | Phase::BusMaster => {}
    }
}

/// Offset of entry `ENTRY` in a table at `table`.
fn entry_offset(table: u64) -> usize {
    (table + 16 * ENTRY) as usize
}

/// Writes a table entry (address low, high, data, vector control), masked
/// while it changes (PCI 3.0, 6.8.2.9).
fn write_entry(region: &mut MmioRegion, table: u64, entry: [u32; 4]) {
    let at = entry_offset(table);
    region.write32(at + 12, entry[3] | 1);
    for (i, v) in entry.iter().take(3).enumerate() {
        region.write32(at + 4 * i, *v);
    }
    region.write32(at + 12, entry[3]);
}

/// Step 1: MSI-X entry `ENTRY` through an mmap of the table's BAR.
fn forge_entry(s: &mut State) {
    let Some((bir, table)) = s.table else {
        log::warn!("fault: configwrite: no MSI-X table to map");
        return;
    };
    let mut region = match s.dev.map_region(BAR0_REGION + bir) {
        Ok(r) => r,
        Err(e) => {
            log::warn!("fault: configwrite: mapping BAR{bir} with the MSI-X table: {e}");
            return;
        }
    };
    let at = entry_offset(table);
    let read = |r: &MmioRegion| [0, 4, 8, 12].map(|o| r.read32(at + o));
    let saved = read(&region);
    log::warn!(
        "fault: configwrite MSI-X entry {ENTRY} as the device holds it (mmap of BAR{bir}): address {:#x}, data {:#x}, control {:#x}",
        u64::from(saved[1]) << 32 | u64::from(saved[0]),
        saved[2],
        saved[3]
    );
    let forged = [FORGED_MSI.0 as u32, 0, FORGED_MSI.1, saved[3]];
    write_entry(&mut region, table, forged);
    let now = read(&region);
    log::warn!(
        "fault: configwrite MSI-X entry {ENTRY} forged through the mmap: address {:#x}, data {:#x}, control {:#x}",
        u64::from(now[1]) << 32 | u64::from(now[0]),
        now[2],
        now[3]
    );
    s.mapped = Some((region, saved));
}

impl State {
    fn read(&self, off: u64, width: usize) -> Option<u64> {
        let mut b = [0u8; 8];
        match self.dev.read_config(off, &mut b[..width]) {
            Ok(()) => Some(u64::from_le_bytes(b)),
            Err(e) => {
                log::error!("fault: configwrite: reading {off:#x}: {e}");
                None
            }
        }
    }

    /// Writes `value` (`width` bytes, little-endian) at `off`, reads it
    /// back and logs both. An 8-byte write is two dwords, low first.
    fn write(&self, name: &str, off: u64, width: usize, value: u64) {
        let was = self.read(off, width).unwrap_or(0);
        let bytes = value.to_le_bytes();
        let result = if width == 8 {
            self.dev
                .write_config(off, &bytes[..4])
                .and_then(|()| self.dev.write_config(off + 4, &bytes[4..8]))
        } else {
            self.dev.write_config(off, &bytes[..width])
        };
        if let Err(e) = result {
            log::warn!("fault: configwrite {name} @{off:#04x}/{width}: write refused: {e}");
            return;
        }
        let reads = self.read(off, width).unwrap_or(0);
        log::warn!(
            "fault: configwrite {name} @{off:#04x}/{width}: wrote {value:#x}, VFIO reads {reads:#x}, was {was:#x}"
        );
    }

    fn command(&self) -> Option<u32> {
        self.read(reg::COMMAND, 2).map(|c| c as u32)
    }

    fn write_command(&self, name: &str, value: u32) {
        self.write(name, reg::COMMAND, 2, u64::from(value));
    }

    /// The neighbour's address for our BAR `i`: its BAR `i` if that is
    /// memory, else its first memory BAR.
    fn target(&self, i: usize) -> u64 {
        let mem = |&(start, flags): &(u64, u64)| flags & IORESOURCE_MEM != 0 && start != 0;
        self.neighbour
            .get(i)
            .filter(|r| mem(r))
            .or_else(|| self.neighbour.iter().take(6).find(|r| mem(r)))
            .map_or(FALLBACK_MMIO, |r| r.0)
    }

    /// `(offset, id)` of each standard capability, walked as VFIO shows
    /// the list (bounded: at most 48 in 256 bytes).
    fn capabilities(&self) -> Vec<(u64, u8)> {
        let mut caps = Vec::new();
        let mut at = self.read(reg::CAP_PTR, 1).unwrap_or(0) & 0xfc;
        while at >= 0x40 && caps.len() < 48 {
            let Some(header) = self.read(at, 2) else {
                break;
            };
            caps.push((at, header as u8));
            at = (header >> 8) & 0xfc;
        }
        caps
    }
}

fn first_writes(s: &mut State) {
    let caps = s.capabilities();
    let msix_at = caps.iter().find(|c| c.1 == reg::CAP_MSIX).map(|c| c.0);
    // The BAR holding the MSI-X table: VFIO answers reads of the table
    // with 0xff whatever the command register says.
    let msix_bar = msix_at
        .and_then(|at| s.read(at + 4, 4))
        .map(|t| (t & 7) as usize);
    // BARs: each present memory BAR over the neighbour's.
    let mut i = 0;
    let mut probe_bar = None;
    while i < 6 {
        let off = reg::BAR0 + 4 * i as u64;
        let lo = s.read(off, 4).unwrap_or(0);
        if lo == 0 || lo & 1 == 1 {
            i += 1;
            continue;
        }
        if msix_bar != Some(i) {
            probe_bar.get_or_insert(i);
        }
        let wide = (lo >> 1) & 3 == 2;
        let value = (s.target(i) & !0xf) | (lo & 0xf);
        if wide {
            s.write(&format!("BAR{i}"), off, 8, value);
            i += 2;
        } else {
            s.write(&format!("BAR{i}"), off, 4, value & 0xffff_ffff);
            i += 1;
        }
    }
    let rom = s.neighbour.get(6).map_or(0, |r| r.0);
    let rom = if rom != 0 { rom } else { s.target(0) };
    s.write("ROM BAR", reg::ROM, 4, (rom & 0xffff_f800) | 1);
    let line = s.read(reg::INTERRUPT_LINE, 1).unwrap_or(0);
    s.write("interrupt line", reg::INTERRUPT_LINE, 1, line ^ 0x0f);
    s.write("capability pointer", reg::CAP_PTR, 1, 0);
    if let Some(&(at, _)) = caps.iter().find(|c| c.1 == reg::CAP_VENDOR) {
        s.write("vendor capability next", at + 1, 1, 0);
    }
    if let Some(at) = msix_at {
        s.table = msix(s, at);
    }
    if let Some(&(at, _)) = caps.iter().find(|c| c.1 == reg::CAP_MSI) {
        let flags = s.read(at + 2, 2).unwrap_or(0) as u32;
        s.write("MSI address", at + 4, 4, FORGED_MSI.0);
        let data = if flags & reg::MSI_64BIT != 0 {
            at + 12
        } else {
            at + 8
        };
        s.write("MSI data", data, 2, u64::from(FORGED_MSI.1));
    }
    // The command register: what the driver needs is put back at once.
    let Some(cmd) = s.command() else {
        return;
    };
    s.write_command("command, memory off", cmd & !reg::CMD_MEMORY);
    if let Some(bar) = probe_bar {
        let mut b = [0u8; 4];
        let index = BAR0_REGION + bar as u32;
        match s.dev.read_region(index, 0, &mut b) {
            Ok(n) => log::warn!(
                "fault: configwrite: with memory off, BAR{bar} read through VFIO gave {n} bytes {b:02x?}"
            ),
            Err(e) => {
                log::warn!("fault: configwrite: with memory off, BAR{bar} read through VFIO: {e}")
            }
        }
    }
    s.write_command("command, restored", cmd);
    s.write_command("command, INTx disable", cmd | reg::CMD_INTX_DISABLE);
    s.write_command("command, restored", cmd);
}

/// MSI-X at capability offset `at`: its message control, then table
/// entry `ENTRY` through the fd (VFIO's read and write of the BAR). Returns
/// where the table is: its BAR and offset.
fn msix(s: &State, at: u64) -> Option<(u32, u64)> {
    let control = s.read(at + 2, 2)?;
    let control = control as u32;
    s.write(
        "MSI-X control",
        at + 2,
        2,
        u64::from((control & !reg::MSIX_ENABLE) | reg::MSIX_FUNCTION_MASK),
    );
    let table = s.read(at + 4, 4)?;
    let (bir, offset) = ((table & 7) as u32, table & !7);
    let entry = entry_offset(offset) as u64;
    let index = BAR0_REGION + bir;
    for (what, off, bytes) in [
        ("address", entry, FORGED_MSI.0.to_le_bytes().to_vec()),
        ("data", entry + 8, FORGED_MSI.1.to_le_bytes().to_vec()),
    ] {
        let mut back = vec![0u8; bytes.len()];
        let wrote = s.dev.write_region(index, off, &bytes);
        let read = s.dev.read_region(index, off, &mut back);
        log::warn!(
            "fault: configwrite MSI-X entry {ENTRY} {what} (BAR{bir}+{off:#x}): write {wrote:?}, VFIO reads {read:?} {back:02x?}"
        );
    }
    Some((bir, offset))
}

fn bus_master(s: &State) {
    if let Some(cmd) = s.command() {
        s.write_command("command, bus master off", cmd & !reg::CMD_BUS_MASTER);
        s.write_command("command, bus master on", cmd | reg::CMD_BUS_MASTER);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysfs_resource_lines_parse() {
        let text = "0x0000000000000000 0x0000000000000000 0x0000000000000000\n\
                    0x00000000fea51000 0x00000000fea51fff 0x0000000000040200\n\
                    0x0000000000000000 0x0000000000000000 0x0000000000000000\n";
        let r = parse_resources(text);
        assert_eq!(r.len(), 3);
        assert_eq!(r[1], (0xfea5_1000, 0x40200));
        assert_eq!(r[0], (0, 0));
    }
}
