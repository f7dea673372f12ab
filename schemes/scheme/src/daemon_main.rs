//! The whole `main` of a simple scheme daemon: register with init, serve
//! until the mount goes away.

use std::process::ExitCode;

use crate::{RootKind, Scheme, Server};

/// Registers `name` with init, reports ready and serves `scheme` until the
/// scheme is unmounted. Errors are logged; the exit code tells init.
pub fn run_daemon<S: Scheme>(name: &str, kind: RootKind, scheme: S) -> ExitCode {
    daemon::init_logging();
    let run = || -> std::io::Result<()> {
        let d = daemon::Daemon::from_env()?;
        let fd = d.register(name, kind)?;
        let server = Server::new(fd, scheme)?;
        d.ready()?;
        server.run()
    };
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("scheme {name}: {e}");
            ExitCode::FAILURE
        }
    }
}
