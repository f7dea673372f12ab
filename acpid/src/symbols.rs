//! `/scheme/acpi/symbols/`: the AML namespace as a directory tree.
//!
//! Every scope (`\_SB_`, a `Device`, a `Processor`, …) is a directory; every
//! other object is a file named by its four-character segment. Reading a
//! file gives the object's value as text. A `Method` runs when it is read
//! (no arguments) or written (arguments: integers, decimal or `0x` hex, and
//! `"strings"`, separated by white space; the next read gives the result); running AML is for root only, others get `EACCES`. Lookups
//! accept short names (`_SB` for `_SB_`), as AML pads them.

use std::fmt::Write as _;

use acpi::aml::namespace::{AmlName, NameSeg, Namespace, NamespaceLevel, NamespaceLevelKind};
use acpi::aml::object::{FieldUnitKind, Object, WrappedObject};

use crate::aml::{absolute, seg, segments, Aml};
use crate::devices::eisa_id;
use crate::resources;

/// What a path in the symbols tree is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SymbolKind {
    /// A scope: list it.
    Dir,
    /// A method (AML or native): root may run it.
    Method { args: usize },
    /// Any other object: read its value.
    Value,
}

/// Parses the components under `symbols/` into name segments.
pub fn parse(components: &[&str]) -> Option<Vec<NameSeg>> {
    components.iter().map(|c| seg(c)).collect()
}

/// Runs `f` on the namespace level at `target` (if there is one).
fn with_level<R>(
    ns: &mut Namespace,
    target: &[NameSeg],
    f: impl FnOnce(&NamespaceLevel) -> R,
) -> Option<R> {
    let mut f = Some(f);
    let mut out = None;
    let _ = ns.traverse(|name, level| {
        let here = segments(name);
        if here.len() > target.len() || target[..here.len()] != here[..] {
            return Ok(false);
        }
        if here.len() == target.len() {
            if let Some(f) = f.take() {
                out = Some(f(level));
            }
            return Ok(false);
        }
        Ok(true)
    });
    out
}

/// Whether a level is a scope we show (method locals are transient).
fn shown(level: &NamespaceLevel) -> bool {
    level.kind != NamespaceLevelKind::MethodLocals
}

pub fn kind(aml: &Aml, path: &[NameSeg]) -> Option<SymbolKind> {
    if path.is_empty() {
        return Some(SymbolKind::Dir);
    }
    let (last, parent) = path.split_last()?;
    let is_dir = aml
        .with_namespace(|ns| with_level(ns, parent, |l| l.children.get(last).is_some_and(shown)))
        .flatten()
        .unwrap_or(false);
    if is_dir {
        return Some(SymbolKind::Dir);
    }
    let obj = aml.get(&absolute(path))?;
    Some(match &*obj {
        Object::Method { flags, .. } | Object::NativeMethod { flags, .. } => SymbolKind::Method {
            args: flags.arg_count(),
        },
        _ => SymbolKind::Value,
    })
}

/// The entries of the scope at `path`: (name, is a directory), sorted.
pub fn list(aml: &Aml, path: &[NameSeg]) -> Option<Vec<(String, bool)>> {
    aml.with_namespace(|ns| {
        with_level(ns, path, |level| {
            let mut out: Vec<(String, bool)> = level
                .children
                .iter()
                .filter(|(_, l)| shown(l))
                .map(|(n, _)| (n.as_str().to_owned(), true))
                .collect();
            for n in level.values.keys() {
                if !level.children.get(n).is_some_and(shown) {
                    out.push((n.as_str().to_owned(), false));
                }
            }
            out.sort();
            out
        })
    })
    .flatten()
}

/// The text of a non-method object (no AML runs, no hardware is touched).
pub fn value_text(aml: &Aml, path: &[NameSeg]) -> Option<String> {
    let obj = aml.get(&absolute(path))?;
    let name = path
        .last()
        .map(|s| s.as_str().to_owned())
        .unwrap_or_default();
    let mut s = String::new();
    render(&obj, &name, 0, &mut s);
    Some(s)
}

/// Runs the method at `path` with `args` and renders its result.
pub fn run_method(
    aml: &mut Aml,
    path: &[NameSeg],
    args: Vec<WrappedObject>,
) -> Result<String, String> {
    let name: AmlName = absolute(path);
    let result = aml.evaluate(&name, args).map_err(|e| e.to_string())?;
    let mut s = String::new();
    let last = path
        .last()
        .map(|s| s.as_str().to_owned())
        .unwrap_or_default();
    render(&result, &last, 0, &mut s);
    Ok(s)
}

/// Parses method arguments written by root (see the module docs).
pub fn parse_args(text: &str) -> Result<Vec<WrappedObject>, String> {
    let mut args = Vec::new();
    let mut rest = text.trim_start();
    while !rest.is_empty() {
        if let Some(quoted) = rest.strip_prefix('"') {
            let end = quoted
                .find('"')
                .ok_or_else(|| format!("unterminated string in {text:?}"))?;
            args.push(Object::String(quoted[..end].to_owned()).wrap());
            rest = quoted[end + 1..].trim_start();
            continue;
        }
        let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
        let w = &rest[..end];
        let v = if let Some(h) = w.strip_prefix("0x").or_else(|| w.strip_prefix("0X")) {
            u64::from_str_radix(h, 16)
        } else {
            w.parse::<u64>()
        };
        let v = v.map_err(|_| format!("{w:?} is not an integer or a \"string\""))?;
        args.push(Object::Integer(v).wrap());
        rest = rest[end..].trim_start();
    }
    Ok(args)
}

/// Renders an object as text, `name` its segment (EISA ids are decoded for
/// `_HID`/`_CID`, resource templates for `_CRS`/`_PRS`).
pub fn render(obj: &Object, name: &str, depth: usize, out: &mut String) {
    // Package and reference nesting is the firmware's to choose: a bound
    // keeps a hostile table from overflowing the worker's stack.
    const MAX_DEPTH: usize = 32;
    let pad = "  ".repeat(depth);
    if depth > MAX_DEPTH {
        let _ = writeln!(out, "{pad}… (nested deeper than {MAX_DEPTH})");
        return;
    }
    match obj {
        Object::Integer(v) => {
            if matches!(name, "_HID" | "_CID") {
                let _ = writeln!(out, "{pad}{v:#x} ({})", eisa_id(*v));
            } else {
                let _ = writeln!(out, "{pad}{v:#x}");
            }
        }
        Object::String(s) => {
            let _ = writeln!(out, "{pad}{}", s.trim_end_matches('\0'));
        }
        Object::Buffer(b) => {
            let _ = writeln!(out, "{pad}Buffer({}) {{", b.len());
            for chunk in b.chunks(16) {
                let hex: Vec<String> = chunk.iter().map(|x| format!("{x:02x}")).collect();
                let _ = writeln!(out, "{pad}  {}", hex.join(" "));
            }
            let _ = writeln!(out, "{pad}}}");
            if matches!(name, "_CRS" | "_PRS") {
                match resources::decode(b) {
                    Ok(rs) => {
                        for r in rs {
                            let _ = writeln!(out, "{pad}resource: {}", resources::describe(&r));
                        }
                    }
                    Err(e) => {
                        let _ = writeln!(out, "{pad}resource: {e}");
                    }
                }
            }
        }
        Object::Package(items) => {
            let _ = writeln!(out, "{pad}Package({}) {{", items.len());
            // Elements of a _CID package are ids too.
            let inner = if name == "_CID" { "_CID" } else { "" };
            for i in items {
                render(i, inner, depth + 1, out);
            }
            let _ = writeln!(out, "{pad}}}");
        }
        Object::Reference { kind, inner } => {
            let _ = writeln!(out, "{pad}Reference({kind:?}) to:");
            render(inner, name, depth + 1, out);
        }
        Object::FieldUnit(f) => {
            let region = match &f.kind {
                FieldUnitKind::Normal { region } => region_text(region),
                FieldUnitKind::Bank {
                    region, bank_value, ..
                } => {
                    format!("bank {bank_value:#x} of {}", region_text(region))
                }
                FieldUnitKind::Index { .. } => "index/data pair".to_owned(),
            };
            // The crate has no public way to read a field without running
            // an access, so a field shows where it is, not its value.
            let _ = writeln!(
                out,
                "{pad}Field: bits {}..{} of {region}",
                f.bit_index,
                f.bit_index + f.bit_length
            );
        }
        Object::OpRegion(r) => {
            let _ = writeln!(
                out,
                "{pad}OperationRegion {:?} base {:#x} length {:#x}",
                r.space, r.base, r.length
            );
        }
        Object::BufferField { offset, length, .. } => {
            let _ = writeln!(out, "{pad}BufferField: bits {offset}..{}", offset + length);
        }
        Object::Method { flags, .. } => {
            let _ = writeln!(out, "{pad}Method({} arguments)", flags.arg_count());
        }
        Object::NativeMethod { flags, .. } => {
            let _ = writeln!(out, "{pad}NativeMethod({} arguments)", flags.arg_count());
        }
        Object::Mutex { sync_level, .. } => {
            let _ = writeln!(out, "{pad}Mutex(sync level {sync_level})");
        }
        Object::Processor {
            proc_id,
            pblk_address,
            pblk_length,
        } => {
            let _ = writeln!(
                out,
                "{pad}Processor(id {proc_id}, PBLK {pblk_address:#x} length {pblk_length})"
            );
        }
        Object::PowerResource {
            system_level,
            resource_order,
        } => {
            let _ = writeln!(
                out,
                "{pad}PowerResource(system level {system_level}, order {resource_order})"
            );
        }
        Object::Uninitialized => {
            let _ = writeln!(out, "{pad}Uninitialized");
        }
        other => {
            let _ = writeln!(out, "{pad}{:?}", other.typ());
        }
    }
}

fn region_text(region: &WrappedObject) -> String {
    match &**region {
        Object::OpRegion(r) => format!(
            "OperationRegion {:?} base {:#x} length {:#x}",
            r.space, r.base, r.length
        ),
        other => format!("{:?}", other.typ()),
    }
}
