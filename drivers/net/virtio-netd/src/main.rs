//! virtio-netd: serves one virtio-net PCI function as
//! `/scheme/network.<function>_virtio_net` (see `device.rs` for the device,
//! the `network` crate for the files).
//!
//! Started by init on pcid's behalf with the function's VFIO container,
//! VFIO device and pcid channel; runs unprivileged and sandboxed; one event
//! loop over the FUSE fd and the three MSI-X eventfds (configuration,
//! receive queue, transmit queue).

use std::io;
use std::process::ExitCode;

use common::DriverLoop;
use device::{Irqs, Nic};
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
    virtio_core::expect_device_type(&handle, device::DEVICE_TYPE, "network")?;

    let (nic, irqs) = device::start(&handle)?;
    let scheme = NetworkScheme::new(nic);

    let daemon = daemon::Daemon::from_env()?;
    let reg = daemon.register_scheme(&format!("network.{}_virtio_net", handle.name()))?;
    // Hot-unplug: the kernel asks for the device back on this eventfd.
    let removal = handle.removal_irq()?;
    common::sandbox::enter_sandbox(&common::sandbox::VIRTIO_NETD)?;
    daemon.ready()?;

    let Irqs { config, rx, tx } = irqs;
    // Both queues' interrupts reclaim transmit slots and queue received
    // frames for the readers; the loop then answers parked readers and
    // retries parked writers.
    let on_queue = |nic: &mut NetworkScheme<Nic>| {
        nic.on_irq();
        Ok(())
    };
    DriverLoop::new(Server::from_registration(reg, scheme)?, daemon)?
        .on_irq(rx, on_queue)?
        .on_irq(tx, on_queue)?
        // A device that needs a reset serves nothing more: exit, and the
        // supervisor restarts us on a reset device.
        .on_irq(config, |nic: &mut NetworkScheme<Nic>| {
            nic.device_mut().config_changed().map(drop)
        })?
        // A round of receiving that stopped at its budget: come back at
        // once for the rest, after the requests that are waiting.
        .with_backlog(
            |nic: &NetworkScheme<Nic>| nic.device().rx_backlog(),
            on_queue,
        )
        .on_removal(removal)?
        .run()
}
