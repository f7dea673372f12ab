//! virtio-netd: serves one virtio-net PCI function as
//! `/scheme/network.<function>_virtio_net` (see `device.rs` for the device,
//! the `network` crate for the files).
//!
//! Started by init on pcid's behalf with the function's VFIO container,
//! VFIO device and pcid channel; runs unprivileged and sandboxed; one event
//! loop over the FUSE fd and the three MSI-X eventfds (configuration,
//! receive queue, transmit queue).

use std::io;
use std::os::fd::AsFd;
use std::process::ExitCode;
use std::time::Duration;

use common::event::EventLoop;
use log::{info, warn};
use network::NetworkScheme;
use pcid_interface::PciFunctionHandle;
use scheme::{Server, Status};

mod device;

const TOKEN_SCHEME: u64 = 0;
const TOKEN_CONFIG_IRQ: u64 = 1;
const TOKEN_RX_IRQ: u64 = 2;
const TOKEN_TX_IRQ: u64 = 3;

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
    let fd = daemon.register_scheme(&format!("network.{}_virtio_net", handle.name()))?;
    common::sandbox::enter_sandbox()?;
    daemon.ready()?;

    let mut server = Server::new(fd, scheme)?;
    let mut events = EventLoop::new()?;
    events.add(server.as_fd(), TOKEN_SCHEME)?;
    events.add(irqs.config.as_fd(), TOKEN_CONFIG_IRQ)?;
    events.add(irqs.rx.as_fd(), TOKEN_RX_IRQ)?;
    events.add(irqs.tx.as_fd(), TOKEN_TX_IRQ)?;
    // Set when a round of receiving stopped at its budget: come back at
    // once for the rest, after the requests that are waiting.
    let mut backlog = false;
    loop {
        let tokens = events.wait(backlog.then_some(Duration::ZERO))?;
        if backlog {
            server.scheme_mut().on_irq();
            server.wake();
        }
        for token in tokens {
            match token {
                TOKEN_SCHEME => {
                    if server.process()? == Status::Unmounted {
                        info!("scheme unmounted; exiting");
                        return Ok(());
                    }
                }
                TOKEN_RX_IRQ | TOKEN_TX_IRQ => {
                    let irq = if token == TOKEN_RX_IRQ {
                        &irqs.rx
                    } else {
                        &irqs.tx
                    };
                    irq.take()?;
                    // Reclaims transmit slots and queues received frames
                    // for the readers.
                    server.scheme_mut().on_irq();
                    // Answers parked readers and retries parked writers.
                    server.wake();
                }
                TOKEN_CONFIG_IRQ => {
                    irqs.config.take()?;
                    // A device that needs a reset serves nothing more:
                    // exit, and the supervisor restarts us on a reset
                    // device.
                    server.scheme_mut().device_mut().config_changed()?;
                    server.wake();
                }
                other => warn!("event loop: unknown token {other}"),
            }
        }
        backlog = server.scheme().device().rx_backlog();
    }
}
