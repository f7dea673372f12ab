//! ACPI tables, AML namespace, platform devices and power: /scheme/acpi (skeleton; being written).

fn main() {}
