//! Shared by the integration tests: the captured fixtures and a fake
//! `/sys/bus/pci` tree built from them.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use pci_types::PciAddress;
use pcid::addr::{parse_address, sysfs_address};
use pcid::config::parse_resources;
use pcid::sysfs::Sysfs;
use pcid::table::Function;

pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Every captured function's address, in order.
pub fn fixture_addresses() -> Vec<PciAddress> {
    let mut out: Vec<PciAddress> = std::fs::read_dir(fixtures_dir())
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.strip_suffix(".bin").and_then(parse_address)
        })
        .collect();
    out.sort();
    out
}

pub fn fixture_config(a: PciAddress) -> Vec<u8> {
    std::fs::read(fixtures_dir().join(format!("{}.bin", sysfs_address(a)))).unwrap()
}

pub fn fixture_resource_text(a: PciAddress) -> String {
    std::fs::read_to_string(fixtures_dir().join(format!("{}.resource", sysfs_address(a)))).unwrap()
}

pub fn fixture_function(a: PciAddress) -> Function {
    let res = parse_resources(&fixture_resource_text(a)).unwrap();
    Function::from_parts(a, fixture_config(a), res).unwrap()
}

pub fn addr(s: &str) -> PciAddress {
    parse_address(s).unwrap()
}

/// A temporary `/sys/bus/pci` lookalike: `devices/<addr>/{config,resource,
/// driver_override}`, an `iommu_group` link per function, and the bus's
/// `drivers_probe`. Removed on drop.
pub struct FakeSysfs {
    pub root: PathBuf,
}

impl FakeSysfs {
    pub fn new(tag: &str) -> FakeSysfs {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let root = std::env::temp_dir().join(format!(
            "pcid-sysfs-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("devices")).unwrap();
        std::fs::create_dir_all(root.join("drivers/vfio-pci")).unwrap();
        std::fs::create_dir_all(root.join("drivers/e1000")).unwrap();
        std::fs::write(root.join("drivers_probe"), "").unwrap();
        std::fs::write(root.join("drivers/e1000/unbind"), "").unwrap();
        std::fs::write(root.join("drivers/vfio-pci/unbind"), "").unwrap();
        FakeSysfs { root }
    }

    /// Every captured function, each in IOMMU group = its index.
    pub fn with_fixtures(tag: &str) -> FakeSysfs {
        let s = FakeSysfs::new(tag);
        for (i, a) in fixture_addresses().into_iter().enumerate() {
            s.add(a, &fixture_config(a), &fixture_resource_text(a), i as u32);
        }
        s
    }

    pub fn sysfs(&self) -> Sysfs {
        Sysfs::new(&self.root)
    }

    pub fn dir(&self, a: PciAddress) -> PathBuf {
        self.root.join("devices").join(sysfs_address(a))
    }

    pub fn add(&self, a: PciAddress, config: &[u8], resource: &str, group: u32) {
        let d = self.dir(a);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("config"), config).unwrap();
        std::fs::write(d.join("resource"), resource).unwrap();
        std::fs::write(d.join("driver_override"), "").unwrap();
        let _ = std::fs::remove_file(d.join("iommu_group"));
        std::os::unix::fs::symlink(
            format!("../../../kernel/iommu_groups/{group}"),
            d.join("iommu_group"),
        )
        .unwrap();
    }

    /// Puts `members` into one IOMMU group `group` whose `devices`
    /// directory lists them all, as the kernel's does.
    pub fn share_group(&self, members: &[PciAddress], group: u32) {
        let devices = self.root.join(format!("groups/{group}/devices"));
        std::fs::create_dir_all(&devices).unwrap();
        for &a in members {
            std::fs::write(devices.join(sysfs_address(a)), "").unwrap();
            let link = self.dir(a).join("iommu_group");
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(self.root.join(format!("groups/{group}")), link).unwrap();
        }
    }

    pub fn remove(&self, a: PciAddress) {
        std::fs::remove_dir_all(self.dir(a)).unwrap();
    }

    /// Makes `driver` the bound driver of `a` (the `driver` link).
    pub fn bind(&self, a: PciAddress, driver: &str) {
        let link = self.dir(a).join("driver");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(self.root.join("drivers").join(driver), link).unwrap();
    }

    pub fn read(&self, rel: impl AsRef<Path>) -> String {
        std::fs::read_to_string(self.root.join(rel)).unwrap()
    }
}

impl Drop for FakeSysfs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// The lab machine the fixtures come from (fixtures/README), with a
/// scratch disk image `disk` for its two virtio-blk functions.
pub fn lab_machine(name: &str, disk: &Path) -> lab::Config {
    lab::Config::new(name).arg(&[
        "-drive",
        &format!("file={},if=none,id=d0,format=raw", disk.display()),
        "-device",
        "virtio-blk-pci,drive=d0",
        "-device",
        "e1000,netdev=n0",
        "-netdev",
        "user,id=n0",
        "-device",
        "virtio-net-pci,netdev=n1",
        "-netdev",
        "user,id=n1",
        "-device",
        "pcie-root-port,id=rp1,chassis=1,slot=1",
        "-device",
        "pcie-root-port,id=rp2,chassis=2,slot=2",
        // Behind a root port virtio is PCIe and modern-only (device 0x1042,
        // 4 KiB config space with extended capabilities).
        "-drive",
        &format!(
            "file={},if=none,id=d1,format=raw,file.locking=off,read-only=on",
            disk.display()
        ),
        "-device",
        "virtio-blk-pci,drive=d1,bus=rp1",
    ])
}

/// A zeroed 1 MiB scratch disk, removed on drop.
pub struct ScratchDisk(pub PathBuf);

impl ScratchDisk {
    pub fn new(tag: &str) -> ScratchDisk {
        let p = std::env::temp_dir().join(format!("pcid-{tag}-disk-{}", std::process::id()));
        std::fs::write(&p, vec![0u8; 1 << 20]).unwrap();
        ScratchDisk(p)
    }
}

impl Drop for ScratchDisk {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
