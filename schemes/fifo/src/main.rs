//! fifod: serves `/scheme/fifo` (see the library for the semantics).

fn main() -> std::process::ExitCode {
    scheme::run_daemon("fifo", scheme::RootKind::Dir, fifod::FifoScheme::new())
}
