//! Parsing config space and `resource` files captured from our QEMU machine
//! (see fixtures/README): ids, classes, BARs (64-bit pairs, I/O, bridges),
//! capabilities, and what drivers get through the channel.

mod support;

use pcid::config::{Bar, BarKind, Resource};
use pcid::rules::parse_rules;
use pcid::summary::render;
use support::*;

fn bar(index: u8, kind: BarKind, address: u64, size: u64, prefetchable: bool) -> Bar {
    Bar {
        index,
        kind,
        address,
        size,
        prefetchable,
    }
}

#[test]
fn every_captured_function_parses() {
    let all = fixture_addresses();
    assert_eq!(all.len(), 10, "{all:?}");
    for a in all {
        let f = fixture_function(a);
        assert_ne!(f.parsed.vendor, 0xffff);
        let res = pcid::config::parse_resources(&fixture_resource_text(a)).unwrap();
        // Every BAR sysfs sized is reported, with sysfs's start and size.
        let sized: Vec<(usize, &Resource)> = res
            .iter()
            .take(6)
            .enumerate()
            .filter(|(_, r)| r.size() > 0)
            .collect();
        assert_eq!(f.parsed.bars.len(), sized.len(), "{}", f.name);
        for (b, (i, r)) in f.parsed.bars.iter().zip(sized) {
            assert_eq!(usize::from(b.index), i, "{}", f.name);
            assert_eq!(b.address, r.start, "{} BAR {i}", f.name);
            assert_eq!(b.size, r.size(), "{} BAR {i}", f.name);
        }
    }
}

#[test]
fn transitional_virtio_blk_on_the_root_bus() {
    let f = fixture_function(addr("0000:00:01.0"));
    let p = &f.parsed;
    assert_eq!(f.name, "pci-0000-00-01.0");
    assert_eq!((p.vendor, p.device), (0x1af4, 0x1001));
    assert_eq!((p.class, p.subclass, p.interface, p.revision), (1, 0, 0, 0));
    assert_eq!((p.subsystem_vendor, p.subsystem_device), (0x1af4, 0x0002));
    assert_eq!(p.header_type, 0);
    assert_eq!(p.irq_pin, 1);
    assert_eq!(
        p.bars,
        [
            bar(0, BarKind::Io, 0xc000, 0x80, false),
            bar(1, BarKind::Memory32, 0xfe4a_0000, 0x1000, false),
            // BAR 4 and 5 are one 64-bit BAR; slot 5 is not listed.
            bar(4, BarKind::Memory64, 0xfea0_0000, 0x4000, true),
        ]
    );
    let ids: Vec<(u8, u8)> = p.capabilities.iter().map(|c| (c.offset, c.id)).collect();
    assert_eq!(
        ids,
        [
            (0x98, 0x11),
            (0x84, 0x09),
            (0x70, 0x09),
            (0x60, 0x09),
            (0x50, 0x09),
            (0x40, 0x09)
        ]
    );
    // Vendor capabilities carry their whole body: virtio cfg_type, bar.
    let virtio: Vec<(u8, u8)> = p
        .capabilities
        .iter()
        .filter(|c| c.id == 0x09)
        .map(|c| (c.data[3], c.data[4]))
        .collect();
    assert_eq!(virtio, [(5, 0), (2, 4), (4, 4), (3, 4), (1, 4)]);
    assert!(p.ext_capabilities.is_empty(), "conventional PCI: 256 bytes");
}

#[test]
fn modern_virtio_blk_behind_a_root_port() {
    let f = fixture_function(addr("0000:01:00.0"));
    let p = &f.parsed;
    assert_eq!(f.config.len(), 4096);
    assert_eq!((p.vendor, p.device), (0x1af4, 0x1042));
    assert_eq!((p.class, p.subclass, p.interface, p.revision), (1, 0, 0, 1));
    assert_eq!(
        p.bars,
        [
            bar(1, BarKind::Memory32, 0xfe20_0000, 0x1000, false),
            bar(4, BarKind::Memory64, 0xfe80_0000, 0x4000, true),
        ]
    );
    let common = p
        .capabilities
        .iter()
        .find(|c| c.id == 0x09 && c.data[3] == 1)
        .expect("a virtio common-config capability");
    assert_eq!(common.offset, 0x84);
    assert_eq!(common.data.len(), usize::from(common.data[2]));
    assert!(
        p.capabilities.iter().any(|c| c.id == 0x10),
        "PCI Express capability"
    );
}

#[test]
fn e1000_and_ahci() {
    let e = fixture_function(addr("0000:00:02.0")).parsed;
    assert_eq!(
        (e.vendor, e.device, e.class, e.subclass),
        (0x8086, 0x100e, 2, 0)
    );
    assert_eq!(
        e.bars,
        [
            bar(0, BarKind::Memory32, 0xfe48_0000, 0x20000, false),
            bar(1, BarKind::Io, 0xc080, 0x40, false),
        ]
    );
    assert!(e.capabilities.is_empty(), "status says no capability list");

    let s = fixture_function(addr("0000:00:1f.2")).parsed;
    assert_eq!((s.vendor, s.device), (0x8086, 0x2922));
    assert_eq!((s.class, s.subclass, s.interface), (1, 6, 1));
    assert!(s.multifunction);
    assert_eq!(
        s.bars,
        [
            bar(4, BarKind::Io, 0xc120, 0x20, false),
            bar(5, BarKind::Memory32, 0xfe4a_4000, 0x1000, false),
        ]
    );
    assert_eq!(
        s.capabilities.iter().map(|c| c.id).collect::<Vec<_>>(),
        [0x05, 0x12]
    );
}

#[test]
fn root_port_bridge_header() {
    let f = fixture_function(addr("0000:00:04.0"));
    let p = &f.parsed;
    assert_eq!((p.vendor, p.device), (0x1b36, 0x000c));
    assert_eq!((p.class, p.subclass, p.header_type), (6, 4, 1));
    // Bridges have two BARs; the bus numbers at 0x18 are not a BAR.
    assert_eq!(
        p.bars,
        [bar(0, BarKind::Memory32, 0xfe4a_2000, 0x1000, false)]
    );
    assert_eq!((p.subsystem_vendor, p.subsystem_device), (0, 0));
    let ext: Vec<(u16, u16)> = p
        .ext_capabilities
        .iter()
        .map(|c| (c.offset, c.id))
        .collect();
    assert_eq!(ext, [(0x100, 0x0001), (0x148, 0x000d)]);
}

#[test]
fn summary_names_what_it_sees() {
    let f = fixture_function(addr("0000:00:01.0"));
    let s = render(&f, Some("vfio-pci"));
    for needle in [
        "address    0000:00:01.0 (pci-0000-00-01.0)",
        "id         1af4:1001",
        "subsystem  1af4:0002",
        "class      01.00.00 Mass storage controller / SCSI storage controller",
        "bar 0      io        0xc000 size 0x80",
        "bar 4      memory64  0xfea00000 size 0x4000 prefetchable",
        "cap 0x98   MSI-X (3 vectors)",
        "virtio common config: cfg_type 1, bar 4, offset 0x0, length 0x1000",
        "virtio notify config: cfg_type 2, bar 4, offset 0x3000",
        "irq        pin INTA line 10",
        "driver     vfio-pci",
        "owner      none",
    ] {
        assert!(s.contains(needle), "{needle:?} missing from\n{s}");
    }
    let rp = render(&fixture_function(addr("0000:00:04.0")), None);
    assert!(rp.contains("PCI Express (root port)"), "{rp}");
    assert!(rp.contains("ext 0x100  Advanced Error Reporting"), "{rp}");
    assert!(rp.contains("driver     none"), "{rp}");
    // Vendor capabilities of a non-virtio vendor are not read as virtio.
    let mut other = fixture_function(addr("0000:00:01.0"));
    other.parsed.vendor = 0x1234;
    assert!(!render(&other, None).contains("virtio"));
}

#[test]
fn the_shipped_virtio_blk_rule_matches_both_captured_disks_only() {
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../initfs/etc/pcid.d/virtio-blk.toml"),
    )
    .unwrap();
    let rules = parse_rules("virtio-blk.toml", &text).unwrap();
    let matched: Vec<String> = fixture_addresses()
        .into_iter()
        .map(fixture_function)
        .filter(|f| pcid::rules::find_rule(&rules, &f.parsed).is_some())
        .map(|f| f.name)
        .collect();
    assert_eq!(matched, ["pci-0000-00-01.0", "pci-0000-01-00.0"]);
    assert_eq!(rules[0].driver.unit(), "virtio-blkd");
}

#[test]
fn channel_info_is_what_was_parsed() {
    let f = fixture_function(addr("0000:00:01.0"));
    let info = pcid::channel::function_info(&f);
    assert_eq!(info.name, "pci-0000-00-01.0");
    assert_eq!(info.address, "0000:00:01.0");
    assert_eq!((info.vendor, info.device), (0x1af4, 0x1001));
    assert_eq!((info.subsystem_vendor, info.subsystem_device), (0x1af4, 2));
    assert_eq!(info.irq_pin, 1);
    let bars: Vec<(u8, u64, u64, bool)> = info
        .bars
        .iter()
        .map(|b| (b.index, b.address, b.size, b.prefetchable))
        .collect();
    assert_eq!(
        bars,
        [
            (0, 0xc000, 0x80, false),
            (1, 0xfe4a_0000, 0x1000, false),
            (4, 0xfea0_0000, 0x4000, true)
        ]
    );
    assert!(matches!(
        info.bars[2].kind,
        pcid_interface::BarKind::Memory64
    ));
    assert!(matches!(info.bars[0].kind, pcid_interface::BarKind::Io));
}

/// The channel has no way to write config space (Redox's pcid takes
/// `WriteConfig`; ours does not): a write request is refused by name and
/// the config space is untouched.
#[test]
fn a_config_write_request_is_refused() {
    let fake = FakeSysfs::with_fixtures("config-write");
    let f = fixture_function(addr("0000:00:01.0"));
    let config = || fake.sysfs().read_config_at(f.address, 0, 256).unwrap();
    let before = config();
    for request in [
        &br#"{"ConfigWrite":{"offset":4,"data":[0,0]}}"#[..],
        br#"{"WriteConfig":{"offset":16,"value":4276092928}}"#,
    ] {
        match pcid::channel::answer(&f, &fake.sysfs(), request) {
            pcid_interface::ChannelReply::Error(msg) => {
                assert!(msg.contains("unknown variant"), "{msg}")
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(config(), before);
}
