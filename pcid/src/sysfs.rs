//! The kernel's view of the PCI bus: `/sys/bus/pci`. pcid reads config
//! space and resources here (no `/dev/mem`, no port I/O) and binds claimed
//! functions to `vfio-pci` through the bind files. The root is a parameter
//! so tests can use a directory tree of captured files.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use pci_types::PciAddress;

use crate::addr::{parse_address, sysfs_address};
use crate::config::{parse_resources, Resource};

/// The driver pcid hands claimed functions to.
pub const VFIO_DRIVER: &str = "vfio-pci";

/// A `/sys/bus/pci`-shaped tree.
#[derive(Debug, Clone)]
pub struct Sysfs {
    root: PathBuf,
}

impl Sysfs {
    /// The running kernel's tree.
    pub fn system() -> Sysfs {
        Sysfs::new("/sys/bus/pci")
    }

    pub fn new(root: impl Into<PathBuf>) -> Sysfs {
        Sysfs { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `devices/0000:00:04.0`.
    pub fn device_dir(&self, a: PciAddress) -> PathBuf {
        self.root.join("devices").join(sysfs_address(a))
    }

    /// Every function the kernel knows, in address order. Entries whose
    /// names are not addresses are skipped.
    pub fn list(&self) -> io::Result<Vec<PciAddress>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(self.root.join("devices"))? {
            let entry = entry?;
            match entry.file_name().to_str().and_then(parse_address) {
                Some(a) => out.push(a),
                None => log::warn!("ignoring {}: not a PCI address", entry.path().display()),
            }
        }
        out.sort();
        Ok(out)
    }

    /// The whole config file (4096 bytes for PCIe functions, 256 for
    /// conventional PCI, when read as root).
    pub fn read_config(&self, a: PciAddress) -> io::Result<Vec<u8>> {
        std::fs::read(self.device_dir(a).join("config"))
    }

    /// `len` bytes of config space at `offset`, read now. Short if the file
    /// ends first.
    pub fn read_config_at(&self, a: PciAddress, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let f = File::open(self.device_dir(a).join("config"))?;
        let mut buf = vec![0u8; len];
        let mut done = 0;
        while done < len {
            match f.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        buf.truncate(done);
        Ok(buf)
    }

    /// The `resource` lines (BARs first).
    pub fn read_resources(&self, a: PciAddress) -> io::Result<Vec<Resource>> {
        let text = std::fs::read_to_string(self.device_dir(a).join("resource"))?;
        parse_resources(&text).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }

    /// The kernel driver bound now (the `driver` link's target name).
    pub fn driver(&self, a: PciAddress) -> Option<String> {
        let target = std::fs::read_link(self.device_dir(a).join("driver")).ok()?;
        Some(target.file_name()?.to_string_lossy().into_owned())
    }

    /// The function's IOMMU group number (the `iommu_group` link's name).
    pub fn iommu_group(&self, a: PciAddress) -> io::Result<u32> {
        let link = self.device_dir(a).join("iommu_group");
        let target = std::fs::read_link(&link).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("{}: {e} (is the IOMMU on?)", link.display()),
            )
        })?;
        target
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{} -> {}: not a group number",
                        link.display(),
                        target.display()
                    ),
                )
            })
    }

    /// The other functions in `a`'s IOMMU group (its `iommu_group/devices`
    /// directory), in address order. Empty if the kernel shows no group
    /// (the claim itself then reports the missing IOMMU).
    pub fn iommu_group_peers(&self, a: PciAddress) -> io::Result<Vec<PciAddress>> {
        let dir = self.device_dir(a).join("iommu_group").join("devices");
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", dir.display()))),
        };
        let mut peers = Vec::new();
        for entry in entries {
            let name = entry?.file_name();
            match name.to_str().and_then(parse_address) {
                Some(p) if p != a => peers.push(p),
                Some(_) => {}
                None => log::warn!(
                    "{}: {:?} is not a PCI address",
                    dir.display(),
                    name.to_string_lossy()
                ),
            }
        }
        peers.sort();
        Ok(peers)
    }

    /// Hands the function to `vfio-pci`: sets `driver_override`, unbinds the
    /// current driver if it is another one, asks the kernel to probe, and
    /// checks that `vfio-pci` took it. Already bound to `vfio-pci` (pcid
    /// restarted): only the override is (re)written.
    pub fn bind_vfio(&self, a: PciAddress) -> io::Result<()> {
        let dir = self.device_dir(a);
        let addr = sysfs_address(a);
        write_attr(&dir.join("driver_override"), VFIO_DRIVER)?;
        match self.driver(a) {
            Some(d) if d == VFIO_DRIVER => return Ok(()),
            Some(d) => {
                log::info!("{addr}: unbinding kernel driver {d}");
                write_attr(&dir.join("driver").join("unbind"), &addr)?;
            }
            None => {}
        }
        write_attr(&self.root.join("drivers_probe"), &addr)?;
        match self.driver(a) {
            Some(d) if d == VFIO_DRIVER => Ok(()),
            Some(d) => Err(io::Error::other(format!(
                "{addr}: bound to {d} instead of {VFIO_DRIVER}"
            ))),
            // Also while the kernel is still adding a hot-plugged function
            // (its `add` uevent comes before drivers may match it): the
            // caller may try again shortly.
            None => Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                format!("{addr}: {VFIO_DRIVER} did not bind (is the module loaded?)"),
            )),
        }
    }
}

/// Writes a sysfs attribute in one `write` (the kernel takes each write as
/// a whole value); never creates the file.
fn write_attr(path: &Path, value: &str) -> io::Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    f.write_all(value.as_bytes()).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("writing {value:?} to {}: {e}", path.display()),
        )
    })
}
