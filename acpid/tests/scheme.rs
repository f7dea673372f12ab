//! `/scheme/acpi` over a real FUSE mount (root, `/dev/fuse`), backed by the
//! captured tables and a recording hardware stand-in: listings, raw tables
//! byte-identical to the fixtures, decoded views, symbols, devices, and the
//! access rules (methods and power are root's; others get EACCES; bad paths
//! ENOENT; writes to read-only files EACCES).

mod support;

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use acpid::aml::AmlWorker;
use acpid::devices;
use acpid::facts;
use acpid::scheme::{Acpi, AcpiScheme};
use scheme::testing::TestMount;
use scheme::{CallerCtx, RootKind, Scheme};
use support::{fixture, machine_tables, Access, Recorder};
use syscall::error::{EACCES, EINVAL, EISDIR, ENOENT, ENOTDIR};
use syscall::flag::{O_DIRECTORY, O_RDONLY, O_RDWR, O_WRONLY};

fn acpi_scheme(rec: std::sync::Arc<Recorder>) -> AcpiScheme {
    let tables = machine_tables();
    let mut aml = AmlWorker::start(
        rec,
        &tables,
        Duration::from_secs(20),
        Duration::from_secs(20),
    );
    let devices = aml.call(devices::walk).unwrap();
    let fadt = tables.find("FACP").map(|t| facts::fadt_info(&t.bytes));
    AcpiScheme::new(Acpi {
        tables,
        aml,
        devices,
        fadt,
    })
}

fn grant() -> Vec<std::ops::RangeInclusive<u16>> {
    vec![0x600..=0x67f, 0xcf9..=0xcf9]
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

/// Runs `sh -c script` as uid/gid 1000; its exit status and stderr.
fn as_user(script: &str) -> (bool, String) {
    let out = Command::new("/bin/sh")
        .arg("-c")
        .arg(script)
        .uid(1000)
        .gid(1000)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_mounted_scheme_serves_tables_views_symbols_and_devices() {
    let rec = Recorder::new(grant());
    let mount = TestMount::new(RootKind::Dir, acpi_scheme(rec.clone())).unwrap();
    assert_eq!(
        names(mount.path()),
        ["devices", "power", "symbols", "tables"]
    );

    let tables = names(&mount.join("tables"));
    for t in [
        "APIC", "DMAR", "DSDT", "FACP", "FACS", "HPET", "MCFG", "WAET",
    ] {
        assert!(tables.contains(&t.to_owned()), "{t} in {tables:?}");
        assert!(
            tables.contains(&format!("{t}.txt")),
            "{t}.txt in {tables:?}"
        );
        let served = std::fs::read(mount.join(&format!("tables/{t}"))).unwrap();
        assert_eq!(served, fixture(t), "{t} byte-identical");
        let meta = std::fs::metadata(mount.join(&format!("tables/{t}"))).unwrap();
        assert_eq!(meta.len() as usize, served.len());
        assert_eq!(meta.permissions().mode() & 0o777, 0o444);
    }
    assert!(tables.contains(&"index.txt".to_owned()));
    let madt = std::fs::read_to_string(mount.join("tables/APIC.txt")).unwrap();
    assert!(madt.contains("cpus 2  enabled 2"), "{madt}");
    let mcfg = std::fs::read_to_string(mount.join("tables/MCFG.txt")).unwrap();
    assert!(mcfg.contains("ecam  base 0xb0000000"), "{mcfg}");

    // Symbols: short names work, the listing shows padded names.
    let rtc = mount.join("symbols/_SB/PCI0/SF8/RTC");
    assert!(std::fs::metadata(&rtc).unwrap().is_dir());
    assert_eq!(names(&rtc), ["_CRS", "_HID"]);
    assert!(names(&mount.join("symbols/_SB_/PCI0")).contains(&"SF8_".to_owned()));
    assert_eq!(
        std::fs::read_to_string(rtc.join("_HID")).unwrap(),
        "0xbd041 (PNP0B00)\n"
    );
    // Root evaluates a method by reading it; with arguments by writing.
    let sta = mount.join("symbols/_SB/LNKA/_STA");
    assert_eq!(
        std::fs::metadata(&sta).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(std::fs::read_to_string(&sta).unwrap(), "0xb\n");
    let mut osi = OpenOptions::new()
        .read(true)
        .write(true)
        .open(mount.join("symbols/_OSI"))
        .unwrap();
    osi.write_all(b"\"Windows 2009\"").unwrap();
    let mut answer = String::new();
    osi.read_to_string(&mut answer).unwrap();
    assert_eq!(answer, "0xffffffffffffffff\n");
    let e = osi.write_all(b"0xnothex").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(EINVAL));
    drop(osi);

    // Devices: one file per device, named by instance.
    let devs = names(&mount.join("devices"));
    for d in [
        "acpi-PNP0B00-0",
        "acpi-PNP0501-1",
        "acpi-PNP0501-2",
        "acpi-PNP0303-0",
    ] {
        assert!(devs.contains(&d.to_owned()), "{d} in {devs:?}");
    }
    let com1 = std::fs::read_to_string(mount.join("devices/acpi-PNP0501-1")).unwrap();
    assert!(
        com1.contains("io: 0x3f8-0x3ff\n") && com1.contains("irqs: 4\n"),
        "{com1}"
    );

    // Power: root reads what it would do.
    let power = std::fs::read_to_string(mount.join("power")).unwrap();
    assert!(power.contains("s5: SLP_TYPa 0 SLP_TYPb 0"), "{power}");
    assert!(
        power.contains("reset: SystemIO 0xcf9 (8 bits) value 0xf"),
        "{power}"
    );
    let e = std::fs::write(mount.join("power"), "hibernate\n").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(EINVAL));
    // A real poweroff request reaches PM1a_CNT (here: the recorder).
    std::fs::write(mount.join("power"), "poweroff\n").unwrap();
    assert!(rec
        .accesses()
        .contains(&Access::PortWrite(0x604, 2, 0x2001)));

    // Bad paths.
    for bad in [
        "nope",
        "tables/NOPE",
        "tables/DSDT.txt.txt",
        "symbols/_SB/NOPE",
        "symbols/lower",
        "symbols/TOOLONG",
        "devices/acpi-NOPE-0",
        "power/x",
    ] {
        let e = std::fs::read(mount.join(bad)).unwrap_err();
        assert!(
            matches!(e.raw_os_error(), Some(ENOENT) | Some(ENOTDIR)),
            "{bad}: {e}"
        );
    }
    // Read-only files refuse writers, also root.
    let e = OpenOptions::new()
        .write(true)
        .open(mount.join("tables/DSDT"))
        .unwrap_err();
    assert_eq!(e.raw_os_error(), Some(EACCES));
}

#[test]
fn only_root_runs_aml_and_touches_power() {
    let rec = Recorder::new(grant());
    let mount = TestMount::new(RootKind::Dir, acpi_scheme(rec.clone())).unwrap();
    let p = |rel: &str| mount.join(rel).display().to_string();

    // Everyone reads tables, values, devices and listings.
    for ok in [
        format!("cat {} >/dev/null", p("tables/DSDT")),
        format!("cat {} >/dev/null", p("tables/FACP.txt")),
        format!("cat {} >/dev/null", p("symbols/_SB/PCI0/SF8/COM1/_CRS")),
        format!("cat {} >/dev/null", p("devices/acpi-PNP0B00-0")),
        format!("ls {} >/dev/null", p("symbols/_SB")),
        format!("stat {} >/dev/null", p("power")),
        format!("stat {} >/dev/null", p("symbols/_SB/LNKA/_STA")),
    ] {
        let (success, err) = as_user(&ok);
        assert!(success, "{ok}: {err}");
    }
    // Methods and power are root's.
    let before = rec.accesses().len();
    for denied in [
        format!("cat {}", p("symbols/_SB/LNKA/_STA")),
        format!("echo 1 > {}", p("symbols/_SB/LNKA/_SRS")),
        format!("cat {}", p("power")),
        format!("echo poweroff > {}", p("power")),
        format!("echo reboot > {}", p("power")),
    ] {
        let (success, err) = as_user(&denied);
        assert!(!success, "{denied} succeeded");
        assert!(err.contains("Permission denied"), "{denied}: {err}");
    }
    assert_eq!(
        rec.accesses().len(),
        before,
        "a refused request touched hardware"
    );
}

#[test]
fn direct_calls_give_the_documented_errors() {
    let mut s = acpi_scheme(Recorder::new(grant()));
    let root = CallerCtx::default();
    let user = CallerCtx {
        uid: 1000,
        gid: 1000,
        ..CallerCtx::default()
    };
    let err = |r: scheme::Result<scheme::OpenResult>| r.map(|_| ()).unwrap_err().errno;
    assert_eq!(
        err(s.openat("symbols/_SB/LNKA/_STA", O_RDONLY, &user)),
        EACCES
    );
    assert_eq!(err(s.openat("power", O_WRONLY, &user)), EACCES);
    assert_eq!(err(s.openat("tables", O_WRONLY, &root)), EISDIR);
    assert_eq!(err(s.openat("tables/DSDT", O_RDWR, &root)), EACCES);
    assert_eq!(err(s.openat("tables/DSDT", O_DIRECTORY, &root)), ENOTDIR);
    assert_eq!(err(s.openat("symbols/_SB/\u{e9}", O_RDONLY, &root)), ENOENT);
    assert_eq!(err(s.openat("devices/x/y", O_RDONLY, &root)), ENOENT);
    let h = s.openat("tables/MCFG", O_RDONLY, &root).unwrap();
    let mut buf = [0u8; 8];
    assert_eq!(
        s.read(h.id, &mut buf, 56, 0, &root),
        Ok(4),
        "short read at the end"
    );
    assert_eq!(s.read(h.id, &mut buf, 600, 0, &root), Ok(0));
    s.on_close(h.id);
    assert_eq!(s.open_handles(), 0);
}
