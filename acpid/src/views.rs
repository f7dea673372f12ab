//! Decoded, human-readable views of the static tables
//! (`tables/<NAME>.txt`). The facts acpid acts on (PM1 blocks, reset
//! register, CPUs, ECAM windows) and the casts of the `acpi` crate's table
//! structs these views read through are in `facts.rs`. The crate has no
//! DMAR support, so DMAR is decoded here, from the VT-d specification's
//! layout.

use std::fmt::Write as _;

use acpi::address::{AddressSpace, GenericAddress, RawGenericAddress};
use acpi::sdt::fadt::Fadt;
use acpi::sdt::madt::{Madt, MadtEntry};

use crate::facts::{
    fadt_info, le16, le32, le64, madt_cpus, madt_entries, mcfg_windows, with_table,
};
use crate::tables::{printable, Header, Table, HEADER_LEN};

// ---------------------------------------------------------------- headers

pub fn header_text(t: &Table) -> String {
    let mut s = String::new();
    match Header::parse(&t.bytes) {
        Some(h) if t.signature != "FACS" => {
            let _ = writeln!(
                s,
                "{}: signature {}  length {}  revision {}  checksum {:#04x}",
                t.name,
                h.signature_str(),
                h.length,
                h.revision,
                h.checksum
            );
            let _ = writeln!(
                s,
                "oem {:?} {:?} revision {:#x}  creator {:?} revision {:#x}",
                printable(&h.oem_id),
                printable(&h.oem_table_id),
                h.oem_revision,
                printable(&h.creator_id),
                h.creator_revision
            );
        }
        _ => {
            let _ = writeln!(s, "{}: {} bytes", t.name, t.bytes.len());
        }
    }
    let _ = writeln!(
        s,
        "kernel file: /sys/firmware/acpi/tables/{}",
        t.kernel_name
    );
    match &t.header {
        Ok(_) => s.push_str("status: ok\n"),
        Err(e) => {
            let _ = writeln!(s, "status: invalid: {e}");
        }
    }
    s
}

/// `<NAME>.txt`: the header, then the decoded body for the tables we know.
pub fn table_text(t: &Table) -> String {
    let mut s = header_text(t);
    let Some(bytes) = t.valid_bytes() else {
        return s;
    };
    s.push('\n');
    let body = match t.signature.as_str() {
        "FACP" => Some(fadt_text(bytes)),
        "APIC" => Some(madt_text(bytes)),
        "MCFG" => Some(mcfg_text(bytes)),
        "DMAR" => Some(dmar_text(bytes)),
        "HPET" => Some(hpet_text(bytes)),
        "FACS" => Some(facs_text(bytes)),
        "DSDT" | "SSDT" => Some(Ok(format!(
            "AML: {} bytes of definition blocks (see /scheme/acpi/symbols)\n",
            bytes.len().saturating_sub(HEADER_LEN)
        ))),
        _ => None,
    };
    match body {
        Some(Ok(text)) => s.push_str(&text),
        Some(Err(e)) => {
            let _ = writeln!(s, "cannot decode: {e}");
        }
        None => s.push_str("(no decoder for this table)\n"),
    }
    s
}

// ------------------------------------------------------------------- GAS

fn space_name(space: AddressSpace) -> String {
    match space {
        AddressSpace::SystemMemory => "SystemMemory".into(),
        AddressSpace::SystemIo => "SystemIO".into(),
        AddressSpace::PciConfigSpace => "PCIConfig".into(),
        AddressSpace::EmbeddedController => "EmbeddedControl".into(),
        AddressSpace::SMBus => "SMBus".into(),
        AddressSpace::SystemCmos => "SystemCMOS".into(),
        AddressSpace::PciBarTarget => "PCIBarTarget".into(),
        AddressSpace::Ipmi => "IPMI".into(),
        AddressSpace::GeneralIo => "GPIO".into(),
        AddressSpace::GenericSerialBus => "GenericSerialBus".into(),
        AddressSpace::PlatformCommunicationsChannel => "PCC".into(),
        AddressSpace::FunctionalFixedHardware => "FFixedHW".into(),
        AddressSpace::OemDefined(n) => format!("OEM({n:#x})"),
    }
}

pub fn gas_text(g: &GenericAddress) -> String {
    let mut s = format!(
        "{} {:#x} ({} bits",
        space_name(g.address_space),
        g.address,
        g.bit_width
    );
    if g.bit_offset != 0 {
        let _ = write!(s, ", offset {}", g.bit_offset);
    }
    if g.access_size != 0 {
        let _ = write!(s, ", access size {}", g.access_size);
    }
    s.push(')');
    s
}

fn opt_gas_text(g: &Result<Option<GenericAddress>, acpi::AcpiError>) -> String {
    match g {
        Ok(Some(g)) => gas_text(g),
        Ok(None) => "none".into(),
        Err(e) => format!("invalid ({e:?})"),
    }
}

// ------------------------------------------------------------------ FADT
const FADT_FLAGS: [&str; 22] = [
    "WBINVD",
    "WBINVD_FLUSH",
    "PROC_C1",
    "P_LVL2_UP",
    "PWR_BUTTON",
    "SLP_BUTTON",
    "FIX_RTC",
    "RTC_S4",
    "TMR_VAL_EXT",
    "DCK_CAP",
    "RESET_REG_SUP",
    "SEALED_CASE",
    "HEADLESS",
    "CPU_SW_SLP",
    "PCI_EXP_WAK",
    "USE_PLATFORM_CLOCK",
    "S4_RTC_STS_VALID",
    "REMOTE_POWER_ON_CAPABLE",
    "FORCE_APIC_CLUSTER_MODEL",
    "FORCE_APIC_PHYSICAL_DESTINATION_MODE",
    "HW_REDUCED_ACPI",
    "LOW_POWER_S0_IDLE_CAPABLE",
];

const BOOT_ARCH_FLAGS: [&str; 6] = [
    "LEGACY_DEVICES",
    "8042",
    "VGA_NOT_PRESENT",
    "MSI_NOT_SUPPORTED",
    "PCIE_ASPM_CONTROLS",
    "CMOS_RTC_NOT_PRESENT",
];

fn flag_names(value: u64, names: &[&str]) -> String {
    let set: Vec<String> = (0..64)
        .filter(|b| value & (1u64 << b) != 0)
        .map(|b| {
            names
                .get(b)
                .map(|n| (*n).to_owned())
                .unwrap_or_else(|| format!("bit{b}"))
        })
        .collect();
    set.join(" ")
}

pub fn fadt_text(bytes: &[u8]) -> Result<String, String> {
    Ok(with_table::<Fadt, _>(bytes, |f| {
        let mut s = String::new();
        let info = fadt_info(bytes);
        let _ = writeln!(
            s,
            "FADT revision {} (minor {})",
            f.header.revision, f.fadt_minor_version
        );
        let dsdt = f
            .dsdt_address()
            .map(|a| format!("{a:#x}"))
            .unwrap_or("none".into());
        let facs = f
            .facs_address()
            .map(|a| format!("{a:#x}"))
            .unwrap_or("none".into());
        let _ = writeln!(s, "dsdt {dsdt}  facs {facs}");
        let _ = writeln!(
            s,
            "sci-interrupt {}  smi-command {:#x}  acpi-enable {:#x}  acpi-disable {:#x}",
            { f.sci_interrupt },
            { f.smi_cmd_port },
            f.acpi_enable,
            f.acpi_disable
        );
        let _ = writeln!(
            s,
            "pm1a-event {}",
            opt_gas_text(
                &f.pm1a_event_block()
                    .map(|g| Some(g).filter(|g| g.address != 0))
            )
        );
        let _ = writeln!(s, "pm1b-event {}", opt_gas_text(&f.pm1b_event_block()));
        let _ = writeln!(
            s,
            "pm1a-control {}",
            opt_gas_text(
                &f.pm1a_control_block()
                    .map(|g| Some(g).filter(|g| g.address != 0))
            )
        );
        let _ = writeln!(s, "pm1b-control {}", opt_gas_text(&f.pm1b_control_block()));
        let _ = writeln!(s, "pm2-control {}", opt_gas_text(&f.pm2_control_block()));
        let timer_bits = if info.flags & (1 << 8) != 0 { 32 } else { 24 };
        let _ = writeln!(
            s,
            "pm-timer {}  counter {} bits",
            opt_gas_text(&f.pm_timer_block()),
            timer_bits
        );
        let _ = writeln!(
            s,
            "gpe0 {}  length {}",
            opt_gas_text(&f.gpe0_block()),
            f.gpe0_block_length
        );
        let _ = writeln!(
            s,
            "gpe1 {}  length {}  base {}",
            opt_gas_text(&f.gpe1_block()),
            f.gpe1_block_length,
            f.gpe1_base
        );
        let reset_gas = f.reset_register();
        let _ = writeln!(
            s,
            "reset-register {}  value {:#x}  supported {}",
            match &reset_gas {
                Ok(g) if g.address != 0 => gas_text(g),
                Ok(_) => "none".into(),
                Err(e) => format!("invalid ({e:?})"),
            },
            f.reset_value,
            if info.flags & (1 << 10) != 0 {
                "yes"
            } else {
                "no"
            }
        );
        let _ = writeln!(s, "century-cmos-index {:#x}", f.century);
        // IAPC_BOOT_ARCH (offset 109), raw for the same reason as the flags.
        let boot_raw = le16(bytes, 109).unwrap_or(0);
        let _ = writeln!(
            s,
            "iapc-boot-arch {:#x} ({})",
            boot_raw,
            flag_names(boot_raw.into(), &BOOT_ARCH_FLAGS)
        );
        let _ = writeln!(
            s,
            "flags {:#x} ({})",
            info.flags,
            flag_names(info.flags.into(), &FADT_FLAGS)
        );
        s
    }))
}

// ------------------------------------------------------------------ MADT
fn mps_flags(flags: u16) -> String {
    let polarity = match flags & 3 {
        0 => "conforming",
        1 => "active-high",
        3 => "active-low",
        _ => "reserved",
    };
    let trigger = match (flags >> 2) & 3 {
        0 => "conforming",
        1 => "edge",
        3 => "level",
        _ => "reserved",
    };
    format!("polarity {polarity} trigger {trigger}")
}

pub fn madt_text(bytes: &[u8]) -> Result<String, String> {
    let cpus = madt_cpus(bytes)?;
    let mut s = String::new();
    let (lapic, flags) = with_table::<Madt, _>(bytes, |m| (m.local_apic_address, m.flags));
    let _ = writeln!(
        s,
        "local-apic-address {:#x}  flags {:#x}{}",
        lapic,
        flags,
        if flags & 1 != 0 {
            " (PCAT_COMPAT: dual 8259)"
        } else {
            ""
        }
    );
    let _ = writeln!(
        s,
        "cpus {}  enabled {}",
        cpus.len(),
        cpus.iter().filter(|c| c.enabled).count()
    );
    madt_entries(bytes, |_, e| {
        let line = match e {
            MadtEntry::LocalApic(l) => {
                let flags = { l.flags };
                format!(
                    "cpu  uid {}  apic-id {}  {}{}",
                    l.processor_id,
                    l.apic_id,
                    if flags & 1 != 0 {
                        "enabled"
                    } else {
                        "disabled"
                    },
                    if flags & 2 != 0 {
                        " online-capable"
                    } else {
                        ""
                    }
                )
            }
            MadtEntry::LocalX2Apic(x) => {
                let (uid, id, flags) = (x.processor_uid, x.x2apic_id, x.flags);
                format!(
                    "cpu  uid {uid}  x2apic-id {id}  {}{}",
                    if flags & 1 != 0 {
                        "enabled"
                    } else {
                        "disabled"
                    },
                    if flags & 2 != 0 {
                        " online-capable"
                    } else {
                        ""
                    }
                )
            }
            MadtEntry::IoApic(io) => {
                let (addr, base) = (io.io_apic_address, io.global_system_interrupt_base);
                format!(
                    "ioapic  id {}  address {addr:#x}  gsi-base {base}",
                    io.io_apic_id
                )
            }
            MadtEntry::InterruptSourceOverride(o) => {
                let (gsi, flags) = (o.global_system_interrupt, o.flags);
                format!(
                    "override  bus {} irq {} -> gsi {gsi}  {}",
                    o.bus,
                    o.irq,
                    mps_flags(flags)
                )
            }
            MadtEntry::NmiSource(n) => {
                let (gsi, flags) = (n.global_system_interrupt, n.flags);
                format!("nmi-source  gsi {gsi}  {}", mps_flags(flags))
            }
            MadtEntry::LocalApicNmi(n) => {
                let flags = { n.flags };
                let cpu = if n.processor_id == 0xff {
                    "all".to_owned()
                } else {
                    n.processor_id.to_string()
                };
                format!(
                    "local-apic-nmi  cpu {cpu}  lint{}  {}",
                    n.nmi_line,
                    mps_flags(flags)
                )
            }
            MadtEntry::X2ApicNmi(n) => {
                let (uid, flags) = (n.processor_uid, n.flags);
                let cpu = if uid == u32::MAX {
                    "all".to_owned()
                } else {
                    uid.to_string()
                };
                format!(
                    "x2apic-nmi  cpu {cpu}  lint{}  {}",
                    n.nmi_line,
                    mps_flags(flags)
                )
            }
            MadtEntry::LocalApicAddressOverride(o) => {
                let a = { o.local_apic_address };
                format!("local-apic-address-override {a:#x}")
            }
            other => format!("other entry: {other:?}"),
        };
        s.push_str(&line);
        s.push('\n');
    })?;
    Ok(s)
}

// ------------------------------------------------------------------ MCFG
pub fn mcfg_text(bytes: &[u8]) -> Result<String, String> {
    let mut s = String::new();
    let windows = mcfg_windows(bytes)?;
    let _ = writeln!(s, "ecam-windows {}", windows.len());
    for w in windows {
        let buses = u64::from(w.bus_end.saturating_sub(w.bus_start)) + 1;
        let _ = writeln!(
            s,
            "ecam  base {:#x}  segment {}  buses {:#04x}-{:#04x}  size {:#x}",
            w.base,
            w.segment,
            w.bus_start,
            w.bus_end,
            buses << 20
        );
    }
    Ok(s)
}

// ------------------------------------------------------------------ DMAR
/// Device scope entries (VT-d 8.3.1) in `b`, one line each.
fn dmar_scopes(b: &[u8], indent: &str, out: &mut String) -> Result<(), String> {
    let mut at = 0;
    while at < b.len() {
        if b.len() - at < 6 {
            return Err(format!("device scope at {at:#x} is cut off"));
        }
        let (ty, len) = (b[at], b[at + 1] as usize);
        if len < 6 || at + len > b.len() || (len - 6) % 2 != 0 {
            return Err(format!("device scope at {at:#x} has bad length {len}"));
        }
        let kind = match ty {
            1 => "pci-endpoint",
            2 => "pci-subhierarchy",
            3 => "ioapic",
            4 => "hpet",
            5 => "acpi-namespace-device",
            _ => "unknown",
        };
        let (enum_id, bus) = (b[at + 4], b[at + 5]);
        let path: Vec<String> = b[at + 6..at + len]
            .chunks_exact(2)
            .map(|p| format!("{:02x}.{}", p[0], p[1]))
            .collect();
        let _ = writeln!(
            out,
            "{indent}scope {kind}  enumeration-id {enum_id}  start-bus {bus:#04x}  path {}",
            path.join("/")
        );
        at += len;
    }
    Ok(())
}

pub fn dmar_text(bytes: &[u8]) -> Result<String, String> {
    const START: usize = HEADER_LEN + 12;
    if bytes.len() < START {
        return Err(format!(
            "{} bytes, a DMAR needs at least {START}",
            bytes.len()
        ));
    }
    let mut s = String::new();
    let (haw, flags) = (bytes[HEADER_LEN], bytes[HEADER_LEN + 1]);
    let mut fl = Vec::new();
    for (bit, name) in [
        (0, "INTR_REMAP"),
        (1, "X2APIC_OPT_OUT"),
        (2, "DMA_CTRL_PLATFORM_OPT_IN"),
    ] {
        if flags & (1 << bit) != 0 {
            fl.push(name);
        }
    }
    let _ = writeln!(
        s,
        "host-address-width {} bits  flags {flags:#x} ({})",
        u32::from(haw) + 1,
        fl.join(" ")
    );
    let mut at = START;
    while at < bytes.len() {
        let cut = || format!("remapping structure at {at:#x} is cut off");
        let ty = le16(bytes, at).ok_or_else(cut)?;
        let len = le16(bytes, at + 2).ok_or_else(cut)? as usize;
        if len < 4 || at + len > bytes.len() {
            return Err(format!(
                "remapping structure type {ty} at {at:#x} has bad length {len}"
            ));
        }
        let e = &bytes[at..at + len];
        let short = || format!("remapping structure type {ty} at {at:#x} is too short ({len})");
        match ty {
            0 => {
                let base = le64(e, 8).ok_or_else(short)?;
                let seg = le16(e, 6).ok_or_else(short)?;
                let _ = writeln!(
                    s,
                    "drhd  register-base {base:#x}  segment {seg}  flags {:#x}{}",
                    e[4],
                    if e[4] & 1 != 0 {
                        " (INCLUDE_PCI_ALL)"
                    } else {
                        ""
                    }
                );
                dmar_scopes(&e[16..], "  ", &mut s)?;
            }
            1 => {
                let seg = le16(e, 6).ok_or_else(short)?;
                let base = le64(e, 8).ok_or_else(short)?;
                let limit = le64(e, 16).ok_or_else(short)?;
                let _ = writeln!(s, "rmrr  segment {seg}  base {base:#x}  limit {limit:#x}");
                dmar_scopes(&e[24..], "  ", &mut s)?;
            }
            2 => {
                let seg = le16(e, 6).ok_or_else(short)?;
                let _ = writeln!(
                    s,
                    "atsr  segment {seg}  flags {:#x}{}",
                    e[4],
                    if e[4] & 1 != 0 { " (ALL_PORTS)" } else { "" }
                );
                dmar_scopes(&e[8..], "  ", &mut s)?;
            }
            3 => {
                let base = le64(e, 8).ok_or_else(short)?;
                let domain = le32(e, 16).ok_or_else(short)?;
                let _ = writeln!(
                    s,
                    "rhsa  register-base {base:#x}  proximity-domain {domain}"
                );
            }
            4 => {
                if e.len() < 8 {
                    return Err(short());
                }
                let _ = writeln!(
                    s,
                    "andd  device-number {}  name {:?}",
                    e[7],
                    printable(&e[8..]).trim_end_matches('\0')
                );
            }
            5 => {
                let seg = le16(e, 6).ok_or_else(short)?;
                let _ = writeln!(s, "satc  segment {seg}  flags {:#x}", e[4]);
                dmar_scopes(&e[8..], "  ", &mut s)?;
            }
            _ => {
                let _ = writeln!(s, "unknown remapping structure type {ty}, {len} bytes");
            }
        }
        at += len;
    }
    Ok(s)
}

// ------------------------------------------------------- HPET and FACS

pub fn hpet_text(bytes: &[u8]) -> Result<String, String> {
    let b = &bytes[HEADER_LEN.min(bytes.len())..];
    if b.len() < 20 {
        return Err(format!("{} bytes, an HPET needs at least 56", bytes.len()));
    }
    let id = le32(b, 0).unwrap_or(0);
    let raw = RawGenericAddress {
        address_space: b[4],
        bit_width: b[5],
        bit_offset: b[6],
        access_size: b[7],
        address: le64(b, 8).unwrap_or(0),
    };
    let base = GenericAddress::from_raw(raw)
        .map(|g| gas_text(&g))
        .unwrap_or_else(|e| format!("invalid ({e:?})"));
    Ok(format!(
        "event-timer-block-id {id:#x}  vendor {:#06x}  comparators {}\nbase {base}\nhpet-number {}  minimum-tick {}  page-protection {:#x}\n",
        id >> 16,
        ((id >> 8) & 0x1f) + 1,
        b[16],
        le16(b, 17).unwrap_or(0),
        b[19]
    ))
}

pub fn facs_text(bytes: &[u8]) -> Result<String, String> {
    let g = |at| le32(bytes, at).ok_or_else(|| "FACS is cut off".to_owned());
    Ok(format!(
        "hardware-signature {:#x}\nwaking-vector {:#x}\nglobal-lock {:#x}\nflags {:#x}\n",
        g(8)?,
        g(12)?,
        g(16)?,
        g(20)?
    ))
}
