//! Shared by the host tests: the captured tables and a hardware stand-in
//! that records what AML and acpid asked of it.
#![allow(dead_code)]

use std::io;
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use acpi::PciAddress;
use acpid::aml::Hardware;
use acpid::tables::Tables;

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// The captured tables, as acpid would read them from sysfs.
pub fn machine_tables() -> Tables {
    let (t, errors) = Tables::read_dir(&fixtures().join("sysfs")).expect("fixtures readable");
    assert!(errors.is_empty(), "{errors:?}");
    t
}

pub fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(fixtures().join("sysfs").join(name)).expect("fixture exists")
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    PortRead(u16, u8),
    PortWrite(u16, u8, u32),
    PciRead(String, u16, u8),
    PciWrite(String, u16, u8, u32),
}

/// Records every access. Ports inside `grant` read `port_value`; others
/// are refused like `PortGrant` would. PCI reads give bytes of `pci`
/// (one 256-byte config space for every function).
pub struct Recorder {
    pub log: Mutex<Vec<Access>>,
    pub grant: Vec<RangeInclusive<u16>>,
    pub port_value: u32,
    pub pci: Vec<u8>,
}

impl Recorder {
    pub fn new(grant: Vec<RangeInclusive<u16>>) -> Arc<Recorder> {
        let mut pci = vec![0u8; 256];
        // PIRQA..D routing registers of the ICH9 LPC bridge (0x60..0x63):
        // route A..D to IRQ 10, 10, 11, 11; E..H (0x68..) disabled.
        pci[0x60..0x64].copy_from_slice(&[10, 10, 11, 11]);
        pci[0x68..0x6c].copy_from_slice(&[0x80; 4]);
        Arc::new(Recorder {
            log: Mutex::new(Vec::new()),
            grant,
            port_value: 0x0001,
            pci,
        })
    }

    pub fn accesses(&self) -> Vec<Access> {
        self.log.lock().unwrap().clone()
    }

    fn granted(&self, port: u16, width: u8) -> bool {
        (0..u16::from(width)).all(|i| {
            port.checked_add(i)
                .is_some_and(|p| self.grant.iter().any(|r| r.contains(&p)))
        })
    }
}

fn name(a: PciAddress) -> String {
    acpid::aml::pci_function_name(a)
}

impl Hardware for Recorder {
    fn port_read(&self, port: u16, width: u8) -> io::Result<u32> {
        self.log.lock().unwrap().push(Access::PortRead(port, width));
        if self.granted(port, width) {
            Ok(self.port_value)
        } else {
            Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "outside the grant",
            ))
        }
    }
    fn port_write(&self, port: u16, width: u8, value: u32) -> io::Result<()> {
        self.log
            .lock()
            .unwrap()
            .push(Access::PortWrite(port, width, value));
        if self.granted(port, width) {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "outside the grant",
            ))
        }
    }
    fn pci_read(&self, a: PciAddress, offset: u16, width: u8) -> io::Result<u32> {
        self.log
            .lock()
            .unwrap()
            .push(Access::PciRead(name(a), offset, width));
        let at = usize::from(offset);
        let mut b = [0u8; 4];
        for (i, byte) in b.iter_mut().take(usize::from(width)).enumerate() {
            *byte = *self.pci.get(at + i).unwrap_or(&0xff);
        }
        Ok(u32::from_le_bytes(b))
    }
    fn pci_write(&self, a: PciAddress, offset: u16, width: u8, value: u32) -> io::Result<()> {
        self.log
            .lock()
            .unwrap()
            .push(Access::PciWrite(name(a), offset, width, value));
        Err(io::Error::new(io::ErrorKind::PermissionDenied, "read-only"))
    }
}

/// `DefinitionBlock` bytes for an SSDT with `body` as its AML.
pub fn ssdt(body: &[u8]) -> Vec<u8> {
    let mut t = Vec::new();
    t.extend_from_slice(b"SSDT");
    t.extend_from_slice(&(36 + body.len() as u32).to_le_bytes());
    t.extend_from_slice(&[2, 0]);
    t.extend_from_slice(b"ACPIDT");
    t.extend_from_slice(b"TESTSSDT");
    t.extend_from_slice(&1u32.to_le_bytes());
    t.extend_from_slice(b"ACPD");
    t.extend_from_slice(&1u32.to_le_bytes());
    t.extend_from_slice(body);
    let sum = t.iter().fold(0u8, |s, b| s.wrapping_add(*b));
    t[9] = 0u8.wrapping_sub(sum);
    t
}

/// `Method (NAME, 0) { Return (<term>) }` with a 4-byte name as the term
/// (a call of that method, or a reference to an undefined name) or a
/// byte constant.
pub fn method(name: &[u8; 4], ret: &[u8]) -> Vec<u8> {
    let mut m = vec![0x14, 0];
    m.extend_from_slice(name);
    m.push(0); // no arguments, not serialized
    m.push(0xa4); // Return
    m.extend_from_slice(ret);
    m[1] = (m.len() - 1) as u8; // PkgLength counts itself
    m
}

/// `Method (NAME, 0) { <body> }` from raw AML.
pub fn method_raw(name: &[u8; 4], body: &[u8]) -> Vec<u8> {
    let mut m = vec![0x14, 0];
    m.extend_from_slice(name);
    m.push(0);
    m.extend_from_slice(body);
    m[1] = (m.len() - 1) as u8;
    m
}

pub fn with_ssdt(body: &[u8]) -> Tables {
    let mut files: Vec<(String, Vec<u8>)> = ["APIC", "DSDT", "FACP", "FACS"]
        .iter()
        .map(|n| (n.to_string(), fixture(n)))
        .collect();
    files.push(("SSDT".into(), ssdt(body)));
    Tables::from_files(files)
}
