//! Human-readable names for the summary file: class codes (PCI Code and ID
//! Assignment specification), capability ids, a few vendors and the virtio
//! vendor-capability types (virtio 1.x, 4.1.4).

/// The base class name.
pub fn class_name(class: u8) -> &'static str {
    match class {
        0x00 => "Unclassified device",
        0x01 => "Mass storage controller",
        0x02 => "Network controller",
        0x03 => "Display controller",
        0x04 => "Multimedia controller",
        0x05 => "Memory controller",
        0x06 => "Bridge",
        0x07 => "Communication controller",
        0x08 => "Generic system peripheral",
        0x09 => "Input device controller",
        0x0a => "Docking station",
        0x0b => "Processor",
        0x0c => "Serial bus controller",
        0x0d => "Wireless controller",
        0x0e => "Intelligent controller",
        0x0f => "Satellite communications controller",
        0x10 => "Encryption controller",
        0x11 => "Signal processing controller",
        0x12 => "Processing accelerator",
        0x13 => "Non-Essential Instrumentation",
        0x40 => "Coprocessor",
        0xff => "Unassigned class",
        _ => "Unknown class",
    }
}

/// The most specific name known for class/subclass/interface: the
/// interface's when it has one, else the subclass's, else the class's.
pub fn function_kind(class: u8, subclass: u8, interface: u8) -> &'static str {
    let by_interface = match (class, subclass, interface) {
        (0x01, 0x01, _) => Some("IDE interface"),
        (0x01, 0x06, 0x01) => Some("SATA controller (AHCI 1.0)"),
        (0x01, 0x08, 0x02) => Some("Non-Volatile memory controller (NVM Express)"),
        (0x0c, 0x03, 0x00) => Some("USB controller (UHCI)"),
        (0x0c, 0x03, 0x10) => Some("USB controller (OHCI)"),
        (0x0c, 0x03, 0x20) => Some("USB controller (EHCI)"),
        (0x0c, 0x03, 0x30) => Some("USB controller (xHCI)"),
        (0x07, 0x00, 0x02) => Some("Serial controller (16550)"),
        (0x03, 0x00, 0x00) => Some("VGA compatible controller (VGA)"),
        _ => None,
    };
    if let Some(name) = by_interface {
        return name;
    }
    let by_subclass = match (class, subclass) {
        (0x00, 0x01) => Some("VGA compatible unclassified device"),
        (0x01, 0x00) => Some("SCSI storage controller"),
        (0x01, 0x01) => Some("IDE interface"),
        (0x01, 0x02) => Some("Floppy disk controller"),
        (0x01, 0x04) => Some("RAID bus controller"),
        (0x01, 0x05) => Some("ATA controller"),
        (0x01, 0x06) => Some("SATA controller"),
        (0x01, 0x07) => Some("Serial Attached SCSI controller"),
        (0x01, 0x08) => Some("Non-Volatile memory controller"),
        (0x01, 0x80) => Some("Mass storage controller"),
        (0x02, 0x00) => Some("Ethernet controller"),
        (0x02, 0x80) => Some("Network controller"),
        (0x03, 0x00) => Some("VGA compatible controller"),
        (0x03, 0x01) => Some("XGA compatible controller"),
        (0x03, 0x02) => Some("3D controller"),
        (0x03, 0x80) => Some("Display controller"),
        (0x04, 0x00) => Some("Multimedia video controller"),
        (0x04, 0x01) => Some("Multimedia audio controller"),
        (0x04, 0x03) => Some("Audio device"),
        (0x05, 0x00) => Some("RAM memory"),
        (0x06, 0x00) => Some("Host bridge"),
        (0x06, 0x01) => Some("ISA bridge"),
        (0x06, 0x04) => Some("PCI bridge"),
        (0x06, 0x07) => Some("CardBus bridge"),
        (0x06, 0x80) => Some("Bridge"),
        (0x07, 0x00) => Some("Serial controller"),
        (0x07, 0x01) => Some("Parallel controller"),
        (0x07, 0x80) => Some("Communication controller"),
        (0x08, 0x00) => Some("PIC"),
        (0x08, 0x05) => Some("SD Host controller"),
        (0x08, 0x06) => Some("IOMMU"),
        (0x08, 0x80) => Some("System peripheral"),
        (0x09, 0x00) => Some("Keyboard controller"),
        (0x0c, 0x03) => Some("USB controller"),
        (0x0c, 0x05) => Some("SMBus"),
        (0x0d, 0x80) => Some("Wireless controller"),
        _ => None,
    };
    by_subclass.unwrap_or(class_name(class))
}

/// Standard capability (config offset < 0x100) names by id.
pub fn capability_name(id: u8) -> &'static str {
    match id {
        0x00 => "null",
        0x01 => "Power Management",
        0x02 => "AGP",
        0x03 => "Vital Product Data",
        0x04 => "Slot Identification",
        0x05 => "MSI",
        0x06 => "CompactPCI Hot Swap",
        0x07 => "PCI-X",
        0x08 => "HyperTransport",
        0x09 => "Vendor Specific",
        0x0a => "Debug port",
        0x0b => "CompactPCI Central Resource Control",
        0x0c => "PCI Hot-Plug",
        0x0d => "Bridge Subsystem Vendor ID",
        0x0e => "AGP 8x",
        0x0f => "Secure Device",
        0x10 => "PCI Express",
        0x11 => "MSI-X",
        0x12 => "SATA Data/Index Configuration",
        0x13 => "Advanced Features",
        0x14 => "Enhanced Allocation",
        0x15 => "Flattening Portal Bridge",
        _ => "unknown",
    }
}

/// PCIe extended capability names by id.
pub fn ext_capability_name(id: u16) -> &'static str {
    match id {
        0x0001 => "Advanced Error Reporting",
        0x0002 => "Virtual Channel",
        0x0003 => "Device Serial Number",
        0x0004 => "Power Budgeting",
        0x000b => "Vendor Specific",
        0x000d => "Access Control Services",
        0x000e => "Alternative Routing-ID Interpretation",
        0x000f => "Address Translation Services",
        0x0010 => "Single Root I/O Virtualization",
        0x0013 => "Page Request",
        0x0015 => "Resizable BAR",
        0x0018 => "Latency Tolerance Reporting",
        0x0019 => "Secondary PCI Express",
        0x001b => "Process Address Space ID",
        0x001e => "L1 PM Substates",
        0x0025 => "Data Link Feature",
        0x0026 => "Physical Layer 16.0 GT/s",
        _ => "unknown",
    }
}

/// A few vendors seen on our machines.
pub fn vendor_name(vendor: u16) -> Option<&'static str> {
    match vendor {
        0x8086 => Some("Intel"),
        0x1af4 => Some("Red Hat (virtio)"),
        0x1b36 => Some("Red Hat (QEMU)"),
        0x1234 => Some("QEMU (Bochs display)"),
        0x10ec => Some("Realtek"),
        0x1022 => Some("AMD"),
        0x10de => Some("NVIDIA"),
        0x144d => Some("Samsung"),
        _ => None,
    }
}

/// The virtio vendor id: its vendor capabilities carry a `cfg_type`.
pub const VIRTIO_VENDOR: u16 = 0x1af4;

/// The virtio PCI capability `cfg_type` names.
pub fn virtio_cfg_type(t: u8) -> &'static str {
    match t {
        1 => "common config",
        2 => "notify config",
        3 => "ISR status",
        4 => "device config",
        5 => "PCI config access",
        8 => "shared memory",
        9 => "vendor config",
        _ => "unknown cfg_type",
    }
}

/// `INTA`…`INTD` for interrupt pins 1-4.
pub fn irq_pin_name(pin: u8) -> &'static str {
    match pin {
        0 => "none",
        1 => "INTA",
        2 => "INTB",
        3 => "INTC",
        4 => "INTD",
        _ => "invalid",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn most_specific_name_wins() {
        assert_eq!(
            function_kind(0x01, 0x08, 0x02),
            "Non-Volatile memory controller (NVM Express)"
        );
        assert_eq!(
            function_kind(0x01, 0x08, 0x07),
            "Non-Volatile memory controller"
        );
        assert_eq!(function_kind(0x01, 0x42, 0x00), "Mass storage controller");
        assert_eq!(function_kind(0x77, 0x00, 0x00), "Unknown class");
        assert_eq!(virtio_cfg_type(1), "common config");
        assert_eq!(irq_pin_name(1), "INTA");
    }
}
