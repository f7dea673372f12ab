//! acpid's `acpi::Handler`: the interface the interpreter calls for every
//! hardware access AML makes, and the privilege rule it enforces.
//!
//! Port I/O only inside the ranges init granted (checked by
//! `common::port::PortGrant`, so a refused access never reaches the port),
//! PCI configuration space only through pcid's scheme
//! (`/scheme/pci/pci-SSSS-BB-DD.F/config`), and everything else — system
//! memory, embedded controller, SMBus, … — refused with a logged error.
//! The crate's `Handler` methods cannot return errors, so a refused read
//! answers all ones (what a read of nothing on a PC bus gives) and a
//! refused write is dropped; each refused location is logged once.

use std::collections::{BTreeMap, BTreeSet};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use acpi::aml::namespace::AmlName;
use acpi::aml::object::Object;
use acpi::aml::{AmlError, Interpreter};
use acpi::{Handle, Handler, PciAddress, PhysicalMapping};

use super::hardware::{pci_function_name, Hardware};
use super::names::child;

/// acpid's `acpi::Handler`: cheap to clone (the crate keeps copies).
#[derive(Clone)]
pub struct AcpidHandler {
    shared: Arc<Shared>,
}

struct Shared {
    hw: Arc<dyn Hardware>,
    /// Locations already reported as refused (each is logged once).
    refused: Mutex<BTreeSet<String>>,
    /// Base offset of the PCI_Config operation region of each function
    /// (`None`: several regions, base unknown). See [`pci_region_bases`].
    pci_bases: Mutex<BTreeMap<PciAddress, Option<u16>>>,
    next_mutex: AtomicU32,
    epoch: Instant,
}

/// Longest `Sleep` acpid honours, so AML cannot stall the scheme for long.
const MAX_SLEEP: Duration = Duration::from_secs(1);

impl AcpidHandler {
    pub fn new(hw: Arc<dyn Hardware>) -> AcpidHandler {
        AcpidHandler {
            shared: Arc::new(Shared {
                hw,
                refused: Mutex::new(BTreeSet::new()),
                pci_bases: Mutex::new(BTreeMap::new()),
                next_mutex: AtomicU32::new(1),
                epoch: Instant::now(),
            }),
        }
    }

    pub fn hardware(&self) -> &Arc<dyn Hardware> {
        &self.shared.hw
    }

    /// Notes the `PCI_Config` region bases of a freshly loaded interpreter
    /// (see [`pci_region_bases`]).
    pub(super) fn learn_pci_bases(&self, interp: &Interpreter<AcpidHandler>) {
        let bases = pci_region_bases(interp);
        if let Ok(mut b) = self.shared.pci_bases.lock() {
            *b = bases;
        }
    }

    /// Logs a refused access, once per `key`.
    fn refuse(&self, key: String, why: &str) {
        let first = self
            .shared
            .refused
            .lock()
            .map(|mut set| set.insert(key.clone()))
            .unwrap_or(true);
        if first {
            log::error!("AML access refused: {key}: {why}");
        } else {
            log::debug!("AML access refused again: {key}");
        }
    }

    fn memory_read(&self, address: usize, width: u8) -> u64 {
        self.refuse(
            format!("system memory read at {address:#x}"),
            "acpid does not map physical memory",
        );
        u64::MAX >> (64 - 8 * u32::from(width))
    }

    fn memory_write(&self, address: usize, value: u64) {
        self.refuse(
            format!("system memory write of {value:#x} at {address:#x}"),
            "acpid does not map physical memory",
        );
    }

    fn port_read(&self, port: u16, width: u8) -> u32 {
        match self.shared.hw.port_read(port, width) {
            Ok(v) => v,
            Err(e) => {
                self.refuse(
                    format!("port read at {port:#x} ({width} bytes)"),
                    &e.to_string(),
                );
                u32::MAX >> (32 - 8 * u32::from(width))
            }
        }
    }

    fn port_write(&self, port: u16, width: u8, value: u32) {
        if let Err(e) = self.shared.hw.port_write(port, width, value) {
            self.refuse(
                format!("port write at {port:#x} ({width} bytes)"),
                &e.to_string(),
            );
        }
    }

    /// The configuration space offset of an access the crate reports at
    /// field offset `offset` (see [`pci_region_bases`]).
    fn pci_offset(&self, address: PciAddress, offset: u16) -> Result<u16, String> {
        let bases = self
            .shared
            .pci_bases
            .lock()
            .map_err(|_| "lock poisoned".to_owned())?;
        match bases.get(&address) {
            Some(Some(base)) => base
                .checked_add(offset)
                .ok_or_else(|| "offset past the configuration space".to_owned()),
            Some(None) => Err("the function has several PCI_Config regions; \
                 the interpreter does not say which one this access is in"
                .to_owned()),
            None => Err("no PCI_Config region known for this function".to_owned()),
        }
    }

    fn pci_read(&self, address: PciAddress, field_offset: u16, width: u8) -> u32 {
        let offset = match self.pci_offset(address, field_offset) {
            Ok(o) => o,
            Err(e) => {
                self.refuse(
                    format!("PCI config read {}", pci_function_name(address)),
                    &e,
                );
                return u32::MAX >> (32 - 8 * u32::from(width));
            }
        };
        match self.shared.hw.pci_read(address, offset, width) {
            Ok(v) => v,
            Err(e) => {
                self.refuse(
                    format!(
                        "PCI config read {} offset {offset:#x}",
                        pci_function_name(address)
                    ),
                    &e.to_string(),
                );
                u32::MAX >> (32 - 8 * u32::from(width))
            }
        }
    }

    fn pci_write(&self, address: PciAddress, field_offset: u16, width: u8, value: u32) {
        let offset = match self.pci_offset(address, field_offset) {
            Ok(o) => o,
            Err(e) => {
                self.refuse(
                    format!("PCI config write {}", pci_function_name(address)),
                    &e,
                );
                return;
            }
        };
        if let Err(e) = self.shared.hw.pci_write(address, offset, width, value) {
            self.refuse(
                format!(
                    "PCI config write {} offset {offset:#x}",
                    pci_function_name(address)
                ),
                &e.to_string(),
            );
        }
    }
}

/// A zeroed stand-in for physical memory, 8-byte aligned.
fn dummy_region(size: usize) -> (NonNull<u8>, usize) {
    let words = size.div_ceil(8).max(1);
    let boxed: Box<[u64]> = vec![0u64; words].into_boxed_slice();
    let ptr = Box::into_raw(boxed) as *mut u64 as *mut u8;
    // `Box::into_raw` never returns null.
    (NonNull::new(ptr).unwrap_or(NonNull::dangling()), words * 8)
}

impl Handler for AcpidHandler {
    /// acpid maps no physical memory. The crate asks only when a FADT
    /// register block lies in memory (never on a PC); it gets a zeroed
    /// private buffer instead, so reads see zeros and writes go nowhere.
    unsafe fn map_physical_region<T>(
        &self,
        physical_address: usize,
        size: usize,
    ) -> PhysicalMapping<Self, T> {
        self.refuse(
            format!("mapping physical memory at {physical_address:#x} ({size} bytes)"),
            "given a zeroed private buffer instead",
        );
        let (ptr, mapped_length) = dummy_region(size.max(std::mem::size_of::<T>()));
        PhysicalMapping {
            physical_start: physical_address,
            virtual_start: ptr.cast(),
            region_length: size,
            mapped_length,
            handler: self.clone(),
        }
    }

    fn unmap_physical_region<T>(region: &PhysicalMapping<Self, T>) {
        let words = region.mapped_length / 8;
        let ptr = region.virtual_start.as_ptr() as *mut u64;
        // SAFETY: every mapping comes from `map_physical_region` above, which
        // leaked a `Box<[u64]>` of exactly `mapped_length / 8` words at this
        // address; the crate calls this once, when the mapping is dropped.
        drop(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(ptr, words)) });
    }

    fn read_u8(&self, address: usize) -> u8 {
        self.memory_read(address, 1) as u8
    }
    fn read_u16(&self, address: usize) -> u16 {
        self.memory_read(address, 2) as u16
    }
    fn read_u32(&self, address: usize) -> u32 {
        self.memory_read(address, 4) as u32
    }
    fn read_u64(&self, address: usize) -> u64 {
        self.memory_read(address, 8)
    }
    fn write_u8(&self, address: usize, value: u8) {
        self.memory_write(address, value.into())
    }
    fn write_u16(&self, address: usize, value: u16) {
        self.memory_write(address, value.into())
    }
    fn write_u32(&self, address: usize, value: u32) {
        self.memory_write(address, value.into())
    }
    fn write_u64(&self, address: usize, value: u64) {
        self.memory_write(address, value)
    }

    fn read_io_u8(&self, port: u16) -> u8 {
        self.port_read(port, 1) as u8
    }
    fn read_io_u16(&self, port: u16) -> u16 {
        self.port_read(port, 2) as u16
    }
    fn read_io_u32(&self, port: u16) -> u32 {
        self.port_read(port, 4)
    }
    fn write_io_u8(&self, port: u16, value: u8) {
        self.port_write(port, 1, value.into())
    }
    fn write_io_u16(&self, port: u16, value: u16) {
        self.port_write(port, 2, value.into())
    }
    fn write_io_u32(&self, port: u16, value: u32) {
        self.port_write(port, 4, value)
    }

    fn read_pci_u8(&self, address: PciAddress, offset: u16) -> u8 {
        self.pci_read(address, offset, 1) as u8
    }
    fn read_pci_u16(&self, address: PciAddress, offset: u16) -> u16 {
        self.pci_read(address, offset, 2) as u16
    }
    fn read_pci_u32(&self, address: PciAddress, offset: u16) -> u32 {
        self.pci_read(address, offset, 4)
    }
    fn write_pci_u8(&self, address: PciAddress, offset: u16, value: u8) {
        self.pci_write(address, offset, 1, value.into())
    }
    fn write_pci_u16(&self, address: PciAddress, offset: u16, value: u16) {
        self.pci_write(address, offset, 2, value.into())
    }
    fn write_pci_u32(&self, address: PciAddress, offset: u16, value: u32) {
        self.pci_write(address, offset, 4, value)
    }

    fn nanos_since_boot(&self) -> u64 {
        self.shared.epoch.elapsed().as_nanos() as u64
    }

    fn stall(&self, microseconds: u64) {
        std::thread::sleep(Duration::from_micros(microseconds).min(MAX_SLEEP));
    }

    fn sleep(&self, milliseconds: u64) {
        std::thread::sleep(Duration::from_millis(milliseconds).min(MAX_SLEEP));
    }

    fn create_mutex(&self) -> Handle {
        Handle(self.shared.next_mutex.fetch_add(1, Ordering::Relaxed))
    }

    /// acpid evaluates AML on one thread, one evaluation at a time, so an
    /// AML mutex is never held by anyone else (and AML mutexes are
    /// reentrant): acquiring always succeeds at once.
    fn acquire(&self, _mutex: Handle, _timeout: u16) -> Result<(), AmlError> {
        Ok(())
    }

    fn release(&self, _mutex: Handle) {}

    fn handle_debug(&self, object: &Object) {
        log::debug!("AML Debug: {object}");
    }

    /// The crate's default panics; a `Fatal` in firmware AML must not end
    /// acpid.
    fn handle_fatal_error(&self, fatal_type: u8, fatal_code: u32, fatal_arg: u64) {
        log::error!("AML Fatal: type {fatal_type:#x} code {fatal_code:#x} argument {fatal_arg:#x}");
    }
}

/// Works around the `acpi` crate 6.1: for a `PCI_Config` region it hands
/// the handler the offset of the field *within the region*, without the
/// region's base (`OperationRegion (PIRQ, PCI_Config, 0x60, 0x0C)` reads
/// PIRQA at offset 0, the vendor id, instead of 0x60; 7.0 fixes it). The
/// handler learns which function an access is for, so we note each
/// function's region base here and add it there. A function with regions
/// at different bases is refused (we cannot tell them apart), as is one
/// whose region we did not see (one created inside a method).
fn pci_region_bases(interp: &Interpreter<AcpidHandler>) -> BTreeMap<PciAddress, Option<u16>> {
    use acpi::aml::op_region::RegionSpace;
    let regions: Vec<(AmlName, u64)> = catch_unwind(AssertUnwindSafe(|| {
        let mut out = Vec::new();
        let _ = interp.namespace.lock().traverse(|_, level| {
            for (_, obj) in level.values.values() {
                if let Object::OpRegion(r) = &**obj {
                    if r.space == RegionSpace::PciConfig {
                        out.push((r.parent_device_path.clone(), r.base));
                    }
                }
            }
            Ok(true)
        });
        out
    }))
    .unwrap_or_default();
    let mut bases: BTreeMap<PciAddress, Option<u16>> = BTreeMap::new();
    for (device, base) in regions {
        // The crate's own rule (pci_address_for_device): _SEG and _BBR of
        // the device, default 0, and its _ADR.
        let int = |n: &str| -> u64 {
            catch_unwind(AssertUnwindSafe(|| {
                interp
                    .evaluate_if_present(child(&device, n), Vec::new())
                    .ok()
                    .flatten()
                    .and_then(|v| v.as_integer().ok())
            }))
            .ok()
            .flatten()
            .unwrap_or(0)
        };
        let adr = int("_ADR");
        let address = PciAddress::new(
            int("_SEG") as u16,
            int("_BBR") as u8,
            (adr >> 16) as u8,
            adr as u8,
        );
        let base = u16::try_from(base).ok();
        bases
            .entry(address)
            .and_modify(|b| {
                if *b != base {
                    *b = None;
                }
            })
            .or_insert(base);
    }
    bases
}
