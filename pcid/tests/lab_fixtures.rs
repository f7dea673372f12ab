//! The config-space fixtures against the QEMU machine they were captured
//! from: boots the lab with the devices listed in `fixtures/README`, reads
//! every function's sysfs `config` and `resource`, and checks that the
//! committed fixtures still describe that machine. With `PCID_CAPTURE=1`
//! it (re)writes the fixtures instead.

use std::path::PathBuf;

use lab::Vm;

mod support;
use support::{lab_machine, ScratchDisk};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Every function of the machine (fixtures/README).
const MACHINE: [&str; 10] = [
    "0000:00:00.0",
    "0000:00:01.0",
    "0000:00:02.0",
    "0000:00:03.0",
    "0000:00:04.0",
    "0000:00:05.0",
    "0000:00:1f.0",
    "0000:00:1f.2",
    "0000:00:1f.3",
    "0000:01:00.0",
];

struct Live {
    address: String,
    config: Vec<u8>,
    resource: String,
}

fn read_machine(vm: &mut Vm) -> lab::Result<Vec<Live>> {
    let list = vm.ok("ls /sys/bus/pci/devices")?;
    let mut out = Vec::new();
    for address in list.split_whitespace() {
        let dir = format!("/sys/bus/pci/devices/{address}");
        // The agent returns stdout base64-encoded, so binary output is fine.
        let config = vm.sh(&format!("cat {dir}/config"))?;
        if !config.success() {
            return Err(format!("cat {dir}/config: {}", config.stderr_str()));
        }
        let resource = vm.ok(&format!("cat {dir}/resource"))?;
        out.push(Live {
            address: address.to_owned(),
            config: config.stdout,
            resource,
        });
    }
    Ok(out)
}

#[test]
#[ignore = "boots QEMU: run through `make test`"]
fn fixtures_describe_the_lab_machine() -> lab::Result<()> {
    let disk = ScratchDisk::new("fixtures");
    let mut cfg = lab_machine("pcid-fixtures", &disk.0);
    // Captured as the kernel left them: pcid binds and drives nothing.
    cfg.cmdline
        .push(format!("pcid.ignore={}", MACHINE.join(",")));
    let mut vm = Vm::boot(cfg)?;
    let live = read_machine(&mut vm)?;
    drop(vm);
    assert!(!live.is_empty(), "the guest listed no PCI functions");

    if std::env::var_os("PCID_CAPTURE").is_some() {
        for f in &live {
            std::fs::write(fixture_path(&f.address, "bin"), &f.config)
                .map_err(|e| e.to_string())?;
            std::fs::write(fixture_path(&f.address, "resource"), &f.resource)
                .map_err(|e| e.to_string())?;
        }
        eprintln!(
            "captured {} functions into {}",
            live.len(),
            fixtures().display()
        );
        return Ok(());
    }

    // The machine still has exactly the captured functions, and each parses
    // to the same device: ids, class, BARs, capabilities. (Raw bytes may
    // differ in volatile bits such as status.)
    let mut captured: Vec<String> = std::fs::read_dir(fixtures())
        .map_err(|e| e.to_string())?
        .filter_map(|e| {
            e.ok()?
                .file_name()
                .into_string()
                .ok()?
                .strip_suffix(".bin")
                .map(str::to_owned)
        })
        .collect();
    captured.sort();
    let mut seen: Vec<String> = live.iter().map(|f| f.address.clone()).collect();
    seen.sort();
    assert_eq!(seen, captured, "the machine's functions");
    for f in &live {
        let a = pcid::addr::parse_address(&f.address).ok_or("bad address")?;
        let parse = |config: Vec<u8>, resource: &str| {
            let res = pcid::config::parse_resources(resource).expect("resource parses");
            pcid::table::Function::from_parts(a, config, res).expect("config parses")
        };
        let now = parse(f.config.clone(), &f.resource);
        let then = parse(
            std::fs::read(fixture_path(&f.address, "bin")).map_err(|e| e.to_string())?,
            &std::fs::read_to_string(fixture_path(&f.address, "resource"))
                .map_err(|e| e.to_string())?,
        );
        let key = |f: &pcid::table::Function| {
            let p = &f.parsed;
            (
                (
                    p.vendor,
                    p.device,
                    p.class,
                    p.subclass,
                    p.interface,
                    p.revision,
                ),
                (
                    p.subsystem_vendor,
                    p.subsystem_device,
                    p.header_type,
                    p.irq_pin,
                ),
                p.bars.clone(),
                p.capabilities
                    .iter()
                    .map(|c| (c.offset, c.id))
                    .collect::<Vec<_>>(),
                p.ext_capabilities.clone(),
                f.config.len(),
            )
        };
        assert_eq!(key(&now), key(&then), "{}", f.address);
    }
    Ok(())
}

fn fixture_path(address: &str, ext: &str) -> PathBuf {
    fixtures().join(format!("{address}.{ext}"))
}
