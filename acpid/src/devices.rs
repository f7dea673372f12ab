//! Platform devices: every namespace `Device` with a `_HID` or `_CID`, with
//! its `_UID`, `_STA` and the resources its `_CRS` says it consumes.

use std::fmt::Write as _;

use acpi::aml::namespace::{AmlName, NamespaceLevelKind};
use acpi::aml::object::Object;

use crate::aml::{child, seg, Aml};
use crate::platform::{MemRange, PlatformDevice};
use crate::resources::{self, Resource};

/// A device as `/scheme/acpi/devices/` serves it.
#[derive(Debug, Clone)]
pub struct Device {
    /// The file name: `PlatformDevice::instance()`, with `.2`, `.3`, …
    /// appended when two devices would share one.
    pub name: String,
    pub device: PlatformDevice,
    /// Everything `_CRS` listed, including what a bridge produces.
    pub resources: Vec<Resource>,
    /// What went wrong evaluating this device's objects.
    pub errors: Vec<String>,
}

/// Decodes a compressed EISA id (`EisaId("PNP0B00")` = 0x000bd041): three
/// 5-bit letters and four hex digits, stored byte-swapped.
pub fn eisa_id(value: u64) -> String {
    let v = (value as u32).swap_bytes();
    let letter = |shift: u32| char::from(b'@' + ((v >> shift) & 0x1f) as u8);
    format!(
        "{}{}{}{:04X}",
        letter(26),
        letter(21),
        letter(16),
        v & 0xffff
    )
}

/// A `_HID`/`_CID` value as text: EISA integers decoded, strings as they
/// are.
fn id_text(obj: &Object) -> Option<String> {
    match obj {
        Object::Integer(v) => Some(eisa_id(*v)),
        Object::String(s) => Some(s.trim_end_matches('\0').to_owned()),
        _ => None,
    }
}

/// Paths of the devices that name a `_HID` or `_CID`, in namespace order.
pub fn device_paths(aml: &Aml) -> Vec<AmlName> {
    let (Some(hid), Some(cid)) = (seg("_HID"), seg("_CID")) else {
        return Vec::new();
    };
    aml.with_namespace(|ns| {
        let mut out = Vec::new();
        let _ = ns.traverse(|name, level| {
            if level.kind == NamespaceLevelKind::Device
                && (level.values.contains_key(&hid) || level.values.contains_key(&cid))
            {
                out.push(name.clone());
            }
            // Method locals are transient; nothing to find below them.
            Ok(level.kind != NamespaceLevelKind::MethodLocals)
        });
        out
    })
    .unwrap_or_default()
}

/// Evaluates one device's identification, status and resources.
pub fn describe_device(aml: &mut Aml, path: &AmlName) -> Device {
    let mut errors = Vec::new();
    let eval = |aml: &mut Aml, name: &str, errors: &mut Vec<String>| match aml
        .evaluate_if_present(&child(path, name))
    {
        Ok(v) => v,
        Err(e) => {
            errors.push(format!("{name}: {e}"));
            None
        }
    };

    let hid = eval(aml, "_HID", &mut errors).and_then(|o| id_text(&o));
    let cids = match eval(aml, "_CID", &mut errors) {
        Some(o) => match &*o {
            Object::Package(items) => items.iter().filter_map(|i| id_text(i)).collect(),
            other => id_text(other).into_iter().collect(),
        },
        None => Vec::new(),
    };
    let uid = eval(aml, "_UID", &mut errors).and_then(|o| match &*o {
        Object::Integer(v) => Some(v.to_string()),
        Object::String(s) => Some(s.trim_end_matches('\0').to_owned()),
        _ => None,
    });
    let status = if aml.get(&child(path, "_STA")).is_none() {
        // No _STA: present, enabled, shown, functioning (ACPI 6.3.7).
        0x0f
    } else {
        match eval(aml, "_STA", &mut errors).map(|o| o.as_integer()) {
            Some(Ok(v)) => v as u32,
            Some(Err(e)) => {
                errors.push(format!("_STA: not an integer: {e:?}"));
                0
            }
            // Evaluation failed (recorded above): treat as absent.
            None => 0,
        }
    };

    let mut device = PlatformDevice {
        path: path.as_string(),
        hid,
        cids,
        uid,
        status,
        ..PlatformDevice::default()
    };
    let mut resources = Vec::new();
    // The resources of an absent device mean nothing (ACPI 6.3.7).
    if device.present() {
        if let Some(crs) = eval(aml, "_CRS", &mut errors) {
            match &*crs {
                Object::Buffer(bytes) => match resources::decode(bytes) {
                    Ok(r) => resources = r,
                    Err(e) => errors.push(format!("_CRS: {e}")),
                },
                other => errors.push(format!("_CRS: not a buffer but {:?}", other.typ())),
            }
        }
    }
    let used = resources::consumed(&resources);
    device.io = used.io;
    device.memory = used
        .memory
        .into_iter()
        .map(|(base, len, writable)| MemRange {
            base,
            len,
            writable,
        })
        .collect();
    device.irqs = used.irqs;
    Device {
        name: device.instance(),
        device,
        resources,
        errors,
    }
}

/// Walks the namespace: every device with an id, names made unique.
pub fn walk(aml: &mut Aml) -> Vec<Device> {
    let mut out: Vec<Device> = Vec::new();
    for path in device_paths(aml) {
        let mut d = describe_device(aml, &path);
        for e in &d.errors {
            log::warn!("{}: {e}", d.device.path);
        }
        let base = d.name.clone();
        let mut n = 1;
        while out.iter().any(|o| o.name == d.name) {
            n += 1;
            d.name = format!("{base}.{n}");
        }
        out.push(d);
    }
    out
}

fn list<T>(items: &[T], f: impl Fn(&T) -> String) -> String {
    items.iter().map(f).collect::<Vec<_>>().join(" ")
}

/// A device's file: `key: value` lines (lists space-separated), then every
/// `_CRS` descriptor.
pub fn device_text(d: &Device) -> String {
    let p = &d.device;
    let mut s = String::new();
    let _ = writeln!(s, "path: {}", p.path);
    let _ = writeln!(s, "hid: {}", p.hid.as_deref().unwrap_or(""));
    let _ = writeln!(s, "cids: {}", p.cids.join(" "));
    let _ = writeln!(s, "uid: {}", p.uid.as_deref().unwrap_or(""));
    let mut bits = Vec::new();
    for (b, n) in [
        (0, "present"),
        (1, "enabled"),
        (2, "shown"),
        (3, "functioning"),
    ] {
        if p.status & (1 << b) != 0 {
            bits.push(n);
        }
    }
    let _ = writeln!(s, "status: {:#04x} {}", p.status, bits.join(" "));
    let _ = writeln!(
        s,
        "io: {}",
        list(&p.io, |r| format!("{:#x}-{:#x}", r.start(), r.end()))
    );
    let _ = writeln!(
        s,
        "memory: {}",
        list(&p.memory, |m| format!(
            "{:#x}+{:#x}{}",
            m.base,
            m.len,
            if m.writable { "" } else { "(ro)" }
        ))
    );
    let _ = writeln!(s, "irqs: {}", list(&p.irqs, u32::to_string));
    let _ = writeln!(s, "instance: {}", p.instance());
    for r in &d.resources {
        let _ = writeln!(s, "resource: {}", resources::describe(r));
    }
    for e in &d.errors {
        let _ = writeln!(s, "error: {e}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eisa_ids_decode() {
        assert_eq!(eisa_id(0x000b_d041), "PNP0B00");
        assert_eq!(eisa_id(0x0105_d041), "PNP0501");
        assert_eq!(eisa_id(0x0303_d041), "PNP0303");
        assert_eq!(eisa_id(0x080a_d041), "PNP0A08");
    }
}
