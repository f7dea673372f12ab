//! virtio-blkd: serves one virtio-blk PCI function as
//! `/scheme/disk.<function>_virtio_blk` (see `device.rs` for the device).
//!
//! Started by init on pcid's behalf with the function's VFIO container,
//! VFIO device and pcid channel; runs unprivileged and sandboxed; one event
//! loop over the FUSE fd and the two MSI-X eventfds.

use std::io;
use std::os::fd::AsFd;
use std::process::ExitCode;
use std::time::Duration;

use block::{BlockDevice, DiskScheme};
use common::event::EventLoop;
use log::{info, warn};
use pcid_interface::PciFunctionHandle;
use scheme::{Server, Status};

mod device;

/// Start-up requests (serial, partition table) must finish within this;
/// TCG is slow, so it is generous.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

const TOKEN_SCHEME: u64 = 0;
const TOKEN_QUEUE_IRQ: u64 = 1;
const TOKEN_CONFIG_IRQ: u64 = 2;

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
    let fd = daemon.register_scheme(&format!("disk.{}_virtio_blk", handle.name()))?;
    common::sandbox::enter_sandbox()?;
    daemon.ready()?;

    let mut server = Server::new(fd, scheme)?;
    let mut events = EventLoop::new()?;
    events.add(server.as_fd(), TOKEN_SCHEME)?;
    events.add(irqs.queue.as_fd(), TOKEN_QUEUE_IRQ)?;
    events.add(irqs.config.as_fd(), TOKEN_CONFIG_IRQ)?;
    loop {
        for token in events.wait(None)? {
            match token {
                TOKEN_SCHEME => {
                    if server.process()? == Status::Unmounted {
                        info!("scheme unmounted; exiting");
                        return Ok(());
                    }
                }
                TOKEN_QUEUE_IRQ => {
                    irqs.queue.take()?;
                    server.scheme_mut().on_irq();
                    // Answers the requests that finished and retries any
                    // that waited for queue space.
                    server.wake();
                }
                TOKEN_CONFIG_IRQ => {
                    irqs.config.take()?;
                    let Some(disk) = server.scheme_mut().device_mut(0) else {
                        continue;
                    };
                    match disk.refresh_capacity() {
                        Ok((old, new)) if old != new => info!(
                            "capacity changed: {old} -> {new} blocks of {} bytes \
                             (served size is fixed at start; restart to use it)",
                            disk.info().block_size
                        ),
                        Ok(_) => info!("configuration change (capacity unchanged)"),
                        Err(e) => warn!("re-reading the configuration failed: {e}"),
                    }
                }
                other => warn!("event loop: unknown token {other}"),
            }
        }
    }
}
