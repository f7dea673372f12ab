//! Starting a service's process: a clean environment, its control socket
//! as fd 3, the capability fds an enumerator passed at 4, 5, …, stdout and
//! stderr into a pipe init reads, a session of its own, then its privileges
//! dropped (`crate::privilege`) and the exec.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use rustix::net::{socketpair, AddressFamily, SocketFlags, SocketType};
use rustix::process::Pid;

use crate::privilege::Privileges;
use crate::unit::Unit;

/// Environment every service starts with (plus its unit's `env`).
const BASE_PATH: &str = "/bin:/sbin:/usr/bin:/usr/sbin";

/// A started service process and init's ends of its channels.
pub struct Launched {
    pub pid: Pid,
    /// init's end of the control socket (non-blocking).
    pub control: OwnedFd,
    /// The read end of the service's stdout and stderr (non-blocking).
    pub output: OwnedFd,
}

/// Forks and execs `unit`'s command as `ids` (root if `None`), handing it
/// `passed` as fds 4, 5, …; init's copies of them are closed once the child
/// has them, so init keeps no device access.
/// `start` is how many times the service was started before (`INIT_START`
/// in its environment: fault injection seeds with it).
pub fn launch(
    unit: &Unit,
    ids: Option<(u32, u32)>,
    passed: Vec<OwnedFd>,
    start: u32,
) -> io::Result<Launched> {
    // Passed capabilities are moved above the low numbers first, so the
    // child's dup2 onto 4, 5, … can never overwrite one still to be moved.
    let passed: Vec<OwnedFd> = passed
        .iter()
        .map(|fd| rustix::io::fcntl_dupfd_cloexec(fd, 64))
        .collect::<Result<_, _>>()?;
    let passed_raw: Vec<i32> = passed.iter().map(|fd| fd.as_raw_fd()).collect();
    let privileges = Privileges {
        memlock: unit.memlock_bytes,
        ioports: unit.ioport_ranges.clone(),
        no_capabilities: unit.no_capabilities,
        ids,
    };
    let (ours, theirs) = socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )?;
    // The daemon's end must block: it waits for our replies.
    rustix::io::ioctl_fionbio(&theirs, false)?;
    let (out_r, out_w) = rustix::pipe::pipe_with(
        rustix::pipe::PipeFlags::CLOEXEC | rustix::pipe::PipeFlags::NONBLOCK,
    )?;
    // The write end is handed to the child as stdout and stderr; it must
    // block there, or a chatty daemon would see EAGAIN.
    rustix::io::ioctl_fionbio(&out_w, false)?;

    let mut cmd = Command::new(&unit.command);
    cmd.args(&unit.args)
        .env_clear()
        .env("PATH", BASE_PATH)
        .env("HOME", "/")
        .envs(&unit.env)
        .env(daemon::CONTROL_FD_ENV, "3")
        .env("INIT_START", start.to_string())
        .envs((!passed.is_empty()).then(|| {
            let list: Vec<String> = (0..passed.len()).map(|k| (4 + k).to_string()).collect();
            (daemon::PASSED_FDS_ENV, list.join(" "))
        }))
        .envs((!privileges.ioports.is_empty()).then(|| {
            (
                daemon::IOPORTS_ENV,
                daemon::ports::format_grant(&privileges.ioports),
            )
        }))
        .stdin(Stdio::null())
        .stdout(Stdio::from(out_w.try_clone()?))
        .stderr(Stdio::from(out_w));
    let control_raw = theirs.as_raw_fd();
    // SAFETY: the closure runs in the forked child before exec and only
    // makes async-signal-safe system calls (sigprocmask, setsid,
    // dup2/fcntl, and those of `Privileges::apply`); it allocates nothing
    // and touches no locks.
    unsafe {
        cmd.pre_exec(move || {
            crate::system::unblock_signals()?;
            rustix::process::setsid()?;
            // The control fd is always number 3 in the daemon. dup2 onto
            // itself would keep CLOEXEC, so clear it in that case.
            // SAFETY: fd 3 is either ours already or free to be replaced
            // in this child, which is about to exec.
            let borrowed = BorrowedFd::borrow_raw(control_raw);
            if control_raw == 3 {
                rustix::io::fcntl_setfd(borrowed, rustix::io::FdFlags::empty())?;
            } else {
                let mut three = OwnedFd::from_raw_fd(3);
                let r = rustix::io::dup2(borrowed, &mut three);
                std::mem::forget(three);
                r?;
            }
            for (k, &raw) in passed_raw.iter().enumerate() {
                // SAFETY: `raw` is one of our moved copies (>= 64) and
                // 4 + k is free to be replaced in this child; dup2 leaves
                // the new number without CLOEXEC, so exec keeps it.
                let src = BorrowedFd::borrow_raw(raw);
                let mut dst = OwnedFd::from_raw_fd(4 + k as i32);
                let r = rustix::io::dup2(src, &mut dst);
                std::mem::forget(dst);
                r?;
            }
            privileges.apply()
        });
    }
    let child = cmd.spawn()?;
    drop(cmd); // closes our copies of the child's pipe ends
    drop(theirs);
    drop(passed); // the child holds them now
    let pid = Pid::from_child(&child);
    // The child is reaped through waitpid in the SIGCHLD handler.
    std::mem::forget(child);
    Ok(Launched {
        pid,
        control: ours,
        output: out_r,
    })
}
