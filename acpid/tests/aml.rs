//! AML: the captured DSDT loads into the interpreter; the namespace walk
//! finds QEMU's platform devices with the resources QEMU's ACPI builder
//! gives them (hw/i386/acpi-build.c, hw/isa/*); every hardware access goes
//! through the handler's policy and is recorded here; S5 and reset write
//! what the firmware says; failures never escape.

mod support;

use std::sync::Arc;

use acpi::aml::object::Object;
use acpid::aml::{self, Aml, SystemHardware};
use acpid::devices::{self, Device};
use acpid::platform::MemRange;
use acpid::tables::Tables;
use acpid::{facts, power, symbols};
use common::port::PortGrant;
use support::{fixture, machine_tables, method, method_raw, with_ssdt, Access, Recorder};

/// acpid's grant on q35 (initfs/etc/init.d/acpid.toml).
fn grant() -> Vec<std::ops::RangeInclusive<u16>> {
    vec![0x600..=0x67f, 0xcf9..=0xcf9]
}

fn by_path<'a>(devs: &'a [Device], path: &str) -> &'a Device {
    devs.iter()
        .find(|d| d.device.path == path)
        .unwrap_or_else(|| panic!("no device {path}"))
}

#[test]
fn the_captured_dsdt_loads_without_errors() {
    let rec = Recorder::new(grant());
    let aml = Aml::new(rec.clone(), &machine_tables());
    assert!(aml.load_errors.is_empty(), "{:?}", aml.load_errors);
    assert_eq!(aml.table_names(), ["DSDT"]);
    // Loading only defines objects: no hardware was touched.
    assert!(rec.accesses().is_empty(), "{:?}", rec.accesses());
    let root = symbols::list(&aml, &[]).unwrap();
    for want in ["_SB_", "_GPE", "_S5_", "_OSI"] {
        assert!(root.iter().any(|(n, _)| n == want), "{want} in {root:?}");
    }
}

#[test]
fn the_walk_finds_qemus_platform_devices_with_their_resources() {
    let rec = Recorder::new(grant());
    let mut aml = Aml::new(rec.clone(), &machine_tables());
    let devs = devices::walk(&mut aml);

    let rtc = by_path(&devs, "\\_SB_.PCI0.SF8_.RTC_");
    assert_eq!(rtc.device.hid.as_deref(), Some("PNP0B00"));
    assert_eq!(rtc.name, "acpi-PNP0B00-0");
    assert_eq!(rtc.device.status, 0x0f, "no _STA: present");
    assert_eq!(rtc.device.io, [0x70..=0x77]);
    assert_eq!(rtc.device.irqs, [8]);

    let com1 = by_path(&devs, "\\_SB_.PCI0.SF8_.COM1");
    assert_eq!(com1.device.hid.as_deref(), Some("PNP0501"));
    assert_eq!(com1.device.uid.as_deref(), Some("1"));
    assert_eq!(com1.device.io, [0x3f8..=0x3ff]);
    assert_eq!(com1.device.irqs, [4]);
    let com2 = by_path(&devs, "\\_SB_.PCI0.SF8_.COM2");
    assert_eq!(com2.device.io, [0x2f8..=0x2ff]);
    assert_eq!(com2.device.irqs, [3]);
    assert_ne!(com1.name, com2.name);

    let kbd = by_path(&devs, "\\_SB_.PCI0.SF8_.KBD_");
    assert_eq!(kbd.device.hid.as_deref(), Some("PNP0303"));
    assert_eq!(kbd.device.io, [0x60..=0x60, 0x64..=0x64]);
    assert_eq!(kbd.device.irqs, [1]);

    let pci = by_path(&devs, "\\_SB_.PCI0");
    assert_eq!(pci.device.ids(), ["PNP0A08", "PNP0A03"]);
    // Its windows are produced, not consumed: only 0xcf8 is its own.
    assert_eq!(pci.device.io, [0xcf8..=0xcff]);
    assert!(pci.device.memory.is_empty());
    assert_eq!(pci.resources.len(), 8);

    // HPET's _STA reads the HPET's registers in system memory, which acpid
    // refuses (all ones): the firmware's own code then calls it absent.
    let hpet = by_path(&devs, "\\_SB_.HPET");
    assert_eq!(hpet.device.status, 0);
    assert!(hpet.device.memory.is_empty());

    // Names are unique even where ids repeat (eight PNP0C0F links).
    let mut names: Vec<&str> = devs.iter().map(|d| d.name.as_str()).collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), devs.len());
    assert!(devs.len() >= 25, "{names:?}");

    // The only hardware the walk touched: the PIRQ routing registers of the
    // LPC bridge, at their real offsets 0x60..0x63 and 0x68..0x6b (this
    // also guards the PCI region-base workaround in aml.rs).
    let acc = rec.accesses();
    assert!(!acc.is_empty());
    for a in &acc {
        match a {
            Access::PciRead(f, off, 1) if f == "pci-0000-00-1f.0" => {
                assert!(
                    (0x60..0x64).contains(off) || (0x68..0x6c).contains(off),
                    "{a:?}"
                );
            }
            other => panic!("unexpected access {other:?}"),
        }
    }
    // ...which the links decode into their IRQs.
    let lnka = by_path(&devs, "\\_SB_.LNKA");
    assert_eq!(lnka.device.irqs, [10]);
    assert_eq!(lnka.device.status, 0x0b);
    let lnke = by_path(&devs, "\\_SB_.LNKE");
    assert_eq!(lnke.device.status & 2, 0, "routing disabled: not enabled");
}

#[test]
fn device_files_list_ids_status_and_resources() {
    let mut aml = Aml::new(Recorder::new(grant()), &machine_tables());
    let devs = devices::walk(&mut aml);
    let text = devices::device_text(by_path(&devs, "\\_SB_.PCI0.SF8_.RTC_"));
    for want in [
        "path: \\_SB_.PCI0.SF8_.RTC_\n",
        "hid: PNP0B00\n",
        "status: 0x0f present enabled shown functioning\n",
        "io: 0x70-0x77\n",
        "irqs: 8\n",
        "resource: io 0x70-0x70 align 0x1 length 0x8\n",
        "resource: irq 8  edge active-high\n",
    ] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }
    let fw = devices::device_text(by_path(&devs, "\\_SB_.PCI0.FWCF"));
    assert!(fw.contains("hid: QEMU0002\n"), "{fw}");
    assert!(text.contains("memory: \n"), "{text}");
    // Memory descriptors show as base+length (the device file format).
    let mut hpet = by_path(&devs, "\\_SB_.HPET").clone();
    hpet.device.memory.push(MemRange {
        base: 0xfed0_0000,
        len: 0x400,
        writable: false,
    });
    let text = devices::device_text(&hpet);
    assert!(text.contains("memory: 0xfed00000+0x400(ro)\n"), "{text}");
}

#[test]
fn symbols_read_values_and_root_runs_methods() {
    let rec = Recorder::new(grant());
    let mut aml = Aml::new(rec, &machine_tables());
    let segs = |p: &[&str]| symbols::parse(p).unwrap();

    assert_eq!(
        symbols::kind(&aml, &segs(&["_SB", "PCI0", "SF8", "RTC"])),
        Some(symbols::SymbolKind::Dir)
    );
    assert_eq!(
        symbols::value_text(&aml, &segs(&["_SB", "PCI0", "SF8", "RTC", "_HID"])).unwrap(),
        "0xbd041 (PNP0B00)\n"
    );
    let crs = symbols::value_text(&aml, &segs(&["_SB_", "PCI0", "SF8_", "COM1", "_CRS"])).unwrap();
    assert!(
        crs.contains("resource: io 0x3f8-0x3f8 align 0x0 length 0x8"),
        "{crs}"
    );
    let s5 = symbols::value_text(&aml, &segs(&["_S5"])).unwrap();
    assert_eq!(s5, "Package(4) {\n  0x0\n  0x0\n  0x0\n  0x0\n}\n");
    let uid = symbols::value_text(&aml, &segs(&["_SB", "PCI0", "PRES", "_UID"])).unwrap();
    assert_eq!(uid, "CPU Hotplug resources\n");

    let sta = segs(&["_SB", "LNKA", "_STA"]);
    assert_eq!(
        symbols::kind(&aml, &sta),
        Some(symbols::SymbolKind::Method { args: 0 })
    );
    assert_eq!(
        symbols::run_method(&mut aml, &sta, vec![]).unwrap(),
        "0xb\n"
    );
    // _OSI takes one argument; written arguments are parsed.
    let osi = segs(&["_OSI"]);
    let args = symbols::parse_args("\"Windows 2015\"").unwrap();
    assert_eq!(
        symbols::run_method(&mut aml, &osi, args).unwrap(),
        "0xffffffffffffffff\n"
    );
    assert!(
        symbols::run_method(&mut aml, &osi, vec![]).is_err(),
        "wrong argument count"
    );
    assert!(symbols::parse_args("0x1g").is_err());
    assert_eq!(symbols::parse_args("1 0x10").unwrap().len(), 2);
    // Missing and malformed names.
    assert_eq!(symbols::kind(&aml, &segs(&["_SB", "NOPE"])), None);
    assert!(symbols::parse(&["lower"]).is_none());
    assert!(symbols::parse(&["TOOLONG"]).is_none());
    assert!(symbols::parse(&["1ABC"]).is_none());
    assert!(symbols::parse(&[""]).is_none());
    assert_eq!(aml.rebuilds, 0);
}

/// An error inside a nested method call leaves the crate's call stack
/// behind; acpid reloads the interpreter so the next call is right.
#[test]
fn a_failed_nested_call_does_not_poison_later_evaluations() {
    let mut body = Vec::new();
    body.extend(method(b"ZOK2", &[0x0a, 0x2a])); // Return (42)
    body.extend(method(b"ZOK1", b"ZOK2")); // Return (ZOK2 ())
    body.extend(method(b"ZINN", b"ZZZZ")); // Return (undefined)
                                           // ZOUT: Local0 = ZINN (); Return (99). If its context survived the
                                           // failure, the next caller's Return would resume it and answer 99.
    body.extend(method_raw(b"ZOUT", b"\x70ZINN\x60\xa4\x0a\x63"));
    let tables = with_ssdt(&body);
    let mut aml = Aml::new(Recorder::new(grant()), &tables);
    assert!(aml.load_errors.is_empty(), "{:?}", aml.load_errors);
    assert_eq!(aml.table_names(), ["DSDT", "SSDT"]);

    let ok1 = aml::name("\\ZOK1");
    let v = aml.evaluate(&ok1, vec![]).unwrap();
    assert_eq!(v.as_integer().unwrap(), 42);

    let e = aml.evaluate(&aml::name("\\ZOUT"), vec![]).unwrap_err();
    assert!(matches!(e, aml::EvalError::Aml(_)), "{e}");
    assert_eq!(aml.rebuilds, 1);
    for _ in 0..3 {
        let v = aml.evaluate(&ok1, vec![]).unwrap();
        assert_eq!(v.as_integer().unwrap(), 42, "a stale caller resumed");
    }
    // The DSDT is still there after the reload.
    assert!(aml.get(&aml::name("\\_SB.PCI0.SF8.RTC._HID")).is_some());
}

#[test]
fn poweroff_writes_slp_typ_then_slp_en_to_pm1a_and_reboot_the_reset_value() {
    let rec = Recorder::new(grant());
    let mut aml = Aml::new(rec.clone(), &machine_tables());
    let fadt = facts::fadt_info(&fixture("FACP"));
    assert_eq!(power::s5_values(&mut aml).unwrap(), (0, 0));

    power::poweroff(&mut aml, &fadt).unwrap();
    // The recorder's port reads give 0x0001 (SCI_EN), which must be kept.
    assert_eq!(
        rec.accesses(),
        [
            Access::PortRead(0x604, 2),
            Access::PortWrite(0x604, 2, 0x0001),
            Access::PortWrite(0x604, 2, 0x2001),
        ]
    );

    let rec = Recorder::new(grant());
    let aml = Aml::new(rec.clone(), &machine_tables());
    power::reboot(&aml, &fadt).unwrap();
    assert_eq!(rec.accesses(), [Access::PortWrite(0xcf9, 1, 0x0f)]);
}

/// The real hardware path with an empty grant: every port access is
/// refused by `PortGrant` before the instruction (this test process holds
/// no I/O permission, so a real `out` would kill it with SIGSEGV).
#[test]
fn without_a_grant_power_fails_cleanly_and_pci_comes_from_pcids_files() {
    let dir = std::env::temp_dir().join(format!("acpid-pci-{}", std::process::id()));
    let func = dir.join("pci-0000-00-1f.0");
    std::fs::create_dir_all(&func).unwrap();
    let mut config = vec![0u8; 256];
    config[0x60..0x64].copy_from_slice(&[5, 7, 9, 11]);
    std::fs::write(func.join("config"), &config).unwrap();
    let hw = Arc::new(SystemHardware {
        // SAFETY: an empty grant allows no port access at all.
        grant: unsafe { PortGrant::new(vec![]) },
        pci_root: dir.clone(),
    });
    let mut aml = Aml::new(hw, &machine_tables());
    let devs = devices::walk(&mut aml);
    assert_eq!(by_path(&devs, "\\_SB_.LNKB").device.irqs, [7]);
    assert_eq!(by_path(&devs, "\\_SB_.LNKD").device.irqs, [11]);

    let fadt = facts::fadt_info(&fixture("FACP"));
    let e = power::poweroff(&mut aml, &fadt).unwrap_err();
    assert!(e.contains("outside the grant"), "{e}");
    let e = power::reboot(&aml, &fadt).unwrap_err();
    assert!(e.contains("outside the grant"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn no_fadt_means_no_power_but_no_panic() {
    let files = vec![("DSDT".to_owned(), fixture("DSDT"))];
    let mut aml = Aml::new(Recorder::new(grant()), &Tables::from_files(files));
    assert!(aml.load_errors.is_empty(), "{:?}", aml.load_errors);
    let empty = facts::fadt_info(&[]);
    assert!(power::poweroff(&mut aml, &empty).is_err());
    assert!(power::reboot(&aml, &empty).is_err());
}

#[test]
fn eval_of_missing_and_non_method_objects() {
    let mut aml = Aml::new(Recorder::new(grant()), &machine_tables());
    assert!(matches!(
        aml.evaluate(&aml::name("\\NOPE"), vec![]),
        Err(aml::EvalError::NotFound)
    ));
    assert!(matches!(
        aml.evaluate(&aml::name("\\_SB.NOPE.DEEP"), vec![]),
        Err(aml::EvalError::NotFound)
    ));
    let v = aml.evaluate(&aml::name("\\_SB.PCI0._UID"), vec![]).unwrap();
    assert!(matches!(*v, Object::Integer(0)));
    assert_eq!(aml.rebuilds, 0);
}
