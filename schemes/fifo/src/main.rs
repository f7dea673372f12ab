//! fifod: serves `/scheme/fifo` (see the library for the semantics).

use std::process::ExitCode;

fn run() -> std::io::Result<()> {
    let d = daemon::Daemon::from_env()?;
    let fd = d.register_scheme("fifo")?;
    let server = scheme::Server::new(fd, fifod::FifoScheme::new())?;
    d.ready()?;
    server.run()
}

fn main() -> ExitCode {
    daemon::init_logging();
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("fifod: {e}");
            ExitCode::FAILURE
        }
    }
}
