//! The sysfs side against a fake `/sys/bus/pci` tree: listing, reads, the
//! IOMMU group, and the `vfio-pci` bind sequence (what is written where).

mod support;

use support::*;

#[test]
fn list_and_read() {
    let fake = FakeSysfs::with_fixtures("read");
    std::fs::create_dir_all(fake.root.join("devices/junk")).unwrap();
    let s = fake.sysfs();
    assert_eq!(s.list().unwrap(), fixture_addresses());
    let a = addr("0000:01:00.0");
    assert_eq!(s.read_config(a).unwrap(), fixture_config(a));
    assert_eq!(
        s.read_config_at(a, 0x100, 8).unwrap(),
        fixture_config(a)[0x100..0x108]
    );
    // Past the end: short.
    assert_eq!(s.read_config_at(a, 4092, 16).unwrap().len(), 4);
    assert_eq!(s.read_resources(a).unwrap()[4].size(), 0x4000);
    let index = fixture_addresses().iter().position(|x| *x == a).unwrap();
    assert_eq!(s.iommu_group(a).unwrap(), index as u32);
    assert_eq!(s.driver(a), None);
    fake.bind(a, "e1000");
    assert_eq!(s.driver(a).as_deref(), Some("e1000"));
}

#[test]
fn no_iommu_group_is_a_clear_error() {
    let fake = FakeSysfs::with_fixtures("group");
    let a = addr("0000:00:02.0");
    std::fs::remove_file(fake.dir(a).join("iommu_group")).unwrap();
    let e = fake.sysfs().iommu_group(a).unwrap_err();
    assert!(e.to_string().contains("iommu_group"), "{e}");
}

#[test]
fn group_peers_are_the_other_members_of_the_group() {
    let fake = FakeSysfs::with_fixtures("peers");
    let (ahci, lpc, smbus) = (
        addr("0000:00:1f.2"),
        addr("0000:00:1f.0"),
        addr("0000:00:1f.3"),
    );
    fake.share_group(&[smbus, ahci, lpc], 9);
    let s = fake.sysfs();
    assert_eq!(s.iommu_group(ahci).unwrap(), 9);
    assert_eq!(s.iommu_group_peers(ahci).unwrap(), [lpc, smbus]);
    // A function alone in its group, and one whose group the fake
    // kernel does not show: no peers.
    fake.share_group(&[addr("0000:00:02.0")], 10);
    assert!(s
        .iommu_group_peers(addr("0000:00:02.0"))
        .unwrap()
        .is_empty());
    assert!(s
        .iommu_group_peers(addr("0000:00:01.0"))
        .unwrap()
        .is_empty());
}

#[test]
fn bind_when_already_vfio_only_sets_the_override() {
    let fake = FakeSysfs::with_fixtures("bound");
    let a = addr("0000:00:01.0");
    fake.bind(a, "vfio-pci");
    fake.sysfs().bind_vfio(a).unwrap();
    assert_eq!(fake.read(fake.dir(a).join("driver_override")), "vfio-pci");
    assert_eq!(fake.read("drivers_probe"), "", "no probe needed");
    assert_eq!(
        fake.read("drivers/vfio-pci/unbind"),
        "",
        "never unbinds vfio-pci"
    );
}

#[test]
fn bind_unbinds_another_driver_probes_and_checks() {
    let fake = FakeSysfs::with_fixtures("unbind");
    let a = addr("0000:00:02.0");
    fake.bind(a, "e1000");
    // Nothing in the fake tree reacts to the probe, so the function is
    // still with e1000 afterwards and the check must say so.
    let e = fake.sysfs().bind_vfio(a).unwrap_err();
    assert!(e.to_string().contains("bound to e1000"), "{e}");
    assert_eq!(fake.read(fake.dir(a).join("driver_override")), "vfio-pci");
    assert_eq!(fake.read("drivers/e1000/unbind"), "0000:00:02.0");
    assert_eq!(fake.read("drivers_probe"), "0000:00:02.0");
}

#[test]
fn bind_of_an_unbound_function_probes_and_reports_no_driver() {
    let fake = FakeSysfs::with_fixtures("unbound");
    let a = addr("0000:00:1f.2");
    let e = fake.sysfs().bind_vfio(a).unwrap_err();
    assert!(e.to_string().contains("did not bind"), "{e}");
    assert_eq!(fake.read("drivers_probe"), "0000:00:1f.2");
    assert_eq!(fake.read("drivers/e1000/unbind"), "");
}

#[test]
fn bind_of_a_vanished_function_fails_without_creating_files() {
    let fake = FakeSysfs::with_fixtures("gone");
    let a = addr("0000:00:03.0");
    fake.remove(a);
    assert!(fake.sysfs().bind_vfio(a).is_err());
    assert!(!fake.dir(a).exists());
}
