//! virtio-blkd: serves one virtio-blk PCI function as
//! `/scheme/disk.<function>_virtio_blk` (see `device.rs` for the device).
//!
//! Started by init on pcid's behalf with the function's VFIO container,
//! VFIO device and pcid channel; runs unprivileged and sandboxed; one event
//! loop over the FUSE fd and the two MSI-X eventfds.

use std::io;
use std::process::ExitCode;
use std::time::Duration;

use block::DiskScheme;
use common::DriverLoop;
use device::{Disk, Irqs};
use log::{info, warn};
use pcid_interface::PciFunctionHandle;
use scheme::Server;

mod device;

/// Start-up requests (serial, partition table) must finish within this;
/// TCG is slow, so it is generous.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

fn main() -> ExitCode {
    daemon::main_with(run)
}

fn run() -> io::Result<()> {
    let handle = PciFunctionHandle::from_env()?;
    common::sandbox::check_unprivileged()?;
    virtio_core::expect_device_type(&handle, device::DEVICE_TYPE, "block")?;

    let (mut disk, irqs) = device::start(&handle)?;
    match disk.identify(STARTUP_TIMEOUT, |t| irqs.queue.wait(t)) {
        Ok(Some(serial)) => info!("{}: serial {serial:?}", handle.name()),
        Ok(None) => info!(
            "{}: device has no serial (GET_ID unsupported)",
            handle.name()
        ),
        Err(e) => warn!("{}: reading the serial failed: {e}", handle.name()),
    }

    // The partition scan runs through the same submit/complete path; it
    // blocks on the queue's interrupt, never spinning.
    let mut wait = |_disk: usize| -> io::Result<()> {
        if irqs.queue.wait(STARTUP_TIMEOUT)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no completion interrupt during start-up",
            ));
        }
        Ok(())
    };
    let scheme = DiskScheme::new(vec![disk], &mut wait);

    let daemon = daemon::Daemon::from_env()?;
    let reg = daemon.register_scheme(&format!("disk.{}_virtio_blk", handle.name()))?;
    // Hot-unplug: the kernel asks for the device back on this eventfd.
    let removal = handle.removal_irq()?;
    common::sandbox::enter_sandbox(&common::sandbox::VIRTIO_BLKD)?;
    daemon.ready()?;

    let Irqs { queue, config } = irqs;
    DriverLoop::new(Server::from_registration(reg, scheme)?, daemon)?
        // Collects finished requests; the loop then answers them and
        // retries any that waited for queue space.
        .on_irq(queue, |disk: &mut DiskScheme<Disk>| {
            disk.on_irq();
            Ok(())
        })?
        // A device that needs a reset ends the daemon (the supervisor
        // restarts it on a reset device); a new capacity is reported.
        .on_irq(config, |disk: &mut DiskScheme<Disk>| {
            match disk.device_mut(0) {
                Some(disk) => disk.config_changed(),
                None => Ok(()),
            }
        })?
        .on_removal(removal)?
        .run()
}
