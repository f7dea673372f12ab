//! PID 1: mounts the file systems, loads the kernel modules, starts the
//! services from /etc/init.d in dependency order, registers their schemes,
//! forwards their output, reaps them, and powers the machine off.
//!
//! init must never exit or panic: every failure below is reported and the
//! machine keeps running with whatever could be started.

mod console;
mod init_scheme;
mod privilege;
mod services;
mod system;
mod unit;

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{SigSet, Signal as NixSignal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use rustix::event::epoll;
use rustix::process::{Pid, WaitOptions};

use console::say;
use daemon::RootKind;
use init_scheme::InitScheme;
use scheme::Server;
use services::{describe, Services, INIT_SCHEME_TOKEN, SIGNAL_TOKEN};
use system::Power;

const UNIT_DIR: &str = "/etc/init.d";
const MODULE_LIST: &str = "/etc/modules.load";
const MODULE_DIR: &str = "/lib/modules";
const SCHEME_ROOT: &str = "/scheme";

/// Printed once every unit has started or failed; the test lab waits for it.
const READY_BANNER: &str = "all services ready";

fn main() {
    if std::process::id() != 1 {
        eprintln!("init: must run as PID 1");
        std::process::exit(1);
    }
    // init runs for the machine's life and makes and drops 1 MiB FUSE
    // buffers (a stand-in per detached or failed scheme). glibc would
    // raise its mmap threshold after the first such free and then keep
    // them in the heap, which only grows: a fixed threshold keeps every
    // large buffer an mmap, returned to the kernel when dropped.
    // SAFETY: mallopt only sets an allocator parameter; called before any
    // other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
    system::mount_filesystems();
    console::open_init_log();
    let cmdline = system::kernel_cmdline();
    let modules = system::load_modules(Path::new(MODULE_LIST), Path::new(MODULE_DIR));
    say(&format!("loaded {modules} kernel modules"));

    // Signals are read from a signalfd in the event loop, never handled
    // asynchronously. busybox's poweroff/reboot/halt send USR2/TERM/USR1.
    let mut mask = SigSet::empty();
    for sig in [
        NixSignal::SIGCHLD,
        NixSignal::SIGUSR1,
        NixSignal::SIGUSR2,
        NixSignal::SIGTERM,
        NixSignal::SIGINT,
    ] {
        mask.add(sig);
    }
    if let Err(e) = mask.thread_block() {
        say(&format!("cannot block signals: {e}"));
    }
    let signals = match SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
    {
        Ok(s) => Some(s),
        Err(e) => {
            say(&format!("no signalfd, children will not be reaped: {e}"));
            None
        }
    };
    let epoll = match epoll::create(epoll::CreateFlags::CLOEXEC) {
        Ok(e) => e,
        Err(e) => {
            // Without an event loop there is nothing to supervise; keep the
            // machine up with a shell so a person can look at it.
            say(&format!("cannot create epoll: {e}"));
            rescue_shell(&cmdline);
        }
    };
    if let Some(s) = &signals {
        if let Err(e) = epoll::add(
            &epoll,
            s.as_fd(),
            epoll::EventData::new_u64(SIGNAL_TOKEN),
            epoll::EventFlags::IN,
        ) {
            say(&format!("cannot watch signals: {e}"));
        }
    }

    let (units, errors) = unit::load_dir(Path::new(UNIT_DIR));
    for e in errors {
        say(&format!("bad unit {e}"));
    }
    let units: Vec<_> = units
        .into_iter()
        .filter(|u| u.enabled_by(&cmdline))
        .collect();
    let (units, errors) = unit::order(units);
    for e in errors {
        say(&format!("unit not started: {e}"));
    }
    let epoll_for_services = match epoll.try_clone() {
        Ok(fd) => fd,
        Err(e) => {
            say(&format!("cannot duplicate epoll fd: {e}"));
            rescue_shell(&cmdline);
        }
    };
    let mut services = Services::new(units, epoll_for_services, Path::new(SCHEME_ROOT));
    let mut init_scheme = serve_init_scheme(&epoll);
    let mut shell: Option<Pid> = None;
    let mut announced = false;
    let mut events = Vec::with_capacity(64);

    loop {
        services.start_eligible();
        if !announced && services.settled() {
            announced = true;
            let failed: Vec<_> = services
                .list
                .iter()
                .filter(|s| matches!(s.state, services::State::Failed(_)))
                .map(|s| s.unit.name.as_str())
                .collect();
            let up = system::uptime();
            if failed.is_empty() {
                say(&format!("{READY_BANNER} ({up:.2} s since boot)"));
            } else {
                say(&format!(
                    "{READY_BANNER} ({up:.2} s since boot), failed: {}",
                    failed.join(", ")
                ));
            }
        }
        if announced && shell.is_none() {
            shell = spawn_shell(&cmdline);
        }

        let timeout = services.next_timer().map(|d| {
            let left = d.saturating_duration_since(Instant::now()) + Duration::from_millis(1);
            rustix::event::Timespec::try_from(left).unwrap_or(rustix::event::Timespec {
                tv_sec: 1,
                tv_nsec: 0,
            })
        });
        events.clear();
        match epoll::wait(
            &epoll,
            rustix::buffer::spare_capacity(&mut events),
            timeout.as_ref(),
        ) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => {
                say(&format!("epoll_wait: {e}"));
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        for ev in events.iter() {
            let token = ev.data.u64();
            if token == INIT_SCHEME_TOKEN {
                if let Some(server) = init_scheme.as_mut() {
                    serve_init_requests(server, &mut services);
                }
                continue;
            }
            if token != SIGNAL_TOKEN {
                services.on_event(token);
                continue;
            }
            let Some(sfd) = &signals else { continue };
            while let Ok(Some(info)) = sfd.read_signal() {
                match NixSignal::try_from(info.ssi_signo as i32) {
                    Ok(NixSignal::SIGCHLD) => reap(&mut services, &mut shell),
                    Ok(NixSignal::SIGUSR2) => shutdown(&mut services, Power::Off),
                    Ok(NixSignal::SIGTERM) => shutdown(&mut services, Power::Reboot),
                    Ok(NixSignal::SIGUSR1) => shutdown(&mut services, Power::Halt),
                    _ => {} // SIGINT (ctrl-alt-del) is ignored
                }
            }
        }
        let now = Instant::now();
        services.check_deadlines(now);
        services.tick(now);
    }
}

/// Mounts `/scheme/init` (init's own scheme) and watches its connection.
/// Without it the machine still runs; only the view and controls are gone.
fn serve_init_scheme(epoll: &OwnedFd) -> Option<Server<InitScheme>> {
    let target = Path::new(SCHEME_ROOT).join("init");
    let started = std::fs::create_dir_all(&target)
        .and_then(|()| scheme::mount_fuse(&target, RootKind::Dir, 0, 0))
        .and_then(|fd| Server::new(fd, InitScheme::new()))
        .and_then(|server| {
            epoll::add(
                epoll,
                server.as_fd(),
                epoll::EventData::new_u64(INIT_SCHEME_TOKEN),
                epoll::EventFlags::IN,
            )?;
            Ok(server)
        });
    match started {
        Ok(server) => Some(server),
        Err(e) => {
            say(&format!("cannot serve /scheme/init: {e}"));
            None
        }
    }
}

/// Serves `/scheme/init` from a fresh snapshot and applies what was
/// written to its `control`.
fn serve_init_requests(server: &mut Server<InitScheme>, services: &mut Services) {
    server.scheme_mut().set_views(services.views());
    if let Err(e) = server.process() {
        say(&format!("/scheme/init: {e}"));
    }
    for c in server.scheme_mut().take_controls() {
        if let Err((_, why)) = services.control(&c) {
            say(&format!("/scheme/init control {c:?}: {why}"));
        }
    }
}

/// Reaps every exited child: services are accounted for, the shell is
/// restarted on the next loop, orphans that were re-parented to us vanish.
fn reap(services: &mut Services, shell: &mut Option<Pid>) {
    // `wait` is waitpid(-1): any child, orphans included.
    while let Ok(Some((pid, status))) = rustix::process::wait(WaitOptions::NOHANG) {
        if *shell == Some(pid) {
            *shell = None;
            continue;
        }
        services.on_exit(pid, &describe(status), status.exit_status() == Some(0));
    }
}

/// Stops the services in reverse start order and turns the machine off.
/// Power-off and reboot go through acpid (`/scheme/acpi/power`: ACPI S5,
/// or the FADT reset register), so acpid and what it requires are not stopped;
/// reboot(2) is the fallback, and halt's only way.
fn shutdown(services: &mut Services, action: Power) -> ! {
    say(&format!("{action:?}: stopping services"));
    let word = match action {
        Power::Off => Some("poweroff"),
        Power::Reboot => Some("reboot"),
        Power::Halt => None,
    };
    // acpid and what it requires (pcid) stay up for the power-off.
    let keep = match word {
        Some(_) => services.power_services("acpi"),
        None => Vec::new(),
    };
    services.stop_all(Duration::from_secs(5), &keep);
    // Whatever is left (shell, user programs) gets SIGTERM too.
    system::terminate_others(&keep);
    say("services stopped, syncing");
    rustix::fs::sync();
    if let Some(word) = word {
        say(&format!("writing {word} to {}", system::ACPI_POWER));
        let why = system::acpi_power(word, Duration::from_secs(5));
        say(&format!(
            "{word} through {} failed ({why}); falling back to reboot(2)",
            system::ACPI_POWER
        ));
    }
    say(&format!("calling reboot(2) for {action:?}"));
    let err = system::power(action);
    say(&format!("reboot(2) failed: {err}"));
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// Starts a login shell on the console's terminal, as its controlling tty.
fn spawn_shell(cmdline: &str) -> Option<Pid> {
    let tty = system::console_device(cmdline);
    let open = || -> std::io::Result<OwnedFd> {
        Ok(rustix::fs::open(
            tty.as_str(),
            rustix::fs::OFlags::RDWR | rustix::fs::OFlags::NOCTTY | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )?)
    };
    let result = (|| -> std::io::Result<Pid> {
        let (a, b, c) = (open()?, open()?, open()?);
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-l")
            .env_clear()
            .env("PATH", "/bin:/sbin:/usr/bin:/usr/sbin")
            .env("HOME", "/root")
            .env("TERM", "vt100")
            .current_dir("/root")
            .stdin(Stdio::from(a))
            .stdout(Stdio::from(b))
            .stderr(Stdio::from(c));
        // SAFETY: runs in the child before exec; sigprocmask, setsid and the
        // TIOCSCTTY ioctl are async-signal-safe system calls.
        unsafe {
            cmd.pre_exec(|| {
                system::unblock_signals()?;
                rustix::process::setsid()?;
                rustix::process::ioctl_tiocsctty(std::io::stdin())?;
                Ok(())
            });
        }
        let child = cmd.spawn()?;
        let pid = Pid::from_child(&child);
        std::mem::forget(child); // reaped by waitpid in `reap`
        Ok(pid)
    })();
    match result {
        Ok(pid) => Some(pid),
        Err(e) => {
            say(&format!("cannot start a shell on {tty}: {e}"));
            None
        }
    }
}

/// Last resort when init cannot run its event loop at all.
fn rescue_shell(cmdline: &str) -> ! {
    loop {
        if spawn_shell(cmdline).is_some() {
            let _ = rustix::process::wait(WaitOptions::empty());
        } else {
            std::thread::sleep(Duration::from_secs(5));
        }
    }
}
