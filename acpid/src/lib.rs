//! acpid: the firmware's ACPI description of the machine, served as
//! `/scheme/acpi` (see `docs/acpi.md`): the tables the kernel copied out
//! (raw and decoded), the AML namespace in the `acpi` crate's interpreter,
//! the platform devices it describes (started as drivers by
//! `platform::start_drivers`), and power off / reset.

pub mod aml;
pub mod devices;
pub mod facts;
pub mod platform;
pub mod power;
pub mod resources;
pub mod scheme;
pub mod symbols;
pub mod tables;
pub mod views;
