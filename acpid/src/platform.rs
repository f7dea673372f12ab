//! Platform devices and their drivers: the devices the firmware describes
//! outside PCI (ACPI `_HID`/`_CID` devices, or devicetree nodes with a
//! `compatible` property), the rules in `/etc/acpid.d/*.toml` that name a
//! driver for them, and starting those drivers through init with exactly
//! the device's resources.
//!
//! Rule files (see `initfs/etc/acpid.d/README`):
//!
//! ```toml
//! [[drivers]]
//! name = "rtc"                           # optional, for logs
//! ids = ["PNP0B00", "motorola,mc146818"] # ACPI ids and/or compatible strings
//! command = ["rtcd"]                     # init template unit, then arguments
//! ```
//!
//! A device's ids are tried in order, most specific first (`_HID`, then each
//! `_CID`; a devicetree `compatible` list is already in that order); for
//! each, the first rule listing it (files in name order, rules in file
//! order) wins. Ids compare exactly. Unknown keys are errors, and a file
//! with an error is skipped whole, reported as `file:line: message`.
//!
//! A matched device that is present (`_STA` bit 0) is started as
//! `UNIT@<instance>` (see [`PlatformDevice::instance`]) with init granting
//! its I/O port ranges (`ioperm`, before the driver's privileges are
//! dropped) and each memory window passed as `--mem BASE+LEN` (hex). Memory
//! windows are information only: Linux cannot grant a process one window
//! of physical memory without `/dev/mem`, which is all or nothing.
//!
//! Host tests: `acpid/tests/platform.rs` (rules, matching, starting drivers
//! against a fake init, and a DTB that dtc builds from
//! `acpid/tests/fixtures/dt/platform.dts`).

use std::io;
use std::ops::RangeInclusive;
use std::path::Path;

pub use daemon::config::RuleError;
use daemon::config::{self, RuleKeys};
use serde::Deserialize;
use toml::Spanned;

/// A memory window of a device (`_CRS` memory descriptor or devicetree
/// `reg` entry), in CPU physical addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemRange {
    pub base: u64,
    pub len: u64,
    pub writable: bool,
}

/// One platform device: an ACPI namespace device with `_HID` or `_CID`,
/// or a devicetree node with `compatible`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PlatformDevice {
    /// AML path as the interpreter prints it (`\_SB.PCI0.SF8.RTC`), or the
    /// devicetree node path (`/soc/rtc@70`).
    pub path: String,
    /// `PNP0B00` (EISA ids decoded to text) or a string `_HID`.
    pub hid: Option<String>,
    /// `_CID`s; for a devicetree node its `compatible` strings.
    pub cids: Vec<String>,
    /// `_UID`; for a devicetree node its unit address (`70` of `rtc@70`).
    pub uid: Option<String>,
    /// `_STA`; 0x0F when the device has none. A devicetree node is 0x0F
    /// unless its `status` says otherwise (then 0).
    pub status: u32,
    pub io: Vec<RangeInclusive<u16>>,
    pub memory: Vec<MemRange>,
    pub irqs: Vec<u32>,
}

impl PlatformDevice {
    /// `_STA` bit 0: the device is present.
    pub fn present(&self) -> bool {
        self.status & 1 != 0
    }

    /// Every id, most specific first: `_HID`, then the `_CID`s.
    pub fn ids(&self) -> Vec<&str> {
        self.hid
            .iter()
            .chain(self.cids.iter())
            .map(String::as_str)
            .collect()
    }

    /// The driver instance name: `acpi-<id>-<uid>` for an ACPI device
    /// (`acpi-PNP0B00-0`; uid `0` when it has none), `dt-<id>-<unit
    /// address>` for a devicetree node (`dt-motorola_mc146818-70`). `<id>`
    /// is the most specific id. Only `[A-Za-z0-9._-]` survive, anything else
    /// becomes `_`, so the name is a valid unit instance and scheme name
    /// part.
    pub fn instance(&self) -> String {
        let origin = if self.path.starts_with('/') {
            "dt"
        } else {
            "acpi"
        };
        let id = self.ids().first().copied().unwrap_or("unknown");
        let uid = self.uid.as_deref().unwrap_or("0");
        format!("{origin}-{}-{}", sanitize(id), sanitize(uid))
    }
}

fn sanitize(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.is_empty() {
        out.push('_');
    }
    out
}

/// One `[[drivers]]` entry of `/etc/acpid.d/*.toml` (parsed by
/// `daemon::config`, which reads its `name` and `command`).
pub type Rule = config::Rule<AcpiMatch>;

/// The key of a rule that says which devices it is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcpiMatch {
    /// ACPI ids (`PNP0B00`, `ACPI0010`) and/or devicetree `compatible`
    /// strings (`motorola,mc146818`). Never empty.
    pub ids: Vec<String>,
}

/// [`AcpiMatch`] as TOML gives it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAcpiMatch {
    ids: Option<Spanned<Vec<String>>>,
}

impl RuleKeys for AcpiMatch {
    type Raw = RawAcpiMatch;
    const KEYS: &'static [&'static str] = &["name", "ids", "command"];

    fn from_raw(r: RawAcpiMatch, rule: usize) -> Result<AcpiMatch, (usize, String)> {
        let ids = match r.ids {
            None => return Err((rule, "rule has no `ids`".into())),
            Some(ids) if ids.get_ref().is_empty() => {
                return Err((
                    ids.span().start,
                    "`ids` is empty: the rule would match nothing".into(),
                ))
            }
            Some(ids) => {
                // An id travels to logs and instance names as one word.
                if let Some(bad) = ids.get_ref().iter().find(|i| !config::valid_word(i)) {
                    return Err((
                        ids.span().start,
                        format!("id {bad:?} is empty or has spaces or control characters"),
                    ));
                }
                ids.into_inner()
            }
        };
        Ok(AcpiMatch { ids })
    }
}

/// Parses one rule file; `file` names it in rules and errors. Errors read
/// `file:line: message`.
pub fn parse_rules(file: &str, text: &str) -> Result<Vec<Rule>, RuleError> {
    config::parse_rules(file, text)
}

/// Reads every `*.toml` in `dir` in name order (see
/// [`daemon::config::load_rules`]).
pub fn load_rules(dir: &Path) -> (Vec<Rule>, Vec<RuleError>) {
    config::load_rules(dir)
}

/// The rule for a device with `ids` (most specific first): for the first
/// id any rule lists, the first such rule.
pub fn match_rule<'a>(rules: &'a [Rule], ids: &[&str]) -> Option<&'a Rule> {
    ids.iter()
        .find_map(|id| rules.iter().find(|r| r.keys.ids.iter().any(|x| x == id)))
}

/// The extra arguments a driver gets for its memory windows:
/// `--mem 0xfed00000+0x400` per window.
pub fn mem_args(device: &PlatformDevice) -> Vec<String> {
    device
        .memory
        .iter()
        .flat_map(|m| ["--mem".to_owned(), format!("{:#x}+{:#x}", m.base, m.len)])
        .collect()
}

/// Starts the driver of every present device a rule matches: init starts
/// `UNIT@<instance>` with the rule's arguments, `--mem BASE+LEN` per memory
/// window, and exactly the device's I/O port ranges granted. Returns one
/// result per device it tried (absent and unmatched devices are skipped);
/// the caller logs them.
pub fn start_drivers(
    daemon: &daemon::Daemon,
    devices: &[PlatformDevice],
    rules: &[Rule],
) -> Vec<(String, io::Result<()>)> {
    let mut results = Vec::new();
    let mut names: Vec<String> = Vec::new();
    for device in devices {
        // Two devices with the same id and _UID (firmware bugs happen) get
        // `.2`, `.3` …, in walk order, as their /scheme/acpi/devices files do.
        let base = device.instance();
        let mut instance = base.clone();
        let mut n = 1;
        while names.contains(&instance) {
            n += 1;
            instance = format!("{base}.{n}");
        }
        names.push(instance.clone());
        if !device.present() {
            continue;
        }
        let Some(rule) = match_rule(rules, &device.ids()) else {
            continue;
        };
        let mut args: Vec<String> = rule.driver.args().to_vec();
        args.extend(mem_args(device));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        log::debug!(
            "{}: rule {} starts {}@{instance}",
            device.path,
            rule.driver.describe(),
            rule.driver.unit()
        );
        let r = daemon.spawn_with_ioports(rule.driver.unit(), &instance, &args, &[], &device.io);
        results.push((instance, r));
    }
    results
}

// ---- devicetree ----

/// `status` absent, `okay` or `ok`: present.
const STA_PRESENT: u32 = 0x0f;

/// How addresses in one bus's address space reach CPU addresses: windows
/// `(bus base, cpu base, length)`; `None` for a bus that is not memory
/// mapped (no `ranges`).
type Mapping = Option<Vec<(u64, u64, u64)>>;

fn be_cells(bytes: &[u8]) -> Option<u64> {
    // One or two 32-bit cells; more do not fit a CPU address here.
    match bytes.len() {
        4 => Some(u64::from(u32::from_be_bytes(bytes.try_into().ok()?))),
        8 => Some(u64::from_be_bytes(bytes.try_into().ok()?)),
        _ => None,
    }
}

fn cell_prop(node: &fdt::node::FdtNode<'_, '_>, name: &str) -> Option<usize> {
    let p = node.property(name)?;
    let v: [u8; 4] = p.value.try_into().ok()?;
    Some(u32::from_be_bytes(v) as usize)
}

/// `(#address-cells, #size-cells)` a node gives its children (spec
/// defaults 2 and 1).
fn child_cells(node: &fdt::node::FdtNode<'_, '_>) -> (usize, usize) {
    (
        cell_prop(node, "#address-cells").unwrap_or(2),
        cell_prop(node, "#size-cells").unwrap_or(1),
    )
}

fn translate(map: &Mapping, addr: u64, len: u64) -> Option<u64> {
    map.as_ref()?.iter().find_map(|&(bus, cpu, size)| {
        let off = addr.checked_sub(bus)?;
        (off < size && len <= size - off).then(|| cpu.checked_add(off))?
    })
}

/// Splits `value` into records of `widths` cells each (big-endian u32s);
/// `None` if the length does not divide or a field has more than 2 cells.
fn records(value: &[u8], widths: &[usize]) -> Option<Vec<Vec<u64>>> {
    let stride: usize = widths.iter().sum::<usize>() * 4;
    if stride == 0 || !value.len().is_multiple_of(stride) || widths.iter().any(|&w| w > 2) {
        return None;
    }
    value
        .chunks(stride)
        .map(|rec| {
            let mut at = 0;
            widths
                .iter()
                .map(|&w| {
                    let field = &rec[at..at + w * 4];
                    at += w * 4;
                    if w == 0 {
                        Some(0)
                    } else {
                        be_cells(field)
                    }
                })
                .collect()
        })
        .collect()
}

/// The mapping for the children of `node`, whose own address space maps
/// through `map` and whose parent gives addresses `parent_addr_cells`
/// cells.
fn child_mapping(
    node: &fdt::node::FdtNode<'_, '_>,
    map: &Mapping,
    parent_addr_cells: usize,
) -> Mapping {
    let ranges = node.property("ranges")?;
    if ranges.value.is_empty() {
        return map.clone(); // identity: children share the parent's space
    }
    let (addr, size) = child_cells(node);
    let recs = records(ranges.value, &[addr, parent_addr_cells, size])?;
    Some(
        recs.iter()
            .filter_map(|r| Some((r[0], translate(map, r[1], r[2])?, r[2])))
            .collect(),
    )
}

fn phandle_of(node: &fdt::node::FdtNode<'_, '_>) -> Option<u32> {
    let p = node.property("phandle")?;
    Some(u32::from_be_bytes(p.value.try_into().ok()?))
}

struct Walk<'d> {
    /// `phandle` → `#interrupt-cells` of every interrupt controller.
    irq_cells: std::collections::HashMap<u32, usize>,
    out: &'d mut Vec<PlatformDevice>,
}

impl Walk<'_> {
    fn visit(
        &mut self,
        node: fdt::node::FdtNode<'_, '_>,
        path: &str,
        parent_cells: (usize, usize),
        map: &Mapping,
        irq_parent: Option<u32>,
    ) {
        let irq_parent = node
            .property("interrupt-parent")
            .and_then(|p| Some(u32::from_be_bytes(p.value.try_into().ok()?)))
            .or(irq_parent);
        if path != "/" {
            if let Some(compat) = node.compatible() {
                let cids: Vec<String> = compat
                    .all()
                    .filter(|c| !c.is_empty())
                    .map(str::to_owned)
                    .collect();
                let status = match node.property("status").and_then(|p| p.as_str()) {
                    None | Some("okay" | "ok") => STA_PRESENT,
                    Some(_) => 0,
                };
                let memory = node
                    .property("reg")
                    .and_then(|p| records(p.value, &[parent_cells.0, parent_cells.1]))
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|r| {
                        Some(MemRange {
                            base: translate(map, r[0], r[1])?,
                            len: r[1],
                            writable: true,
                        })
                    })
                    .collect();
                let cells = irq_parent
                    .and_then(|p| self.irq_cells.get(&p).copied())
                    .unwrap_or(1);
                let irqs = node
                    .property("interrupts")
                    .and_then(|p| {
                        let widths = vec![1; cells.max(1)];
                        records(p.value, &widths)
                    })
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|r| u32::try_from(*r.first()?).ok())
                    .collect();
                let uid = node.name.split_once('@').map(|(_, a)| a.to_owned());
                self.out.push(PlatformDevice {
                    path: path.to_owned(),
                    hid: None,
                    cids,
                    uid,
                    status,
                    io: Vec::new(),
                    memory,
                    irqs,
                });
            }
        }
        let cells = child_cells(&node);
        let child_map = if path == "/" {
            map.clone()
        } else {
            child_mapping(&node, map, parent_cells.0)
        };
        for child in node.children() {
            let child_path = if path == "/" {
                format!("/{}", child.name)
            } else {
                format!("{path}/{}", child.name)
            };
            self.visit(child, &child_path, cells, &child_map, irq_parent);
        }
    }
}

/// Parses a flattened devicetree into platform devices: every node but the
/// root with a `compatible` property, its strings as `cids` (so the same
/// rules match), its unit address as `uid`, `reg` entries translated
/// through the parents' `ranges` as `memory` (entries that are not CPU
/// addresses are left out), the first cell of each `interrupts` specifier
/// as `irqs`, and `status` as present (0x0F) or not (0). Devicetree gives no
/// I/O ports.
pub fn devices_from_dtb(dtb: &[u8]) -> Result<Vec<PlatformDevice>, String> {
    let fdt = fdt::Fdt::new(dtb).map_err(|e| format!("not a devicetree blob: {e}"))?;
    // The fdt crate panics on some malformed blobs (bad offsets, truncated
    // structure); a firmware blob must never take acpid down.
    std::panic::catch_unwind(|| {
        let root = fdt
            .find_node("/")
            .ok_or("the devicetree has no root node")?;
        let irq_cells = fdt
            .all_nodes()
            .filter_map(|n| Some((phandle_of(&n)?, cell_prop(&n, "#interrupt-cells")?)))
            .collect();
        let mut out = Vec::new();
        let mut walk = Walk {
            irq_cells,
            out: &mut out,
        };
        // The root's children address CPU space directly.
        let identity: Mapping = Some(vec![(0, 0, u64::MAX)]);
        walk.visit(root, "/", (2, 1), &identity, None);
        Ok(out)
    })
    .unwrap_or_else(|_| Err("malformed devicetree blob".to_owned()))
}
