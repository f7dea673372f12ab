//! `/scheme/pci/<fn>/summary`: one function described for people, one
//! `key  value` line per fact (easy to grep).

use std::fmt::Write;

use crate::addr::sysfs_address;
use crate::config::Capability;
use crate::names;
use crate::table::Function;

/// Renders the summary; `kernel_driver` is the driver bound now.
pub fn render(f: &Function, kernel_driver: Option<&str>) -> String {
    let p = &f.parsed;
    let mut s = String::new();
    // Writing to a String cannot fail.
    let _ = writeln!(s, "address    {} ({})", sysfs_address(f.address), f.name);
    let vendor = names::vendor_name(p.vendor)
        .map(|n| format!(" ({n})"))
        .unwrap_or_default();
    let _ = writeln!(s, "id         {:04x}:{:04x}{vendor}", p.vendor, p.device);
    if p.header_type == 0 {
        let _ = writeln!(
            s,
            "subsystem  {:04x}:{:04x}",
            p.subsystem_vendor, p.subsystem_device
        );
    }
    let _ = writeln!(
        s,
        "class      {:02x}.{:02x}.{:02x} {} / {}",
        p.class,
        p.subclass,
        p.interface,
        names::class_name(p.class),
        names::function_kind(p.class, p.subclass, p.interface)
    );
    let _ = writeln!(s, "revision   {:02x}", p.revision);
    let header = match p.header_type {
        0 => "endpoint",
        1 => "PCI-to-PCI bridge",
        2 => "CardBus bridge",
        _ => "unknown",
    };
    let multi = if p.multifunction {
        ", multi-function"
    } else {
        ""
    };
    let _ = writeln!(s, "header     type {} ({header}{multi})", p.header_type);
    for b in &p.bars {
        let pf = if b.prefetchable { " prefetchable" } else { "" };
        let _ = writeln!(
            s,
            "bar {}      {:<9} {:#x} size {:#x}{pf}",
            b.index, b.kind, b.address, b.size
        );
    }
    for c in &p.capabilities {
        let _ = writeln!(s, "cap {:#04x}   {}", c.offset, describe_cap(c, p.vendor));
    }
    for c in &p.ext_capabilities {
        let _ = writeln!(
            s,
            "ext {:#05x}  {} (id {:#06x}, v{})",
            c.offset,
            names::ext_capability_name(c.id),
            c.id,
            c.version
        );
    }
    let _ = writeln!(
        s,
        "irq        pin {} line {}",
        names::irq_pin_name(p.irq_pin),
        p.irq_line
    );
    let _ = writeln!(s, "driver     {}", kernel_driver.unwrap_or("none"));
    let _ = writeln!(s, "owner      {}", f.owner);
    s
}

/// A capability's name and the details worth knowing at a glance.
fn describe_cap(c: &Capability, vendor: u16) -> String {
    let name = names::capability_name(c.id);
    let byte = |i: usize| c.data.get(i).copied();
    let word = |i: usize| Some(u16::from_le_bytes([byte(i)?, byte(i + 1)?]));
    let dword = |i: usize| {
        Some(u32::from_le_bytes([
            byte(i)?,
            byte(i + 1)?,
            byte(i + 2)?,
            byte(i + 3)?,
        ]))
    };
    match c.id {
        0x05 => match word(2) {
            Some(ctl) => {
                let vectors = 1u32 << ((ctl >> 1) & 7).min(5);
                let bits = if ctl & 0x80 != 0 { "64-bit" } else { "32-bit" };
                let on = if ctl & 1 != 0 { ", enabled" } else { "" };
                let plural = if vectors == 1 { "" } else { "s" };
                format!("{name} (up to {vectors} vector{plural}, {bits}{on})")
            }
            None => name.to_owned(),
        },
        0x11 => match word(2) {
            Some(ctl) => {
                let on = if ctl & 0x8000 != 0 { ", enabled" } else { "" };
                let n = (ctl & 0x7ff) + 1;
                let plural = if n == 1 { "" } else { "s" };
                format!("{name} ({n} vector{plural}{on})")
            }
            None => name.to_owned(),
        },
        0x10 => match word(2) {
            Some(caps) => {
                let kind = match (caps >> 4) & 0xf {
                    0 => "endpoint",
                    1 => "legacy endpoint",
                    4 => "root port",
                    5 => "upstream switch port",
                    6 => "downstream switch port",
                    7 => "PCIe-to-PCI bridge",
                    8 => "PCI-to-PCIe bridge",
                    9 => "root complex integrated endpoint",
                    10 => "root complex event collector",
                    _ => "unknown port type",
                };
                format!("{name} ({kind})")
            }
            None => name.to_owned(),
        },
        0x09 if vendor == names::VIRTIO_VENDOR => {
            // virtio_pci_cap: len, cfg_type, bar, id, pad[2], offset, length
            match (byte(3), byte(4), dword(8), dword(12)) {
                (Some(t), Some(bar), Some(off), Some(len)) => format!(
                    "{name} (virtio {}: cfg_type {t}, bar {bar}, offset {off:#x}, length {len:#x})",
                    names::virtio_cfg_type(t)
                ),
                (Some(t), ..) => format!(
                    "{name} (virtio {}: cfg_type {t})",
                    names::virtio_cfg_type(t)
                ),
                _ => name.to_owned(),
            }
        }
        0x09 => format!("{name} ({} bytes)", byte(2).unwrap_or(0)),
        _ => format!("{name} (id {:#04x})", c.id),
    }
}
