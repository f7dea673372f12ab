//! The facts other parts of acpid need from the static tables: the FADT's
//! PM1 blocks and reset register ([`fadt_info`]), the MADT's CPUs
//! ([`madt_cpus`]), the MCFG's ECAM windows ([`mcfg_windows`]); and the
//! checked casts the text renderers (`views.rs`) read the tables through.
//!
//! FADT, MADT and MCFG are read through the `acpi` crate's public table
//! structs. We cast them over a zero-padded copy of the validated sysfs
//! bytes rather than hand the crate a synthetic physical address space:
//! `Handler::map_physical_region` cannot fail, so a fake address space would
//! need an answer for every address the crate might ask for (X_DSDT, FACS,
//! …), while a cast keeps the bytes and their bounds in our hands. The
//! padding makes fields a short (older revision) table lacks read as zero
//! instead of past the end. MADT entries are checked here (lengths, sizes)
//! before the crate's iterator walks them, because that iterator trusts the
//! entry lengths.

use std::mem::size_of;
use std::pin::Pin;

use acpi::address::GenericAddress;
use acpi::sdt::fadt::Fadt;
use acpi::sdt::madt::{self, Madt, MadtEntry};
use acpi::sdt::mcfg::{Mcfg, McfgEntry};

/// Runs `f` on a `T` laid over a zero-padded copy of `bytes`.
///
/// `T` must be one of the crate's `repr(C, packed)` table structs: plain
/// integers, byte arrays and `MaybeUninit` wrappers, alignment 1, valid for
/// any bit pattern.
pub(crate) fn with_table<T, R>(bytes: &[u8], f: impl FnOnce(&T) -> R) -> R {
    const { assert!(std::mem::align_of::<T>() == 1) };
    let mut copy = bytes.to_vec();
    if copy.len() < size_of::<T>() {
        copy.resize(size_of::<T>(), 0);
    }
    // SAFETY: `copy` holds at least `size_of::<T>()` initialised bytes, `T`
    // has alignment 1 (checked above) and is plain data for which any bit
    // pattern is valid (see the function docs); the reference does not
    // outlive `copy`. The crate methods that read past `size_of::<T>()`
    // (MADT and MCFG entries) are only called after `length_matches`, so
    // they stay within `copy`.
    let t: &T = unsafe { &*copy.as_ptr().cast::<T>() };
    f(t)
}

/// Runs `f` on the crate's `Fadt` over (a padded copy of) `bytes`; empty
/// bytes give an all-zero FADT.
pub fn with_fadt<R>(bytes: &[u8], f: impl FnOnce(&Fadt) -> R) -> R {
    with_table::<Fadt, R>(bytes, f)
}

/// The header's length field equals the number of bytes (the crate's
/// entry iterators trust that field).
pub(crate) fn length_matches(bytes: &[u8]) -> Result<(), String> {
    let field = bytes
        .get(4..8)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_le_bytes)
        .ok_or("no header")?;
    if field as usize != bytes.len() {
        return Err(format!(
            "the length field says {field} bytes, the table has {}",
            bytes.len()
        ));
    }
    Ok(())
}

pub(crate) fn le16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}
pub(crate) fn le32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}
pub(crate) fn le64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// What acpid needs from the FADT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FadtInfo {
    pub revision: u8,
    pub pm1a_control: Option<GenericAddress>,
    pub pm1b_control: Option<GenericAddress>,
    pub pm1a_event: Option<GenericAddress>,
    pub pm1b_event: Option<GenericAddress>,
    /// The reset register and the value to write, when the FADT says it
    /// is supported (flags bit 10) and the GAS is valid.
    pub reset: Option<(GenericAddress, u8)>,
    pub century: u8,
    pub flags: u32,
    pub sci_interrupt: u16,
}

fn fadt_ok(fadt: &Fadt) -> bool {
    // An all-zero PM1a address means "absent"; the crate would still make
    // a port-0 GAS of it.
    fadt.pm1a_control_block().is_ok_and(|g| g.address != 0)
}

pub fn fadt_info(bytes: &[u8]) -> FadtInfo {
    with_table::<Fadt, _>(bytes, |f| {
        // FADT flags (offset 112) straight from the bytes: the crate's
        // `FixedFeatureFlags` keeps its raw value private.
        let flags_raw = le32(bytes, 112).unwrap_or(0);
        let reset_supported = flags_raw & (1 << 10) != 0;
        let reset = if reset_supported {
            f.reset_register()
                .ok()
                .filter(|g| g.address != 0)
                .map(|g| (g, f.reset_value))
        } else {
            None
        };
        FadtInfo {
            revision: f.header.revision,
            pm1a_control: if fadt_ok(f) {
                f.pm1a_control_block().ok()
            } else {
                None
            },
            pm1b_control: f.pm1b_control_block().ok().flatten(),
            pm1a_event: f.pm1a_event_block().ok().filter(|g| g.address != 0),
            pm1b_event: f.pm1b_event_block().ok().flatten(),
            reset,
            century: f.century,
            flags: flags_raw,
            sci_interrupt: f.sci_interrupt,
        }
    })
}

/// One processor from the MADT (local APIC or x2APIC entry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cpu {
    pub uid: u32,
    pub apic_id: u32,
    pub x2apic: bool,
    pub enabled: bool,
    pub online_capable: bool,
}

/// Minimum length of each known MADT entry type (the crate's struct sizes).
fn madt_entry_min(entry_type: u8) -> usize {
    match entry_type {
        0x0 => size_of::<madt::LocalApicEntry>(),
        0x1 => size_of::<madt::IoApicEntry>(),
        0x2 => size_of::<madt::InterruptSourceOverrideEntry>(),
        0x3 => size_of::<madt::NmiSourceEntry>(),
        0x4 => size_of::<madt::LocalApicNmiEntry>(),
        0x5 => size_of::<madt::LocalApicAddressOverrideEntry>(),
        0x6 => size_of::<madt::IoSapicEntry>(),
        0x7 => size_of::<madt::LocalSapicEntry>(),
        0x8 => size_of::<madt::PlatformInterruptSourceEntry>(),
        0x9 => size_of::<madt::LocalX2ApicEntry>(),
        0xa => size_of::<madt::X2ApicNmiEntry>(),
        0xb => size_of::<madt::GiccEntry>(),
        0xc => size_of::<madt::GicdEntry>(),
        0xd => size_of::<madt::GicMsiFrameEntry>(),
        0xe => size_of::<madt::GicRedistributorEntry>(),
        0xf => size_of::<madt::GicInterruptTranslationServiceEntry>(),
        0x10 => size_of::<madt::MultiprocessorWakeupEntry>(),
        _ => 2,
    }
}

/// Checks every MADT entry fits and is long enough for its type, so the
/// crate's iterator (which trusts the lengths) stays inside the table.
fn check_madt(bytes: &[u8]) -> Result<(), String> {
    length_matches(bytes)?;
    let start = size_of::<Madt>();
    if bytes.len() < start {
        return Err(format!(
            "{} bytes, an MADT needs at least {start}",
            bytes.len()
        ));
    }
    let mut at = start;
    while at < bytes.len() {
        if bytes.len() - at < 2 {
            return Err(format!("entry at offset {at:#x} is cut off"));
        }
        let (ty, len) = (bytes[at], bytes[at + 1] as usize);
        if len < madt_entry_min(ty) {
            return Err(format!(
                "entry type {ty:#x} at offset {at:#x} has length {len}, needs {}",
                madt_entry_min(ty)
            ));
        }
        if at + len > bytes.len() {
            return Err(format!(
                "entry type {ty:#x} at offset {at:#x} runs past the end of the table"
            ));
        }
        at += len;
    }
    Ok(())
}

/// Runs `f` on each entry of a validated MADT.
pub(crate) fn madt_entries(
    bytes: &[u8],
    mut f: impl FnMut(&Madt, MadtEntry<'_>),
) -> Result<(), String> {
    check_madt(bytes)?;
    with_table::<Madt, _>(bytes, |m| {
        // SAFETY: the struct lives in `with_table`'s buffer, which is not
        // moved while this reference exists; pinning is only what the
        // crate's `entries` asks for to read the bytes that follow it.
        let pinned = unsafe { Pin::new_unchecked(m) };
        for e in pinned.entries() {
            f(m, e);
        }
    });
    Ok(())
}

pub fn madt_cpus(bytes: &[u8]) -> Result<Vec<Cpu>, String> {
    let mut cpus = Vec::new();
    madt_entries(bytes, |_, e| match e {
        MadtEntry::LocalApic(l) => {
            let flags = { l.flags };
            cpus.push(Cpu {
                uid: l.processor_id.into(),
                apic_id: l.apic_id.into(),
                x2apic: false,
                enabled: flags & 1 != 0,
                online_capable: flags & 2 != 0,
            })
        }
        MadtEntry::LocalX2Apic(x) => {
            let flags = { x.flags };
            cpus.push(Cpu {
                uid: x.processor_uid,
                apic_id: x.x2apic_id,
                x2apic: true,
                enabled: flags & 1 != 0,
                online_capable: flags & 2 != 0,
            })
        }
        _ => {}
    })?;
    Ok(cpus)
}

/// One ECAM window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ecam {
    pub base: u64,
    pub segment: u16,
    pub bus_start: u8,
    pub bus_end: u8,
}

pub fn mcfg_windows(bytes: &[u8]) -> Result<Vec<Ecam>, String> {
    if bytes.len() < size_of::<Mcfg>() {
        return Err(format!(
            "{} bytes, an MCFG needs at least {}",
            bytes.len(),
            size_of::<Mcfg>()
        ));
    }
    length_matches(bytes)?;
    let extra = (bytes.len() - size_of::<Mcfg>()) % size_of::<McfgEntry>();
    let windows = with_table::<Mcfg, _>(bytes, |m| {
        m.entries()
            .iter()
            .map(|e| Ecam {
                base: e.base_address,
                segment: e.pci_segment_group,
                bus_start: e.bus_number_start,
                bus_end: e.bus_number_end,
            })
            .collect::<Vec<_>>()
    });
    if extra != 0 {
        log::warn!("MCFG: {extra} trailing bytes after the last entry ignored");
    }
    Ok(windows)
}
