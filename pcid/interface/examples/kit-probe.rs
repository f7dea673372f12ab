//! kit-probe: exercises the driver kit against a real VFIO device in the
//! guest. Run as root: `kit-probe [PCI-ADDRESS] [MSIX-VECTORS]` (default:
//! the first virtio-blk function, 2 vectors).
//!
//! It binds the function to vfio-pci, opens container/group/device with
//! `common::vfio`, prints regions and IRQs, maps the BARs, walks the
//! capabilities, allocates DMA memory, enables MSI-X (checked with VFIO's
//! loopback trigger), and — for a modern virtio-blk device that honours
//! the IOMMU — reads sector 0 through a one-request virtqueue, which proves
//! DMA translation, bus mastering and a real device MSI-X interrupt.
//! Every line it prints starts with `probe:`; the last is `probe: OK` or
//! `probe: FAILED ...`.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use common::dma::{Dma, DmaSpace};
use common::io::MmioRegion;
use common::irq::{new_eventfd, Irq};
use common::vfio::{self, Container, Device, Group};
use common::{mb, rmb, wmb};
use pcid_interface::caps::{parse_capabilities, CAP_VENDOR};

macro_rules! say {
    ($($t:tt)*) => { println!("probe: {}", format!($($t)*)) };
}

fn other(msg: impl Into<String>) -> io::Error {
    io::Error::other(msg.into())
}

fn find_virtio_blk() -> io::Result<String> {
    let mut found: Vec<String> = Vec::new();
    for e in std::fs::read_dir("/sys/bus/pci/devices")? {
        let e = e?;
        let dir = e.path();
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
        let (v, d) = (read("vendor"), read("device"));
        if v.trim() == "0x1af4" && matches!(d.trim(), "0x1001" | "0x1042") {
            found.push(e.file_name().to_string_lossy().into_owned());
        }
    }
    found.sort();
    found
        .into_iter()
        .next()
        .ok_or_else(|| other("no virtio-blk function found"))
}

/// Binds `addr` to vfio-pci through driver_override and returns its IOMMU
/// group number.
fn bind_vfio(addr: &str) -> io::Result<u32> {
    let dev = format!("/sys/bus/pci/devices/{addr}");
    let driver = std::fs::read_link(format!("{dev}/driver")).ok();
    let current = driver
        .as_ref()
        .and_then(|p| p.file_name())
        .map(|n| n.to_string_lossy().into_owned());
    say!("{addr}: bound to {:?}", current);
    if current.as_deref() != Some("vfio-pci") {
        if current.is_some() {
            std::fs::write(format!("{dev}/driver/unbind"), addr)?;
        }
        std::fs::write(format!("{dev}/driver_override"), "vfio-pci")?;
        std::fs::write("/sys/bus/pci/drivers_probe", addr)?;
        let now = std::fs::read_link(format!("{dev}/driver"))
            .map_err(|e| other(format!("{addr} not bound after drivers_probe: {e}")))?;
        say!("{addr}: now bound to {}", now.display());
    }
    let group = std::fs::read_link(format!("{dev}/iommu_group"))
        .map_err(|e| other(format!("{addr} has no iommu_group (IOMMU off?): {e}")))?;
    let n = group
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| other(format!("bad iommu_group link {}", group.display())))?;
    let members: Vec<String> = std::fs::read_dir(format!("{}/devices", group.display()))
        .or_else(|_| std::fs::read_dir(format!("{dev}/iommu_group/devices")))?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    say!("{addr}: iommu group {n}, members {members:?}");
    Ok(n)
}

/// Where a virtio structure lives: (bar, offset, extra u32 after the cap).
#[derive(Debug, Clone, Copy)]
struct VirtioCap {
    bar: u8,
    offset: u32,
    length: u32,
    extra: u32,
}

fn main() {
    match run() {
        Ok(()) => say!("OK"),
        Err(e) => {
            say!("FAILED {e}");
            std::process::exit(1);
        }
    }
}

/// What a driver daemon gets from init: its own uid, no capabilities,
/// NO_NEW_PRIVS, a small RLIMIT_MEMLOCK, then the seccomp filter. Done
/// after the VFIO fds are open, as for a real driver.
fn become_driver(uid: u32, memlock: u64) -> io::Result<()> {
    use rustix::process::{setrlimit, Gid, Resource, Rlimit, Uid};
    setrlimit(
        Resource::Memlock,
        Rlimit {
            current: Some(memlock),
            maximum: Some(memlock),
        },
    )?;
    let (u, g) = (Uid::from_raw(uid), Gid::from_raw(uid));
    rustix::thread::set_thread_groups(&[])?;
    rustix::thread::set_thread_res_gid(g, g, g)?;
    // Leaving uid 0 for good clears every capability set.
    rustix::thread::set_thread_res_uid(u, u, u)?;
    rustix::thread::set_no_new_privs(true)?;
    common::sandbox::check_unprivileged()?;
    common::sandbox::enter_sandbox(&common::sandbox::KIT_PROBE)?;
    say!("now uid {uid}, no capabilities, RLIMIT_MEMLOCK {memlock}, seccomp on");
    Ok(())
}

fn run() -> io::Result<()> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    // --drop UID: continue as an unprivileged, sandboxed driver.
    let drop_to: Option<u32> = match args.iter().position(|a| a == "--drop") {
        Some(i) => {
            let uid = args.get(i + 1).and_then(|u| u.parse().ok());
            args.drain(i..(i + 2).min(args.len()));
            Some(uid.ok_or_else(|| other("--drop needs a uid"))?)
        }
        None => None,
    };
    let addr = match args.first() {
        Some(a) => a.clone(),
        None => find_virtio_blk()?,
    };
    let vectors: u32 = args.get(1).and_then(|v| v.parse().ok()).unwrap_or(2);

    let group_no = bind_vfio(&addr)?;
    let container = Container::open()?;
    let group = Group::open(group_no)?;
    say!("group viable: {}", group.is_viable()?);
    group.set_container(&container)?;
    container.set_iommu_type1v2()?;
    let device = Arc::new(group.device(&addr)?);
    // The group fd is pcid's business; a driver holds only these two.
    drop(group);
    // For the PciFunctionHandle part at the end: copies of the two fds a
    // driver receives, and a channel whose "pcid" end is this process.
    let handle_fds = (
        container.as_fd().try_clone_to_owned()?,
        device.as_fd().try_clone_to_owned()?,
    );
    let channel = rustix::net::socketpair(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::SEQPACKET,
        rustix::net::SocketFlags::CLOEXEC,
        None,
    )?;
    const MEMLOCK: u64 = 256 * 1024;
    if let Some(uid) = drop_to {
        become_driver(uid, MEMLOCK)?;
    }
    let info = device.info()?;
    say!(
        "device: flags {:#x} (pci {}, reset {}), {} regions, {} irqs",
        info.flags,
        info.is_pci(),
        info.can_reset(),
        info.num_regions,
        info.num_irqs
    );
    for i in 0..info.num_regions {
        // Absent optional regions (VGA on a non-VGA function) are EINVAL.
        let r = match device.region(i) {
            Ok(r) => r,
            Err(e) => {
                say!("region {i}: {e}");
                continue;
            }
        };
        if r.size > 0 {
            say!(
                "region {i}: size {:#x} offset {:#x} flags {:#x} (r {} w {} mmap {})",
                r.size,
                r.offset,
                r.flags,
                r.readable(),
                r.writable(),
                r.mmappable()
            );
        }
    }
    for i in 0..info.num_irqs {
        let q = match device.irq_info(i) {
            Ok(q) => q,
            Err(e) => {
                say!("irq {i}: {e}");
                continue;
            }
        };
        say!(
            "irq {i}: count {} flags {:#x} (eventfd {} maskable {} automasked {} noresize {})",
            q.count,
            q.flags,
            q.eventfd(),
            q.maskable(),
            q.automasked(),
            q.noresize()
        );
    }

    let mut config = [0u8; 256];
    device.read_config(0, &mut config)?;
    let vendor = u16::from_le_bytes([config[0], config[1]]);
    let dev_id = u16::from_le_bytes([config[2], config[3]]);
    say!(
        "config: vendor {vendor:#06x} device {dev_id:#06x} class {:#04x}",
        config[0x0b]
    );
    for (i, row) in config.chunks(16).enumerate() {
        say!("config {:02x}: {:02x?}", i * 16, row);
    }
    let caps = parse_capabilities(&config);
    let mut virtio: [Option<VirtioCap>; 6] = [None; 6];
    for c in &caps {
        say!(
            "cap {:#04x} at {:#04x}, {} bytes: {:02x?}",
            c.id,
            c.offset,
            c.data.len(),
            c.data
        );
        if c.id == CAP_VENDOR && c.data.len() >= 16 {
            let d = &c.data;
            let ty = d[3] as usize;
            let u32at = |o: usize| u32::from_le_bytes([d[o], d[o + 1], d[o + 2], d[o + 3]]);
            if ty < virtio.len() && virtio[ty].is_none() {
                virtio[ty] = Some(VirtioCap {
                    bar: d[4],
                    offset: u32at(8),
                    length: u32at(12),
                    extra: if d.len() >= 20 { u32at(16) } else { 0 },
                });
            }
        }
        if let Some(m) = c.msix() {
            say!("msix: {m:?}");
        }
    }

    let mut bars: Vec<Option<MmioRegion>> = Vec::new();
    for b in 0..6u32 {
        match device.map_region(vfio::BAR0_REGION + b) {
            Ok(r) => {
                say!(
                    "BAR{b}: mapped {:#x} bytes, first dword {:#010x}",
                    r.len(),
                    r.read32(0)
                );
                bars.push(Some(r));
            }
            Err(e) => {
                say!("BAR{b}: not mapped: {e}");
                bars.push(None);
            }
        }
    }

    let dma = DmaSpace::new(container)?;
    say!("iova ranges: {:x?}", dma.container().iova_ranges()?);
    say!("iova page sizes: {:#x}", dma.container().iova_pgsizes()?);
    let mut buf = Dma::<[u8]>::zeroed_slice(&dma, 64 * 1024)?;
    say!(
        "dma: 64 KiB at iova {:#x}, all zero {}",
        buf.iova(),
        buf.iter().all(|&b| b == 0)
    );
    buf[0] = 0xaa;
    let second = Dma::<[u64; 512]>::zeroed(&dma)?;
    say!("dma: second buffer at iova {:#x}", second.iova());
    drop(buf);
    let third = Dma::<[u8]>::zeroed_slice(&dma, 4096)?;
    say!("dma: after free, a page reuses iova {:#x}", third.iova());
    if drop_to.is_some() {
        // Pinned memory is charged to RLIMIT_MEMLOCK: more than the limit
        // must fail cleanly, not kill or hang.
        match Dma::<[u8]>::zeroed_slice(&dma, MEMLOCK as usize) {
            Ok(d) => {
                return Err(other(format!(
                    "{} bytes pinned past RLIMIT_MEMLOCK",
                    d.mapped_len()
                )))
            }
            Err(e) => say!("dma: over the memlock limit fails as it should: {e}"),
        }
    }

    // MSI-X: one eventfd per vector; VFIO programs the table.
    let fds = (0..vectors)
        .map(|_| new_eventfd())
        .collect::<io::Result<Vec<_>>>()?;
    let borrowed: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
    device.set_irq_eventfds(vfio::MSIX_IRQ, &borrowed)?;
    let irqs: Vec<Irq> = fds.into_iter().map(Irq::msi).collect();
    let mut msix_ctrl = [0u8; 2];
    if let Some(c) = caps.iter().find(|c| c.id == 0x11) {
        device.read_config(u64::from(c.offset) + 2, &mut msix_ctrl)?;
    }
    say!(
        "msix: {} vectors enabled, control word {:#06x}",
        irqs.len(),
        u16::from_le_bytes(msix_ctrl)
    );
    for (v, irq) in irqs.iter().enumerate() {
        device.trigger_irq(vfio::MSIX_IRQ, v as u32)?;
        let n = irq.wait(Duration::from_secs(5))?;
        say!("msix: loopback trigger of vector {v} -> eventfd count {n}");
        if n != 1 {
            return Err(other(format!("vector {v} loopback gave {n}")));
        }
    }

    // A real device interrupt and real DMA: one virtio-blk read.
    if vendor == 0x1af4 {
        virtio_blk_read(&device, &dma, &mut bars, &virtio, &irqs)?;
    }

    device.disable_irqs(vfio::MSIX_IRQ)?;
    say!("msix: disabled");
    match device.reset() {
        Ok(()) => say!("device reset"),
        Err(e) => say!(
            "device reset (VFIO says can_reset {}): {e}",
            info.can_reset()
        ),
    }

    // Everything mapped through `dma` must be gone before a second
    // DmaSpace (the handle's) allocates in the same container.
    drop((irqs, bars, second, third, dma));
    let function = pcid_interface::FunctionInfo {
        name: pcid_interface::function_name(&addr),
        address: addr.clone(),
        vendor,
        device: dev_id,
        class: config[0x0b],
        subclass: config[0x0a],
        interface: config[0x09],
        revision: config[0x08],
        subsystem_vendor: u16::from_le_bytes([config[0x2c], config[0x2d]]),
        subsystem_device: u16::from_le_bytes([config[0x2e], config[0x2f]]),
        bars: Vec::new(),
        irq_pin: config[0x3d],
    };
    handle_section(handle_fds, channel, function)
}

/// The driver-facing API, on the same function: `PciFunctionHandle` built
/// from fds, answering its Info request from a reply queued in advance (no
/// pcid here, and a sandboxed probe may not start threads).
fn handle_section(
    (container, device): (OwnedFd, OwnedFd),
    (ours, pcid_end): (OwnedFd, OwnedFd),
    function: pcid_interface::FunctionInfo,
) -> io::Result<()> {
    use pcid_interface::{send_message, ChannelReply, PciFunctionHandle};
    send_message(&pcid_end, &ChannelReply::Info(function))?;
    let h = PciFunctionHandle::from_fds(container, device, ours)?;
    let caps = h.capabilities()?;
    let vendor = h.vendor_capabilities()?;
    say!(
        "handle: {} ({:04x}:{:04x}), {} capabilities, {} vendor",
        h.name(),
        h.info().vendor,
        h.info().device,
        caps.len(),
        vendor.len()
    );
    let mut b = [0u8; 2];
    h.config_read(0, &mut b)?;
    if u16::from_le_bytes(b) != h.info().vendor {
        return Err(other("config_read disagrees with Info"));
    }
    h.enable_bus_master()?;
    h.config_read(4, &mut b)?;
    say!(
        "handle: command register {:#06x} after enable_bus_master",
        u16::from_le_bytes(b)
    );
    if u16::from_le_bytes(b) & 0x6 != 0x6 {
        return Err(other("memory space / bus master not set"));
    }
    if h.info().vendor == 0x1af4 {
        let bar = h.map_bar(4)?;
        say!(
            "handle: BAR4 {:#x} bytes, virtio num_queues {}",
            bar.len(),
            bar.read16(NUM_QUEUES)
        );
    }
    let d = Dma::<[u32]>::zeroed_slice(h.dma(), 1000)?;
    say!(
        "handle: dma {} bytes at iova {:#x}",
        d.mapped_len(),
        d.iova()
    );

    let irqs = h.enable_msix(2)?;
    for (v, irq) in irqs.iter().enumerate() {
        h.device().trigger_irq(vfio::MSIX_IRQ, v as u32)?;
        let n = irq.wait(Duration::from_secs(5))?;
        say!("handle: msix vector {v} loopback -> {n}");
        if n != 1 {
            return Err(other("msix loopback through the handle failed"));
        }
    }
    h.device().disable_irqs(vfio::MSIX_IRQ)?;
    drop(irqs);

    // INTx: VFIO masks the line when it fires; ack() unmasks it.
    let intx = h.enable_intx()?;
    for round in 0..2 {
        h.device().trigger_irq(vfio::INTX_IRQ, 0)?;
        let n = intx.wait(Duration::from_secs(5))?;
        intx.ack()?;
        say!("handle: intx loopback round {round} -> {n}, acked");
        if n != 1 {
            return Err(other("intx loopback failed"));
        }
    }
    h.device().disable_irqs(vfio::INTX_IRQ)?;
    match h.reset() {
        Ok(()) => say!("handle: reset ok"),
        Err(e) => say!("handle: reset: {e}"),
    }
    Ok(())
}

// virtio 1.x common configuration offsets (virtio spec 4.1.4.3).
const DEVICE_FEATURE_SELECT: usize = 0x00;
const DEVICE_FEATURE: usize = 0x04;
const DRIVER_FEATURE_SELECT: usize = 0x08;
const DRIVER_FEATURE: usize = 0x0c;
const CONFIG_MSIX_VECTOR: usize = 0x10;
const NUM_QUEUES: usize = 0x12;
const DEVICE_STATUS: usize = 0x14;
const QUEUE_SELECT: usize = 0x16;
const QUEUE_SIZE: usize = 0x18;
const QUEUE_MSIX_VECTOR: usize = 0x1a;
const QUEUE_ENABLE: usize = 0x1c;
const QUEUE_NOTIFY_OFF: usize = 0x1e;
const QUEUE_DESC: usize = 0x20;
const QUEUE_DRIVER: usize = 0x28;
const QUEUE_DEVICE: usize = 0x30;
const S_ACK: u8 = 1;
const S_DRIVER: u8 = 2;
const S_DRIVER_OK: u8 = 4;
const S_FEATURES_OK: u8 = 8;
const F_VERSION_1: u32 = 1 << 0; // bit 32, in the high word
const F_ACCESS_PLATFORM: u32 = 1 << 1; // bit 33

fn virtio_blk_read(
    device: &Arc<Device>,
    dma: &Arc<DmaSpace>,
    bars: &mut [Option<MmioRegion>],
    caps: &[Option<VirtioCap>; 6],
    irqs: &[Irq],
) -> io::Result<()> {
    let (Some(common), Some(notify)) = (caps[1], caps[2]) else {
        say!("virtio: no modern common/notify capability; skipping the DMA test");
        return Ok(());
    };
    say!("virtio: common {common:?}, notify {notify:?}");
    if common.bar != notify.bar {
        return Err(other("probe expects common and notify cfg in one BAR"));
    }
    let bar = bars
        .get_mut(common.bar as usize)
        .and_then(|b| b.as_mut())
        .ok_or_else(|| other("virtio BAR not mapped"))?;
    let c = common.offset as usize;

    // Bus master on: the device may now DMA, into what we mapped only.
    let mut cmd = [0u8; 2];
    device.read_config(4, &mut cmd)?;
    let cmd = u16::from_le_bytes(cmd) | 0x6;
    device.write_config(4, &cmd.to_le_bytes())?;

    bar.write8(c + DEVICE_STATUS, 0);
    while bar.read8(c + DEVICE_STATUS) != 0 {
        std::thread::yield_now();
    }
    bar.write8(c + DEVICE_STATUS, S_ACK | S_DRIVER);
    bar.write32(c + DEVICE_FEATURE_SELECT, 1);
    let high = bar.read32(c + DEVICE_FEATURE);
    say!(
        "virtio: features high word {high:#x} (VERSION_1 {}, ACCESS_PLATFORM {}), {} queues",
        high & F_VERSION_1 != 0,
        high & F_ACCESS_PLATFORM != 0,
        bar.read16(c + NUM_QUEUES)
    );
    if high & F_ACCESS_PLATFORM == 0 {
        // Without it the device bypasses the IOMMU and would DMA to guest
        // physical addresses equal to our IOVAs: refuse.
        say!("virtio: device lacks VIRTIO_F_ACCESS_PLATFORM (iommu_platform=off); skipping DMA");
        bar.write8(c + DEVICE_STATUS, 0);
        return Ok(());
    }
    bar.write32(c + DRIVER_FEATURE_SELECT, 1);
    bar.write32(c + DRIVER_FEATURE, F_VERSION_1 | F_ACCESS_PLATFORM);
    bar.write32(c + DRIVER_FEATURE_SELECT, 0);
    bar.write32(c + DRIVER_FEATURE, 0);
    bar.write8(c + DEVICE_STATUS, S_ACK | S_DRIVER | S_FEATURES_OK);
    if bar.read8(c + DEVICE_STATUS) & S_FEATURES_OK == 0 {
        return Err(other("device refused FEATURES_OK"));
    }
    bar.write16(c + CONFIG_MSIX_VECTOR, 0xffff);

    const QSIZE: u16 = 8;
    bar.write16(c + QUEUE_SELECT, 0);
    let max = bar.read16(c + QUEUE_SIZE);
    bar.write16(c + QUEUE_SIZE, QSIZE.min(max));
    bar.write16(c + QUEUE_MSIX_VECTOR, 0);
    let vec = bar.read16(c + QUEUE_MSIX_VECTOR);
    if vec != 0 {
        return Err(other(format!("queue MSI-X vector not accepted ({vec:#x})")));
    }
    let notify_off = bar.read16(c + QUEUE_NOTIFY_OFF);

    let mut desc = Dma::<[u8]>::zeroed_slice(dma, 4096)?;
    let mut avail = Dma::<[u8]>::zeroed_slice(dma, 4096)?;
    let used = Dma::<[u8]>::zeroed_slice(dma, 4096)?;
    let mut req = Dma::<[u8]>::zeroed_slice(dma, 4096)?;
    bar.write64(c + QUEUE_DESC, desc.iova());
    bar.write64(c + QUEUE_DRIVER, avail.iova());
    bar.write64(c + QUEUE_DEVICE, used.iova());
    bar.write16(c + QUEUE_ENABLE, 1);
    bar.write8(
        c + DEVICE_STATUS,
        S_ACK | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK,
    );

    // Request: header (type IN = 0, sector 0) at 0, data at 512, status
    // at 1024; the status byte starts at 0xff so "untouched" is visible.
    req[0..16].fill(0);
    req[1024] = 0xff;
    let base = req.iova();
    let mut put_desc = |i: usize, addr: u64, len: u32, flags: u16, next: u16| {
        let d = &mut desc[i * 16..i * 16 + 16];
        d[0..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..16].copy_from_slice(&next.to_le_bytes());
    };
    const NEXT: u16 = 1;
    const WRITE: u16 = 2;
    put_desc(0, base, 16, NEXT, 1);
    put_desc(1, base + 512, 512, NEXT | WRITE, 2);
    put_desc(2, base + 1024, 1, WRITE, 0);
    avail[4..6].copy_from_slice(&0u16.to_le_bytes()); // ring[0] = head 0
    wmb(); // descriptors before the index that publishes them
    avail[2..4].copy_from_slice(&1u16.to_le_bytes()); // idx = 1
    mb(); // index before the doorbell
    let notify_at = notify.offset as usize + notify_off as usize * notify.extra as usize;
    if notify_at + 2 > notify.offset as usize + notify.length as usize {
        return Err(other("queue notify address outside the notify structure"));
    }
    bar.write16(notify_at, 0);
    say!(
        "virtio: request queued, notified at BAR{} {notify_at:#x}",
        notify.bar
    );

    let n = irqs[0].wait(Duration::from_secs(20))?;
    say!("virtio: MSI-X vector 0 fired {n} time(s)");
    // SAFETY: `used` is live DMA memory; volatile because the device wrote it.
    let used_idx =
        unsafe { std::ptr::read_volatile(used.as_ptr().cast::<u8>().add(2).cast::<u16>()) };
    rmb(); // index before the entries and data it covers
           // SAFETY: as above, the request buffer the device wrote.
    let status = unsafe { std::ptr::read_volatile(req.as_ptr().cast::<u8>().add(1024)) };
    let data = &req[512..1024];
    let text: String = data[..48]
        .iter()
        .map(|&b| {
            if b.is_ascii_graphic() || b == b' ' {
                b as char
            } else {
                '.'
            }
        })
        .collect();
    say!("virtio: used idx {used_idx}, status {status}, sector 0 starts {text:?}");
    bar.write8(c + DEVICE_STATUS, 0);
    if n == 0 || used_idx != 1 || status != 0 {
        return Err(other("virtio read did not complete"));
    }
    say!("virtio: DMA read of sector 0 complete");
    Ok(())
}
