//! Parsing one function's configuration space, as sysfs gives it, with the
//! `pci_types` crate.
//!
//! `pci_types` reads through a [`ConfigRegionAccess`]; ours is a captured
//! byte image. It sizes BARs the hardware way (write all-ones, read back the
//! mask, restore), which a dump cannot answer by itself, so the image also
//! knows each BAR's size from sysfs `resource` and answers a sizing probe
//! with the mask a device of that size would give. The capability lists are
//! walked here rather than with `pci_types`' iterator, which follows
//! pointers without a bound: a looping list would hang pcid.

use std::cell::Cell;
use std::collections::BTreeSet;
use std::fmt;

use pci_types::{Bar as PciBar, ConfigRegionAccess, EndpointHeader, PciAddress, PciHeader};

/// BARs in a type-0 header (a type-1 bridge header has the first two).
pub const MAX_BARS: usize = 6;

/// The standard header every function has.
const HEADER_LEN: usize = 0x40;
/// Standard config space; extended capabilities start here.
const EXT_START: usize = 0x100;

/// One line of sysfs `resource`: `start end flags` (inclusive range).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Resource {
    pub start: u64,
    pub end: u64,
    pub flags: u64,
}

/// Linux `IORESOURCE_IO`: the resource is in I/O port space.
pub const IORESOURCE_IO: u64 = 0x100;
/// Linux `IORESOURCE_MEM`.
pub const IORESOURCE_MEM: u64 = 0x200;

impl Resource {
    /// Bytes covered; 0 for an unused slot (all zero) or a bogus range.
    pub fn size(&self) -> u64 {
        if self.flags == 0 && self.start == 0 && self.end == 0 {
            return 0;
        }
        match self.end.checked_sub(self.start) {
            Some(d) => d.saturating_add(1),
            None => 0,
        }
    }
}

/// Parses a sysfs `resource` file (one `0x… 0x… 0x…` line per resource;
/// lines 0-5 are the BARs).
pub fn parse_resources(text: &str) -> Result<Vec<Resource>, String> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let mut nums = line.split_whitespace().map(|w| {
            w.strip_prefix("0x")
                .and_then(|h| u64::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("line {}: {w:?} is not a 0x number", n + 1))
        });
        let mut next = || {
            nums.next()
                .unwrap_or_else(|| Err(format!("line {}: expected three numbers", n + 1)))
        };
        let (start, end, flags) = (next()?, next()?, next()?);
        out.push(Resource { start, end, flags });
    }
    Ok(out)
}

/// What a BAR decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BarKind {
    Memory32,
    Memory64,
    Io,
}

impl fmt::Display for BarKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `pad` so that width and alignment flags apply.
        f.pad(match self {
            BarKind::Memory32 => "memory32",
            BarKind::Memory64 => "memory64",
            BarKind::Io => "io",
        })
    }
}

/// One implemented BAR (a 64-bit BAR is one entry, named by its low slot).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bar {
    pub index: u8,
    pub kind: BarKind,
    pub address: u64,
    pub size: u64,
    pub prefetchable: bool,
}

/// One entry of the standard capability list: the driver side's type, so
/// pcid and drivers read capabilities with one walker
/// ([`pcid_interface::caps::parse_capabilities`]).
pub use pcid_interface::Capability;

/// One entry of the PCIe extended capability list (offset ≥ 0x100).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExtCapability {
    pub id: u16,
    pub version: u8,
    pub offset: u16,
}

/// Everything pcid uses from a function's config space.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedConfig {
    pub vendor: u16,
    pub device: u16,
    pub revision: u8,
    pub class: u8,
    pub subclass: u8,
    pub interface: u8,
    /// Header layout (bit 7, multi-function, removed): 0 endpoint, 1 bridge.
    pub header_type: u8,
    pub multifunction: bool,
    /// From a type-0 header; 0 for bridges (theirs lives in a capability).
    pub subsystem_vendor: u16,
    pub subsystem_device: u16,
    pub bars: Vec<Bar>,
    /// 0 none, 1-4 INTA-INTD.
    pub irq_pin: u8,
    pub irq_line: u8,
    pub capabilities: Vec<Capability>,
    pub ext_capabilities: Vec<ExtCapability>,
}

/// Why a config image could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigError {
    /// Shorter than the 64-byte standard header.
    TooShort(usize),
    /// Vendor 0xffff: nothing answers at this address.
    NoFunction,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::TooShort(n) => write!(f, "config space is {n} bytes, need at least 64"),
            ConfigError::NoFunction => write!(f, "vendor id is 0xffff (no function)"),
        }
    }
}

impl std::error::Error for ConfigError {}

/// How each BAR slot is laid out, from the registers' low bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    /// Not a BAR of this header type.
    Absent,
    Io,
    Mem32,
    Mem64Low,
    /// The upper half of the 64-bit BAR in the slot before.
    Mem64High,
    /// Undecodable (why): a reserved memory type, on which `pci_types`
    /// would panic, or a 64-bit BAR in the last slot.
    Invalid(&'static str),
}

/// A captured config space seen through `pci_types`' access trait.
pub struct ConfigImage<'a> {
    bytes: &'a [u8],
    sizes: [u64; MAX_BARS],
    slots: [Slot; MAX_BARS],
    /// Slots written with all-ones and not yet restored (a sizing probe).
    probing: Cell<u8>,
    /// Report header type 0, so `EndpointHeader` decodes a bridge's BARs
    /// (same registers at the same offsets).
    as_endpoint: bool,
}

impl<'a> ConfigImage<'a> {
    /// `sizes` are the BAR sizes from sysfs `resource` (0 = not implemented).
    pub fn new(bytes: &'a [u8], sizes: [u64; MAX_BARS]) -> ConfigImage<'a> {
        let header_type = bytes.get(0x0e).copied().unwrap_or(0) & 0x7f;
        let nbars = match header_type {
            0 => 6,
            1 => 2,
            _ => 0,
        };
        let mut slots = [Slot::Absent; MAX_BARS];
        let mut i = 0;
        while i < nbars {
            let raw = le32(bytes, 0x10 + 4 * i);
            let (kind, width) = if raw & 1 == 1 {
                (Slot::Io, 1)
            } else {
                match (raw >> 1) & 3 {
                    0 => (Slot::Mem32, 1),
                    2 if i + 1 < nbars => (Slot::Mem64Low, 2),
                    2 => (Slot::Invalid("is 64-bit but has no upper half"), 1),
                    _ => (Slot::Invalid("has a reserved memory type"), 1),
                }
            };
            slots[i] = kind;
            if width == 2 {
                slots[i + 1] = Slot::Mem64High;
            }
            i += width;
        }
        ConfigImage {
            bytes,
            sizes,
            slots,
            probing: Cell::new(0),
            as_endpoint: header_type == 1,
        }
    }

    /// The raw little-endian dword at `offset`; bytes past the image read
    /// as 0xff, like a function that does not answer.
    pub fn dword(&self, offset: usize) -> u32 {
        le32(self.bytes, offset)
    }

    fn bar_slot(offset: u16) -> Option<usize> {
        let off = usize::from(offset);
        (0x10..0x10 + 4 * MAX_BARS)
            .contains(&off)
            .then_some((off - 0x10) / 4)
            .filter(|_| off % 4 == 0)
    }

    /// What a device whose BAR `slot` is `sizes[slot]` bytes reads back
    /// after all-ones was written to it.
    fn sizing_mask(&self, slot: usize) -> u32 {
        let raw = self.dword(0x10 + 4 * slot);
        match self.slots[slot] {
            Slot::Io => {
                let size = self.sizes[slot];
                if size == 0 {
                    return 0;
                }
                (!(size - 1) as u32 & !0x3) | (raw & 0x3)
            }
            Slot::Mem32 | Slot::Mem64Low => {
                let size = self.sizes[slot];
                if size == 0 {
                    return 0;
                }
                (!(size - 1) as u32 & !0xf) | (raw & 0xf)
            }
            Slot::Mem64High => {
                let size = self.sizes[slot - 1];
                if size == 0 {
                    return 0;
                }
                (!(size - 1) >> 32) as u32
            }
            Slot::Absent | Slot::Invalid(_) => 0,
        }
    }
}

fn le32(bytes: &[u8], offset: usize) -> u32 {
    let mut b = [0xffu8; 4];
    for (i, v) in b.iter_mut().enumerate() {
        if let Some(x) = offset.checked_add(i).and_then(|o| bytes.get(o)) {
            *v = *x;
        }
    }
    u32::from_le_bytes(b)
}

impl ConfigRegionAccess for ConfigImage<'_> {
    // Memory-safe for every offset: reads are bounds-checked above, writes
    // only touch our own probe state.
    unsafe fn read(&self, _address: PciAddress, offset: u16) -> u32 {
        if let Some(slot) = Self::bar_slot(offset) {
            if self.probing.get() & (1 << slot) != 0 {
                return self.sizing_mask(slot);
            }
        }
        let v = self.dword(usize::from(offset));
        if self.as_endpoint && offset == 0x0c {
            // Clear the header type (bits 16-22), keep the rest.
            return v & !0x007f_0000;
        }
        v
    }

    unsafe fn write(&self, _address: PciAddress, offset: u16, value: u32) {
        if let Some(slot) = Self::bar_slot(offset) {
            let bit = 1u8 << slot;
            let p = self.probing.get();
            self.probing
                .set(if value == u32::MAX { p | bit } else { p & !bit });
        }
    }
}

/// Whether `size` is one a BAR of this layout can have (power of two, at
/// least the register's granularity, within its width). Anything else
/// would make the sizing arithmetic meaningless.
fn plausible_size(slot: Slot, size: u64) -> bool {
    size.is_power_of_two()
        && match slot {
            Slot::Io => (4..=1 << 31).contains(&size),
            Slot::Mem32 => (16..=1 << 31).contains(&size),
            Slot::Mem64Low => (16..=1 << 63).contains(&size),
            _ => false,
        }
}

/// Parses a config image. `resources` are the lines of sysfs `resource`
/// (only the first six, the BARs, are used); a BAR is reported when its
/// resource has a size.
pub fn parse_config(
    address: PciAddress,
    bytes: &[u8],
    resources: &[Resource],
) -> Result<ParsedConfig, ConfigError> {
    if bytes.len() < HEADER_LEN {
        return Err(ConfigError::TooShort(bytes.len()));
    }
    let mut sizes = [0u64; MAX_BARS];
    for (s, r) in sizes.iter_mut().zip(resources) {
        *s = r.size();
    }
    let image = ConfigImage::new(bytes, sizes);
    let header = PciHeader::new(address);
    let (vendor, device) = header.id(&image);
    if vendor == 0xffff {
        return Err(ConfigError::NoFunction);
    }
    let (revision, class, subclass, interface) = header.revision_and_class(&image);
    let raw_header_type = bytes[0x0e];
    let header_type = raw_header_type & 0x7f;

    let mut bars = Vec::new();
    let (mut subsystem_vendor, mut subsystem_device) = (0, 0);
    let (mut irq_pin, mut irq_line) = (0, 0);
    if let Some(ep) = EndpointHeader::from_header(PciHeader::new(address), &image) {
        if header_type == 0 {
            let (id, vendor_id) = ep.subsystem(&image);
            subsystem_vendor = vendor_id;
            subsystem_device = id;
        }
        // The interrupt pin/line register is at 0x3c in both header types.
        (irq_pin, irq_line) = ep.interrupt(&image);
        for (slot, (&layout, &size)) in image.slots.iter().zip(&sizes).enumerate() {
            if matches!(layout, Slot::Absent | Slot::Mem64High) {
                continue;
            }
            if let Slot::Invalid(why) = layout {
                log::warn!(
                    "{address}: BAR {slot} {why} ({:#010x}); ignored",
                    image.dword(0x10 + 4 * slot)
                );
                continue;
            }
            if size == 0 {
                continue;
            }
            if !plausible_size(layout, size) {
                log::warn!(
                    "{address}: BAR {slot} size {size:#x} from sysfs is not a BAR size; ignored"
                );
                continue;
            }
            // pci_types decodes the register (and sizes it through the
            // probe answered above); sysfs's size is the one reported:
            // pci_types does not size I/O BARs, and computes a 2 GiB
            // 64-bit BAR's size in i32 arithmetic.
            let (kind, address, probed, prefetchable) = match ep.bar(slot as u8, &image) {
                Some(PciBar::Memory32 {
                    address,
                    size,
                    prefetchable,
                }) => (
                    BarKind::Memory32,
                    address.into(),
                    Some(u64::from(size)),
                    prefetchable,
                ),
                Some(PciBar::Memory64 {
                    address,
                    size,
                    prefetchable,
                }) => (BarKind::Memory64, address, Some(size), prefetchable),
                Some(PciBar::Io { port }) => (BarKind::Io, port.into(), None, false),
                None => continue,
            };
            if probed.is_some_and(|p| p != size) {
                log::debug!("{address}: BAR {slot}: pci_types sized {probed:#x?}, sysfs {size:#x}");
            }
            let bar = Bar {
                index: slot as u8,
                kind,
                address,
                size,
                prefetchable,
            };
            bars.push(bar);
        }
    }

    let capabilities = if image.dword(0x04) & (1 << 20) != 0 && header_type <= 1 {
        walk_capabilities(bytes)
    } else {
        Vec::new()
    };
    Ok(ParsedConfig {
        vendor,
        device,
        revision,
        class,
        subclass,
        interface,
        header_type,
        multifunction: raw_header_type & 0x80 != 0,
        subsystem_vendor,
        subsystem_device,
        bars,
        irq_pin,
        irq_line,
        capabilities,
        ext_capabilities: walk_ext_capabilities(bytes),
    })
}

/// The standard capability list, from the pointer at 0x34 (bounded and
/// loop-safe; see [`pcid_interface::caps::parse_capabilities`]).
pub fn walk_capabilities(bytes: &[u8]) -> Vec<Capability> {
    pcid_interface::caps::parse_capabilities(bytes)
}

/// The PCIe extended capability list at 0x100 (only in a 4 KiB image).
/// Bounded and loop-safe like [`walk_capabilities`].
pub fn walk_ext_capabilities(bytes: &[u8]) -> Vec<ExtCapability> {
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    let mut ptr = EXT_START;
    while ptr >= EXT_START && ptr + 4 <= bytes.len() && seen.insert(ptr) {
        let h = le32(bytes, ptr);
        if h == 0 || h == u32::MAX {
            break;
        }
        out.push(ExtCapability {
            id: (h & 0xffff) as u16,
            version: ((h >> 16) & 0xf) as u8,
            offset: ptr as u16,
        });
        ptr = (h >> 20) as usize & 0xffc;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blank_endpoint() -> Vec<u8> {
        let mut b = vec![0u8; 256];
        b[0..4].copy_from_slice(&[0xf4, 0x1a, 0x42, 0x10]);
        b
    }

    #[test]
    fn resource_lines() {
        let r = parse_resources(
            "0x000000000000c000 0x000000000000c07f 0x0000000000040101\n\
             0x0000000000000000 0x0000000000000000 0x0000000000000000\n",
        )
        .unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].size(), 0x80);
        assert_eq!(r[0].flags & IORESOURCE_IO, IORESOURCE_IO);
        assert_eq!(r[1].size(), 0);
        assert!(parse_resources("0x1 0x2\n").is_err());
        assert!(parse_resources("1 2 3\n").is_err());
        // end before start is nonsense, not a huge size
        assert_eq!(
            Resource {
                start: 10,
                end: 5,
                flags: IORESOURCE_MEM
            }
            .size(),
            0
        );
    }

    #[test]
    fn short_and_empty_images_are_errors() {
        let a = PciAddress::new(0, 0, 0, 0);
        assert_eq!(
            parse_config(a, &[0u8; 63], &[]),
            Err(ConfigError::TooShort(63))
        );
        assert_eq!(
            parse_config(a, &[0xffu8; 256], &[]),
            Err(ConfigError::NoFunction)
        );
    }

    #[test]
    fn capability_loops_and_wild_pointers_end() {
        let mut b = blank_endpoint();
        b[0x06] = 0x10; // status: capability list
        b[0x34] = 0x40;
        b[0x40] = 0x05;
        b[0x41] = 0x50;
        b[0x50] = 0x11;
        b[0x51] = 0x40; // back to the first: a loop
        let caps = walk_capabilities(&b);
        assert_eq!(
            caps.iter().map(|c| c.offset).collect::<Vec<_>>(),
            [0x40, 0x50]
        );
        // A pointer into the header, or past a 64-byte image, ends the walk.
        b[0x51] = 0x20;
        assert_eq!(walk_capabilities(&b).len(), 2);
        b[0x51] = 0xff; // masked to 0xfc: a null capability there, then the end
        assert_eq!(walk_capabilities(&b).len(), 3);
        assert_eq!(walk_capabilities(&b[..0x40]).len(), 0);
        // A vendor capability claiming more bytes than exist is clipped.
        b[0x51] = 0xf8;
        b[0xf8] = 0x09;
        b[0xf9] = 0;
        b[0xfa] = 0xff;
        let caps = walk_capabilities(&b);
        assert_eq!(caps.last().unwrap().data.len(), 8);
        let parsed = parse_config(PciAddress::new(0, 0, 1, 0), &b, &[]).unwrap();
        assert_eq!(parsed.capabilities.len(), 3);
    }

    #[test]
    fn ext_capability_loop_ends() {
        let mut b = vec![0u8; 4096];
        b[0..4].copy_from_slice(&[0x86, 0x80, 0x00, 0x01]);
        // id 1 v2, next 0x140; at 0x140 id 0x0d v1, next 0x100 (loop)
        b[0x100..0x104].copy_from_slice(&(0x1402_0001u32).to_le_bytes());
        b[0x140..0x144].copy_from_slice(&(0x1001_000du32).to_le_bytes());
        let ext = walk_ext_capabilities(&b);
        assert_eq!(
            ext,
            [
                ExtCapability {
                    id: 1,
                    version: 2,
                    offset: 0x100
                },
                ExtCapability {
                    id: 0x0d,
                    version: 1,
                    offset: 0x140
                }
            ]
        );
        assert!(walk_ext_capabilities(&b[..256]).is_empty());
    }

    #[test]
    fn reserved_memory_type_is_skipped_not_a_panic() {
        let mut b = blank_endpoint();
        b[0x10] = 0x02; // memory type 01: reserved
        b[0x14] = 0x06; // memory type 11: reserved
        let res = vec![
            Resource {
                start: 0x1000,
                end: 0x1fff,
                flags: IORESOURCE_MEM
            };
            2
        ];
        let p = parse_config(PciAddress::new(0, 0, 1, 0), &b, &res).unwrap();
        assert!(p.bars.is_empty());
    }

    #[test]
    fn a_64bit_bar_in_the_last_slot_is_not_decoded() {
        let mut b = blank_endpoint();
        b[0x24] = 0x04; // 64-bit memory in slot 5: no upper half
        let mut res = vec![Resource::default(); 6];
        res[5] = Resource {
            start: 0x1000,
            end: 0x1fff,
            flags: IORESOURCE_MEM,
        };
        let p = parse_config(PciAddress::new(0, 0, 1, 0), &b, &res).unwrap();
        assert!(p.bars.is_empty());
    }

    #[test]
    fn implausible_sizes_are_ignored() {
        let mut b = blank_endpoint();
        b[0x10..0x14].copy_from_slice(&0xfe00_0000u32.to_le_bytes());
        let res = [Resource {
            start: 0xfe00_0000,
            end: 0xfe00_0bff,
            flags: IORESOURCE_MEM,
        }];
        let p = parse_config(PciAddress::new(0, 0, 1, 0), &b, &res).unwrap();
        assert!(p.bars.is_empty(), "a 3 KiB BAR cannot exist: {:?}", p.bars);
    }

    #[test]
    fn the_image_answers_sizing_probes_like_hardware() {
        let mut b = blank_endpoint();
        b[0x14..0x18].copy_from_slice(&0xfe4a_0000u32.to_le_bytes());
        b[0x20..0x24].copy_from_slice(&0xfea0_000cu32.to_le_bytes());
        let mut sizes = [0u64; MAX_BARS];
        sizes[1] = 0x1000;
        sizes[4] = 0x4000;
        let image = ConfigImage::new(&b, sizes);
        let a = PciAddress::new(0, 0, 1, 0);
        let ep = EndpointHeader::from_header(PciHeader::new(a), &image).unwrap();
        match ep.bar(1, &image) {
            Some(PciBar::Memory32 { address, size, .. }) => {
                assert_eq!((address, size), (0xfe4a_0000, 0x1000))
            }
            other => panic!("{other:?}"),
        }
        match ep.bar(4, &image) {
            Some(PciBar::Memory64 {
                address,
                size,
                prefetchable,
            }) => assert_eq!((address, size, prefetchable), (0xfea0_0000, 0x4000, true)),
            other => panic!("{other:?}"),
        }
        // The probe is over: registers read as captured again.
        // SAFETY: ConfigImage reads are bounds-checked for any offset.
        assert_eq!(unsafe { image.read(a, 0x20) }, 0xfea0_000c);
        // SAFETY: as above.
        assert_eq!(unsafe { image.read(a, 0x24) }, 0);
        // A BAR sysfs gives no size reads back 0 under the probe: absent.
        assert!(ep.bar(0, &image).is_none());
    }

    #[test]
    fn a_2gib_64bit_bar_keeps_its_size() {
        let mut b = blank_endpoint();
        b[0x10..0x14].copy_from_slice(&0x8000_000cu32.to_le_bytes());
        let mut res = vec![Resource::default(); 6];
        res[0] = Resource {
            start: 0x8000_0000,
            end: 0xffff_ffff,
            flags: IORESOURCE_MEM,
        };
        let p = parse_config(PciAddress::new(0, 0, 1, 0), &b, &res).unwrap();
        assert_eq!(p.bars.len(), 1);
        assert_eq!((p.bars[0].address, p.bars[0].size), (0x8000_0000, 1 << 31));
    }

    #[test]
    fn large_64bit_bar_sizes_survive_the_probe() {
        let mut b = blank_endpoint();
        b[0x10..0x14].copy_from_slice(&0x0000_000cu32.to_le_bytes());
        b[0x14..0x18].copy_from_slice(&0x0000_0080u32.to_le_bytes());
        let mut res = vec![Resource::default(); 6];
        res[0] = Resource {
            start: 0x80_0000_0000,
            end: 0x80_0000_0000 + (8 << 30) - 1,
            flags: IORESOURCE_MEM,
        };
        let p = parse_config(PciAddress::new(0, 0, 1, 0), &b, &res).unwrap();
        assert_eq!(
            p.bars,
            [Bar {
                index: 0,
                kind: BarKind::Memory64,
                address: 0x80_0000_0000,
                size: 8 << 30,
                prefetchable: true
            }]
        );
    }
}
