//! The configuration every property test of hostile input uses (the
//! decoders of FUSE requests, init's control protocol, the pcid channel,
//! the state store, unit and rule files).
//!
//! Deterministic by default, so CI sees the same cases on every run: each
//! test names its own fixed seed. `PROPTEST_RNG_SEED=N` explores other
//! cases and `PROPTEST_CASES=N` runs more of them. No failure files: a
//! failing case is printed shrunk, and its regression test is written by
//! hand beside the code.

use proptest::test_runner::{Config, RngSeed};

/// `cases` cases from `seed`, unless the environment asks otherwise.
pub fn config(cases: u32, seed: u64) -> Config {
    let env = Config::default();
    Config {
        cases: if std::env::var_os("PROPTEST_CASES").is_some() {
            env.cases
        } else {
            cases
        },
        rng_seed: if std::env::var_os("PROPTEST_RNG_SEED").is_some() {
            env.rng_seed
        } else {
            RngSeed::Fixed(seed)
        },
        failure_persistence: None,
        ..env
    }
}
