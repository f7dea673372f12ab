//! PCI function addresses and their two spellings: sysfs's `0000:00:04.0`
//! and the scheme's `pci-0000-00-04.0` (also the driver instance name).

use pci_types::PciAddress;

/// Parses `SSSS:BB:DD.F` (hex segment, bus, device; function 0-7), or
/// `BB:DD.F` for segment 0 as `lspci` prints it. `None` if malformed.
pub fn parse_address(s: &str) -> Option<PciAddress> {
    let parts: Vec<&str> = s.split(':').collect();
    let (segment, bus, rest) = match parts.as_slice() {
        [seg, bus, rest] => (hex_field(seg, 4)?, hex_field(bus, 2)?, *rest),
        [bus, rest] => (0, hex_field(bus, 2)?, *rest),
        _ => return None,
    };
    let (dev, func) = rest.split_once('.')?;
    let dev = hex_field(dev, 2)?;
    let func = hex_field(func, 1)?;
    if dev >= 32 || func >= 8 {
        return None;
    }
    Some(PciAddress::new(
        u16::try_from(segment).ok()?,
        u8::try_from(bus).ok()?,
        dev as u8,
        func as u8,
    ))
}

/// One hex field of at most `max` digits (no sign, no prefix).
fn hex_field(s: &str, max: usize) -> Option<u32> {
    if s.is_empty() || s.len() > max || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(s, 16).ok()
}

/// `0000:00:04.0`: the name of the function's sysfs directory and what the
/// kernel's bind files and VFIO expect.
pub fn sysfs_address(a: PciAddress) -> String {
    format!(
        "{:04x}:{:02x}:{:02x}.{:x}",
        a.segment(),
        a.bus(),
        a.device(),
        a.function()
    )
}

/// `pci-0000-00-04.0`: the function's directory in `/scheme/pci` and the
/// instance name of its driver.
pub fn function_name(a: PciAddress) -> String {
    pcid_interface::pci_name(a.segment(), a.bus(), a.device(), a.function())
}

/// The inverse of [`function_name`]; only the exact lowercase spelling is
/// accepted, so each function has one name.
pub fn parse_function_name(s: &str) -> Option<PciAddress> {
    let rest = s.strip_prefix("pci-")?;
    let a = parse_address(&rest.replacen('-', ":", 2))?;
    (function_name(a) == s).then_some(a)
}

/// A number that orders like the address (for stable directory offsets).
pub fn address_key(a: PciAddress) -> u64 {
    (u64::from(a.segment()) << 16)
        | (u64::from(a.bus()) << 8)
        | (u64::from(a.device()) << 3)
        | u64::from(a.function())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_round_trip() {
        let a = parse_address("0000:00:04.0").unwrap();
        assert_eq!(
            (a.segment(), a.bus(), a.device(), a.function()),
            (0, 0, 4, 0)
        );
        assert_eq!(sysfs_address(a), "0000:00:04.0");
        assert_eq!(function_name(a), "pci-0000-00-04.0");
        assert_eq!(parse_function_name("pci-0000-00-04.0"), Some(a));
        let b = parse_address("abcd:1f:1f.7").unwrap();
        assert_eq!(function_name(b), "pci-abcd-1f-1f.7");
        assert_eq!(parse_function_name(&function_name(b)), Some(b));
        assert_eq!(parse_address("01:00.0"), Some(PciAddress::new(0, 1, 0, 0)));
    }

    #[test]
    fn malformed_addresses_are_refused() {
        for bad in [
            "",
            "0000:00:04",
            "0000:00:20.0",
            "0000:00:04.8",
            "00000:00:04.0",
            "0000:100:04.0",
            "0000:00:04.0.1",
            "0000:0g:04.0",
            "+000:00:04.0",
            "0000:00:04.-1",
        ] {
            assert_eq!(parse_address(bad), None, "{bad:?}");
        }
        for bad in [
            "pci-0000-00-04",
            "pci-0000:00:04.0",
            "PCI-0000-00-04.0",
            "pci-0000-00-0A.0",
        ] {
            assert_eq!(parse_function_name(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn keys_order_like_addresses() {
        let a = PciAddress::new(0, 0, 31, 7);
        let b = PciAddress::new(0, 1, 0, 0);
        assert!(a < b);
        assert!(address_key(a) < address_key(b));
    }
}
