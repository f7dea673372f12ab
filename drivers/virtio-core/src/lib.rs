//! Modern virtio 1.x over PCI: the transport, split virtqueues in
//! IOMMU-mapped DMA memory, and per-queue MSI-X interrupts.
//!
//! # Why not the `virtio-drivers` crate
//!
//! Its PCI transport does not program per-queue MSI-X vectors (we route
//! every queue and the configuration change to their own eventfds), and its
//! queue API borrows the caller's buffers for a request's lifetime and
//! offers poll-to-completion helpers. We need owned, IOMMU-mapped DMA
//! buffers whose addresses are IOVAs from our own `DmaSpace`, many requests
//! in flight at once, and completions driven by the daemon's event loop.
//! What remains — a capability walk, a status handshake and a split ring —
//! is small, so it is written here against the spec.
//!
//! # Use
//!
//! [`start`] brings a device up in the order the spec requires (3.1.1):
//! reset, ACKNOWLEDGE, DRIVER, features, FEATURES_OK, MSI-X vectors
//! (vector 0 for configuration changes, vector `i + 1` for queue `i`),
//! queues, DRIVER_OK. A driver then [`VirtQueue::add`]s requests,
//! [`VirtQueue::notify`]s, and on the queue's interrupt
//! [`VirtQueue::pop_used`]s what finished.
//!
//! The device must offer `VIRTIO_F_ACCESS_PLATFORM` (QEMU:
//! `iommu_platform=on,disable-legacy=on`): without it a device's DMA
//! bypasses the IOMMU, and our IOVAs would not be its addresses.

use std::io;

use common::irq::Irq;
use pcid_interface::PciFunctionHandle;

pub mod caps;
pub mod pci;
pub mod port;
pub mod queue;
pub mod ring;
pub mod spec;
#[cfg(any(test, feature = "test-util"))]
pub mod testing;

pub use caps::{CapRegion, VirtioCaps};
pub use pci::{DeviceConfig, VirtioPci};
pub use port::{PciPort, Port};
pub use queue::VirtQueue;
pub use ring::{RingLayout, SplitRing};

/// Device-visible buffers: the kit's one trait (`common::dma::Buffer`).
pub use common::dma::Buffer;

/// A started virtio device: DRIVER_OK has been set.
///
/// Field order matters for drop: the transport resets the device before
/// the queues' memory is unmapped.
pub struct VirtioDevice {
    pub transport: VirtioPci,
    pub queues: Vec<VirtQueue>,
    /// MSI-X vector 0: configuration changes.
    pub config_irq: Irq,
    /// MSI-X vector `i + 1`: queue `i`.
    pub queue_irqs: Vec<Irq>,
    pub features: u64,
}

/// Checks that `handle` is a virtio device of type `device_type` (`what`
/// names it in the error), before a driver touches it.
pub fn expect_device_type(
    handle: &PciFunctionHandle,
    device_type: u16,
    what: &str,
) -> io::Result<()> {
    let pci = handle.info();
    if spec::device_type(pci.vendor, pci.device, pci.subsystem_device) != Some(device_type) {
        return Err(io::Error::other(format!(
            "{} ({:04x}:{:04x}) is not a virtio {what} device",
            handle.name(),
            pci.vendor,
            pci.device
        )));
    }
    Ok(())
}

/// Brings up the virtio function behind `handle`: maps its structures,
/// enables bus mastering and MSI-X (one vector per queue plus one for
/// configuration changes), negotiates `wanted` device features (plus the
/// transport features we need), sets up one queue per entry of
/// `queue_sizes` (each at most that many entries) and sets DRIVER_OK.
/// On failure after the handshake started, the device is marked FAILED.
pub fn start(
    handle: &PciFunctionHandle,
    wanted: u64,
    queue_sizes: &[u16],
) -> io::Result<VirtioDevice> {
    let mut transport = VirtioPci::new(handle)?;
    handle.enable_bus_master()?;
    let vectors = u32::try_from(queue_sizes.len() + 1)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "too many queues"))?;
    let mut irqs = handle.enable_msix(vectors)?;
    if irqs.len() < queue_sizes.len() + 1 {
        return Err(io::Error::other(format!(
            "asked for {vectors} MSI-X vectors, got {}",
            irqs.len()
        )));
    }
    let features = transport.begin(wanted)?;
    match setup(&mut transport, handle, queue_sizes) {
        Ok(queues) => {
            let queue_irqs = irqs.split_off(1);
            let config_irq = irqs.remove(0);
            Ok(VirtioDevice {
                transport,
                queues,
                config_irq,
                queue_irqs,
                features,
            })
        }
        Err(e) => {
            transport.set_failed();
            Err(e)
        }
    }
}

fn setup(
    t: &mut VirtioPci,
    handle: &PciFunctionHandle,
    queue_sizes: &[u16],
) -> io::Result<Vec<VirtQueue>> {
    let available = t.num_queues()?;
    if usize::from(available) < queue_sizes.len() {
        return Err(io::Error::other(format!(
            "device has {available} queues, {} needed",
            queue_sizes.len()
        )));
    }
    t.set_config_vector(0)?;
    let mut queues = Vec::with_capacity(queue_sizes.len());
    for (i, &size) in queue_sizes.iter().enumerate() {
        // i < available <= u16::MAX
        let i = i as u16;
        queues.push(t.setup_queue(i, size, Some(i + 1), handle.dma())?);
    }
    t.driver_ok()?;
    Ok(queues)
}
