//! pcid: finds every PCI function through sysfs, serves them as
//! `/scheme/pci`, matches them against `/etc/pcid.d` rules and asks init to
//! start each matched function's driver with a VFIO container, the VFIO
//! device and a channel to pcid. Like Redox's pcid, on Linux's VFIO.

pub mod addr;
pub mod channel;
pub mod config;
pub mod names;
pub mod pci_scheme;
pub mod rules;
pub mod service;
pub mod summary;
pub mod sysfs;
pub mod table;
pub mod uevent;

/// Where the driver rules live.
pub const RULES_DIR: &str = "/etc/pcid.d";
