//! Intel 82540EM (QEMU e1000) driver: /scheme/network.<function>_e1000 (skeleton; being written).

fn main() {}
