//! acpid: reads the ACPI tables, loads the AML, finds the platform devices,
//! serves `/scheme/acpi`, starts the platform drivers its rules match, and
//! powers the machine off when init asks. Started by init as a `notify`
//! unit: root uid, no capabilities, a port grant of the FADT's PM blocks and
//! reset port. Bad tables or AML are reported and never end it.

use std::io;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use acpid::aml::{AmlWorker, SystemHardware};
use acpid::scheme::{Acpi, AcpiScheme};
use acpid::tables::{Tables, SYSFS_TABLES};
use acpid::{devices, facts, platform};
use common::port::PortGrant;
use scheme::{RootKind, Server};

/// Platform driver rules.
const RULES_DIR: &str = "/etc/acpid.d";

/// Bounds on AML work (generous: QEMU without KVM is slow). Loading QEMU's
/// DSDT takes well under a millisecond natively.
const AML_LOAD_TIMEOUT: Duration = Duration::from_secs(30);
const AML_CALL_TIMEOUT: Duration = Duration::from_secs(10);

fn main() -> ExitCode {
    daemon::main_with(run)
}

/// Logs what of the FADT's power registers lies outside the port grant.
fn check_grant(grant: &PortGrant, fadt: &facts::FadtInfo) {
    let regs = [
        ("PM1a_CNT", fadt.pm1a_control),
        ("PM1b_CNT", fadt.pm1b_control),
        ("RESET_REG", fadt.reset.map(|(g, _)| g)),
    ];
    for (what, gas) in regs {
        let Some(g) = gas else { continue };
        if g.address_space != acpi::address::AddressSpace::SystemIo {
            log::warn!(
                "{what} is not an I/O port ({:?}): acpid cannot reach it",
                g.address_space
            );
            continue;
        }
        let width = u16::from(g.bit_width.div_ceil(8).max(1));
        let inside = u16::try_from(g.address).is_ok_and(|p| grant.contains(p, width));
        if !inside {
            log::error!(
                "{what} (port {:#x}, {width} bytes) is outside acpid's port grant {:?}: \
                 power off/reset through it will be refused (fix `ioports` in acpid.toml)",
                g.address,
                grant.ranges()
            );
        }
    }
}

fn run() -> io::Result<()> {
    let daemon = daemon::Daemon::from_env()?;

    let (tables, read_errors) = Tables::read_dir(Path::new(SYSFS_TABLES))?;
    for e in read_errors.iter().chain(tables.errors().iter()) {
        log::error!("{e}");
    }
    log::info!(
        "{} ACPI tables: {}",
        tables.tables.len(),
        tables
            .tables
            .iter()
            .map(|t| t.name.as_str())
            .collect::<Vec<_>>()
            .join(" ")
    );

    let grant = PortGrant::from_env()?;
    let fadt = tables.find("FACP").map(|t| facts::fadt_info(&t.bytes));
    match &fadt {
        Some(f) => check_grant(&grant, f),
        None => log::error!("no valid FADT: power off and reset are unavailable"),
    }

    let hw = Arc::new(SystemHardware {
        grant,
        pci_root: "/scheme/pci".into(),
    });
    // The AML worker thread starts now, and Landlock binds only the thread
    // that asks and those it starts later: so the file rules come first.
    common::sandbox::restrict_files(&common::sandbox::ACPID)?;
    common::sandbox::one_heap();
    let mut aml = AmlWorker::start(hw, &tables, AML_LOAD_TIMEOUT, AML_CALL_TIMEOUT);
    for e in &aml.report.errors {
        log::error!("AML: {e}");
    }
    if aml.disabled().is_none() {
        log::info!("AML loaded from {}", aml.report.tables.join(" "));
    }

    let devices = aml.call(devices::walk).unwrap_or_else(|e| {
        log::error!("no platform devices: {e}");
        Vec::new()
    });
    log::info!(
        "{} platform devices: {}",
        devices.len(),
        devices
            .iter()
            .map(|d| d.name.as_str())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let platform_devices: Vec<platform::PlatformDevice> =
        devices.iter().map(|d| d.device.clone()).collect();

    let fuse = daemon.register("acpi", RootKind::Dir)?;
    let server = Server::from_registration(
        fuse,
        AcpiScheme::new(Acpi {
            tables,
            aml,
            devices,
            fadt,
        }),
    )?;

    let (rules, rule_errors) = platform::load_rules(Path::new(RULES_DIR));
    for e in &rule_errors {
        log::error!("{e} (file skipped)");
    }
    for (instance, result) in platform::start_drivers(&daemon, &platform_devices, &rules) {
        match result {
            Ok(()) => log::info!("started a driver for {instance}"),
            Err(e) => log::error!("{instance}: {e}"),
        }
    }

    common::sandbox::enter_sandbox(&common::sandbox::ACPID)?;
    daemon.ready()?;
    server.run()
}
