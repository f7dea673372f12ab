//! pcid: see the library. Started by init as a `notify` unit: it registers
//! `/scheme/pci`, scans and starts the drivers it matches, then reports
//! ready and serves.

use std::io;
use std::path::Path;
use std::process::ExitCode;

use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

use pcid::pci_scheme::PciScheme;
use pcid::rules::{load_rules, parse_ignore};
use pcid::service::{Pcid, System};
use pcid::sysfs::Sysfs;
use pcid::table::Table;
use scheme::{RootKind, Server};

fn main() -> ExitCode {
    daemon::main_with(run)
}

fn run() -> io::Result<()> {
    // SIGHUP reloads the rules: read from a signalfd in the loop, so it is
    // blocked before anything else runs.
    let mut hup = SigSet::empty();
    hup.add(Signal::SIGHUP);
    hup.thread_block().map_err(io::Error::from)?;
    let daemon = daemon::Daemon::from_env()?;
    let fuse = daemon.register("pci", RootKind::Dir)?;

    let (rules, errors) = load_rules(Path::new(pcid::RULES_DIR));
    for e in &errors {
        log::error!("{e} (file skipped)");
    }
    log::info!("{} driver rules from {}", rules.len(), pcid::RULES_DIR);

    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let (ignore, bad) = parse_ignore(&cmdline);
    for b in bad {
        log::error!("pcid.ignore: {b:?} is not a PCI address (SSSS:BB:DD.F)");
    }

    let server = Server::from_registration(fuse, PciScheme::new(Table::new(), Sysfs::system()))?;
    let mut pcid = Pcid::new(server, System::new(daemon), rules, ignore)?;
    // Listening before the first scan: a function added in between is
    // found by the event's rescan.
    pcid = match pcid::uevent::open() {
        Ok(fd) => pcid.with_uevents(fd)?,
        Err(e) => {
            log::error!("cannot listen for uevents ({e}): hot-plug is not followed");
            pcid
        }
    };
    let signals = SignalFd::with_flags(&hup, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .map_err(io::Error::from)?;
    pcid = pcid.with_reload(signals, pcid::RULES_DIR.into())?;
    pcid.scan()?;
    log::info!("{} PCI functions", pcid.scheme().table().len());
    // From here on: the PCI bus in sysfs, /dev/vfio and the rules only
    // (the uevent socket and the signalfd are open already).
    common::sandbox::enter_sandbox(&common::sandbox::PCID)?;
    pcid.platform().daemon().ready()?;
    pcid.run()
}
