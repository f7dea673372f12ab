//! zerod: serves `/scheme/zero` (the scheme lives in `nulld`'s library,
//! shared with `/scheme/null`).

fn main() -> std::process::ExitCode {
    scheme::run_daemon("zero", scheme::RootKind::File, nulld::SinkScheme::zero())
}
