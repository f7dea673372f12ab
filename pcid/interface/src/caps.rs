//! The PCI capability list, parsed from a config-space image.
//!
//! Pure functions over bytes so they are tested on the host with hand-built
//! images; [`crate::PciFunctionHandle::capabilities`] feeds them the
//! function's real config space.

use serde::{Deserialize, Serialize};

/// Config-space offsets and bits used by the walk (PCI Local Bus spec).
pub const STATUS: usize = 0x06;
pub const STATUS_CAP_LIST: u16 = 1 << 4;
pub const CAP_POINTER: usize = 0x34;

/// Capability ids drivers care about.
pub const CAP_PM: u8 = 0x01;
pub const CAP_MSI: u8 = 0x05;
pub const CAP_VENDOR: u8 = 0x09;
pub const CAP_PCIE: u8 = 0x10;
pub const CAP_MSIX: u8 = 0x11;

/// Capabilities live in the device-specific part of the 256-byte
/// header space.
const FIRST: usize = 0x40;
const END: usize = 0x100;
/// At most (0x100 - 0x40) / 4 distinct capabilities fit; a longer walk
/// is a loop.
const MAX_STEPS: usize = 48;
/// Length taken for capabilities whose layout we do not know.
const DEFAULT_LEN: usize = 16;

/// One capability: its id, where it starts, and its bytes (header
/// included). Vendor capabilities (0x09) carry their own length in
/// `data[2]`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Capability {
    pub id: u8,
    pub offset: u8,
    pub data: Vec<u8>,
}

/// The MSI-X capability's fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsixInfo {
    /// Number of vectors (table size field + 1).
    pub table_size: u16,
    pub table_bar: u8,
    pub table_offset: u32,
    pub pba_bar: u8,
    pub pba_offset: u32,
}

impl Capability {
    /// Reads MSI-X fields if this is a complete MSI-X capability.
    pub fn msix(&self) -> Option<MsixInfo> {
        if self.id != CAP_MSIX || self.data.len() < 12 {
            return None;
        }
        let d = &self.data;
        let ctrl = u16::from_le_bytes([d[2], d[3]]);
        let table = u32::from_le_bytes([d[4], d[5], d[6], d[7]]);
        let pba = u32::from_le_bytes([d[8], d[9], d[10], d[11]]);
        Some(MsixInfo {
            table_size: (ctrl & 0x7ff) + 1,
            table_bar: (table & 7) as u8,
            table_offset: table & !7,
            pba_bar: (pba & 7) as u8,
            pba_offset: pba & !7,
        })
    }
}

/// How many bytes the capability at `off` spans (header included), kept
/// inside the header space.
fn cap_len(config: &[u8], off: usize, id: u8, next: usize) -> usize {
    let room = END.min(config.len()) - off;
    let len = match id {
        CAP_VENDOR => config.get(off + 2).map_or(2, |&l| (l as usize).max(2)),
        CAP_PM => 8,
        CAP_MSIX => 12,
        CAP_PCIE => 60,
        CAP_MSI => {
            let lo = config.get(off + 2).copied().unwrap_or(0);
            let hi = config.get(off + 3).copied().unwrap_or(0);
            let ctrl = u16::from_le_bytes([lo, hi]);
            let is64 = ctrl & (1 << 7) != 0;
            let maskable = ctrl & (1 << 8) != 0;
            match (is64, maskable) {
                (false, false) => 10,
                (true, false) => 14,
                (false, true) => 20,
                (true, true) => 24,
            }
        }
        // Unknown layout: up to the next capability if it follows closely,
        // else a fixed window.
        _ if next > off => (next - off).min(DEFAULT_LEN),
        _ => DEFAULT_LEN,
    };
    len.min(room)
}

/// Walks the standard capability list of a config-space image (at least
/// the 64-byte header; normally 256 bytes). Bounded and loop-safe: stops
/// at 48 steps, at a pointer outside 0x40..0x100, or at an offset already
/// visited. Returns what it found up to that point.
pub fn parse_capabilities(config: &[u8]) -> Vec<Capability> {
    let mut caps = Vec::new();
    let Some(status) = config.get(STATUS..STATUS + 2) else {
        return caps;
    };
    if u16::from_le_bytes([status[0], status[1]]) & STATUS_CAP_LIST == 0 {
        return caps;
    }
    let Some(&first) = config.get(CAP_POINTER) else {
        return caps;
    };
    // The bottom two bits of capability pointers are reserved.
    let mut off = (first & 0xfc) as usize;
    let mut visited = [false; END];
    for _ in 0..MAX_STEPS {
        if off == 0 {
            break;
        }
        if !(FIRST..END).contains(&off) || off + 2 > config.len() {
            log::warn!("capability pointer {off:#x} out of range; list truncated");
            break;
        }
        if visited[off] {
            log::warn!("capability list loops at {off:#x}; list truncated");
            break;
        }
        visited[off] = true;
        let id = config[off];
        let next = (config[off + 1] & 0xfc) as usize;
        let len = cap_len(config, off, id, next);
        caps.push(Capability {
            id,
            offset: off as u8,
            data: config[off..off + len].to_vec(),
        });
        off = next;
    }
    caps
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a virtio-blk-like config image by hand (layout of QEMU's,
    /// cfg types shuffled): MSI-X at 0x98, then five vendor capabilities
    /// chained 0x84 -> 0x70 -> 0x60 -> 0x50 -> 0x40.
    fn virtio_blk_config() -> [u8; 256] {
        let mut c = [0u8; 256];
        c[0..2].copy_from_slice(&0x1af4u16.to_le_bytes());
        c[2..4].copy_from_slice(&0x1042u16.to_le_bytes());
        c[6..8].copy_from_slice(&STATUS_CAP_LIST.to_le_bytes());
        c[0x0b] = 0x01; // class: storage
        c[0x34] = 0x98;
        // MSI-X: 2 vectors (size field 1), table in BAR1 at 0, PBA BAR1 0x800.
        c[0x98..0xa4].copy_from_slice(&[
            CAP_MSIX, 0x84, 0x01, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x00, 0x00,
        ]);
        // virtio vendor caps: id, next, len, cfg_type, bar, id, pad, pad,
        // offset (le32), length (le32) [, notify multiplier (le32)].
        let vendor =
            |c: &mut [u8; 256], at: usize, next: u8, len: u8, ty: u8, off: u32, size: u32| {
                c[at] = CAP_VENDOR;
                c[at + 1] = next;
                c[at + 2] = len;
                c[at + 3] = ty;
                c[at + 4] = 4; // BAR4
                c[at + 8..at + 12].copy_from_slice(&off.to_le_bytes());
                c[at + 12..at + 16].copy_from_slice(&size.to_le_bytes());
            };
        vendor(&mut c, 0x84, 0x70, 20, 2, 0x3000, 0x1000); // notify
        c[0x84 + 16..0x84 + 20].copy_from_slice(&4u32.to_le_bytes());
        vendor(&mut c, 0x70, 0x60, 16, 4, 0x2000, 0x1000); // device
        vendor(&mut c, 0x60, 0x50, 16, 3, 0x1000, 0x1000); // ISR
        vendor(&mut c, 0x50, 0x40, 16, 1, 0x0000, 0x1000); // common
        vendor(&mut c, 0x40, 0x00, 20, 5, 0, 0); // PCI cfg access
        c
    }

    #[test]
    fn virtio_blk_like_image() {
        let c = virtio_blk_config();
        let caps = parse_capabilities(&c);
        let ids: Vec<(u8, u8)> = caps.iter().map(|c| (c.id, c.offset)).collect();
        assert_eq!(
            ids,
            vec![
                (CAP_MSIX, 0x98),
                (CAP_VENDOR, 0x84),
                (CAP_VENDOR, 0x70),
                (CAP_VENDOR, 0x60),
                (CAP_VENDOR, 0x50),
                (CAP_VENDOR, 0x40)
            ]
        );
        // Vendor caps are exactly as long as their length byte says.
        let lens: Vec<usize> = caps.iter().skip(1).map(|c| c.data.len()).collect();
        assert_eq!(lens, vec![20, 16, 16, 16, 20]);
        assert_eq!(caps[1].data[3], 2, "notify cfg_type");
        assert_eq!(
            &caps[1].data[16..20],
            &4u32.to_le_bytes(),
            "notify multiplier"
        );
        assert_eq!(caps[4].data[3], 1, "common cfg_type");

        let msix = caps[0].msix().unwrap();
        assert_eq!(
            msix,
            MsixInfo {
                table_size: 2,
                table_bar: 1,
                table_offset: 0,
                pba_bar: 1,
                pba_offset: 0x800
            }
        );
        assert_eq!(caps[1].msix(), None);
    }

    /// Config space of QEMU 7.2's `virtio-blk-pci,disable-legacy=on`
    /// at 00:04.0, read through VFIO by `examples/kit-probe.rs` in the lab
    /// guest (bytes 0xb0..0x100 are zero).
    const QEMU_VIRTIO_BLK: [u8; 0xb0] = [
        0xf4, 0x1a, 0x42, 0x10, 0x03, 0x01, 0x10, 0x00, 0x01, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xd0, 0xbf, 0xfe, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x0c, 0x40, 0xbf, 0xfe, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xf4,
        0x1a, 0x00, 0x11, 0x00, 0x00, 0x00, 0x00, 0x98, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x0a, 0x01, 0x00, 0x00, 0x09, 0x00, 0x10, 0x01, 0x04, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x10, 0x00, 0x00, 0x09, 0x40, 0x10, 0x03, 0x04, 0x00, 0x00, 0x00, 0x00, 0x10,
        0x00, 0x00, 0x00, 0x10, 0x00, 0x00, 0x09, 0x50, 0x10, 0x04, 0x04, 0x00, 0x00, 0x00, 0x00,
        0x20, 0x00, 0x00, 0x00, 0x10, 0x00, 0x00, 0x09, 0x60, 0x14, 0x02, 0x04, 0x00, 0x00, 0x00,
        0x00, 0x30, 0x00, 0x00, 0x00, 0x10, 0x00, 0x00, 0x04, 0x00, 0x00, 0x00, 0x09, 0x70, 0x14,
        0x05, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x11, 0x84, 0x02, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    ];

    #[test]
    fn captured_qemu_virtio_blk_config() {
        let mut c = [0u8; 256];
        c[..QEMU_VIRTIO_BLK.len()].copy_from_slice(&QEMU_VIRTIO_BLK);
        let caps = parse_capabilities(&c);
        // (id, offset, length, virtio cfg_type for vendor caps)
        let got: Vec<(u8, u8, usize, u8)> = caps
            .iter()
            .map(|k| {
                (
                    k.id,
                    k.offset,
                    k.data.len(),
                    if k.id == CAP_VENDOR { k.data[3] } else { 0 },
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (CAP_MSIX, 0x98, 12, 0),
                (CAP_VENDOR, 0x84, 20, 5), // PCI cfg access
                (CAP_VENDOR, 0x70, 20, 2), // notify, with multiplier
                (CAP_VENDOR, 0x60, 16, 4), // device cfg
                (CAP_VENDOR, 0x50, 16, 3), // ISR
                (CAP_VENDOR, 0x40, 16, 1), // common cfg
            ]
        );
        assert_eq!(
            &caps[2].data[16..20],
            &4u32.to_le_bytes(),
            "notify_off_multiplier"
        );
        assert_eq!(caps[2].data[4], 4, "notify cfg in BAR4");
        assert_eq!(
            caps[0].msix(),
            Some(MsixInfo {
                table_size: 3,
                table_bar: 1,
                table_offset: 0,
                pba_bar: 1,
                pba_offset: 0x800
            })
        );
    }

    #[test]
    fn no_capability_list_bit_means_none() {
        let mut c = virtio_blk_config();
        c[6] = 0;
        assert!(parse_capabilities(&c).is_empty());
    }

    #[test]
    fn loops_are_cut() {
        let mut c = virtio_blk_config();
        c[0x41] = 0x84; // last vendor cap points back into the chain
        let caps = parse_capabilities(&c);
        assert_eq!(caps.len(), 6, "each capability once");
        c[0x99] = 0x98; // MSI-X points to itself
        assert_eq!(parse_capabilities(&c).len(), 1);
    }

    #[test]
    fn pointers_outside_the_capability_area_stop_the_walk() {
        let mut c = virtio_blk_config();
        c[0x34] = 0x20; // inside the standard header
        assert!(parse_capabilities(&c).is_empty());
        let mut c = virtio_blk_config();
        c[0x61] = 0x3c;
        assert_eq!(parse_capabilities(&c).len(), 4, "stops after the ISR cap");
        // Reserved low bits of a pointer are ignored.
        let mut c = virtio_blk_config();
        c[0x34] = 0x9b;
        assert_eq!(parse_capabilities(&c).len(), 6);
    }

    #[test]
    fn lengths_never_run_past_the_header_space_or_image() {
        let mut c = virtio_blk_config();
        c[0x34] = 0xf8;
        c[0xf8] = CAP_VENDOR;
        c[0xf9] = 0;
        c[0xfa] = 200; // claims 200 bytes
        let caps = parse_capabilities(&c);
        assert_eq!(caps.len(), 1);
        assert_eq!(caps[0].data.len(), 8);
        // A short image: the walk reads only what exists.
        let caps = parse_capabilities(&c[..0x9a]);
        assert!(
            caps.is_empty()
                || caps
                    .iter()
                    .all(|k| k.offset as usize + k.data.len() <= 0x9a)
        );
        assert!(parse_capabilities(&c[..4]).is_empty());
    }

    #[test]
    fn msi_and_unknown_lengths() {
        let mut c = [0u8; 256];
        c[6] = STATUS_CAP_LIST as u8;
        c[0x34] = 0x50;
        // MSI, 64-bit with per-vector masking -> 24 bytes.
        c[0x50] = CAP_MSI;
        c[0x51] = 0x68;
        c[0x52] = 0x80;
        c[0x53] = 0x01;
        // PM -> 8 bytes.
        c[0x68] = CAP_PM;
        c[0x69] = 0x70;
        // Unknown id 0x13 with the next cap 8 bytes later -> 8 bytes.
        c[0x70] = 0x13;
        c[0x71] = 0x78;
        // Unknown id, last -> 16 bytes.
        c[0x78] = 0x14;
        let caps = parse_capabilities(&c);
        let got: Vec<(u8, usize)> = caps.iter().map(|k| (k.id, k.data.len())).collect();
        assert_eq!(got, vec![(CAP_MSI, 24), (CAP_PM, 8), (0x13, 8), (0x14, 16)]);
        // 32-bit MSI without masking -> 10 bytes.
        c[0x52] = 0;
        c[0x53] = 0;
        assert_eq!(parse_capabilities(&c)[0].data.len(), 10);
    }

    #[test]
    fn at_most_48_steps() {
        // A chain through every dword of 0x40..0x100 (49 entries, no
        // loop) is cut at 48.
        let mut c = [0u8; 256];
        c[6] = STATUS_CAP_LIST as u8;
        c[0x34] = 0x40;
        let mut off = 0x40;
        while off + 4 < 0x100 {
            c[off] = 0x13;
            c[off + 1] = (off + 4) as u8;
            off += 4;
        }
        let caps = parse_capabilities(&c);
        assert_eq!(caps.len(), 48);
    }
}
