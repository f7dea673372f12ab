//! randd: serves `/scheme/rand` (see the library for the semantics).

fn main() -> std::process::ExitCode {
    scheme::run_daemon("rand", scheme::RootKind::File, randd::RandScheme::new())
}
