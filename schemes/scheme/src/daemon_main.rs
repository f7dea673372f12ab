//! The whole `main` of a simple scheme daemon: register with init, serve
//! until the mount goes away, answering init's heartbeat meanwhile.

use std::process::ExitCode;

use rustix::event::{PollFd, PollFlags};
use rustix::io::Errno;

use crate::{RootKind, Scheme, Server, Status};

/// Registers `name` with init, reports ready and serves `scheme` until the
/// scheme is unmounted. Errors are logged; the exit code tells init.
pub fn run_daemon<S: Scheme>(name: &str, kind: RootKind, scheme: S) -> ExitCode {
    daemon::init_logging();
    let run = || -> std::io::Result<()> {
        let d = daemon::Daemon::from_env()?;
        let server = Server::from_registration(d.register(name, kind)?, scheme)?;
        d.ready()?;
        serve(server, &d)
    };
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("scheme {name}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Serves `server` until it is unmounted, answering init on `daemon`'s
/// control socket (init ends a daemon that stops answering).
pub fn serve<S: Scheme>(mut server: Server<S>, daemon: &daemon::Daemon) -> std::io::Result<()> {
    loop {
        if server.process()? == Status::Unmounted {
            return Ok(());
        }
        let mut fds = [
            PollFd::new(&server, PollFlags::IN),
            PollFd::from_borrowed_fd(daemon.control_fd(), PollFlags::IN),
        ];
        match rustix::event::poll(&mut fds, None) {
            Ok(_) | Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
        if !fds[1].revents().is_empty() {
            for notice in daemon.serve_control()? {
                log::warn!("init sent {notice:?}, which a scheme daemon does not take");
            }
        }
    }
}
