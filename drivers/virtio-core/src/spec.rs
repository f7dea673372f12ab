//! Constants from the virtio 1.1 specification (facts, not code): device
//! status bits, transport feature bits, PCI capability types and the split
//! virtqueue's flag bits.

/// Device status bits (spec 2.1).
pub mod status {
    pub const ACKNOWLEDGE: u8 = 1;
    pub const DRIVER: u8 = 2;
    pub const DRIVER_OK: u8 = 4;
    pub const FEATURES_OK: u8 = 8;
    pub const DEVICE_NEEDS_RESET: u8 = 64;
    pub const FAILED: u8 = 128;
}

/// Device-independent feature bits (spec 6), as bit numbers.
pub mod feature {
    pub const INDIRECT_DESC: u32 = 28;
    pub const EVENT_IDX: u32 = 29;
    pub const VERSION_1: u32 = 32;
    /// Called IOMMU_PLATFORM in QEMU: the device's DMA goes through the
    /// platform IOMMU. Without it QEMU's device reads guest-physical memory
    /// directly and our IOVAs would point at the wrong pages.
    pub const ACCESS_PLATFORM: u32 = 33;
    pub const RING_PACKED: u32 = 34;
    pub const IN_ORDER: u32 = 35;
    pub const ORDER_PLATFORM: u32 = 36;
    pub const SR_IOV: u32 = 37;
    pub const NOTIFICATION_DATA: u32 = 38;
}

/// `1 << bit` as a 64-bit feature mask.
pub const fn bit(n: u32) -> u64 {
    1u64 << n
}

/// PCI vendor id of every virtio device.
pub const PCI_VENDOR_VIRTIO: u16 = 0x1af4;

/// `cfg_type` values of virtio vendor capabilities (spec 4.1.4).
pub mod cap {
    pub const COMMON_CFG: u8 = 1;
    pub const NOTIFY_CFG: u8 = 2;
    pub const ISR_CFG: u8 = 3;
    pub const DEVICE_CFG: u8 = 4;
    pub const PCI_CFG: u8 = 5;
    /// PCI capability id of a vendor-specific capability.
    pub const VENDOR_ID: u8 = 0x09;
}

/// MSI-X "no vector": what the device reads back when it refused a vector.
pub const NO_VECTOR: u16 = 0xffff;

/// Split virtqueue flags (spec 2.6).
pub mod ring {
    /// Descriptor continues via `next`.
    pub const DESC_F_NEXT: u16 = 1;
    /// Descriptor is device-writable (otherwise device-readable).
    pub const DESC_F_WRITE: u16 = 2;
    /// Used ring flag: the device asks not to be notified.
    pub const USED_F_NO_NOTIFY: u16 = 1;
    /// Avail ring flag: the driver asks not to be interrupted (a hint).
    pub const AVAIL_F_NO_INTERRUPT: u16 = 1;
    /// Largest queue size a split ring may have.
    pub const MAX_SIZE: u16 = 32768;
}

/// Virtio device type from a PCI function's ids (spec 4.1.2): modern
/// devices use 0x1040 + type; transitional ones 0x1000..=0x103f with the
/// type in the subsystem device id.
pub fn device_type(vendor: u16, device: u16, subsystem_device: u16) -> Option<u16> {
    if vendor != PCI_VENDOR_VIRTIO {
        return None;
    }
    match device {
        0x1040..=0x107f => Some(device - 0x1040),
        0x1000..=0x103f => Some(subsystem_device),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_types() {
        assert_eq!(device_type(0x1af4, 0x1042, 0), Some(2));
        assert_eq!(device_type(0x1af4, 0x1001, 2), Some(2));
        assert_eq!(device_type(0x1af4, 0x1041, 0), Some(1));
        assert_eq!(device_type(0x8086, 0x1042, 0), None);
        assert_eq!(device_type(0x1af4, 0x1100, 0), None);
    }
}
