//! The virtio PCI vendor capabilities (spec 4.1.4): where in which BAR the
//! common configuration, the notification doorbells, the ISR byte and the
//! device-specific configuration live.

use std::io;

use crate::spec::cap;

/// Size of `struct virtio_pci_cap`; the notify capability adds a u32.
const CAP_LEN: usize = 16;
const NOTIFY_CAP_LEN: usize = 20;

/// One structure's place: `length` bytes at `offset` in BAR `bar`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CapRegion {
    pub bar: u8,
    pub offset: u32,
    pub length: u32,
}

/// One parsed virtio vendor capability.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VirtioCap {
    pub cfg_type: u8,
    pub region: CapRegion,
    /// Only for `NOTIFY_CFG`: bytes between two queues' doorbells per
    /// `queue_notify_off` unit.
    pub notify_off_multiplier: Option<u32>,
}

fn le32(data: &[u8], at: usize) -> Option<u32> {
    let bytes = data.get(at..at + 4)?;
    Some(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
}

/// Parses one vendor capability from its bytes (header included, as the
/// config space holds it). `None` if it is not a usable virtio capability:
/// too short, not vendor-specific, or naming a reserved BAR (the spec
/// tells drivers to ignore those).
pub fn parse_cap(data: &[u8]) -> Option<VirtioCap> {
    if data.len() < CAP_LEN || data[0] != cap::VENDOR_ID {
        return None;
    }
    // cap_len is what the device claims; never read past what we were given.
    let cap_len = usize::from(data[2]).min(data.len());
    if cap_len < CAP_LEN {
        return None;
    }
    let cfg_type = data[3];
    let bar = data[4];
    if bar > 5 {
        return None;
    }
    let region = CapRegion {
        bar,
        offset: le32(data, 8)?,
        length: le32(data, 12)?,
    };
    let notify_off_multiplier = if cfg_type == cap::NOTIFY_CFG {
        if cap_len < NOTIFY_CAP_LEN {
            return None;
        }
        Some(le32(data, 16)?)
    } else {
        None
    };
    Some(VirtioCap {
        cfg_type,
        region,
        notify_off_multiplier,
    })
}

/// The structures a modern virtio-PCI driver uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VirtioCaps {
    pub common: CapRegion,
    pub notify: CapRegion,
    pub notify_off_multiplier: u32,
    pub isr: Option<CapRegion>,
    pub device: Option<CapRegion>,
}

impl VirtioCaps {
    /// Picks the first usable capability of each type (the spec orders them
    /// by preference). Fails if the common or notify structure is missing
    /// or too small: then this is not a modern (1.x) device.
    pub fn from_caps<'a>(caps: impl IntoIterator<Item = &'a [u8]>) -> io::Result<VirtioCaps> {
        let mut common = None;
        let mut notify = None;
        let mut isr = None;
        let mut device = None;
        for data in caps {
            let Some(c) = parse_cap(data) else { continue };
            // Too small to hold the structure: unusable, look for another.
            let min_len = match c.cfg_type {
                cap::COMMON_CFG => crate::pci::COMMON_CFG_LEN,
                cap::NOTIFY_CFG => 2,
                cap::ISR_CFG => 1,
                _ => 0,
            };
            if (c.region.length as usize) < min_len {
                continue;
            }
            match c.cfg_type {
                cap::COMMON_CFG if common.is_none() => common = Some(c.region),
                cap::NOTIFY_CFG if notify.is_none() => {
                    notify = Some((c.region, c.notify_off_multiplier.unwrap_or(0)))
                }
                cap::ISR_CFG if isr.is_none() => isr = Some(c.region),
                cap::DEVICE_CFG if device.is_none() => device = Some(c.region),
                _ => {}
            }
        }
        let common = common.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::Unsupported,
                "no virtio common configuration capability: not a modern (virtio 1.x) device",
            )
        })?;
        let (notify, notify_off_multiplier) = notify.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::Unsupported,
                "no virtio notification capability",
            )
        })?;
        Ok(VirtioCaps {
            common,
            notify,
            notify_off_multiplier,
            isr,
            device,
        })
    }

    /// The BARs that hold any structure we use, each once, ascending.
    pub fn bars(&self) -> Vec<u8> {
        let mut bars: Vec<u8> = [Some(self.common), Some(self.notify), self.isr, self.device]
            .into_iter()
            .flatten()
            .map(|r| r.bar)
            .collect();
        bars.sort_unstable();
        bars.dedup();
        bars
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cap_bytes(cfg_type: u8, bar: u8, offset: u32, length: u32, extra: Option<u32>) -> Vec<u8> {
        let len = if extra.is_some() { 20 } else { 16 };
        let mut v = vec![0x09, 0x00, len, cfg_type, bar, 0, 0, 0];
        v.extend_from_slice(&offset.to_le_bytes());
        v.extend_from_slice(&length.to_le_bytes());
        if let Some(m) = extra {
            v.extend_from_slice(&m.to_le_bytes());
        }
        v
    }

    /// The five capabilities QEMU's virtio-blk-pci presents (all in BAR 4,
    /// 4 KiB apart), plus the PCI_CFG window, which we ignore.
    fn qemu_like() -> Vec<Vec<u8>> {
        vec![
            cap_bytes(cap::COMMON_CFG, 4, 0x0000, 0x1000, None),
            cap_bytes(cap::ISR_CFG, 4, 0x1000, 0x1000, None),
            cap_bytes(cap::DEVICE_CFG, 4, 0x2000, 0x1000, None),
            cap_bytes(cap::NOTIFY_CFG, 4, 0x3000, 0x1000, Some(4)),
            cap_bytes(cap::PCI_CFG, 0, 0, 0, None),
        ]
    }

    #[test]
    fn parses_qemu_layout() {
        let caps = qemu_like();
        let v = VirtioCaps::from_caps(caps.iter().map(|c| c.as_slice())).unwrap();
        assert_eq!(
            v.common,
            CapRegion {
                bar: 4,
                offset: 0,
                length: 0x1000
            }
        );
        assert_eq!(
            v.notify,
            CapRegion {
                bar: 4,
                offset: 0x3000,
                length: 0x1000
            }
        );
        assert_eq!(v.notify_off_multiplier, 4);
        assert_eq!(v.isr.unwrap().offset, 0x1000);
        assert_eq!(v.device.unwrap().offset, 0x2000);
        assert_eq!(v.bars(), vec![4]);
    }

    #[test]
    fn first_of_each_type_wins_and_bad_bars_are_skipped() {
        let caps = [
            cap_bytes(cap::COMMON_CFG, 7, 0, 0x100, None), // reserved BAR: ignored
            cap_bytes(cap::COMMON_CFG, 2, 0x40, 0x10, None), // too small: ignored
            cap_bytes(cap::COMMON_CFG, 2, 0x80, 0x38, None),
            cap_bytes(cap::COMMON_CFG, 3, 0, 0x38, None),
            cap_bytes(cap::NOTIFY_CFG, 0, 0x10, 0x100, Some(0)),
        ];
        let v = VirtioCaps::from_caps(caps.iter().map(|c| c.as_slice())).unwrap();
        assert_eq!(
            v.common,
            CapRegion {
                bar: 2,
                offset: 0x80,
                length: 0x38
            }
        );
        assert_eq!(v.notify_off_multiplier, 0);
        assert_eq!(v.isr, None);
        assert_eq!(v.bars(), vec![0, 2]);
    }

    #[test]
    fn missing_structures_are_errors() {
        let only_common = [cap_bytes(cap::COMMON_CFG, 4, 0, 0x1000, None)];
        let e = VirtioCaps::from_caps(only_common.iter().map(|c| c.as_slice())).unwrap_err();
        assert!(e.to_string().contains("notification"), "{e}");
        let none: [Vec<u8>; 0] = [];
        let e = VirtioCaps::from_caps(none.iter().map(|c| c.as_slice())).unwrap_err();
        assert!(e.to_string().contains("modern"), "{e}");
    }

    #[test]
    fn malformed_capabilities_are_ignored() {
        assert_eq!(parse_cap(&[]), None);
        assert_eq!(parse_cap(&[0x09, 0, 16, 1]), None);
        // A notify capability too short for its multiplier.
        let mut short = cap_bytes(cap::NOTIFY_CFG, 4, 0, 0x1000, None);
        short[2] = 16;
        assert_eq!(parse_cap(&short), None);
        // Not a vendor capability.
        let mut msix = cap_bytes(cap::COMMON_CFG, 4, 0, 0x1000, None);
        msix[0] = 0x11;
        assert_eq!(parse_cap(&msix), None);
        // cap_len claiming more than we have is clamped, not trusted.
        let mut liar = cap_bytes(cap::NOTIFY_CFG, 4, 0, 0x1000, None);
        liar[2] = 200;
        assert_eq!(parse_cap(&liar), None);
    }
}
