//! nulld: serves `/scheme/null` (see the library for the semantics).

use std::process::ExitCode;

fn run() -> std::io::Result<()> {
    let d = daemon::Daemon::from_env()?;
    let fd = d.register_file_scheme("null")?;
    let server = scheme::Server::new(fd, nulld::NullScheme::new())?;
    d.ready()?;
    server.run()
}

fn main() -> ExitCode {
    daemon::init_logging();
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("nulld: {e}");
            ExitCode::FAILURE
        }
    }
}
