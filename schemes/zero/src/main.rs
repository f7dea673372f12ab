//! zerod: serves `/scheme/zero` (see the library for the semantics).

fn main() -> std::process::ExitCode {
    scheme::run_daemon("zero", scheme::RootKind::File, zerod::ZeroScheme::new())
}
