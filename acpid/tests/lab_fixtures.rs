//! The ACPI table fixtures against the QEMU machine they were captured
//! from (`fixtures/README.md`): boots the lab machine, copies every file of
//! the kernel's /sys/firmware/acpi/tables out, and checks that the committed
//! fixtures are still byte-identical. With `ACPID_CAPTURE=1` it (re)writes
//! the fixtures instead.

use std::path::PathBuf;

use lab::{Config, Vm};

/// The tables, one file each, named as the kernel names them.
fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sysfs")
}

/// (name under /sys/firmware/acpi/tables, bytes), `dynamic/` included.
fn read_tables(vm: &mut Vm) -> lab::Result<Vec<(String, Vec<u8>)>> {
    let list = vm.ok(
        "cd /sys/firmware/acpi/tables && for f in * dynamic/*; do if [ -f \"$f\" ]; then echo \"$f\"; fi; done",
    )?;
    let mut out = Vec::new();
    for name in list.split_whitespace() {
        // The agent returns stdout base64-encoded, so binary output is fine.
        let data = vm.sh(&format!("cat /sys/firmware/acpi/tables/{name}"))?;
        if !data.success() {
            return Err(format!("cat {name}: {}", data.stderr_str()));
        }
        out.push((name.to_owned(), data.stdout));
    }
    Ok(out)
}

#[test]
#[ignore = "boots QEMU: run through `make test`"]
fn fixtures_are_the_lab_machines_tables() -> lab::Result<()> {
    // The lab's own machine (tests/lab machine_args: q35, intel-iommu,
    // 512 MiB, -smp 2, two serial ports), no extra devices.
    let mut vm = Vm::boot(Config::new("acpid-fixtures"))?;
    let live = read_tables(&mut vm)?;
    drop(vm);
    assert!(
        live.iter().any(|(n, _)| n == "DSDT"),
        "the guest has no DSDT: {:?}",
        live.iter().map(|(n, _)| n).collect::<Vec<_>>()
    );

    if std::env::var_os("ACPID_CAPTURE").is_some() {
        for (name, data) in &live {
            let path = fixtures().join(name);
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
            }
            std::fs::write(path, data).map_err(|e| e.to_string())?;
        }
        eprintln!(
            "captured {} tables into {}",
            live.len(),
            fixtures().display()
        );
        return Ok(());
    }

    let mut captured: Vec<String> = Vec::new();
    for (dir, prefix) in [(fixtures(), ""), (fixtures().join("dynamic"), "dynamic/")] {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_file()) {
                captured.push(format!("{prefix}{}", e.file_name().to_string_lossy()));
            }
        }
    }
    captured.sort();
    let mut seen: Vec<String> = live.iter().map(|(n, _)| n.clone()).collect();
    seen.sort();
    assert_eq!(seen, captured, "the machine's tables");
    for (name, data) in &live {
        let fixture = std::fs::read(fixtures().join(name)).map_err(|e| e.to_string())?;
        assert!(
            *data == fixture,
            "{name}: the machine's table differs from the fixture (recapture with ACPID_CAPTURE=1)"
        );
    }
    Ok(())
}
