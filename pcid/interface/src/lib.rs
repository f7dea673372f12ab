//! The driver's side of pcid, like Redox's `PciFunctionHandle`.
//!
//! init starts a driver with three fds from pcid: the function's VFIO
//! container (its own IOMMU domain, type1v2 already selected), the VFIO
//! device fd, and a `SOCK_SEQPACKET` channel to pcid. [`PciFunctionHandle`]
//! wraps them: config space, BARs and interrupts go straight through VFIO;
//! the channel answers what pcid knows (the function's identity, see
//! [`channel`]).

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use common::dma::DmaSpace;
use common::io::MmioRegion;
use common::irq::{new_eventfd, Irq};
use common::vfio::{self, Container, Device};
use serde::{Deserialize, Serialize};

pub mod caps;
pub mod channel;

pub use caps::{parse_capabilities, Capability, MsixInfo};
pub use channel::{
    decode_message, recv_message, send_message, ChannelReply, ChannelRequest, MAX_MESSAGE,
};

/// Everything pcid tells a driver about its function.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct FunctionInfo {
    /// `"pci-0000-00-04.0"` (see [`function_name`]).
    pub name: String,
    /// `"0000:00:04.0"`.
    pub address: String,
    pub vendor: u16,
    pub device: u16,
    pub class: u8,
    pub subclass: u8,
    pub interface: u8,
    pub revision: u8,
    pub subsystem_vendor: u16,
    pub subsystem_device: u16,
    /// Only BARs that are present.
    pub bars: Vec<BarInfo>,
    /// 0 none, 1..=4 INTA..INTD.
    pub irq_pin: u8,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum BarKind {
    Memory32,
    Memory64,
    Io,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct BarInfo {
    pub index: u8,
    pub kind: BarKind,
    pub address: u64,
    pub size: u64,
    pub prefetchable: bool,
}

/// pcid's name for a function (`pci-SSSS-BB-DD.F`); it lives in `daemon`
/// so that acpid can name functions without this crate.
pub use daemon::instance::pci_name;

/// The function name used in scheme names: `"0000:00:04.0"` →
/// `"pci-0000-00-04.0"`.
pub fn function_name(address: &str) -> String {
    format!("pci-{}", address.replace(':', "-"))
}

/// Config-space command register and its bits.
const COMMAND: u16 = 0x04;
const CMD_MEMORY: u16 = 1 << 1;
const CMD_BUS_MASTER: u16 = 1 << 2;
const CMD_INTX_DISABLE: u16 = 1 << 10;

/// Asks pcid on `channel` what function this is.
fn ask_info(channel: &OwnedFd) -> io::Result<FunctionInfo> {
    send_message(channel, &ChannelRequest::Info)?;
    match recv_message::<ChannelReply>(channel)? {
        ChannelReply::Info(info) => Ok(info),
        ChannelReply::Error(e) => Err(io::Error::other(format!("pcid refused Info: {e}"))),
        other => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("pcid answered Info with {other:?}"),
        )),
    }
}

/// A driver's handle on its PCI function.
#[derive(Debug)]
pub struct PciFunctionHandle {
    info: FunctionInfo,
    device: Arc<Device>,
    dma: Arc<DmaSpace>,
    channel: OwnedFd,
}

impl PciFunctionHandle {
    /// From the fds init passed (in `daemon::take_passed_fds` order:
    /// container, device, channel). Asks pcid for the function's info
    /// before opening the device and the DMA space, so fault injection
    /// knows the function by then.
    pub fn from_fds(
        container: OwnedFd,
        device: OwnedFd,
        channel: OwnedFd,
    ) -> io::Result<PciFunctionHandle> {
        let container = Container::from_fd(container)?;
        let info = ask_info(&channel)?;
        common::fault::set_function(&info.address);
        let device = Arc::new(Device::from_fd(device)?);
        let dma = DmaSpace::new(container)?;
        Ok(PciFunctionHandle {
            info,
            device,
            dma,
            channel,
        })
    }

    /// Takes the three fds init passed this process (`INIT_PASSED_FDS`).
    pub fn from_env() -> io::Result<PciFunctionHandle> {
        let fds = daemon::take_passed_fds()?;
        let n = fds.len();
        let Ok([container, device, channel]) = <[OwnedFd; 3]>::try_from(fds) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "expected 3 passed fds (VFIO container, VFIO device, pcid channel) \
                     in {}, got {n}: this driver must be started by pcid through init",
                    daemon::PASSED_FDS_ENV
                ),
            ));
        };
        PciFunctionHandle::from_fds(container, device, channel)
    }

    pub fn info(&self) -> &FunctionInfo {
        &self.info
    }

    /// `"pci-0000-00-04.0"`.
    pub fn name(&self) -> &str {
        &self.info.name
    }

    /// Refuses a function that is not `vendor` with one of `devices`
    /// (what pcid's rule matched on; `what` names the part in the error).
    pub fn expect_ids(&self, vendor: u16, devices: &[u16], what: &str) -> io::Result<()> {
        let i = &self.info;
        if i.vendor != vendor || !devices.contains(&i.device) {
            return Err(io::Error::other(format!(
                "{} ({:04x}:{:04x}) is not {what}",
                i.name, i.vendor, i.device
            )));
        }
        Ok(())
    }

    /// The VFIO device (region and IRQ details beyond this handle's API).
    pub fn device(&self) -> &Arc<Device> {
        &self.device
    }

    /// Reads config space through VFIO.
    pub fn config_read(&self, offset: u16, buf: &mut [u8]) -> io::Result<()> {
        self.device.read_config(offset.into(), buf)
    }

    /// Writes config space through VFIO (which filters what may change).
    pub fn config_write(&self, offset: u16, buf: &[u8]) -> io::Result<()> {
        self.device.write_config(offset.into(), buf)
    }

    fn config_u16(&self, offset: u16) -> io::Result<u16> {
        let mut b = [0u8; 2];
        self.config_read(offset, &mut b)?;
        Ok(u16::from_le_bytes(b))
    }

    /// The standard capability list (bounded, loop-safe walk of the
    /// 256-byte header space).
    pub fn capabilities(&self) -> io::Result<Vec<Capability>> {
        let mut config = [0u8; 256];
        self.config_read(0, &mut config)?;
        Ok(parse_capabilities(&config))
    }

    /// Vendor-specific capabilities (id 0x09) only: virtio's structures.
    pub fn vendor_capabilities(&self) -> io::Result<Vec<Capability>> {
        let mut caps = self.capabilities()?;
        caps.retain(|c| c.id == caps::CAP_VENDOR);
        Ok(caps)
    }

    /// Maps memory BAR `n` (0..=5).
    pub fn map_bar(&self, n: u8) -> io::Result<MmioRegion> {
        if n > 5 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("BAR {n} does not exist"),
            ));
        }
        self.device
            .map_region(vfio::BAR0_REGION + u32::from(n))
            .map_err(|e| io::Error::new(e.kind(), format!("{}: BAR {n}: {e}", self.info.name)))
    }

    /// Sets memory space and bus master in the command register, so the
    /// device decodes its BARs and may DMA (into what we mapped only).
    pub fn enable_bus_master(&self) -> io::Result<()> {
        let cmd = self.config_u16(COMMAND)?;
        let want = cmd | CMD_MEMORY | CMD_BUS_MASTER;
        if want != cmd {
            self.config_write(COMMAND, &want.to_le_bytes())?;
        }
        Ok(())
    }

    /// Creates one eventfd per vector `0..count` and has VFIO signal them.
    fn enable_vectors(&self, index: u32, what: &str, count: u32) -> io::Result<Vec<OwnedFd>> {
        let info = self.device.irq_info(index)?;
        if count == 0 || count > info.count {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{}: {count} {what} vectors requested, the function has {}",
                    self.info.name, info.count
                ),
            ));
        }
        let fds = (0..count)
            .map(|_| new_eventfd())
            .collect::<io::Result<Vec<OwnedFd>>>()?;
        let borrowed: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
        self.device.set_irq_eventfds(index, &borrowed)?;
        Ok(fds)
    }

    /// Enables MSI-X with vectors `0..count`, one [`Irq`] each. VFIO
    /// programs the MSI-X table; the device's vector numbers are the
    /// indexes into the returned `Vec`. An MSI is a memory write by the
    /// device, so it is delivered only after
    /// [`PciFunctionHandle::enable_bus_master`].
    pub fn enable_msix(&self, count: u32) -> io::Result<Vec<Irq>> {
        let fds = self.enable_vectors(vfio::MSIX_IRQ, "MSI-X", count)?;
        Ok(fds.into_iter().map(Irq::msi).collect())
    }

    /// Enables MSI with `count` vectors.
    pub fn enable_msi(&self, count: u32) -> io::Result<Vec<Irq>> {
        let fds = self.enable_vectors(vfio::MSI_IRQ, "MSI", count)?;
        Ok(fds.into_iter().map(Irq::msi).collect())
    }

    /// Enables the legacy INTx line; [`Irq::ack`] unmasks it after each
    /// interrupt. Clears the command register's INTx-disable bit.
    pub fn enable_intx(&self) -> io::Result<Irq> {
        let mut fds = self.enable_vectors(vfio::INTX_IRQ, "INTx", 1)?;
        let cmd = self.config_u16(COMMAND)?;
        if cmd & CMD_INTX_DISABLE != 0 {
            self.config_write(COMMAND, &(cmd & !CMD_INTX_DISABLE).to_le_bytes())?;
        }
        let fd = fds
            .pop()
            .ok_or_else(|| io::Error::other("no INTx eventfd"))?;
        Ok(Irq::intx(fd, self.device.clone()))
    }

    /// The kernel's request for the device back (VFIO's device request
    /// interrupt): it fires when the function is being hot-unplugged, and
    /// the removal waits until this process closes its device fds. `None`
    /// if VFIO offers no request interrupt for the function.
    pub fn removal_irq(&self) -> io::Result<Option<Irq>> {
        if self.device.irq_info(vfio::REQ_IRQ)?.count == 0 {
            return Ok(None);
        }
        let mut fds = self.enable_vectors(vfio::REQ_IRQ, "device request", 1)?;
        Ok(fds.pop().map(Irq::msi))
    }

    /// The function's DMA space (its own IOMMU domain).
    pub fn dma(&self) -> &Arc<DmaSpace> {
        &self.dma
    }

    /// Resets the function through VFIO.
    pub fn reset(&self) -> io::Result<()> {
        self.device.reset()
    }

    /// Asks pcid for config bytes as it sees them (diagnostics; drivers
    /// normally use [`PciFunctionHandle::config_read`]).
    pub fn pcid_config_read(&self, offset: u16, len: u16) -> io::Result<Vec<u8>> {
        send_message(&self.channel, &ChannelRequest::ConfigRead { offset, len })?;
        match recv_message::<ChannelReply>(&self.channel)? {
            ChannelReply::Config(bytes) => Ok(bytes),
            ChannelReply::Error(e) => Err(io::Error::other(format!("pcid: {e}"))),
            other => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("pcid answered ConfigRead with {other:?}"),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_scheme_convention() {
        assert_eq!(function_name("0000:00:04.0"), "pci-0000-00-04.0");
        assert_eq!(function_name("0001:1a:1f.7"), "pci-0001-1a-1f.7");
        assert_eq!(pci_name(1, 0x1a, 0x1f, 7), "pci-0001-1a-1f.7");
    }

    #[test]
    fn function_info_json_shape_is_stable() {
        let info = FunctionInfo {
            name: "pci-0000-00-04.0".into(),
            address: "0000:00:04.0".into(),
            vendor: 0x1af4,
            device: 0x1042,
            class: 1,
            subclass: 0,
            interface: 0,
            revision: 1,
            subsystem_vendor: 0x1af4,
            subsystem_device: 0x1100,
            bars: vec![BarInfo {
                index: 4,
                kind: BarKind::Memory64,
                address: 0xfe00_0000,
                size: 0x4000,
                prefetchable: true,
            }],
            irq_pin: 1,
        };
        let json = serde_json::to_value(&info).unwrap();
        assert_eq!(json["bars"][0]["kind"], "Memory64");
        assert_eq!(json["vendor"], 0x1af4);
        let back: FunctionInfo = serde_json::from_value(json).unwrap();
        assert_eq!(back, info);
    }

    #[test]
    fn from_env_without_passed_fds_says_why() {
        // The test harness is not started by init: no INIT_PASSED_FDS.
        let e = PciFunctionHandle::from_env().unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert!(e.to_string().contains("expected 3 passed fds"), "{e}");
        assert!(e.to_string().contains("got 0"), "{e}");
    }

    #[test]
    fn from_fds_rejects_fds_that_are_not_vfio() {
        let null = || {
            rustix::fs::open(
                "/dev/null",
                rustix::fs::OFlags::RDWR | rustix::fs::OFlags::CLOEXEC,
                rustix::fs::Mode::empty(),
            )
            .unwrap()
        };
        let e = PciFunctionHandle::from_fds(null(), null(), null()).unwrap_err();
        assert!(e.to_string().contains("VFIO"), "{e}");
    }
}
