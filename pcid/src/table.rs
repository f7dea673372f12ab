//! The function table: every PCI function pcid knows, keyed by address,
//! with who owns it. Built by diffing scans, so hotplug (a new scan after
//! an event) and restarts reuse the same path.

use std::collections::BTreeMap;
use std::fmt;

use pci_types::PciAddress;

use crate::addr::function_name;
use crate::config::{parse_config, ParsedConfig, Resource};
use crate::sysfs::Sysfs;

/// Who holds a function: at most one owner at a time.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Owner {
    #[default]
    None,
    /// A driver pcid asked init to start (`unit@instance`); it holds the
    /// function until its channel (pcid's id `channel`) hangs up.
    Driver {
        unit: String,
        instance: String,
        channel: u64,
    },
    /// Someone opened `/scheme/pci/<fn>/channel` (handle `handle`).
    Channel { pid: u32, handle: usize },
}

impl Owner {
    pub fn is_none(&self) -> bool {
        *self == Owner::None
    }
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Owner::None => f.write_str("none"),
            Owner::Driver { unit, instance, .. } => write!(f, "driver {unit}@{instance}"),
            Owner::Channel { pid, .. } => write!(f, "channel opened by pid {pid}"),
        }
    }
}

/// One function.
#[derive(Debug, Clone)]
pub struct Function {
    pub address: PciAddress,
    /// `pci-SSSS-BB-DD.F`.
    pub name: String,
    /// Config space as sysfs gave it at the last scan.
    pub config: Vec<u8>,
    pub resources: Vec<Resource>,
    pub parsed: ParsedConfig,
    pub owner: Owner,
}

impl Function {
    /// Reads and parses a function from sysfs.
    pub fn read(sysfs: &Sysfs, address: PciAddress) -> Result<Function, String> {
        let config = sysfs
            .read_config(address)
            .map_err(|e| format!("reading config: {e}"))?;
        let resources = sysfs
            .read_resources(address)
            .map_err(|e| format!("reading resource: {e}"))?;
        Function::from_parts(address, config, resources)
    }

    /// A function from captured config bytes and resources.
    pub fn from_parts(
        address: PciAddress,
        config: Vec<u8>,
        resources: Vec<Resource>,
    ) -> Result<Function, String> {
        let parsed = parse_config(address, &config, &resources).map_err(|e| e.to_string())?;
        Ok(Function {
            address,
            name: function_name(address),
            config,
            resources,
            parsed,
            owner: Owner::None,
        })
    }

    /// Whether `other` is the same device (not another one plugged into
    /// the same slot between two scans).
    fn same_device(&self, other: &Function) -> bool {
        let (a, b) = (&self.parsed, &other.parsed);
        (a.vendor, a.device, a.class, a.subclass, a.interface)
            == (b.vendor, b.device, b.class, b.subclass, b.interface)
    }
}

/// What a scan changed.
#[derive(Debug, Default)]
pub struct ScanDiff {
    /// New functions (now in the table, unowned).
    pub added: Vec<PciAddress>,
    /// Functions gone (or replaced by a different device), with their last
    /// state, including their owner.
    pub removed: Vec<Function>,
    /// Functions sysfs lists but that could not be read or parsed; they are
    /// left out of the table (a function we knew is kept as it was).
    pub failed: Vec<(PciAddress, String)>,
}

/// All known functions.
#[derive(Debug, Default)]
pub struct Table {
    functions: BTreeMap<PciAddress, Function>,
}

impl Table {
    pub fn new() -> Table {
        Table::default()
    }

    pub fn get(&self, a: PciAddress) -> Option<&Function> {
        self.functions.get(&a)
    }

    pub fn get_mut(&mut self, a: PciAddress) -> Option<&mut Function> {
        self.functions.get_mut(&a)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Function> {
        self.functions.values()
    }

    /// Functions from address `from` on, in order.
    pub fn range_from(&self, from: PciAddress) -> impl Iterator<Item = &Function> {
        self.functions.range(from..).map(|(_, f)| f)
    }

    pub fn len(&self) -> usize {
        self.functions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.functions.is_empty()
    }

    /// Adds or replaces a function as is (tests, and scans below).
    pub fn insert(&mut self, f: Function) -> Option<Function> {
        self.functions.insert(f.address, f)
    }

    pub fn remove(&mut self, a: PciAddress) -> Option<Function> {
        self.functions.remove(&a)
    }

    /// Reads sysfs again and brings the table in line: new functions are
    /// added, vanished ones removed, known ones refreshed (their owner is
    /// kept). A listed function that cannot be read is reported in
    /// `failed`; if it was known, its old entry stays.
    pub fn rescan(&mut self, sysfs: &Sysfs) -> std::io::Result<ScanDiff> {
        let listed = sysfs.list()?;
        let mut diff = ScanDiff::default();
        let mut seen = std::collections::BTreeSet::new();
        for a in listed {
            seen.insert(a);
            let fresh = match Function::read(sysfs, a) {
                Ok(f) => f,
                Err(e) => {
                    diff.failed.push((a, e));
                    continue;
                }
            };
            match self.functions.get_mut(&a) {
                Some(old) if old.same_device(&fresh) => {
                    old.config = fresh.config;
                    old.resources = fresh.resources;
                    old.parsed = fresh.parsed;
                }
                Some(_) => {
                    if let Some(old) = self.functions.insert(a, fresh) {
                        diff.removed.push(old);
                    }
                    diff.added.push(a);
                }
                None => {
                    self.functions.insert(a, fresh);
                    diff.added.push(a);
                }
            }
        }
        let gone: Vec<PciAddress> = self
            .functions
            .keys()
            .filter(|a| !seen.contains(a))
            .copied()
            .collect();
        for a in gone {
            if let Some(f) = self.functions.remove(&a) {
                diff.removed.push(f);
            }
        }
        Ok(diff)
    }
}
