//! Driver instance names the enumerators give init (`UNIT@<instance>`),
//! here so that every enumerator names a PCI function the same way without
//! depending on the PCI driver kit (`pcid_interface`, which brings VFIO).

/// pcid's name for a function, from its numbers: `pci-SSSS-BB-DD.F`, the
/// directory in `/scheme/pci`, the driver's instance and scheme suffix.
pub fn pci_name(segment: u16, bus: u8, device: u8, function: u8) -> String {
    format!("pci-{segment:04x}-{bus:02x}-{device:02x}.{function:x}")
}
