//! The AML interpreter (the `acpi` crate's) and acpid's side of it.
//!
//! The interpreter is not robust against every failure: some AML it does
//! not support ends in `panic!`/`todo!`, and an error inside a nested method
//! call leaves the interpreter's private call stack behind (the next
//! evaluation could resume a stale caller). So every call into it is wrapped
//! in `catch_unwind`, and after any failed evaluation acpid throws the
//! interpreter away and loads the tables again (a few milliseconds for
//! QEMU's DSDT): [`Aml`], here. State AML kept in named objects is lost then;
//! acpid only reads, so that is acceptable.
//!
//! The rest, one job a file: `handler.rs` (the `acpi::Handler` the
//! interpreter calls for hardware access, and the policy it enforces),
//! `hardware.rs` (the hardware behind it: init's port grant, pcid's config
//! files), `worker.rs` (the interpreter on its own thread, each call
//! bounded in time), `names.rs` (AML names from text).

use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use acpi::aml::namespace::{AmlName, Namespace};
use acpi::aml::object::{Object, WrappedObject};
use acpi::aml::Interpreter;
use acpi::registers::FixedRegisters;

use crate::tables::{Tables, HEADER_LEN};

mod handler;
mod hardware;
mod names;
mod worker;

pub use handler::AcpidHandler;
pub use hardware::{pci_function_name, Hardware, SystemHardware};
pub use names::{absolute, child, name, parse_path, seg, segments};
pub use worker::{AmlWorker, LoadReport, MAX_ABANDONED};

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
            crate::facts::with_fadt(b, |f| FixedRegisters::new(f, handler.clone()))
                .map_err(|e| errors.push(format!("FADT register blocks: {e:?}")))
                .ok()
        })
        .or_else(|| crate::facts::with_fadt(&[], |f| FixedRegisters::new(f, handler.clone())).ok());
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
    handler.learn_pci_bases(&interp);
    (Some(interp), errors)
}
