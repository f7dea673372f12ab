//! Frame traffic tool (skeleton; being written).

fn main() {}
