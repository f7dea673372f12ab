//! Thin wrappers over the VFIO ioctls, on fds we were handed.
//!
//! pcid opens `/dev/vfio/vfio` (a [`Container`]) and `/dev/vfio/<group>` (a
//! [`Group`]), attaches the group, selects the type1v2 IOMMU and takes the
//! [`Device`] fd; the driver receives the container and device fds and uses
//! only the device and DMA calls. Struct layouts and constants come from
//! `vfio-bindings`; the ioctl numbers are `_IO(';', 100 + n)` as in
//! `include/uapi/linux/vfio.h` (VFIO passes sizes in `argsz`, not in the
//! ioctl number).

use std::ffi::{c_void, CString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use rustix::fs::{Mode, OFlags};
use rustix::ioctl::{Ioctl, IoctlOutput, Opcode};
use vfio_bindings::bindings::vfio as sys;

use crate::io::MmioRegion;
use crate::{err, os_err};

/// ioctl numbers: `_IO(VFIO_TYPE, VFIO_BASE + n)`.
mod nr {
    pub const GET_API_VERSION: u8 = 0;
    pub const CHECK_EXTENSION: u8 = 1;
    pub const SET_IOMMU: u8 = 2;
    pub const GROUP_GET_STATUS: u8 = 3;
    pub const GROUP_SET_CONTAINER: u8 = 4;
    pub const GROUP_GET_DEVICE_FD: u8 = 6;
    pub const DEVICE_GET_INFO: u8 = 7;
    pub const DEVICE_GET_REGION_INFO: u8 = 8;
    pub const DEVICE_GET_IRQ_INFO: u8 = 9;
    pub const DEVICE_SET_IRQS: u8 = 10;
    pub const DEVICE_RESET: u8 = 11;
    pub const IOMMU_GET_INFO: u8 = 12;
    pub const IOMMU_MAP_DMA: u8 = 13;
    pub const IOMMU_UNMAP_DMA: u8 = 14;
}

/// Region and IRQ indexes of a vfio-pci device.
pub const BAR0_REGION: u32 = sys::VFIO_PCI_BAR0_REGION_INDEX;
pub const ROM_REGION: u32 = sys::VFIO_PCI_ROM_REGION_INDEX;
pub const CONFIG_REGION: u32 = sys::VFIO_PCI_CONFIG_REGION_INDEX;
pub const INTX_IRQ: u32 = sys::VFIO_PCI_INTX_IRQ_INDEX;
pub const MSI_IRQ: u32 = sys::VFIO_PCI_MSI_IRQ_INDEX;
pub const MSIX_IRQ: u32 = sys::VFIO_PCI_MSIX_IRQ_INDEX;
pub const ERR_IRQ: u32 = sys::VFIO_PCI_ERR_IRQ_INDEX;
pub const REQ_IRQ: u32 = sys::VFIO_PCI_REQ_IRQ_INDEX;

fn opcode(n: u8) -> Opcode {
    rustix::ioctl::opcode::none(sys::VFIO_TYPE, sys::VFIO_BASE as u8 + n)
}

/// One VFIO ioctl: an opcode and an argument that is either a pointer to a
/// struct the kernel reads and/or writes, or a plain integer.
struct VfioIoctl {
    opcode: Opcode,
    arg: *mut c_void,
}

// SAFETY: the opcode and argument are passed to the kernel unchanged; the
// callers of `vfio_ioctl` guarantee the argument matches what the opcode
// expects. IS_MUTATING is true because most VFIO ioctls write back into
// the argument.
unsafe impl Ioctl for VfioIoctl {
    type Output = IoctlOutput;
    const IS_MUTATING: bool = true;

    fn opcode(&self) -> Opcode {
        self.opcode
    }

    fn as_ptr(&mut self) -> *mut c_void {
        self.arg
    }

    unsafe fn output_from_ptr(out: IoctlOutput, _: *mut c_void) -> rustix::io::Result<IoctlOutput> {
        Ok(out)
    }
}

/// Issues VFIO ioctl `n` and returns its non-negative result.
///
/// # Safety
/// `arg` must be what ioctl `n` expects: a pointer to a correctly sized,
/// initialised, writable struct with `argsz` set, or an integer value cast
/// to a pointer for the ioctls that take one.
unsafe fn vfio_ioctl(fd: BorrowedFd<'_>, n: u8, arg: *mut c_void) -> rustix::io::Result<i32> {
    rustix::ioctl::ioctl(
        fd,
        VfioIoctl {
            opcode: opcode(n),
            arg,
        },
    )
}

/// `argsz` for a fixed-size VFIO struct.
fn argsz<T>() -> u32 {
    size_of::<T>() as u32
}

fn open_rw(path: &str) -> io::Result<OwnedFd> {
    rustix::fs::open(path, OFlags::RDWR | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| os_err(&format!("open {path}"), e))
}

/// A VFIO container: one IOMMU address space (here: one per function).
#[derive(Debug)]
pub struct Container {
    fd: OwnedFd,
}

impl Container {
    /// Opens a new container (`/dev/vfio/vfio`); pcid only.
    pub fn open() -> io::Result<Container> {
        Container::from_fd(open_rw("/dev/vfio/vfio")?)
    }

    /// Wraps a container fd we were given, checking the API version and
    /// that the kernel offers the type1v2 IOMMU.
    pub fn from_fd(fd: OwnedFd) -> io::Result<Container> {
        // SAFETY: GET_API_VERSION takes no argument.
        let version = unsafe { vfio_ioctl(fd.as_fd(), nr::GET_API_VERSION, std::ptr::null_mut()) }
            .map_err(|e| os_err("VFIO_GET_API_VERSION (is this a VFIO container fd?)", e))?;
        if version != sys::VFIO_API_VERSION as i32 {
            return Err(err(
                io::ErrorKind::Unsupported,
                format!(
                    "VFIO API version {version}, expected {}",
                    sys::VFIO_API_VERSION
                ),
            ));
        }
        // SAFETY: CHECK_EXTENSION takes the extension number as an integer.
        let has = unsafe {
            vfio_ioctl(
                fd.as_fd(),
                nr::CHECK_EXTENSION,
                sys::VFIO_TYPE1v2_IOMMU as usize as *mut c_void,
            )
        }
        .map_err(|e| os_err("VFIO_CHECK_EXTENSION", e))?;
        if has <= 0 {
            return Err(err(
                io::ErrorKind::Unsupported,
                "the kernel's VFIO has no type1v2 IOMMU (is vfio_iommu_type1 loaded?)",
            ));
        }
        Ok(Container { fd })
    }

    /// Selects the type1v2 IOMMU. Only valid once a group was attached.
    pub fn set_iommu_type1v2(&self) -> io::Result<()> {
        // SAFETY: SET_IOMMU takes the IOMMU type as an integer.
        unsafe {
            vfio_ioctl(
                self.fd.as_fd(),
                nr::SET_IOMMU,
                sys::VFIO_TYPE1v2_IOMMU as usize as *mut c_void,
            )
        }
        .map_err(|e| os_err("VFIO_SET_IOMMU(type1v2)", e))?;
        Ok(())
    }

    /// Makes `size` bytes of our memory at `vaddr` reachable by the device
    /// at `iova`. Pins the pages (they count against RLIMIT_MEMLOCK).
    pub fn map_dma(
        &self,
        vaddr: usize,
        iova: u64,
        size: usize,
        writable_by_device: bool,
    ) -> io::Result<()> {
        let mut flags = sys::VFIO_DMA_MAP_FLAG_READ;
        if writable_by_device {
            flags |= sys::VFIO_DMA_MAP_FLAG_WRITE;
        }
        let mut map = sys::vfio_iommu_type1_dma_map {
            argsz: argsz::<sys::vfio_iommu_type1_dma_map>(),
            flags,
            vaddr: vaddr as u64,
            iova,
            size: size as u64,
        };
        // SAFETY: a valid, fully initialised dma_map struct with argsz set;
        // the kernel checks vaddr/size against our address space itself.
        unsafe { vfio_ioctl(self.fd.as_fd(), nr::IOMMU_MAP_DMA, (&raw mut map).cast()) }.map_err(
            |e| {
                let hint = if e == rustix::io::Errno::NOMEM {
                    " (RLIMIT_MEMLOCK too low for the pinned memory?)"
                } else {
                    ""
                };
                os_err(
                    &format!("VFIO_IOMMU_MAP_DMA iova {iova:#x} size {size:#x}{hint}"),
                    e,
                )
            },
        )?;
        Ok(())
    }

    /// Removes the mapping made by [`Container::map_dma`] at `iova`.
    pub fn unmap_dma(&self, iova: u64, size: usize) -> io::Result<()> {
        let mut unmap = sys::vfio_iommu_type1_dma_unmap {
            argsz: argsz::<sys::vfio_iommu_type1_dma_unmap>(),
            flags: 0,
            iova,
            size: size as u64,
            data: Default::default(),
        };
        // SAFETY: a valid dma_unmap struct with argsz set and no trailing
        // data (no flags); the kernel writes back the unmapped size.
        unsafe {
            vfio_ioctl(
                self.fd.as_fd(),
                nr::IOMMU_UNMAP_DMA,
                (&raw mut unmap).cast(),
            )
        }
        .map_err(|e| os_err(&format!("VFIO_IOMMU_UNMAP_DMA iova {iova:#x}"), e))?;
        if unmap.size != size as u64 {
            return Err(err(
                io::ErrorKind::Other,
                format!(
                    "VFIO_IOMMU_UNMAP_DMA at {iova:#x} unmapped {:#x} bytes, expected {size:#x}",
                    unmap.size
                ),
            ));
        }
        Ok(())
    }

    /// Usable IOVA ranges (VFIO_IOMMU_GET_INFO capability IOVA_RANGE),
    /// `[start, end]` inclusive, sorted. Reserved windows (the x86 MSI
    /// window at 0xfee00000) are holes between them.
    pub fn iova_ranges(&self) -> io::Result<Vec<(u64, u64)>> {
        let buf = self.iommu_info()?;
        let ranges = parse_iova_ranges(bytes_of_u64s(&buf))?;
        ranges.ok_or_else(|| {
            err(
                io::ErrorKind::Unsupported,
                "VFIO_IOMMU_GET_INFO reported no IOVA_RANGE capability",
            )
        })
    }

    /// Page sizes the IOMMU can map (bit n set: 2^n bytes).
    pub fn iova_pgsizes(&self) -> io::Result<u64> {
        let buf = self.iommu_info()?;
        let bytes = bytes_of_u64s(&buf);
        // iova_pgsizes is the u64 at offset 8; flags at 4 says if valid.
        let flags = read_u32(bytes, 4).unwrap_or(0);
        if flags & sys::VFIO_IOMMU_INFO_PGSIZES == 0 {
            return Err(err(
                io::ErrorKind::Unsupported,
                "IOMMU reports no page sizes",
            ));
        }
        read_u64(bytes, 8).ok_or_else(|| err(io::ErrorKind::InvalidData, "short IOMMU info"))
    }

    /// VFIO_IOMMU_GET_INFO with its capability chain: asked once with the
    /// bare struct, the kernel raises `argsz` to what the chain needs; then
    /// asked again with a buffer that large. The buffer is `u64`s so the
    /// struct's 8-byte fields are aligned.
    fn iommu_info(&self) -> io::Result<Vec<u64>> {
        let mut size = argsz::<sys::vfio_iommu_type1_info>() as usize;
        for _ in 0..4 {
            let mut buf = vec![0u64; size.div_ceil(8)];
            // argsz is the first u32 of the struct (little-endian x86-64).
            buf[0] = size as u64;
            // SAFETY: `buf` is at least `argsz` bytes, 8-aligned, zeroed
            // except argsz; the kernel writes at most argsz bytes.
            unsafe { vfio_ioctl(self.fd.as_fd(), nr::IOMMU_GET_INFO, buf.as_mut_ptr().cast()) }
                .map_err(|e| os_err("VFIO_IOMMU_GET_INFO", e))?;
            let wanted = (buf[0] & 0xffff_ffff) as usize;
            if wanted <= size {
                return Ok(buf);
            }
            size = wanted;
        }
        Err(err(
            io::ErrorKind::Other,
            "VFIO_IOMMU_GET_INFO kept growing argsz",
        ))
    }
}

impl AsFd for Container {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

fn bytes_of_u64s(buf: &[u64]) -> &[u8] {
    // SAFETY: any initialised u64 memory is valid as bytes; the length is
    // the same allocation measured in bytes.
    unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), size_of_val(buf)) }
}

fn read_u32(b: &[u8], off: usize) -> Option<u32> {
    let s = b.get(off..off.checked_add(4)?)?;
    Some(u32::from_le_bytes(s.try_into().ok()?))
}

fn read_u64(b: &[u8], off: usize) -> Option<u64> {
    let s = b.get(off..off.checked_add(8)?)?;
    Some(u64::from_le_bytes(s.try_into().ok()?))
}

/// Finds the IOVA_RANGE capability in a `vfio_iommu_type1_info` buffer
/// (as the kernel filled it) and returns its ranges, sorted. `Ok(None)` if
/// the kernel reported no such capability. Every offset is bounds-checked
/// and the chain walk is bounded, so a malformed buffer gives an error,
/// never a panic or a loop.
pub fn parse_iova_ranges(info: &[u8]) -> io::Result<Option<Vec<(u64, u64)>>> {
    let bad = |what: &str| err(io::ErrorKind::InvalidData, format!("IOMMU info: {what}"));
    let flags = read_u32(info, 4).ok_or_else(|| bad("too short"))?;
    if flags & sys::VFIO_IOMMU_INFO_CAPS == 0 {
        return Ok(None);
    }
    // cap_offset follows argsz, flags and the u64 iova_pgsizes.
    let mut off = read_u32(info, 16).ok_or_else(|| bad("too short"))? as usize;
    let mut steps = 0;
    while off != 0 {
        steps += 1;
        if steps > 64 {
            return Err(bad("capability chain does not end"));
        }
        let id = read_u32(info, off).ok_or_else(|| bad("capability out of bounds"))? & 0xffff;
        let next = read_u32(info, off + 4).ok_or_else(|| bad("capability out of bounds"))?;
        if id == sys::VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE {
            let n = read_u32(info, off + 8).ok_or_else(|| bad("IOVA_RANGE truncated"))? as usize;
            let mut ranges = Vec::with_capacity(n.min(256));
            for i in 0..n {
                let at = off + 16 + i * 16;
                let start = read_u64(info, at).ok_or_else(|| bad("IOVA_RANGE truncated"))?;
                let end = read_u64(info, at + 8).ok_or_else(|| bad("IOVA_RANGE truncated"))?;
                if end >= start {
                    ranges.push((start, end));
                }
            }
            ranges.sort_unstable();
            return Ok(Some(ranges));
        }
        off = next as usize;
    }
    Ok(None)
}

/// A VFIO group (`/dev/vfio/N`): the unit of isolation the IOMMU gives.
#[derive(Debug)]
pub struct Group {
    fd: OwnedFd,
}

impl Group {
    /// Opens `/dev/vfio/<group_number>`; pcid only.
    pub fn open(group_number: u32) -> io::Result<Group> {
        Ok(Group {
            fd: open_rw(&format!("/dev/vfio/{group_number}"))?,
        })
    }

    fn status(&self) -> io::Result<u32> {
        let mut st = sys::vfio_group_status {
            argsz: argsz::<sys::vfio_group_status>(),
            flags: 0,
        };
        // SAFETY: a valid group_status struct with argsz set.
        unsafe { vfio_ioctl(self.fd.as_fd(), nr::GROUP_GET_STATUS, (&raw mut st).cast()) }
            .map_err(|e| os_err("VFIO_GROUP_GET_STATUS", e))?;
        Ok(st.flags)
    }

    /// True when every device in the group is bound to a VFIO driver (or
    /// none), i.e. the group can be used.
    pub fn is_viable(&self) -> io::Result<bool> {
        Ok(self.status()? & sys::VFIO_GROUP_FLAGS_VIABLE != 0)
    }

    /// Attaches the group to `c`.
    pub fn set_container(&self, c: &Container) -> io::Result<()> {
        let mut fd: i32 = c.fd.as_raw_fd();
        // SAFETY: SET_CONTAINER reads an i32 fd through the pointer; `fd`
        // lives across the call.
        unsafe {
            vfio_ioctl(
                self.fd.as_fd(),
                nr::GROUP_SET_CONTAINER,
                (&raw mut fd).cast(),
            )
        }
        .map_err(|e| os_err("VFIO_GROUP_SET_CONTAINER", e))?;
        Ok(())
    }

    /// Gets the device fd for `pci_address` (e.g. `"0000:00:04.0"`). The
    /// group must be attached to a container whose IOMMU is set.
    pub fn device(&self, pci_address: &str) -> io::Result<Device> {
        let name = CString::new(pci_address)
            .map_err(|_| err(io::ErrorKind::InvalidInput, "PCI address contains NUL"))?;
        // SAFETY: GET_DEVICE_FD reads a NUL-terminated string; `name` lives
        // across the call. The kernel only reads it, the cast to *mut is
        // required by the ioctl plumbing.
        let raw = unsafe {
            vfio_ioctl(
                self.fd.as_fd(),
                nr::GROUP_GET_DEVICE_FD,
                name.as_ptr().cast_mut().cast(),
            )
        }
        .map_err(|e| os_err(&format!("VFIO_GROUP_GET_DEVICE_FD {pci_address}"), e))?;
        // SAFETY: on success the ioctl returned a new fd that nothing else
        // in this process owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        rustix::io::fcntl_setfd(&fd, rustix::io::FdFlags::CLOEXEC)
            .map_err(|e| os_err("fcntl(FD_CLOEXEC)", e))?;
        Device::from_fd(fd)
    }
}

impl AsFd for Group {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// What VFIO_DEVICE_GET_INFO reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceInfo {
    pub flags: u32,
    pub num_regions: u32,
    pub num_irqs: u32,
}

impl DeviceInfo {
    pub fn is_pci(&self) -> bool {
        self.flags & sys::VFIO_DEVICE_FLAGS_PCI != 0
    }
    pub fn can_reset(&self) -> bool {
        self.flags & sys::VFIO_DEVICE_FLAGS_RESET != 0
    }
}

/// What VFIO_DEVICE_GET_REGION_INFO reports for one region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegionInfo {
    pub index: u32,
    pub flags: u32,
    pub size: u64,
    /// Where the region starts within the device fd (for pread/mmap).
    pub offset: u64,
}

impl RegionInfo {
    pub fn readable(&self) -> bool {
        self.flags & sys::VFIO_REGION_INFO_FLAG_READ != 0
    }
    pub fn writable(&self) -> bool {
        self.flags & sys::VFIO_REGION_INFO_FLAG_WRITE != 0
    }
    pub fn mmappable(&self) -> bool {
        self.flags & sys::VFIO_REGION_INFO_FLAG_MMAP != 0
    }
}

/// What VFIO_DEVICE_GET_IRQ_INFO reports for one interrupt index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IrqInfo {
    pub index: u32,
    pub flags: u32,
    pub count: u32,
}

impl IrqInfo {
    pub fn eventfd(&self) -> bool {
        self.flags & sys::VFIO_IRQ_INFO_EVENTFD != 0
    }
    pub fn maskable(&self) -> bool {
        self.flags & sys::VFIO_IRQ_INFO_MASKABLE != 0
    }
    /// Level-triggered (INTx): VFIO masks the line after each interrupt.
    pub fn automasked(&self) -> bool {
        self.flags & sys::VFIO_IRQ_INFO_AUTOMASKED != 0
    }
    /// Vectors must be enabled as one set (MSI/MSI-X).
    pub fn noresize(&self) -> bool {
        self.flags & sys::VFIO_IRQ_INFO_NORESIZE != 0
    }
}

/// A VFIO device fd: config space, BARs, interrupts and reset of one
/// function.
#[derive(Debug)]
pub struct Device {
    fd: OwnedFd,
    /// The config region's place in the fd, looked up once.
    config: RegionInfo,
    /// Every region's info, looked up when the fd is taken (before any
    /// sandbox): later lookups need no ioctl, which drivers' seccomp lists
    /// need not allow.
    regions: Vec<RegionInfo>,
}

/// Size of the `vfio_irq_set` header before its `data[]` array.
const IRQ_SET_HEADER: usize = 20;

impl Device {
    /// Wraps a device fd we were given; fails unless it is a vfio-pci
    /// device fd.
    pub fn from_fd(fd: OwnedFd) -> io::Result<Device> {
        let mut dev = Device {
            fd,
            config: RegionInfo {
                index: CONFIG_REGION,
                flags: 0,
                size: 0,
                offset: 0,
            },
            regions: Vec::new(),
        };
        let info = dev.info()?;
        if !info.is_pci() {
            return Err(err(
                io::ErrorKind::InvalidInput,
                format!("VFIO device is not PCI (flags {:#x})", info.flags),
            ));
        }
        dev.regions = (0..info.num_regions)
            .filter_map(|i| dev.region(i).ok())
            .collect();
        dev.config = dev.region(CONFIG_REGION)?;
        // Fault injection (`configwrite`) keeps its own handle on the device.
        crate::fault::config::device_opened(&dev);
        Ok(dev)
    }

    /// A second handle on the same device (a duplicated fd).
    pub(crate) fn try_clone(&self) -> io::Result<Device> {
        let fd = rustix::io::fcntl_dupfd_cloexec(&self.fd, 0)
            .map_err(|e| os_err("fcntl(F_DUPFD_CLOEXEC) of the VFIO device", e))?;
        Ok(Device {
            fd,
            config: self.config,
            regions: self.regions.clone(),
        })
    }

    pub fn info(&self) -> io::Result<DeviceInfo> {
        let mut info = sys::vfio_device_info {
            argsz: argsz::<sys::vfio_device_info>(),
            ..Default::default()
        };
        // SAFETY: a valid device_info struct with argsz set.
        unsafe { vfio_ioctl(self.fd.as_fd(), nr::DEVICE_GET_INFO, (&raw mut info).cast()) }
            .map_err(|e| os_err("VFIO_DEVICE_GET_INFO (is this a VFIO device fd?)", e))?;
        Ok(DeviceInfo {
            flags: info.flags,
            num_regions: info.num_regions,
            num_irqs: info.num_irqs,
        })
    }

    pub fn region(&self, index: u32) -> io::Result<RegionInfo> {
        if let Some(r) = self.regions.iter().find(|r| r.index == index) {
            return Ok(*r);
        }
        let mut info = sys::vfio_region_info {
            argsz: argsz::<sys::vfio_region_info>(),
            index,
            ..Default::default()
        };
        // SAFETY: a valid region_info struct with argsz and index set; a
        // capability chain, if any, is not requested (argsz is the bare
        // struct) so the kernel writes only the struct.
        unsafe {
            vfio_ioctl(
                self.fd.as_fd(),
                nr::DEVICE_GET_REGION_INFO,
                (&raw mut info).cast(),
            )
        }
        .map_err(|e| os_err(&format!("VFIO_DEVICE_GET_REGION_INFO({index})"), e))?;
        Ok(RegionInfo {
            index,
            flags: info.flags,
            size: info.size,
            offset: info.offset,
        })
    }

    pub fn irq_info(&self, index: u32) -> io::Result<IrqInfo> {
        let mut info = sys::vfio_irq_info {
            argsz: argsz::<sys::vfio_irq_info>(),
            index,
            ..Default::default()
        };
        // SAFETY: a valid irq_info struct with argsz and index set.
        unsafe {
            vfio_ioctl(
                self.fd.as_fd(),
                nr::DEVICE_GET_IRQ_INFO,
                (&raw mut info).cast(),
            )
        }
        .map_err(|e| os_err(&format!("VFIO_DEVICE_GET_IRQ_INFO({index})"), e))?;
        Ok(IrqInfo {
            index,
            flags: info.flags,
            count: info.count,
        })
    }

    fn config_range(&self, offset: u64, len: usize) -> io::Result<u64> {
        let end = offset.checked_add(len as u64);
        if end.is_none_or(|end| end > self.config.size) {
            return Err(err(
                io::ErrorKind::InvalidInput,
                format!(
                    "config access of {len} bytes at {offset:#x} exceeds {:#x}",
                    self.config.size
                ),
            ));
        }
        Ok(self.config.offset + offset)
    }

    /// Reads config space (`pread` on the config region).
    pub fn read_config(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let base = self.config_range(offset, buf.len())?;
        let mut done = 0;
        while done < buf.len() {
            let n = rustix::io::pread(&self.fd, &mut buf[done..], base + done as u64)
                .map_err(|e| os_err(&format!("config read at {offset:#x}"), e))?;
            if n == 0 {
                return Err(err(
                    io::ErrorKind::UnexpectedEof,
                    "config read returned 0 bytes",
                ));
            }
            done += n;
        }
        Ok(())
    }

    /// Writes config space (`pwrite` on the config region; VFIO filters
    /// what a user may change).
    pub fn write_config(&self, offset: u64, buf: &[u8]) -> io::Result<()> {
        let base = self.config_range(offset, buf.len())?;
        let mut done = 0;
        while done < buf.len() {
            let n = rustix::io::pwrite(&self.fd, &buf[done..], base + done as u64)
                .map_err(|e| os_err(&format!("config write at {offset:#x}"), e))?;
            if n == 0 {
                return Err(err(io::ErrorKind::WriteZero, "config write wrote 0 bytes"));
            }
            done += n;
        }
        Ok(())
    }

    /// Reads region `index` at `offset` through the fd (`pread`; for a BAR,
    /// VFIO does the MMIO access, refusing it while memory decode is off).
    pub fn read_region(&self, index: u32, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let r = self.region(index)?;
        rustix::io::pread(&self.fd, buf, r.offset + offset)
            .map_err(|e| os_err(&format!("read of region {index} at {offset:#x}"), e))
    }

    /// Writes region `index` at `offset` through the fd (`pwrite`).
    pub fn write_region(&self, index: u32, offset: u64, buf: &[u8]) -> io::Result<usize> {
        let r = self.region(index)?;
        rustix::io::pwrite(&self.fd, buf, r.offset + offset)
            .map_err(|e| os_err(&format!("write of region {index} at {offset:#x}"), e))
    }

    /// Maps BAR region `index` read-write.
    pub fn map_region(&self, index: u32) -> io::Result<MmioRegion> {
        let r = self.region(index)?;
        if r.size == 0 {
            return Err(err(
                io::ErrorKind::NotFound,
                format!("region {index} is not implemented (size 0)"),
            ));
        }
        if !r.mmappable() {
            return Err(err(
                io::ErrorKind::Unsupported,
                format!(
                    "region {index} cannot be mmapped (flags {:#x}: no VFIO_REGION_INFO_FLAG_MMAP; an I/O-port BAR?)",
                    r.flags
                ),
            ));
        }
        let len = usize::try_from(r.size)
            .map_err(|_| err(io::ErrorKind::InvalidInput, "region too large"))?;
        MmioRegion::map_shared(&self.fd, r.offset, len)
            .map_err(|e| err(e.kind(), format!("region {index}: {e}")))
    }

    /// VFIO_DEVICE_SET_IRQS with a `data[]` array. The header is five u32s;
    /// the buffer is built of u32s so header and data are aligned.
    fn set_irqs(
        &self,
        index: u32,
        flags: u32,
        start: u32,
        count: u32,
        data: &[i32],
    ) -> io::Result<()> {
        let mut buf: Vec<u32> = Vec::with_capacity(IRQ_SET_HEADER / 4 + data.len());
        let argsz = IRQ_SET_HEADER + 4 * data.len();
        let argsz =
            u32::try_from(argsz).map_err(|_| err(io::ErrorKind::InvalidInput, "too many IRQs"))?;
        buf.extend_from_slice(&[argsz, flags, index, start, count]);
        buf.extend(data.iter().map(|&d| d as u32));
        // SAFETY: `buf` holds a complete vfio_irq_set of `argsz` bytes:
        // the header as declared by the uapi and `data.len()` s32 values.
        unsafe {
            vfio_ioctl(
                self.fd.as_fd(),
                nr::DEVICE_SET_IRQS,
                buf.as_mut_ptr().cast(),
            )
        }
        .map_err(|e| {
            os_err(
                &format!("VFIO_DEVICE_SET_IRQS(index {index}, flags {flags:#x}, count {count})"),
                e,
            )
        })?;
        Ok(())
    }

    /// Has VFIO signal interrupt `start + i` of `index` on `fds[i]`
    /// (ACTION_TRIGGER | DATA_EVENTFD, start 0). For MSI/MSI-X this also
    /// enables the capability and programs the vectors.
    pub fn set_irq_eventfds(&self, index: u32, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        if fds.is_empty() {
            return Err(err(io::ErrorKind::InvalidInput, "no eventfds given"));
        }
        let raw: Vec<i32> = fds.iter().map(|fd| fd.as_raw_fd()).collect();
        self.set_irqs(
            index,
            sys::VFIO_IRQ_SET_DATA_EVENTFD | sys::VFIO_IRQ_SET_ACTION_TRIGGER,
            0,
            raw.len() as u32,
            &raw,
        )
    }

    /// Disables every interrupt of `index` (DATA_NONE | ACTION_TRIGGER,
    /// count 0).
    pub fn disable_irqs(&self, index: u32) -> io::Result<()> {
        self.set_irqs(
            index,
            sys::VFIO_IRQ_SET_DATA_NONE | sys::VFIO_IRQ_SET_ACTION_TRIGGER,
            0,
            0,
            &[],
        )
    }

    /// Unmasks the INTx line VFIO masked when it last fired.
    pub fn unmask_intx(&self) -> io::Result<()> {
        self.set_irqs(
            INTX_IRQ,
            sys::VFIO_IRQ_SET_DATA_NONE | sys::VFIO_IRQ_SET_ACTION_UNMASK,
            0,
            1,
            &[],
        )
    }

    /// Fires vector `vector` of `index` from the kernel side (VFIO's
    /// loopback, DATA_NONE | ACTION_TRIGGER): the eventfd is signalled as
    /// if the device had raised the interrupt. For tests and probes.
    pub fn trigger_irq(&self, index: u32, vector: u32) -> io::Result<()> {
        self.set_irqs(
            index,
            sys::VFIO_IRQ_SET_DATA_NONE | sys::VFIO_IRQ_SET_ACTION_TRIGGER,
            vector,
            1,
            &[],
        )
    }

    /// Resets the function (FLR or whatever reset VFIO found for it).
    pub fn reset(&self) -> io::Result<()> {
        // SAFETY: DEVICE_RESET takes no argument.
        unsafe { vfio_ioctl(self.fd.as_fd(), nr::DEVICE_RESET, std::ptr::null_mut()) }
            .map_err(|e| os_err("VFIO_DEVICE_RESET", e))?;
        Ok(())
    }
}

impl AsFd for Device {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opcodes_match_the_uapi_header() {
        // _IO(';', 100 + n) = (0x3b << 8) | (100 + n)
        assert_eq!(opcode(nr::GET_API_VERSION), 0x3b64);
        assert_eq!(opcode(nr::SET_IOMMU), 0x3b66);
        assert_eq!(opcode(nr::GROUP_GET_DEVICE_FD), 0x3b6a);
        assert_eq!(opcode(nr::DEVICE_SET_IRQS), 0x3b6e);
        assert_eq!(opcode(nr::DEVICE_RESET), 0x3b6f);
        assert_eq!(opcode(nr::IOMMU_GET_INFO), 0x3b70);
        assert_eq!(opcode(nr::IOMMU_UNMAP_DMA), 0x3b72);
    }

    #[test]
    fn struct_sizes_match_the_uapi() {
        assert_eq!(size_of::<sys::vfio_iommu_type1_info>(), 24);
        assert_eq!(size_of::<sys::vfio_iommu_type1_dma_map>(), 32);
        assert_eq!(size_of::<sys::vfio_iommu_type1_dma_unmap>(), 24);
        assert_eq!(size_of::<sys::vfio_region_info>(), 32);
        assert_eq!(size_of::<sys::vfio_irq_info>(), 16);
        assert_eq!(size_of::<sys::vfio_irq_set>(), IRQ_SET_HEADER);
        assert_eq!(size_of::<sys::vfio_device_info>(), 24);
    }

    fn le32(v: &mut Vec<u8>, x: u32) {
        v.extend_from_slice(&x.to_le_bytes());
    }
    fn le64(v: &mut Vec<u8>, x: u64) {
        v.extend_from_slice(&x.to_le_bytes());
    }

    /// An info buffer as Linux fills it on an Intel IOMMU: a migration
    /// capability first, then IOVA_RANGE with the MSI window as a hole.
    fn info_with_caps() -> Vec<u8> {
        let mut b = Vec::new();
        le32(&mut b, 0); // argsz (not looked at)
        le32(
            &mut b,
            sys::VFIO_IOMMU_INFO_PGSIZES | sys::VFIO_IOMMU_INFO_CAPS,
        );
        le64(&mut b, 0x4020_1000);
        le32(&mut b, 24); // cap_offset
        le32(&mut b, 0);
        // cap at 24: migration (id 2), next -> 56
        le32(&mut b, 2 | (1 << 16));
        le32(&mut b, 56);
        b.extend_from_slice(&[0u8; 24]);
        // cap at 56: IOVA_RANGE (id 1), last
        le32(&mut b, 1 | (1 << 16));
        le32(&mut b, 0);
        le32(&mut b, 2);
        le32(&mut b, 0);
        le64(&mut b, 0xfef0_0000);
        le64(&mut b, 0xff_ffff_ffff);
        le64(&mut b, 0);
        le64(&mut b, 0xfedf_ffff);
        b
    }

    #[test]
    fn iova_ranges_are_found_in_the_chain_and_sorted() {
        let r = parse_iova_ranges(&info_with_caps()).unwrap().unwrap();
        assert_eq!(r, vec![(0, 0xfedf_ffff), (0xfef0_0000, 0xff_ffff_ffff)]);
    }

    #[test]
    fn no_caps_flag_means_none() {
        let mut b = info_with_caps();
        b[4..8].copy_from_slice(&sys::VFIO_IOMMU_INFO_PGSIZES.to_le_bytes());
        assert_eq!(parse_iova_ranges(&b).unwrap(), None);
    }

    #[test]
    fn truncated_or_looping_chains_are_errors() {
        let b = info_with_caps();
        assert!(
            parse_iova_ranges(&b[..b.len() - 8]).is_err(),
            "truncated range"
        );
        assert!(parse_iova_ranges(&b[..6]).is_err(), "truncated header");
        let mut looped = b.clone();
        // Migration cap points to itself.
        looped[28..32].copy_from_slice(&24u32.to_le_bytes());
        assert!(parse_iova_ranges(&looped).is_err());
        let mut wild = b;
        wild[16..20].copy_from_slice(&4000u32.to_le_bytes());
        assert!(parse_iova_ranges(&wild).is_err());
    }

    #[test]
    fn opening_a_non_vfio_fd_fails_cleanly() {
        let f =
            rustix::fs::open("/dev/null", OFlags::RDWR | OFlags::CLOEXEC, Mode::empty()).unwrap();
        assert!(Container::from_fd(f).is_err());
        let f =
            rustix::fs::open("/dev/null", OFlags::RDWR | OFlags::CLOEXEC, Mode::empty()).unwrap();
        assert!(Device::from_fd(f).is_err());
    }
}
