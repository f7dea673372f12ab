//! e1000d: serves one Intel 82540EM (QEMU's `e1000`) PCI function as
//! `/scheme/network.<function>_e1000` (see `device.rs` for the device, the
//! `network` crate for the scheme).
//!
//! Started by init on pcid's behalf with the function's VFIO container,
//! VFIO device and pcid channel; runs unprivileged and sandboxed; one event
//! loop over the FUSE fd and the INTx eventfd.

use std::io;
use std::os::fd::AsFd;
use std::process::ExitCode;

use common::event::EventLoop;
use log::{info, warn};
use network::NetworkScheme;
use pcid_interface::PciFunctionHandle;
use scheme::{Server, Status};

mod device;

const TOKEN_SCHEME: u64 = 0;
const TOKEN_IRQ: u64 = 1;

fn main() -> ExitCode {
    daemon::main_with(run)
}

fn run() -> io::Result<()> {
    let handle = PciFunctionHandle::from_env()?;
    common::sandbox::check_unprivileged()?;
    let pci = handle.info();
    if pci.vendor != device::VENDOR || !device::DEVICES.contains(&pci.device) {
        return Err(io::Error::other(format!(
            "{} ({:04x}:{:04x}) is not an 82540EM",
            handle.name(),
            pci.vendor,
            pci.device
        )));
    }

    let (nic, irq) = device::start(&handle)?;
    let scheme = NetworkScheme::new(nic);

    let daemon = daemon::Daemon::from_env()?;
    let fd = daemon.register_scheme(&format!("network.{}_e1000", handle.name()))?;
    common::sandbox::enter_sandbox()?;
    daemon.ready()?;

    let mut server = Server::new(fd, scheme)?;
    let mut events = EventLoop::new()?;
    events.add(server.as_fd(), TOKEN_SCHEME)?;
    events.add(irq.as_fd(), TOKEN_IRQ)?;
    loop {
        for token in events.wait(None)? {
            match token {
                TOKEN_SCHEME => {
                    if server.process()? == Status::Unmounted {
                        info!("scheme unmounted; exiting");
                        return Ok(());
                    }
                }
                TOKEN_IRQ => {
                    irq.take()?;
                    // Reads ICR (which drops the line), reclaims, drains.
                    server.scheme_mut().on_irq();
                    // Only now: unmasking while the cause is still set
                    // would fire again at once.
                    irq.ack()?;
                    // Answers parked readers and writers.
                    server.wake();
                }
                other => warn!("event loop: unknown token {other}"),
            }
        }
    }
}
