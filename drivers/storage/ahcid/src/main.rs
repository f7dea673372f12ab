//! ahcid: serves one AHCI HBA (QEMU's `ahci`) as
//! `/scheme/disk.<function>_ahci`, disk `/P` for the ATA disk on port P
//! (see `device.rs` for the HBA, `device/port.rs` for a port).
//!
//! Started by init on pcid's behalf with the function's VFIO container,
//! VFIO device and pcid channel; runs unprivileged and sandboxed; one event
//! loop over the FUSE fd and the HBA's one interrupt (MSI, or INTx).

use std::io;
use std::process::ExitCode;
use std::time::Duration;

use block::DiskScheme;
use common::DriverLoop;
use device::{Controller, Disk};
use log::info;
use pcid_interface::PciFunctionHandle;
use scheme::Server;

mod device;

/// Start-up commands (IDENTIFY, partition tables) must finish within
/// this; TCG is slow, so it is generous.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

fn main() -> ExitCode {
    daemon::main_with(run)
}

fn run() -> io::Result<()> {
    let handle = PciFunctionHandle::from_env()?;
    common::sandbox::check_unprivileged()?;
    handle.expect_ids(device::VENDOR, device::DEVICES, "an ICH9 AHCI HBA")?;

    let Controller {
        hba,
        disks,
        irq,
        pinned,
    } = device::start(&handle, STARTUP_TIMEOUT)?;
    info!(
        "{}: {} disk(s), {} KiB of DMA memory pinned",
        handle.name(),
        disks.len(),
        pinned >> 10
    );
    // The partition scan runs through the same submit/complete path; it
    // blocks on the HBA's interrupt, never spinning.
    let mut wait = |_disk: usize| -> io::Result<()> {
        hba.acknowledge(hba.pending());
        irq.ack()?;
        if irq.wait(STARTUP_TIMEOUT)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no completion interrupt during start-up",
            ));
        }
        Ok(())
    };
    let numbered = disks.into_iter().map(|d| (d.number(), d)).collect();
    let scheme = DiskScheme::numbered(numbered, &mut wait);

    let daemon = daemon::Daemon::from_env()?;
    let reg = daemon.register_scheme(&format!("disk.{}_ahci", handle.name()))?;
    // Hot-unplug: the kernel asks for the device back on this eventfd.
    let removal = handle.removal_irq()?;
    common::sandbox::enter_sandbox(&common::sandbox::AHCID)?;
    daemon.ready()?;

    DriverLoop::new(Server::from_registration(reg, scheme)?, daemon)?
        // Which ports interrupted, then each port reads and clears its
        // PxIS and collects what finished, then the HBA's IS is cleared;
        // the loop acks an INTx line afterwards and answers the requests.
        .on_irq(irq, move |disks: &mut DiskScheme<Disk>| {
            let pending = hba.pending();
            disks.on_irq();
            hba.acknowledge(pending);
            Ok(())
        })?
        .on_removal(removal)?
        .run()
}
