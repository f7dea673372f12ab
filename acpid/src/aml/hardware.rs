//! The hardware AML may reach, as a trait so host tests can record the
//! accesses, and the system implementation: ports through init's grant,
//! PCI configuration space through pcid's scheme. The policy deciding what
//! AML may ask for is the handler's (`handler.rs`).

use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use acpi::PciAddress;
use common::port::PortGrant;

/// The hardware AML may reach, behind acpid's policy. The system
/// implementation is [`SystemHardware`]; tests record accesses instead.
pub trait Hardware: Send + Sync {
    /// Reads `width` (1, 2 or 4) bytes at `port`.
    fn port_read(&self, port: u16, width: u8) -> io::Result<u32>;
    fn port_write(&self, port: u16, width: u8, value: u32) -> io::Result<()>;
    /// Reads `width` bytes of a function's configuration space.
    fn pci_read(&self, address: PciAddress, offset: u16, width: u8) -> io::Result<u32>;
    fn pci_write(&self, address: PciAddress, offset: u16, width: u8, value: u32) -> io::Result<()>;
}

/// Ports through init's grant, PCI configuration space through pcid.
pub struct SystemHardware {
    pub grant: PortGrant,
    /// `/scheme/pci` (tests may point elsewhere).
    pub pci_root: PathBuf,
}

/// pcid's name for a function: `pci-SSSS-BB-DD.F`.
pub fn pci_function_name(a: PciAddress) -> String {
    daemon::instance::pci_name(a.segment(), a.bus(), a.device(), a.function())
}

impl Hardware for SystemHardware {
    fn port_read(&self, port: u16, width: u8) -> io::Result<u32> {
        match width {
            1 => self.grant.read8(port).map(u32::from),
            2 => self.grant.read16(port).map(u32::from),
            4 => self.grant.read32(port),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("port access of {width} bytes"),
            )),
        }
    }

    fn port_write(&self, port: u16, width: u8, value: u32) -> io::Result<()> {
        match width {
            1 => self.grant.write8(port, value as u8),
            2 => self.grant.write16(port, value as u16),
            4 => self.grant.write32(port, value),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("port access of {width} bytes"),
            )),
        }
    }

    fn pci_read(&self, address: PciAddress, offset: u16, width: u8) -> io::Result<u32> {
        let path = self
            .pci_root
            .join(pci_function_name(address))
            .join("config");
        let file = std::fs::File::open(&path)?;
        let mut buf = [0u8; 4];
        let n = usize::from(width).min(4);
        file.read_exact_at(&mut buf[..n], offset.into())
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        Ok(u32::from_le_bytes(buf))
    }

    fn pci_write(&self, address: PciAddress, offset: u16, width: u8, value: u32) -> io::Result<()> {
        // pcid serves config space read-only; a write is attempted anyway so
        // the refusal comes from the owner of the function, not from us.
        let path = self
            .pci_root
            .join(pci_function_name(address))
            .join("config");
        let file = std::fs::OpenOptions::new().write(true).open(&path)?;
        let n = usize::from(width).min(4);
        file.write_all_at(&value.to_le_bytes()[..n], offset.into())
    }
}
