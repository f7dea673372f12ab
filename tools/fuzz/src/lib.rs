//! scheme-fuzz's library side: its seeded generator, which the lab also
//! uses to write the check disk the fuzzer verifies (`rng::pattern`). The
//! fuzzer itself is the binary (`main.rs`).

pub mod rng;
