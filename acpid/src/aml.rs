//! The AML interpreter (the `acpi` crate's) and acpid's handler for the
//! hardware accesses AML makes.
//!
//! The handler enforces acpid's privilege rule: port I/O only inside the
//! ranges init granted (checked by `common::port::PortGrant`, so a refused
//! access never reaches the port), PCI configuration space only through
//! pcid's scheme (`/scheme/pci/pci-SSSS-BB-DD.F/config`), and everything
//! else — system memory, embedded controller, SMBus, … — refused with a
//! logged error. The crate's `Handler` methods cannot return errors, so a
//! refused read answers all ones (what a read of nothing on a PC bus gives)
//! and a refused write is dropped; each refused location is logged once.
//!
//! The interpreter is not robust against every failure: some AML it does
//! not support ends in `panic!`/`todo!`, and an error inside a nested method
//! call leaves the interpreter's private call stack behind (the next
//! evaluation could resume a stale caller). So every call into it is wrapped
//! in `catch_unwind`, and after any failed evaluation acpid throws the
//! interpreter away and loads the tables again (a few milliseconds for
//! QEMU's DSDT). State AML kept in named objects is lost then; acpid only
//! reads, so that is acceptable.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io;
use std::os::unix::fs::FileExt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicI32, AtomicU32, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use acpi::aml::namespace::{AmlName, NameComponent, NameSeg, Namespace};
use acpi::aml::object::{Object, WrappedObject};
use acpi::aml::{AmlError, Interpreter};
use acpi::registers::FixedRegisters;
use acpi::{Handle, Handler, PciAddress, PhysicalMapping};
use common::port::PortGrant;

use crate::tables::{Tables, HEADER_LEN};

/// The hardware AML may reach, behind acpid's policy. The system
/// implementation is [`SystemHardware`]; tests record accesses instead.
pub trait Hardware: Send + Sync {
    /// Reads `width` (1, 2 or 4) bytes at `port`.
    fn port_read(&self, port: u16, width: u8) -> io::Result<u32>;
    fn port_write(&self, port: u16, width: u8, value: u32) -> io::Result<()>;
    /// Reads `width` bytes of a function's configuration space.
    fn pci_read(&self, address: PciAddress, offset: u16, width: u8) -> io::Result<u32>;
    fn pci_write(&self, address: PciAddress, offset: u16, width: u8, value: u32) -> io::Result<()>;
}

/// Ports through init's grant, PCI configuration space through pcid.
pub struct SystemHardware {
    pub grant: PortGrant,
    /// `/scheme/pci` (tests may point elsewhere).
    pub pci_root: PathBuf,
}

/// pcid's name for a function: `pci-SSSS-BB-DD.F`.
pub fn pci_function_name(a: PciAddress) -> String {
    daemon::instance::pci_name(a.segment(), a.bus(), a.device(), a.function())
}

impl Hardware for SystemHardware {
    fn port_read(&self, port: u16, width: u8) -> io::Result<u32> {
        match width {
            1 => self.grant.read8(port).map(u32::from),
            2 => self.grant.read16(port).map(u32::from),
            4 => self.grant.read32(port),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("port access of {width} bytes"),
            )),
        }
    }

    fn port_write(&self, port: u16, width: u8, value: u32) -> io::Result<()> {
        match width {
            1 => self.grant.write8(port, value as u8),
            2 => self.grant.write16(port, value as u16),
            4 => self.grant.write32(port, value),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("port access of {width} bytes"),
            )),
        }
    }

    fn pci_read(&self, address: PciAddress, offset: u16, width: u8) -> io::Result<u32> {
        let path = self
            .pci_root
            .join(pci_function_name(address))
            .join("config");
        let file = std::fs::File::open(&path)?;
        let mut buf = [0u8; 4];
        let n = usize::from(width).min(4);
        file.read_exact_at(&mut buf[..n], offset.into())
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        Ok(u32::from_le_bytes(buf))
    }

    fn pci_write(&self, address: PciAddress, offset: u16, width: u8, value: u32) -> io::Result<()> {
        // pcid serves config space read-only; a write is attempted anyway so
        // the refusal comes from the owner of the function, not from us.
        let path = self
            .pci_root
            .join(pci_function_name(address))
            .join("config");
        let file = std::fs::OpenOptions::new().write(true).open(&path)?;
        let n = usize::from(width).min(4);
        file.write_all_at(&value.to_le_bytes()[..n], offset.into())
    }
}

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

/// Why an evaluation failed.
#[derive(Debug, Clone)]
pub enum EvalError {
    /// No object at that path.
    NotFound,
    /// The interpreter returned an error.
    Aml(String),
    /// The interpreter panicked (unsupported AML); it was rebuilt.
    Panicked(String),
    /// The evaluation did not finish in time (an AML loop, or the
    /// interpreter stuck on AML it cannot parse); see [`AmlWorker`].
    Hung,
    /// AML is switched off (why).
    Unavailable(String),
}

impl fmt::Display for EvalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EvalError::NotFound => write!(f, "no such object"),
            EvalError::Aml(e) => write!(f, "AML error: {e}"),
            EvalError::Panicked(e) => write!(f, "the AML interpreter failed: {e}"),
            EvalError::Hung => write!(f, "the AML interpreter did not finish in time"),
            EvalError::Unavailable(why) => write!(f, "AML is unavailable: {why}"),
        }
    }
}

impl std::error::Error for EvalError {}

fn panic_text(p: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic".to_owned()
    }
}

/// One AML table to load: its name (for messages) and its whole bytes.
#[derive(Debug, Clone)]
struct AmlTable {
    name: String,
    bytes: Vec<u8>,
}

/// The interpreter with the tables loaded, rebuilt after failures.
pub struct Aml {
    handler: AcpidHandler,
    tables: Vec<AmlTable>,
    fadt: Option<Vec<u8>>,
    /// `None` only if the crate could not even build its register blocks
    /// (not reachable with the zeroed fallback FADT, but never a panic).
    interp: Option<Interpreter<AcpidHandler>>,
    /// Errors from the first load, one line per failing table.
    pub load_errors: Vec<String>,
    /// How many times the interpreter was rebuilt after a failure.
    pub rebuilds: usize,
}

impl Aml {
    /// Loads the DSDT and every SSDT of `tables` (validated ones only).
    pub fn new(hw: Arc<dyn Hardware>, tables: &Tables) -> Aml {
        let aml_tables: Vec<AmlTable> = tables
            .aml_tables()
            .into_iter()
            .map(|t| AmlTable {
                name: t.name.clone(),
                bytes: t.bytes.clone(),
            })
            .collect();
        let fadt = tables.find("FACP").map(|t| t.bytes.clone());
        let handler = AcpidHandler::new(hw);
        let (interp, load_errors) = build(&handler, &aml_tables, fadt.as_deref());
        Aml {
            handler,
            tables: aml_tables,
            fadt,
            interp,
            load_errors,
            rebuilds: 0,
        }
    }

    pub fn handler(&self) -> &AcpidHandler {
        &self.handler
    }

    /// Names of the loaded tables, in load order.
    pub fn table_names(&self) -> Vec<String> {
        self.tables.iter().map(|t| t.name.clone()).collect()
    }

    fn rebuild(&mut self) {
        let (interp, errors) = build(&self.handler, &self.tables, self.fadt.as_deref());
        self.interp = interp;
        self.rebuilds += 1;
        log::warn!(
            "AML interpreter reloaded after a failed evaluation ({} load errors)",
            errors.len()
        );
    }

    /// Evaluates `path`: runs a method with `args`, or returns the object.
    /// The argument count is checked first (a wrong count would leave a
    /// stray scope in the crate's namespace).
    pub fn evaluate(
        &mut self,
        path: &AmlName,
        args: Vec<WrappedObject>,
    ) -> Result<WrappedObject, EvalError> {
        if let Some(obj) = self.get(path) {
            let want = match &*obj {
                Object::Method { flags, .. } | Object::NativeMethod { flags, .. } => {
                    flags.arg_count()
                }
                _ => 0,
            };
            if args.len() != want {
                return Err(EvalError::Aml(format!(
                    "{path} takes {want} arguments, {} given",
                    args.len()
                )));
            }
        } else {
            return Err(EvalError::NotFound);
        }
        let Some(interp) = &self.interp else {
            return Err(EvalError::Aml("no AML interpreter".into()));
        };
        let result = catch_unwind(AssertUnwindSafe(|| interp.evaluate(path.clone(), args)));
        match result {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                self.rebuild();
                Err(EvalError::Aml(format!("{e:?}")))
            }
            Err(p) => {
                self.rebuild();
                Err(EvalError::Panicked(panic_text(p)))
            }
        }
    }

    /// Evaluates `path` if it exists (`Ok(None)` if not).
    pub fn evaluate_if_present(
        &mut self,
        path: &AmlName,
    ) -> Result<Option<WrappedObject>, EvalError> {
        match self.evaluate(path, Vec::new()) {
            Ok(v) => Ok(Some(v)),
            Err(EvalError::NotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The object at `path` without evaluating it.
    pub fn get(&self, path: &AmlName) -> Option<WrappedObject> {
        let ns = &self.interp.as_ref()?.namespace;
        catch_unwind(AssertUnwindSafe(|| ns.lock().get(path.clone()).ok()))
            .ok()
            .flatten()
    }

    /// Runs `f` with the namespace locked (read it, do not evaluate).
    pub fn with_namespace<R>(&self, f: impl FnOnce(&mut Namespace) -> R) -> Option<R> {
        let ns = &self.interp.as_ref()?.namespace;
        catch_unwind(AssertUnwindSafe(|| f(&mut ns.lock()))).ok()
    }
}

/// A fresh interpreter with every table loaded; errors per table.
fn build(
    handler: &AcpidHandler,
    tables: &[AmlTable],
    fadt: Option<&[u8]>,
) -> (Option<Interpreter<AcpidHandler>>, Vec<String>) {
    let mut errors = Vec::new();
    // The fixed registers serve only the global-lock release, which never
    // happens without a FACS (we pass none: the FACS lock lives in physical
    // memory). A FADT whose blocks the crate rejects gets zeroed stand-ins.
    let registers = fadt
        .and_then(|b| {
            crate::views::with_fadt(b, |f| FixedRegisters::new(f, handler.clone()))
                .map_err(|e| errors.push(format!("FADT register blocks: {e:?}")))
                .ok()
        })
        .or_else(|| crate::views::with_fadt(&[], |f| FixedRegisters::new(f, handler.clone())).ok());
    let dsdt_revision = tables
        .first()
        .and_then(|t| t.bytes.get(8).copied())
        .unwrap_or(2);
    let Some(registers) = registers else {
        // Not reachable in practice: a zeroed FADT gives port-0 I/O blocks.
        errors.push("cannot build the FADT register blocks: no AML".into());
        return (None, errors);
    };
    // The crate's API takes an `Arc`; the interpreter stays on one thread.
    #[allow(clippy::arc_with_non_send_sync)]
    let registers = Arc::new(registers);
    let interp = Interpreter::new(handler.clone(), dsdt_revision, registers, None);
    for t in tables {
        let Some(stream) = t.bytes.get(HEADER_LEN..) else {
            continue;
        };
        match catch_unwind(AssertUnwindSafe(|| interp.load_table(stream))) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => errors.push(format!("{}: {e:?}", t.name)),
            Err(p) => errors.push(format!("{}: interpreter failed: {}", t.name, panic_text(p))),
        }
    }
    let bases = pci_region_bases(&interp);
    if let Ok(mut b) = handler.shared.pci_bases.lock() {
        *b = bases;
    }
    (Some(interp), errors)
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

// ---------------------------------------------------------- the worker

type Job = Box<dyn FnOnce(&mut Aml) + Send>;

/// How a worker's table load went.
#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    pub tables: Vec<String>,
    pub errors: Vec<String>,
}

/// The interpreter on its own thread, so that AML which never finishes
/// (a `While (One)` in firmware, or bytes the crate's parser loops on) cannot
/// stall the scheme. Each call waits a bounded time. A call that overruns is
/// abandoned: its thread is left to its loop at the lowest priority (nice
/// 19; a thread cannot be stopped from outside) and a fresh worker loads the
/// tables again. If loading itself overruns, or after [`MAX_ABANDONED`]
/// abandoned threads, AML is switched off: tables and devices found so far
/// stay served, AML requests fail.
pub struct AmlWorker {
    jobs: Option<mpsc::Sender<Job>>,
    hw: Arc<dyn Hardware>,
    tables: Tables,
    call_timeout: Duration,
    load_timeout: Duration,
    tid: Arc<AtomicI32>,
    abandoned: usize,
    disabled: Option<String>,
    /// The report of the latest load.
    pub report: LoadReport,
}

/// Abandoned (looping) worker threads tolerated before AML is switched off.
pub const MAX_ABANDONED: usize = 3;

impl AmlWorker {
    /// Starts a worker and waits (at most `load_timeout`) for it to load
    /// the AML of `tables`; calls then wait at most `call_timeout`.
    pub fn start(
        hw: Arc<dyn Hardware>,
        tables: &Tables,
        load_timeout: Duration,
        call_timeout: Duration,
    ) -> AmlWorker {
        let mut w = AmlWorker {
            jobs: None,
            hw,
            tables: tables.clone(),
            call_timeout,
            load_timeout,
            tid: Arc::new(AtomicI32::new(0)),
            abandoned: 0,
            disabled: None,
            report: LoadReport::default(),
        };
        w.spawn();
        w
    }

    /// Why AML is off, if it is.
    pub fn disabled(&self) -> Option<&str> {
        self.disabled.as_deref()
    }

    /// Worker threads given up on so far.
    pub fn abandoned(&self) -> usize {
        self.abandoned
    }

    fn spawn(&mut self) {
        let (jobs, rx) = mpsc::channel::<Job>();
        let (loaded_tx, loaded_rx) = mpsc::sync_channel::<LoadReport>(1);
        let hw = self.hw.clone();
        let tables = self.tables.clone();
        let tid = Arc::new(AtomicI32::new(0));
        self.tid = tid.clone();
        let spawned = std::thread::Builder::new()
            .name("aml".into())
            .spawn(move || {
                tid.store(
                    rustix::thread::gettid().as_raw_nonzero().get(),
                    Ordering::Relaxed,
                );
                let mut aml = Aml::new(hw, &tables);
                let _ = loaded_tx.send(LoadReport {
                    tables: aml.table_names(),
                    errors: aml.load_errors.clone(),
                });
                while let Ok(job) = rx.recv() {
                    // A panic in our own rendering or walking code (the
                    // interpreter calls are wrapped already) ends this job
                    // only: its reply channel drops, and `call` sees that.
                    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(&mut aml)))
                        .is_err()
                    {
                        break;
                    }
                }
            });
        if let Err(e) = spawned {
            self.disabled = Some(format!("cannot start the AML thread: {e}"));
            return;
        }
        match loaded_rx.recv_timeout(self.load_timeout) {
            Ok(report) => {
                self.report = report;
                self.jobs = Some(jobs);
            }
            Err(_) => {
                self.deprioritise();
                self.disabled = Some(format!(
                    "loading the AML did not finish in {:?}",
                    self.load_timeout
                ));
                log::error!("AML: {}", self.disabled.as_deref().unwrap_or(""));
            }
        }
    }

    /// Drops the priority of the current worker thread (about to be
    /// abandoned) as far as an unprivileged thread may.
    fn deprioritise(&self) {
        let tid = self.tid.load(Ordering::Relaxed);
        if let Some(pid) = rustix::process::Pid::from_raw(tid) {
            if let Err(e) = rustix::process::setpriority_process(Some(pid), 19) {
                log::warn!("AML: cannot lower the stuck thread's priority: {e}");
            }
        }
    }

    /// Runs `f` on the interpreter, waiting at most the call timeout.
    pub fn call<R: Send + 'static>(
        &mut self,
        f: impl FnOnce(&mut Aml) -> R + Send + 'static,
    ) -> Result<R, EvalError> {
        if let Some(why) = &self.disabled {
            return Err(EvalError::Unavailable(why.clone()));
        }
        let Some(jobs) = &self.jobs else {
            return Err(EvalError::Unavailable("no AML thread".into()));
        };
        let (tx, rx) = mpsc::sync_channel(1);
        let job: Job = Box::new(move |aml| {
            let _ = tx.send(f(aml));
        });
        if jobs.send(job).is_err() {
            // The thread is gone (it cannot panic out of a job: every
            // interpreter call is wrapped); start another.
            self.jobs = None;
            self.spawn();
            return Err(EvalError::Unavailable("the AML thread had exited".into()));
        }
        match rx.recv_timeout(self.call_timeout) {
            Ok(r) => Ok(r),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                // The job panicked and the thread ended (not stuck: nothing
                // to deprioritise or count); a fresh interpreter takes over.
                log::error!("AML: a request panicked in acpid; reloading the interpreter");
                self.jobs = None;
                self.spawn();
                Err(EvalError::Panicked("acpid's AML request panicked".into()))
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                self.abandoned += 1;
                log::error!(
                    "AML: an evaluation did not finish in {:?}; abandoning its thread ({} of {MAX_ABANDONED})",
                    self.call_timeout,
                    self.abandoned
                );
                self.deprioritise();
                self.jobs = None;
                if self.abandoned >= MAX_ABANDONED {
                    self.disabled = Some(format!("{} evaluations never finished", self.abandoned));
                } else {
                    self.spawn();
                }
                Err(EvalError::Hung)
            }
        }
    }
}

// ------------------------------------------------------------ AML names

/// A validated name segment from text: 1..4 characters, lead `A-Z` or `_`,
/// then `A-Z`, `0-9`, `_`; padded with `_` as AML does.
pub fn seg(text: &str) -> Option<NameSeg> {
    let b = text.as_bytes();
    if b.is_empty() || b.len() > 4 {
        return None;
    }
    let mut out = [b'_'; 4];
    out[..b.len()].copy_from_slice(b);
    NameSeg::from_bytes(out).ok()
}

/// The absolute name `\A.B.C` of these segments (`\` for none).
pub fn absolute(segs: &[NameSeg]) -> AmlName {
    let mut c = vec![NameComponent::Root];
    c.extend(segs.iter().map(|s| NameComponent::Segment(*s)));
    AmlName::from_components(c)
}

/// `path.CHILD` for a constant, valid child name such as `_HID`.
pub fn child(path: &AmlName, name: &str) -> AmlName {
    match (seg(name), path.clone().normalize()) {
        (Some(s), Ok(p)) => {
            let mut segs = segments(&p);
            segs.push(s);
            absolute(&segs)
        }
        _ => path.clone(),
    }
}

/// The segments of an absolute, normal name.
pub fn segments(path: &AmlName) -> Vec<NameSeg> {
    // AmlName keeps its components private; its text form is
    // `\SEG1.SEG2…`, each segment exactly four valid characters.
    path.as_string()
        .trim_start_matches('\\')
        .split('.')
        .filter_map(seg)
        .collect()
}

/// Parses `\_SB.PCI0` or `_SB_.PCI0` (always absolute) safely.
pub fn parse_path(text: &str) -> Option<AmlName> {
    let t = text.trim().trim_start_matches('\\');
    if t.is_empty() {
        return Some(AmlName::root());
    }
    let segs: Option<Vec<NameSeg>> = t.split('.').map(seg).collect();
    segs.map(|s| absolute(&s))
}

/// `AmlName::from_str` for constants in this crate (valid by construction).
pub fn name(text: &str) -> AmlName {
    parse_path(text).unwrap_or_else(AmlName::root)
}
