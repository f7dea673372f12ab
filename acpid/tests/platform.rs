//! Host tests of `acpid/src/platform.rs`: rule parsing and matching, the
//! shipped `initfs/etc/acpid.d` rules, starting drivers over a real control
//! channel (a fake init answers), and devicetree parsing of a DTB that
//! `dtc` builds from `fixtures/dt/platform.dts`.

use std::os::fd::AsFd;
use std::path::PathBuf;

use acpid::platform::*;
use daemon::proto::{Reply, Request};

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn rules(text: &str) -> Vec<Rule> {
    parse_rules("t.toml", text).unwrap()
}

fn rtc() -> PlatformDevice {
    PlatformDevice {
        path: "\\_SB.PCI0.SF8.RTC".into(),
        hid: Some("PNP0B00".into()),
        status: 0x0f,
        io: vec![0x70..=0x71],
        irqs: vec![8],
        ..Default::default()
    }
}

#[test]
fn devices_name_their_instance_and_ids() {
    let mut d = rtc();
    assert!(d.present());
    assert_eq!(d.ids(), ["PNP0B00"]);
    assert_eq!(d.instance(), "acpi-PNP0B00-0");
    d.uid = Some("1".into());
    d.cids = vec!["PNP0B01".into()];
    assert_eq!(d.ids(), ["PNP0B00", "PNP0B01"]);
    assert_eq!(d.instance(), "acpi-PNP0B00-1");
    // Only characters that are safe in unit and scheme names survive.
    d.hid = Some("ACPI 0010/x".into());
    d.uid = Some("".into());
    assert_eq!(d.instance(), "acpi-ACPI_0010_x-_");
    // No _HID: the first _CID names it.
    d.hid = None;
    assert_eq!(d.instance(), "acpi-PNP0B01-_");
    d.status = 0x0e;
    assert!(!d.present(), "_STA bit 0 clear");
}

#[test]
fn rules_parse_and_report_lines() {
    let r = rules(
        "# comment\n[[drivers]]\nname = \"rtc\"\nids = [\"PNP0B00\", \"motorola,mc146818\"]\n\
         command = [\"rtcd\", \"-v\"]\n\n[[drivers]]\nids = [\"PNP0501\"]\ncommand = [\"uartd\"]\n",
    );
    assert_eq!(r.len(), 2);
    assert_eq!((r[0].driver.file.as_str(), r[0].driver.line), ("t.toml", 2));
    assert_eq!(r[0].driver.name.as_deref(), Some("rtc"));
    assert_eq!(r[0].keys.ids, ["PNP0B00", "motorola,mc146818"]);
    assert_eq!(
        (r[0].driver.unit(), r[0].driver.args()),
        ("rtcd", &["-v".to_owned()][..])
    );
    assert_eq!(r[0].driver.describe(), "\"rtc\" (t.toml:2)");
    assert_eq!(r[1].driver.describe(), "t.toml:7");

    // Syntax and `command` errors: daemon::config's tests.
    let cases: &[(&str, usize, &str)] = &[
        (
            "[[drivers]]\nids = [\"A\"]\ncommand = [\"x\"]\nclass = 1\n",
            4,
            "class",
        ),
        ("[[drivers]]\ncommand = [\"x\"]\n", 1, "ids"),
        ("[[drivers]]\ncommand = [\"x\"]\nids = []\n", 3, "empty"),
        (
            "[[drivers]]\ncommand = [\"x\"]\n\nids = [\"PNP 0B00\"]\n",
            4,
            "PNP 0B00",
        ),
        ("[[drivers]]\ncommand = [\"x\"]\nids = [1]\n", 3, ""),
    ];
    for (text, line, needle) in cases {
        let e = parse_rules("x.toml", text).unwrap_err().to_string();
        assert!(e.starts_with(&format!("x.toml:{line}: ")), "{text:?}: {e}");
        assert!(e.contains(needle), "{text:?}: {e}");
        assert!(!e.contains('\n'), "{e}");
    }
}

#[test]
fn the_most_specific_id_picks_the_rule() {
    let r = rules(
        "[[drivers]]\nids = [\"ns16550a\"]\ncommand = [\"generic-uart\"]\n\
         [[drivers]]\nids = [\"lab,fast-uart\"]\ncommand = [\"fast-uart\"]\n\
         [[drivers]]\nids = [\"ns16550a\", \"PNP0501\"]\ncommand = [\"never\"]\n",
    );
    let unit = |ids: &[&str]| match_rule(&r, ids).map(|r| r.driver.unit());
    assert_eq!(unit(&["lab,fast-uart", "ns16550a"]), Some("fast-uart"));
    assert_eq!(unit(&["ns16550a"]), Some("generic-uart"), "first rule wins");
    assert_eq!(unit(&["PNP0501"]), Some("never"));
    assert_eq!(unit(&["pnp0501"]), None, "ids compare exactly");
    assert_eq!(unit(&["PNP0B00"]), None);
    assert_eq!(unit(&[]), None);
}

#[test]
fn rule_files_load_in_name_order_and_bad_ones_are_skipped() {
    let dir = std::env::temp_dir().join(format!("acpid-rules-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("b.toml"),
        "[[drivers]]\nids = [\"X\"]\ncommand = [\"b\"]\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("a.toml"),
        "[[drivers]]\nids = [\"X\"]\ncommand = [\"a\"]\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("c.toml"),
        "[[drivers]]\nids = [\"Y\"]\ncommand = [\"c\"]\nx = 1\n",
    )
    .unwrap();
    std::fs::write(dir.join("README"), "not a rule file").unwrap();
    let (r, errors) = load_rules(&dir);
    assert_eq!(
        r.iter().map(|r| r.driver.unit()).collect::<Vec<_>>(),
        ["a", "b"]
    );
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].to_string().starts_with("c.toml:4: "),
        "{errors:?}"
    );
    assert_eq!(match_rule(&r, &["X"]).map(|r| r.driver.unit()), Some("a"));
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(load_rules(&dir), (vec![], vec![]), "no directory, no rules");
}

/// The rules shipped in the image match the RTC both ways.
#[test]
fn shipped_rules_start_rtcd_for_the_cmos_clock() {
    let (r, errors) = load_rules(&manifest_dir().join("../initfs/etc/acpid.d"));
    assert!(errors.is_empty(), "{errors:?}");
    for id in ["PNP0B00", "motorola,mc146818"] {
        assert_eq!(
            match_rule(&r, &[id]).map(|r| r.driver.unit()),
            Some("rtcd"),
            "{id}"
        );
    }
}

/// A fake init on the other end of a control socket: answers `count`
/// requests with `answer` and hands back what it was asked. A datagram
/// pair keeps packet boundaries like init's SEQPACKET pair; the receive
/// timeout keeps a test that sends too few requests from hanging.
fn fake_init(
    count: usize,
    answer: fn(&Request) -> Reply,
) -> (daemon::Daemon, std::thread::JoinHandle<Vec<Request>>) {
    let (ours, theirs) = std::os::unix::net::UnixDatagram::pair().unwrap();
    ours.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let ours = std::os::fd::OwnedFd::from(ours);
    let init = std::thread::spawn(move || {
        let mut seen = Vec::new();
        while seen.len() < count {
            let Ok((msg, _fds)) = daemon::recv_with_fds(ours.as_fd()) else {
                break;
            };
            let req = Request::decode(&msg).unwrap();
            daemon::send_with_fd(ours.as_fd(), &answer(&req).encode(), None).unwrap();
            seen.push(req);
        }
        seen
    });
    (daemon::Daemon::from_fd(theirs.into()), init)
}

#[test]
fn drivers_start_with_exactly_their_resources() {
    let r = rules(
        "[[drivers]]\nids = [\"PNP0B00\"]\ncommand = [\"rtcd\"]\n\
         [[drivers]]\nids = [\"PNP0103\"]\ncommand = [\"hpetd\", \"--quiet\"]\n\
         [[drivers]]\nids = [\"PNP0501\"]\ncommand = [\"uartd\"]\n",
    );
    let hpet = PlatformDevice {
        path: "\\_SB.PCI0.HPET".into(),
        hid: Some("PNP0103".into()),
        status: 0x0f,
        memory: vec![MemRange {
            base: 0xfed0_0000,
            len: 0x400,
            writable: false,
        }],
        ..Default::default()
    };
    let absent_uart = PlatformDevice {
        path: "\\_SB.PCI0.SF8.COM2".into(),
        hid: Some("PNP0501".into()),
        uid: Some("2".into()),
        status: 0,
        io: vec![0x2f8..=0x2ff],
        ..Default::default()
    };
    let unmatched = PlatformDevice {
        path: "\\_SB.PCI0.SF8.PS2K".into(),
        hid: Some("PNP0303".into()),
        status: 0x0f,
        io: vec![0x60..=0x60, 0x64..=0x64],
        ..Default::default()
    };
    let (daemon, init) = fake_init(2, |req| match req {
        Request::Spawn { unit, .. } if unit == "hpetd" => {
            Reply::Err(13, "hpetd may not be started".into())
        }
        _ => Reply::Ok,
    });
    let results = start_drivers(&daemon, &[rtc(), absent_uart, unmatched, hpet], &r);
    drop(daemon);
    let seen = init.join().unwrap();

    let names: Vec<&str> = results.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["acpi-PNP0B00-0", "acpi-PNP0103-0"]);
    assert!(results[0].1.is_ok());
    let e = results[1].1.as_ref().unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::PermissionDenied, "{e}");
    assert_eq!(
        seen,
        [
            Request::Spawn {
                unit: "rtcd".into(),
                instance: "acpi-PNP0B00-0".into(),
                args: vec![],
                ioports: vec![0x70..=0x71],
            },
            Request::Spawn {
                unit: "hpetd".into(),
                instance: "acpi-PNP0103-0".into(),
                args: vec!["--quiet".into(), "--mem".into(), "0xfed00000+0x400".into()],
                ioports: vec![],
            },
        ]
    );
}

/// Builds the fixture DTB with dtc into a fresh file.
fn fixture_dtb() -> Vec<u8> {
    let src = manifest_dir().join("tests/fixtures/dt/platform.dts");
    // Tests run in parallel: one file each.
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let out = std::env::temp_dir().join(format!("acpid-platform-{}-{n}.dtb", std::process::id()));
    let status = std::process::Command::new("dtc")
        .args(["-q", "-I", "dts", "-O", "dtb", "-o"])
        .arg(&out)
        .arg(&src)
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => panic!("dtc failed on {} ({s})", src.display()),
        Err(e) => {
            panic!("cannot run dtc ({e}): install the device-tree-compiler package (`make deps`)")
        }
    }
    let dtb = std::fs::read(&out).unwrap();
    let _ = std::fs::remove_file(&out);
    dtb
}

fn find<'a>(devices: &'a [PlatformDevice], path: &str) -> &'a PlatformDevice {
    devices
        .iter()
        .find(|d| d.path == path)
        .unwrap_or_else(|| panic!("no device {path} in {devices:#?}"))
}

#[test]
fn devicetree_nodes_become_platform_devices() {
    let devices = devices_from_dtb(&fixture_dtb()).unwrap();
    let paths: Vec<&str> = devices.iter().map(|d| d.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "/interrupt-controller@fec00000",
            "/soc@fe000000",
            "/soc@fe000000/rtc@70",
            "/soc@fe000000/serial@3f8",
            "/soc@fe000000/uart@1000",
            "/isa",
            "/isa/i8042@1,60",
        ],
        "the root, /chosen and /memory have no `compatible`"
    );

    let rtc = find(&devices, "/soc@fe000000/rtc@70");
    assert_eq!(rtc.hid, None);
    assert_eq!(rtc.cids, ["motorola,mc146818"]);
    assert_eq!(rtc.uid.as_deref(), Some("70"));
    assert!(rtc.present());
    assert!(rtc.io.is_empty(), "devicetree gives no I/O ports");
    // reg 0x70 on the soc bus is CPU address 0xfe000070 through `ranges`.
    assert_eq!(
        rtc.memory,
        [MemRange {
            base: 0xfe00_0070,
            len: 2,
            writable: true
        }]
    );
    // Two-cell interrupt specifiers (the controller's #interrupt-cells).
    assert_eq!(rtc.irqs, [8]);
    assert_eq!(rtc.instance(), "dt-motorola_mc146818-70");

    assert!(
        !find(&devices, "/soc@fe000000/serial@3f8").present(),
        "status = \"disabled\""
    );

    let uart = find(&devices, "/soc@fe000000/uart@1000");
    assert_eq!(uart.ids(), ["lab,fast-uart", "ns16550a"]);
    let bases: Vec<(u64, u64)> = uart.memory.iter().map(|m| (m.base, m.len)).collect();
    assert_eq!(bases, [(0xfe00_1000, 0x100), (0xfe00_2000, 0x10)]);
    assert_eq!(uart.irqs, [5, 6]);

    let pic = find(&devices, "/interrupt-controller@fec00000");
    assert_eq!(pic.memory[0].base, 0xfec0_0000);

    // The isa bus has no `ranges`: its children's reg is not CPU memory.
    assert!(find(&devices, "/isa/i8042@1,60").memory.is_empty());
}

#[test]
fn devicetree_devices_match_the_same_rules() {
    let devices = devices_from_dtb(&fixture_dtb()).unwrap();
    let (shipped, errors) = load_rules(&manifest_dir().join("../initfs/etc/acpid.d"));
    assert!(errors.is_empty(), "{errors:?}");
    let rtc = find(&devices, "/soc@fe000000/rtc@70");
    assert_eq!(
        match_rule(&shipped, &rtc.ids()).map(|r| r.driver.unit()),
        Some("rtcd")
    );

    let r = rules(
        "[[drivers]]\nids = [\"ns16550a\"]\ncommand = [\"uartd\"]\n\
         [[drivers]]\nids = [\"lab,fast-uart\"]\ncommand = [\"fast-uartd\"]\n",
    );
    let uart = find(&devices, "/soc@fe000000/uart@1000");
    assert_eq!(
        match_rule(&r, &uart.ids()).map(|r| r.driver.unit()),
        Some("fast-uartd")
    );

    // Started through init like an ACPI device: the disabled serial port is
    // skipped, the rtc gets its window as --mem and no ports.
    let (daemon, init) = fake_init(2, |_| Reply::Ok);
    let mut all = r.clone();
    all.extend(shipped);
    let results = start_drivers(&daemon, &devices, &all);
    drop(daemon);
    let seen = init.join().unwrap();
    let names: Vec<&str> = results.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["dt-motorola_mc146818-70", "dt-lab_fast-uart-1000"]);
    assert_eq!(
        seen[0],
        Request::Spawn {
            unit: "rtcd".into(),
            instance: "dt-motorola_mc146818-70".into(),
            args: vec!["--mem".into(), "0xfe000070+0x2".into()],
            ioports: vec![],
        }
    );
}

#[test]
fn broken_blobs_are_errors_not_panics() {
    let dtb = fixture_dtb();
    assert!(devices_from_dtb(&[]).is_err());
    assert!(devices_from_dtb(b"not a devicetree at all, just text").is_err());
    // Truncated: the header's total size no longer fits.
    assert!(devices_from_dtb(&dtb[..dtb.len() / 2]).is_err());
    // Structure block offset pointing past the end.
    let mut bad = dtb.clone();
    bad[8..12].copy_from_slice(&0x7fff_0000u32.to_be_bytes());
    assert!(devices_from_dtb(&bad).is_err());
    // Every single-byte corruption of the structure gives a result or an
    // error, never a crash.
    let off = u32::from_be_bytes(dtb[8..12].try_into().unwrap()) as usize;
    for i in (off..dtb.len()).step_by(7) {
        let mut b = dtb.clone();
        b[i] ^= 0xa5;
        let _ = devices_from_dtb(&b);
    }
}
