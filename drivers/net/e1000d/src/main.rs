//! e1000d: serves one Intel 82540EM (QEMU's `e1000`) PCI function as
//! `/scheme/network.<function>_e1000` (see `device.rs` for the device, the
//! `network` crate for the scheme).
//!
//! Started by init on pcid's behalf with the function's VFIO container,
//! VFIO device and pcid channel; runs unprivileged and sandboxed; one event
//! loop over the FUSE fd and the INTx eventfd.

use std::io;
use std::process::ExitCode;

use common::DriverLoop;
use network::NetworkScheme;
use pcid_interface::PciFunctionHandle;
use scheme::Server;

mod device;

fn main() -> ExitCode {
    daemon::main_with(run)
}

fn run() -> io::Result<()> {
    let handle = PciFunctionHandle::from_env()?;
    common::sandbox::check_unprivileged()?;
    handle.expect_ids(device::VENDOR, device::DEVICES, "an 82540EM")?;

    let (nic, irq) = device::start(&handle)?;
    let scheme = NetworkScheme::new(nic);

    let daemon = daemon::Daemon::from_env()?;
    let reg = daemon.register_scheme(&format!("network.{}_e1000", handle.name()))?;
    // Hot-unplug: the kernel asks for the device back on this eventfd.
    let removal = handle.removal_irq()?;
    common::sandbox::enter_sandbox(&common::sandbox::E1000D)?;
    daemon.ready()?;

    DriverLoop::new(Server::from_registration(reg, scheme)?, daemon)?
        // Reads ICR (which drops the line), reclaims, drains; the loop acks
        // the INTx line afterwards and answers parked readers and writers.
        .on_irq(irq, |nic: &mut NetworkScheme<_>| {
            nic.on_irq();
            Ok(())
        })?
        .on_removal(removal)?
        .run()
}
