//! Table reading, validation and the decoded views, against the tables
//! captured from the lab's QEMU machine (`fixtures/README.md`), and corrupt
//! copies of them: each corruption gives its own clear error, nothing
//! panics, and a corrupt table is never decoded.

mod support;

use acpid::tables::{validate, TableError, Tables};
use acpid::{facts, views};
use support::{fixture, fixtures, machine_tables};

const NAMES: [&str; 8] = [
    "APIC", "DMAR", "DSDT", "FACP", "FACS", "HPET", "MCFG", "WAET",
];

fn fix_checksum(t: &mut [u8]) {
    t[9] = 0;
    let sum = t.iter().fold(0u8, |s, b| s.wrapping_add(*b));
    t[9] = 0u8.wrapping_sub(sum);
}

#[test]
fn every_captured_table_is_valid_and_named_by_signature() {
    let t = machine_tables();
    let names: Vec<&str> = t.tables.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, NAMES);
    for table in &t.tables {
        assert!(table.is_valid(), "{}: {:?}", table.name, table.header);
        assert_eq!(table.kernel_name, table.name);
    }
    assert!(t.errors().is_empty());
    let index = t.index_text();
    assert!(
        index.contains("DSDT  DSDT  8368  1  \"BOCHS\"  \"BXPC\"  ok"),
        "{index}"
    );
    assert_eq!(
        t.aml_tables()
            .iter()
            .map(|t| t.name.as_str())
            .collect::<Vec<_>>(),
        ["DSDT"]
    );
}

#[test]
fn corrupt_copies_give_clear_errors_and_are_not_decoded() {
    for name in NAMES {
        let good = fixture(name);
        let facs = name == "FACS";
        let len = good.len();

        // A flipped byte: the checksum catches it (FACS has none).
        if !facs {
            let mut bad = good.clone();
            bad[len - 1] ^= 0x40;
            let e = validate(&bad).unwrap_err();
            assert!(matches!(e, TableError::BadChecksum { .. }), "{name}: {e}");
            assert!(e.to_string().contains("bad checksum"), "{e}");
        }

        // Truncated: shorter than its length field says.
        let e = validate(&good[..len - 1]).unwrap_err();
        assert_eq!(
            e,
            TableError::Truncated {
                length_field: len as u32,
                len: len - 1
            },
            "{name}"
        );
        assert!(e.to_string().contains("truncated"), "{e}");

        // Cut inside the header (FACS: inside its fixed part).
        let e = validate(&good[..20]).unwrap_err();
        if facs {
            assert!(matches!(e, TableError::Truncated { len: 20, .. }), "{e}");
        } else {
            assert!(
                matches!(e, TableError::TooShort { len: 20, .. }),
                "{name}: {e}"
            );
        }
        let e = validate(&good[..6]).unwrap_err();
        assert!(
            matches!(e, TableError::TooShort { len: 6, .. }),
            "{name}: {e}"
        );

        // A length field bigger than the table, checksum made right, so the
        // length is what is wrong.
        let mut bad = good.clone();
        bad[4..8].copy_from_slice(&(len as u32 + 16).to_le_bytes());
        if !facs {
            fix_checksum(&mut bad);
        }
        assert!(
            matches!(validate(&bad), Err(TableError::Truncated { .. })),
            "{name}"
        );

        // A length field smaller than the table.
        let mut bad = good.clone();
        bad[4..8].copy_from_slice(&(len as u32 - 4).to_le_bytes());
        if !facs {
            fix_checksum(&mut bad);
        }
        let e = validate(&bad).unwrap_err();
        assert_eq!(
            e,
            TableError::LengthMismatch {
                length_field: len as u32 - 4,
                len
            },
            "{name}"
        );
        assert!(e.to_string().contains("wrong length field"), "{e}");

        // Served raw, reported, not decoded.
        let set = Tables::from_files(vec![(name.to_owned(), bad.clone())]);
        let t = &set.tables[0];
        assert!(!t.is_valid());
        assert_eq!(t.bytes, bad);
        let text = views::table_text(t);
        assert!(
            text.contains("status: invalid: wrong length field"),
            "{text}"
        );
        assert!(!text.contains("cannot decode"), "{text}");
        assert_eq!(set.errors().len(), 1);
        assert!(set.aml_tables().is_empty());
    }
}

#[test]
fn a_set_with_a_corrupt_dsdt_loads_no_aml() {
    let mut files: Vec<(String, Vec<u8>)> =
        NAMES.iter().map(|n| (n.to_string(), fixture(n))).collect();
    let dsdt = files.iter_mut().find(|(n, _)| n == "DSDT").unwrap();
    dsdt.1[100] ^= 1;
    let t = Tables::from_files(files);
    assert!(t.aml_tables().is_empty());
    assert_eq!(t.errors().len(), 1);
    assert!(t.errors()[0].contains("DSDT"), "{:?}", t.errors());
    // The rest still decodes.
    assert!(t.find("FACP").is_some());
}

#[test]
fn fadt_view_shows_the_q35_power_registers() {
    let t = machine_tables();
    let text = views::table_text(t.get("FACP").unwrap());
    for want in [
        "FADT revision 3",
        "sci-interrupt 9  smi-command 0xb2",
        "pm1a-event SystemIO 0x600 (32 bits)",
        "pm1b-event none",
        "pm1a-control SystemIO 0x604 (16 bits)",
        "pm1b-control none",
        "pm-timer SystemIO 0x608 (32 bits)  counter 24 bits",
        "gpe0 SystemIO 0x620 (128 bits)  length 16",
        "reset-register SystemIO 0xcf9 (8 bits)  value 0xf  supported yes",
        "century-cmos-index 0x32",
        "iapc-boot-arch 0x2 (8042)",
        "flags 0x84a5 (WBINVD PROC_C1 SLP_BUTTON RTC_S4 RESET_REG_SUP USE_PLATFORM_CLOCK)",
    ] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }
    let info = facts::fadt_info(&fixture("FACP"));
    assert_eq!(info.pm1a_control.map(|g| g.address), Some(0x604));
    assert_eq!(info.pm1b_control, None);
    let (reset, value) = info.reset.unwrap();
    assert_eq!((reset.address, value), (0xcf9, 0x0f));
    assert_eq!(info.century, 0x32);
}

#[test]
fn madt_view_lists_both_cpus_ioapic_and_overrides() {
    let bytes = fixture("APIC");
    let cpus = facts::madt_cpus(&bytes).unwrap();
    assert_eq!(cpus.len(), 2, "the fixture was captured with -smp 2");
    assert!(cpus.iter().all(|c| c.enabled));
    assert_eq!(cpus.iter().map(|c| c.apic_id).collect::<Vec<_>>(), [0, 1]);
    let text = views::madt_text(&bytes).unwrap();
    for want in [
        "local-apic-address 0xfee00000",
        "cpus 2  enabled 2",
        "cpu  uid 0  apic-id 0  enabled",
        "cpu  uid 1  apic-id 1  enabled",
        "ioapic  id 0  address 0xfec00000  gsi-base 0",
        "override  bus 0 irq 0 -> gsi 2",
        "override  bus 0 irq 9 -> gsi 9  polarity active-high trigger level",
        "local-apic-nmi  cpu all  lint1",
    ] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }
}

#[test]
fn madt_with_bad_entry_lengths_is_an_error_not_a_hang() {
    let good = fixture("APIC");
    // The first entry (a local APIC) starts at 44.
    for bad_len in [0u8, 1, 7, 200] {
        let mut bad = good.clone();
        bad[45] = bad_len;
        fix_checksum(&mut bad);
        assert!(validate(&bad).is_ok());
        let e = facts::madt_cpus(&bad).unwrap_err();
        assert!(e.contains("offset 0x2c"), "{bad_len}: {e}");
    }
}

/// The decoders are public: called on bytes whose length field lies, they
/// refuse rather than let the crate's iterators read past the end.
#[test]
fn decoders_refuse_a_lying_length_field() {
    for name in ["APIC", "MCFG"] {
        let mut bad = fixture(name);
        let len = bad.len() as u32;
        bad[4..8].copy_from_slice(&(len + 4096).to_le_bytes());
        let e = if name == "APIC" {
            views::madt_text(&bad).unwrap_err()
        } else {
            views::mcfg_text(&bad).unwrap_err()
        };
        assert!(e.contains("length field"), "{name}: {e}");
    }
}

#[test]
fn mcfg_view_has_the_q35_ecam_window() {
    let w = facts::mcfg_windows(&fixture("MCFG")).unwrap();
    assert_eq!(w.len(), 1);
    assert_eq!(w[0].base, 0xb000_0000);
    assert_eq!((w[0].segment, w[0].bus_start, w[0].bus_end), (0, 0, 0xff));
    let text = views::mcfg_text(&fixture("MCFG")).unwrap();
    assert!(
        text.contains("ecam  base 0xb0000000  segment 0  buses 0x00-0xff  size 0x10000000"),
        "{text}"
    );
}

#[test]
fn dmar_view_has_the_vtd_unit_and_its_scopes() {
    let text = views::dmar_text(&fixture("DMAR")).unwrap();
    for want in [
        "host-address-width 39 bits  flags 0x1 (INTR_REMAP)",
        "drhd  register-base 0xfed90000  segment 0  flags 0x0",
        "  scope ioapic  enumeration-id 0  start-bus 0xff  path 00.0",
        "  scope pci-endpoint  enumeration-id 0  start-bus 0x00  path 00.0",
        "  scope pci-endpoint  enumeration-id 0  start-bus 0x00  path 1f.0",
        "  scope pci-endpoint  enumeration-id 0  start-bus 0x00  path 1f.2",
        "  scope pci-endpoint  enumeration-id 0  start-bus 0x00  path 1f.3",
    ] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }
    // A scope whose length runs past its unit is an error.
    let mut bad = fixture("DMAR");
    bad[0x41] = 0x30;
    fix_checksum(&mut bad);
    let e = views::dmar_text(&bad).unwrap_err();
    assert!(e.contains("bad length"), "{e}");
}

#[test]
fn hpet_and_facs_views() {
    let t = machine_tables();
    let hpet = views::table_text(t.get("HPET").unwrap());
    assert!(hpet.contains("base SystemMemory 0xfed00000"), "{hpet}");
    let facs = views::table_text(t.get("FACS").unwrap());
    assert!(facs.contains("global-lock 0x0"), "{facs}");
    let waet = views::table_text(t.get("WAET").unwrap());
    assert!(waet.contains("(no decoder for this table)"), "{waet}");
}

/// Every single-byte change to every static table, with the checksum made
/// right again so the decoders see it: some decode, some are errors, none
/// panics.
#[test]
fn decoders_survive_every_single_byte_corruption() {
    for name in ["APIC", "DMAR", "FACP", "FACS", "HPET", "MCFG", "WAET"] {
        let good = fixture(name);
        for at in 0..good.len() {
            if (4..8).contains(&at) || at == 9 {
                continue; // length and checksum: covered above
            }
            for v in [0u8, 1, 2, 0x7f, 0x80, 0xff] {
                let mut bad = good.clone();
                bad[at] = v;
                if name != "FACS" {
                    fix_checksum(&mut bad);
                }
                let set = Tables::from_files(vec![(name.to_owned(), bad)]);
                let _ = views::table_text(&set.tables[0]);
                let _ = facts::fadt_info(&set.tables[0].bytes);
            }
        }
    }
}

#[test]
fn fixture_readme_names_the_machine() {
    let readme = std::fs::read_to_string(fixtures().join("README.md")).unwrap();
    assert!(readme.contains("-smp 2"), "{readme}");
    assert!(readme.contains("intel-iommu"), "{readme}");
}
