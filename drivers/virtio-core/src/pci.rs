//! The modern virtio-PCI transport (spec 4.1): the common configuration
//! structure, feature negotiation, the status handshake, MSI-X vectors,
//! queue setup, doorbells and the device-specific configuration.

use std::io;
use std::mem::size_of;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::dma::{Dma, DmaSpace};
use common::io::{Mmio, MmioRegion};
use pcid_interface::PciFunctionHandle;

use crate::caps::{CapRegion, VirtioCaps};
use crate::queue::{DmaRing, VirtQueue};
use crate::ring::{RingLayout, SplitRing};
use crate::spec::{bit, feature, status, NO_VECTOR};

/// `struct virtio_pci_common_cfg` of virtio 1.1 (spec 4.1.4.3). The 64-bit
/// queue addresses are written as two 32-bit halves, which the spec allows
/// and which every transport handles (a 64-bit MMIO access is not).
#[repr(C)]
pub struct CommonCfg {
    pub device_feature_select: Mmio<u32>,
    pub device_feature: Mmio<u32>,
    pub driver_feature_select: Mmio<u32>,
    pub driver_feature: Mmio<u32>,
    pub msix_config: Mmio<u16>,
    pub num_queues: Mmio<u16>,
    pub device_status: Mmio<u8>,
    pub config_generation: Mmio<u8>,
    pub queue_select: Mmio<u16>,
    pub queue_size: Mmio<u16>,
    pub queue_msix_vector: Mmio<u16>,
    pub queue_enable: Mmio<u16>,
    pub queue_notify_off: Mmio<u16>,
    pub queue_desc_lo: Mmio<u32>,
    pub queue_desc_hi: Mmio<u32>,
    pub queue_driver_lo: Mmio<u32>,
    pub queue_driver_hi: Mmio<u32>,
    pub queue_device_lo: Mmio<u32>,
    pub queue_device_hi: Mmio<u32>,
}

/// Bytes of [`CommonCfg`]; a common capability shorter than this is unusable.
pub const COMMON_CFG_LEN: usize = 56;
const _: () = assert!(size_of::<CommonCfg>() == COMMON_CFG_LEN);

/// How long a reset may take before we give up on the device.
const RESET_TIMEOUT: Duration = Duration::from_secs(1);
/// How often the configuration may change under us while we read it.
const CONFIG_RETRIES: usize = 64;

/// Transport features we always accept when offered: VERSION_1 (required),
/// ACCESS_PLATFORM (required, see [`VirtioPci::negotiate`]) and
/// ORDER_PLATFORM (our barriers are the platform's DMA barriers).
const TRANSPORT_FEATURES: u64 =
    bit(feature::VERSION_1) | bit(feature::ACCESS_PLATFORM) | bit(feature::ORDER_PLATFORM);

fn err(kind: io::ErrorKind, msg: impl Into<String>) -> io::Error {
    io::Error::new(kind, msg.into())
}

/// A structure's place after mapping: which mapped BAR, where, how long.
#[derive(Clone, Copy, Debug)]
struct Loc {
    slot: usize,
    offset: usize,
    len: usize,
}

/// One modern virtio-PCI function: its mapped BARs and where the virtio
/// structures are inside them. Resets the device when dropped, so it stops
/// using our memory before that memory goes away (drop it before the
/// queues).
pub struct VirtioPci {
    bars: Vec<(u8, MmioRegion)>,
    common: Loc,
    notify: Loc,
    notify_off_multiplier: u32,
    isr: Option<Loc>,
    device: Option<Loc>,
    features: u64,
}

impl VirtioPci {
    /// Walks the function's vendor capabilities and maps each BAR that
    /// holds one of the structures, once.
    pub fn new(handle: &PciFunctionHandle) -> io::Result<VirtioPci> {
        let caps = handle.vendor_capabilities()?;
        let caps = VirtioCaps::from_caps(caps.iter().map(|c| c.data.as_slice()))?;
        log::debug!("virtio caps: {caps:?}");
        let mut bars = Vec::new();
        for bar in caps.bars() {
            bars.push((bar, handle.map_bar(bar)?));
        }
        VirtioPci::from_regions(caps, bars)
    }

    /// Builds the transport over already mapped BARs; checks that every
    /// structure lies inside its BAR.
    pub fn from_regions(caps: VirtioCaps, bars: Vec<(u8, MmioRegion)>) -> io::Result<VirtioPci> {
        let locate = |r: CapRegion, min: usize| -> io::Result<Loc> {
            let slot = bars.iter().position(|(b, _)| *b == r.bar).ok_or_else(|| {
                err(
                    io::ErrorKind::NotFound,
                    format!("BAR {} is not mapped", r.bar),
                )
            })?;
            let offset = r.offset as usize;
            let len = r.length as usize;
            let bar_len = bars[slot].1.len();
            if len < min || offset.checked_add(len).is_none_or(|end| end > bar_len) {
                return Err(err(
                    io::ErrorKind::InvalidData,
                    format!(
                        "virtio structure at BAR {} offset {:#x} length {:#x} does not fit the BAR ({:#x} bytes)",
                        r.bar, offset, len, bar_len
                    ),
                ));
            }
            Ok(Loc { slot, offset, len })
        };
        let common = locate(caps.common, COMMON_CFG_LEN)?;
        let notify = locate(caps.notify, 2)?;
        let isr = caps.isr.map(|r| locate(r, 1)).transpose()?;
        let device = caps.device.map(|r| locate(r, 0)).transpose()?;
        let t = VirtioPci {
            bars,
            common,
            notify,
            notify_off_multiplier: caps.notify_off_multiplier,
            isr,
            device,
            features: 0,
        };
        // The one bounds/alignment check of the typed view.
        t.common()?;
        Ok(t)
    }

    fn common(&self) -> io::Result<&CommonCfg> {
        self.bars[self.common.slot]
            .1
            .block::<CommonCfg>(self.common.offset)
    }

    fn common_mut(&mut self) -> io::Result<&mut CommonCfg> {
        let off = self.common.offset;
        self.bars[self.common.slot].1.block_mut::<CommonCfg>(off)
    }

    pub fn status(&self) -> io::Result<u8> {
        Ok(self.common()?.device_status.read())
    }

    fn add_status(&mut self, bits: u8) -> io::Result<()> {
        let c = self.common_mut()?;
        let s = c.device_status.read();
        c.device_status.write(s | bits);
        Ok(())
    }

    /// Writes 0 and waits (bounded) until the device reads back 0: only
    /// then has it stopped using the queues.
    pub fn reset(&mut self) -> io::Result<()> {
        self.common_mut()?.device_status.write(0);
        let deadline = Instant::now() + RESET_TIMEOUT;
        loop {
            if self.status()? == 0 {
                self.features = 0;
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(err(
                    io::ErrorKind::TimedOut,
                    "virtio device did not complete its reset within 1 s",
                ));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Sets FAILED: the driver gave up (best effort; used on error paths).
    pub fn set_failed(&mut self) {
        if let Err(e) = self.add_status(status::FAILED) {
            log::warn!("virtio: could not set FAILED: {e}");
        }
    }

    /// Reset, ACKNOWLEDGE, DRIVER, feature negotiation, FEATURES_OK
    /// (spec 3.1.1 steps 1-6). Returns the negotiated features.
    pub fn begin(&mut self, wanted: u64) -> io::Result<u64> {
        // What a dead predecessor left running is stopped here: logged, so
        // a restart shows the device it found and that it read back 0.
        let found = self.status()?;
        self.reset()?;
        log::info!("virtio: device status {found:#x} at start, reset to 0");
        self.add_status(status::ACKNOWLEDGE)?;
        self.add_status(status::DRIVER)?;
        match self.negotiate(wanted) {
            Ok(f) => Ok(f),
            Err(e) => {
                self.set_failed();
                Err(e)
            }
        }
    }

    /// The 64 feature bits the device offers.
    pub fn device_features(&mut self) -> io::Result<u64> {
        let c = self.common_mut()?;
        c.device_feature_select.write(0);
        let lo = c.device_feature.read();
        c.device_feature_select.write(1);
        let hi = c.device_feature.read();
        Ok(u64::from(lo) | (u64::from(hi) << 32))
    }

    /// Accepts `offered & (wanted | transport features)`, sets FEATURES_OK
    /// and checks the device kept it.
    ///
    /// VERSION_1 is required: without it this is a legacy device with a
    /// different register layout. ACCESS_PLATFORM is required too: a device
    /// that does not offer it (QEMU without `iommu_platform=on`) performs
    /// DMA to guest-physical addresses, bypassing the IOMMU, so the IOVAs of
    /// our DmaSpace would reach the wrong memory.
    fn negotiate(&mut self, wanted: u64) -> io::Result<u64> {
        let offered = self.device_features()?;
        log::debug!("virtio: device offers features {offered:#x}");
        if offered & bit(feature::VERSION_1) == 0 {
            return Err(err(
                io::ErrorKind::Unsupported,
                "device does not offer VIRTIO_F_VERSION_1: legacy virtio is not supported",
            ));
        }
        if offered & bit(feature::ACCESS_PLATFORM) == 0 {
            return Err(err(
                io::ErrorKind::Unsupported,
                "device does not offer VIRTIO_F_ACCESS_PLATFORM: its DMA would bypass the IOMMU \
                 (QEMU: add iommu_platform=on,disable-legacy=on to the device)",
            ));
        }
        let accepted = offered & (wanted | TRANSPORT_FEATURES);
        let c = self.common_mut()?;
        c.driver_feature_select.write(0);
        c.driver_feature.write(accepted as u32);
        c.driver_feature_select.write(1);
        c.driver_feature.write((accepted >> 32) as u32);
        self.add_status(status::FEATURES_OK)?;
        if self.status()? & status::FEATURES_OK == 0 {
            return Err(err(
                io::ErrorKind::Unsupported,
                format!("device rejected our feature set {accepted:#x} (FEATURES_OK not kept)"),
            ));
        }
        self.features = accepted;
        log::debug!("virtio: negotiated features {accepted:#x}");
        Ok(accepted)
    }

    /// Negotiated features (0 before [`VirtioPci::begin`]).
    pub fn features(&self) -> u64 {
        self.features
    }

    pub fn has_feature(&self, bit_number: u32) -> bool {
        self.features & bit(bit_number) != 0
    }

    pub fn num_queues(&self) -> io::Result<u16> {
        Ok(self.common()?.num_queues.read())
    }

    /// Routes configuration-change interrupts to MSI-X `vector`; an error
    /// if the device refuses it (reads back NO_VECTOR).
    pub fn set_config_vector(&mut self, vector: u16) -> io::Result<()> {
        let c = self.common_mut()?;
        c.msix_config.write(vector);
        let got = c.msix_config.read();
        if got != vector {
            return Err(err(
                io::ErrorKind::Other,
                format!("device refused MSI-X vector {vector} for config changes (reads {got:#x})"),
            ));
        }
        Ok(())
    }

    /// Sets up queue `index` with at most `max_size` entries (the largest
    /// power of two within both our and the device's maximum), its rings in
    /// fresh DMA memory, interrupts on MSI-X `vector`, and enables it.
    pub fn setup_queue(
        &mut self,
        index: u16,
        max_size: u16,
        vector: Option<u16>,
        dma: &Arc<DmaSpace>,
    ) -> io::Result<VirtQueue> {
        let c = self.common_mut()?;
        c.queue_select.write(index);
        let device_max = c.queue_size.read();
        if device_max == 0 {
            return Err(err(
                io::ErrorKind::NotFound,
                format!("virtqueue {index} does not exist"),
            ));
        }
        if c.queue_enable.read() != 0 {
            return Err(err(
                io::ErrorKind::Other,
                format!("virtqueue {index} is already enabled"),
            ));
        }
        let size = pow2_at_most(device_max.min(max_size).min(crate::spec::ring::MAX_SIZE));
        if size == 0 {
            return Err(err(
                io::ErrorKind::InvalidInput,
                "virtqueue size 0 requested",
            ));
        }
        let layout = RingLayout::new(size)
            .ok_or_else(|| err(io::ErrorKind::InvalidInput, "bad virtqueue size"))?;
        let mem = Dma::<[u8]>::zeroed_slice(dma, layout.total)?;
        let ring = SplitRing::new(DmaRing::new(mem)?, size)?;

        let c = self.common_mut()?;
        c.queue_size.write(size);
        c.queue_desc_lo.write(ring.desc_iova() as u32);
        c.queue_desc_hi.write((ring.desc_iova() >> 32) as u32);
        c.queue_driver_lo.write(ring.avail_iova() as u32);
        c.queue_driver_hi.write((ring.avail_iova() >> 32) as u32);
        c.queue_device_lo.write(ring.used_iova() as u32);
        c.queue_device_hi.write((ring.used_iova() >> 32) as u32);
        let want = vector.unwrap_or(NO_VECTOR);
        c.queue_msix_vector.write(want);
        let got = c.queue_msix_vector.read();
        if got != want {
            return Err(err(
                io::ErrorKind::Other,
                format!("device refused MSI-X vector {want} for queue {index} (reads {got:#x})"),
            ));
        }
        let notify_off = c.queue_notify_off.read();
        let rel = usize::from(notify_off)
            .checked_mul(self.notify_off_multiplier as usize)
            .filter(|rel| rel.checked_add(2).is_some_and(|end| end <= self.notify.len))
            .ok_or_else(|| {
                err(
                    io::ErrorKind::InvalidData,
                    format!(
                        "queue {index}: notify offset {notify_off} x {} lies outside the notify structure",
                        self.notify_off_multiplier
                    ),
                )
            })?;
        let c = self.common_mut()?;
        c.queue_enable.write(1);
        log::debug!(
            "virtio: queue {index}: {size} entries (device max {device_max}), vector {want:#x}, rings at {:#x}",
            ring.desc_iova()
        );
        Ok(VirtQueue::new(index, ring, self.notify.offset + rel))
    }

    /// DRIVER_OK: the device may now use the queues.
    pub fn driver_ok(&mut self) -> io::Result<()> {
        self.add_status(status::DRIVER_OK)?;
        let s = self.status()?;
        if s & status::DEVICE_NEEDS_RESET != 0 || s & status::DRIVER_OK == 0 {
            return Err(err(
                io::ErrorKind::Other,
                format!("device did not accept DRIVER_OK (status {s:#x})"),
            ));
        }
        Ok(())
    }

    /// Rings queue `index`'s doorbell at byte `offset` of the notify BAR.
    pub(crate) fn ring_doorbell(&mut self, offset: usize, index: u16) {
        self.bars[self.notify.slot].1.write16(offset, index);
    }

    /// Reads the ISR byte (which also clears it). Only needed with INTx;
    /// MSI-X vectors say what happened by themselves.
    pub fn isr(&self) -> Option<u8> {
        let loc = self.isr?;
        Some(self.bars[loc.slot].1.read8(loc.offset))
    }

    /// Bytes of device-specific configuration (0 if the device has none).
    pub fn device_config_len(&self) -> usize {
        self.device.map_or(0, |l| l.len)
    }

    /// Reads the device-specific configuration consistently: `f` runs
    /// again whenever `config_generation` changed while it ran (spec
    /// 2.4.1), at most a bounded number of times.
    pub fn read_config<R>(
        &self,
        mut f: impl FnMut(&DeviceConfig<'_>) -> io::Result<R>,
    ) -> io::Result<R> {
        let loc = self.device.ok_or_else(|| {
            err(
                io::ErrorKind::NotFound,
                "device has no device-specific configuration",
            )
        })?;
        let view = DeviceConfig {
            region: &self.bars[loc.slot].1,
            base: loc.offset,
            len: loc.len,
        };
        for _ in 0..CONFIG_RETRIES {
            let before = self.common()?.config_generation.read();
            let r = f(&view)?;
            if self.common()?.config_generation.read() == before {
                return Ok(r);
            }
        }
        Err(err(
            io::ErrorKind::TimedOut,
            "device configuration kept changing while being read",
        ))
    }
}

impl Drop for VirtioPci {
    fn drop(&mut self) {
        // Stop the device's DMA before our queue memory is unmapped.
        if let Err(e) = self.reset() {
            log::warn!("virtio: reset on drop failed: {e}");
        }
    }
}

/// Largest power of two `<= n` (0 for 0).
fn pow2_at_most(n: u16) -> u16 {
    if n == 0 {
        0
    } else {
        1 << (15 - n.leading_zeros())
    }
}

/// The device-specific configuration structure, bounds-checked. Fields are
/// little-endian; 64-bit fields are read as two 32-bit halves (low first),
/// which is why callers must go through [`VirtioPci::read_config`].
pub struct DeviceConfig<'a> {
    region: &'a MmioRegion,
    base: usize,
    len: usize,
}

impl DeviceConfig<'_> {
    fn check(&self, off: usize, size: usize) -> io::Result<usize> {
        if !off.is_multiple_of(size) || off.checked_add(size).is_none_or(|end| end > self.len) {
            return Err(err(
                io::ErrorKind::InvalidInput,
                format!(
                    "device config access of {size} bytes at {off:#x} outside its {} bytes",
                    self.len
                ),
            ));
        }
        Ok(self.base + off)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn read_u8(&self, off: usize) -> io::Result<u8> {
        Ok(self.region.read8(self.check(off, 1)?))
    }

    pub fn read_u16(&self, off: usize) -> io::Result<u16> {
        Ok(self.region.read16(self.check(off, 2)?))
    }

    pub fn read_u32(&self, off: usize) -> io::Result<u32> {
        Ok(self.region.read32(self.check(off, 4)?))
    }

    pub fn read_u64(&self, off: usize) -> io::Result<u64> {
        let at = self.check(off, 8)?;
        let lo = self.region.read32(at);
        let hi = self.region.read32(at + 4);
        Ok(u64::from(lo) | (u64::from(hi) << 32))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Offsets of CommonCfg fields (spec 4.1.4.3).
    const DEVICE_FEATURE: usize = 4;
    const DRIVER_FEATURE: usize = 12;
    const MSIX_CONFIG: usize = 16;
    const NUM_QUEUES: usize = 18;
    const DEVICE_STATUS: usize = 20;
    const CONFIG_GENERATION: usize = 21;

    fn region(bar: u8, offset: u32, length: u32) -> CapRegion {
        CapRegion {
            bar,
            offset,
            length,
        }
    }

    /// QEMU's layout in one 16 KiB BAR 4, backed by plain memory: registers
    /// keep what was last written, which is enough for the paths that do
    /// not depend on the device reacting.
    fn fake() -> VirtioPci {
        let caps = VirtioCaps {
            common: region(4, 0, 0x1000),
            isr: Some(region(4, 0x1000, 0x1000)),
            device: Some(region(4, 0x2000, 0x40)),
            notify: region(4, 0x3000, 0x1000),
            notify_off_multiplier: 4,
        };
        let bar = MmioRegion::anonymous(0x4000).unwrap();
        VirtioPci::from_regions(caps, vec![(4, bar)]).unwrap()
    }

    fn poke8(t: &mut VirtioPci, off: usize, v: u8) {
        t.bars[0].1.write8(off, v)
    }

    #[test]
    fn common_cfg_layout() {
        let t = fake();
        let c = t.common().unwrap();
        let base = c as *const CommonCfg as usize;
        assert_eq!(&c.msix_config as *const _ as usize - base, MSIX_CONFIG);
        assert_eq!(&c.device_status as *const _ as usize - base, DEVICE_STATUS);
        assert_eq!(
            &c.config_generation as *const _ as usize - base,
            CONFIG_GENERATION
        );
        assert_eq!(&c.queue_select as *const _ as usize - base, 22);
        assert_eq!(&c.queue_notify_off as *const _ as usize - base, 30);
        assert_eq!(&c.queue_desc_lo as *const _ as usize - base, 32);
        assert_eq!(&c.queue_driver_lo as *const _ as usize - base, 40);
        assert_eq!(&c.queue_device_hi as *const _ as usize - base, 52);
    }

    #[test]
    fn structures_outside_their_bar_are_refused() {
        let caps = VirtioCaps {
            common: region(4, 0x3fd0, 0x38),
            isr: None,
            device: None,
            notify: region(4, 0, 4),
            notify_off_multiplier: 0,
        };
        let bar = MmioRegion::anonymous(0x4000).unwrap();
        let e = VirtioPci::from_regions(caps, vec![(4, bar)]).err().unwrap();
        assert!(e.to_string().contains("does not fit"), "{e}");
        let caps = VirtioCaps {
            common: region(2, 0, 0x38),
            ..caps
        };
        let bar = MmioRegion::anonymous(0x4000).unwrap();
        let e = VirtioPci::from_regions(caps, vec![(4, bar)]).err().unwrap();
        assert!(e.to_string().contains("BAR 2"), "{e}");
    }

    #[test]
    fn handshake_negotiates_and_keeps_features_ok() {
        let mut t = fake();
        // Offered: bits 0 and 1 in both halves (plain memory ignores the
        // select register), so VERSION_1 (32) and ACCESS_PLATFORM (33).
        t.bars[0].1.write32(DEVICE_FEATURE, 0b11);
        t.bars[0].1.write16(NUM_QUEUES, 1);
        let f = t.begin(bit(1) | bit(9)).unwrap();
        assert_eq!(
            f,
            bit(1) | bit(feature::VERSION_1) | bit(feature::ACCESS_PLATFORM)
        );
        assert_eq!(t.features(), f);
        assert!(t.has_feature(1) && !t.has_feature(0) && !t.has_feature(9));
        // The high half was written last.
        assert_eq!(t.bars[0].1.read32(DRIVER_FEATURE), 0b11);
        assert_eq!(
            t.status().unwrap(),
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK
        );
        t.set_config_vector(0).unwrap();
        t.driver_ok().unwrap();
        assert_eq!(t.status().unwrap() & status::DRIVER_OK, status::DRIVER_OK);
        assert_eq!(t.num_queues().unwrap(), 1);
        t.reset().unwrap();
        assert_eq!(t.status().unwrap(), 0);
        assert_eq!(t.features(), 0);
    }

    #[test]
    fn legacy_or_iommu_bypassing_devices_fail_clearly() {
        let mut t = fake();
        t.bars[0].1.write32(DEVICE_FEATURE, 0);
        let e = t.begin(0).unwrap_err();
        assert!(e.to_string().contains("VERSION_1"), "{e}");
        assert_ne!(t.status().unwrap() & status::FAILED, 0);

        let mut t = fake();
        // VERSION_1 only: bit 0 of each half.
        t.bars[0].1.write32(DEVICE_FEATURE, 0b01);
        let e = t.begin(0).unwrap_err();
        assert!(e.to_string().contains("ACCESS_PLATFORM"), "{e}");
        assert_ne!(t.status().unwrap() & status::FAILED, 0);
    }

    #[test]
    fn device_config_reads_are_bounded() {
        let mut t = fake();
        for (i, b) in [1u8, 2, 3, 4, 5, 6, 7, 8, 9, 10].iter().enumerate() {
            t.bars[0].1.write8(0x2000 + i, *b);
        }
        let (a, b, c, d) = t
            .read_config(|cfg| {
                Ok((
                    cfg.read_u64(0)?,
                    cfg.read_u32(4)?,
                    cfg.read_u16(8)?,
                    cfg.read_u8(9)?,
                ))
            })
            .unwrap();
        assert_eq!(a, 0x0807_0605_0403_0201);
        assert_eq!(b, 0x0807_0605);
        assert_eq!(c, 0x0a09);
        assert_eq!(d, 10);
        assert_eq!(t.device_config_len(), 0x40);
        assert!(t.read_config(|cfg| cfg.read_u32(0x40)).is_err());
        assert!(t.read_config(|cfg| cfg.read_u64(0x3c)).is_err());
        assert!(t.read_config(|cfg| cfg.read_u32(2)).is_err(), "misaligned");
        assert_eq!(t.read_config(|cfg| cfg.read_u32(0x3c)).unwrap(), 0);
    }

    #[test]
    fn config_generation_change_rereads() {
        let mut t = fake();
        poke8(&mut t, CONFIG_GENERATION, 5);
        let gen_ptr = t.bars[0].1.as_ptr().wrapping_add(CONFIG_GENERATION) as *mut u8;
        let mut runs = 0;
        let r = t
            .read_config(|cfg| {
                runs += 1;
                if runs == 1 {
                    // The "device" changes its configuration mid-read.
                    // SAFETY: a byte inside the live, writable anonymous
                    // mapping of the fake BAR.
                    unsafe { gen_ptr.write_volatile(6) };
                }
                cfg.read_u8(0)
            })
            .unwrap();
        assert_eq!(r, 0);
        assert_eq!(runs, 2);

        // A device whose generation never settles is given up on.
        let mut runs = 0u32;
        let e = t
            .read_config(|_| {
                runs += 1;
                // SAFETY: as above.
                unsafe { gen_ptr.write_volatile(runs as u8) };
                Ok(())
            })
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert_eq!(runs as usize, CONFIG_RETRIES);
    }

    #[test]
    fn doorbell_lands_at_the_queue_offset() {
        let mut t = fake();
        t.ring_doorbell(0x3000 + 3 * 4, 3);
        assert_eq!(t.bars[0].1.read16(0x3000 + 12), 3);
        assert_eq!(t.isr(), Some(0));
    }

    #[test]
    fn pow2() {
        assert_eq!(pow2_at_most(0), 0);
        assert_eq!(pow2_at_most(1), 1);
        assert_eq!(pow2_at_most(255), 128);
        assert_eq!(pow2_at_most(256), 256);
        assert_eq!(pow2_at_most(1000), 512);
        assert_eq!(pow2_at_most(u16::MAX), 32768);
    }
}
