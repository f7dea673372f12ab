//! CMOS real-time clock driver: /scheme/time (skeleton; being written).

fn main() {}
