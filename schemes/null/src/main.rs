//! nulld: serves `/scheme/null` (see the library for the semantics).

fn main() -> std::process::ExitCode {
    scheme::run_daemon("null", scheme::RootKind::File, nulld::SinkScheme::null())
}
