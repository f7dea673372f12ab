//! A minimal `log` backend: one line per record on stderr. init prefixes each
//! line with the service name and keeps it in the service's log file.

use log::{LevelFilter, Log, Metadata, Record};
use std::io::Write;

struct StderrLogger;

impl Log for StderrLogger {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &Record<'_>) {
        if self.enabled(record.metadata()) {
            // One write per line so lines from concurrent threads never interleave.
            let line = format!("{}: {}\n", record.level(), record.args());
            let _ = std::io::stderr().lock().write_all(line.as_bytes());
        }
    }

    fn flush(&self) {}
}

static LOGGER: StderrLogger = StderrLogger;

/// Installs the logger. The level comes from `RUST_LOG` (`error`..`trace`),
/// default `info`. Calling it twice is harmless.
pub fn init_logging() {
    let level = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(LevelFilter::Info);
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(level);
    }
}

/// A daemon's whole `main`: logging to init, then `run`; an error it
/// returns is logged (init shows it on the console and in the service's
/// log) and becomes exit status 1.
pub fn main_with(run: impl FnOnce() -> std::io::Result<()>) -> std::process::ExitCode {
    init_logging();
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            std::process::ExitCode::FAILURE
        }
    }
}
