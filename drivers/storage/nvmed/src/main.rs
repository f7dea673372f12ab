//! nvmed: serves one NVMe controller's active namespaces as
//! `/scheme/disk.<function>_nvme/N`, N the namespace id (see `device.rs`).
//!
//! Started by init on pcid's behalf with the function's VFIO container,
//! VFIO device and pcid channel; runs unprivileged and sandboxed; one event
//! loop over the FUSE fd and one MSI-X eventfd per I/O completion queue;
//! `/health` is the controller's SMART log, asked for when it is opened.

use std::io;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use block::DiskScheme;
use common::DriverLoop;
use device::{Disk, Started};
use pcid_interface::PciFunctionHandle;
use scheme::Server;

mod device;

/// Mass storage, non-volatile memory controller, NVM Express.
const NVME_CLASS: (u8, u8, u8) = (0x01, 0x08, 0x02);

/// Start-up reads (partition tables) must finish within this; TCG is slow.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// The longest an open of `health` waits for the controller's answer.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(1);

fn main() -> ExitCode {
    daemon::main_with(run)
}

fn run() -> io::Result<()> {
    let handle = PciFunctionHandle::from_env()?;
    common::sandbox::check_unprivileged()?;
    let info = handle.info();
    if (info.class, info.subclass, info.interface) != NVME_CLASS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{}: class {:02x}:{:02x}:{:02x} is not an NVMe controller",
                handle.name(),
                info.class,
                info.subclass,
                info.interface
            ),
        ));
    }
    let Started {
        ctrl,
        disks,
        admin_irq,
        io_irqs,
    } = device::start(&handle)?;

    // The partition scans run through the same submit/complete path; they
    // block on the I/O queues' interrupts, never spinning.
    let mut wait = |_disk: usize| -> io::Result<()> {
        if common::irq::wait_any(&io_irqs, STARTUP_TIMEOUT)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no completion interrupt during start-up",
            ));
        }
        Ok(())
    };
    let mut scheme = DiskScheme::numbered(disks, &mut wait);
    let health = ctrl.clone();
    scheme.add_file(
        "health",
        Box::new(move || {
            // An admin command from inside the event loop: bounded, so a
            // controller that does not answer costs one open, not the loop.
            let deadline = Instant::now() + HEALTH_TIMEOUT;
            let mut wait = |_: Duration| -> io::Result<()> {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() || admin_irq.wait(left)? == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "SMART log not answered in time",
                    ));
                }
                Ok(())
            };
            device::lock(&health).health(&mut wait)
        }),
    )?;

    let daemon = daemon::Daemon::from_env()?;
    let reg = daemon.register_scheme(&format!("disk.{}_nvme", handle.name()))?;
    // Hot-unplug: the kernel asks for the device back on this eventfd.
    let removal = handle.removal_irq()?;
    common::sandbox::enter_sandbox(&common::sandbox::NVMED)?;
    daemon.ready()?;

    let mut lp = DriverLoop::new(Server::from_registration(reg, scheme)?, daemon)?;
    for irq in io_irqs {
        let ctrl = ctrl.clone();
        // Collects what finished on every queue (cheap: a phase-tag check
        // each); a controller that reports a fatal error ends the daemon,
        // and the supervisor restarts it on a reset controller.
        lp = lp.on_irq(irq, move |disks: &mut DiskScheme<Disk>| {
            disks.on_irq();
            device::lock(&ctrl).check_fatal()
        })?;
    }
    lp.on_removal(removal)?.run()
}
