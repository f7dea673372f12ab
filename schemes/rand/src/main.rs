//! randd: serves `/scheme/rand` (see the library for the semantics).

use std::process::ExitCode;

fn run() -> std::io::Result<()> {
    let d = daemon::Daemon::from_env()?;
    let fd = d.register_file_scheme("rand")?;
    let server = scheme::Server::new(fd, randd::RandScheme::new())?;
    d.ready()?;
    server.run()
}

fn main() -> ExitCode {
    daemon::init_logging();
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("randd: {e}");
            ExitCode::FAILURE
        }
    }
}
