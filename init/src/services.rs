//! The service table: starting units in dependency order, readiness,
//! output forwarding, the scheme registrar, exits and shutdown.

use std::collections::HashMap;
use std::fs;
use std::ops::RangeInclusive;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use daemon::proto::{Reply, Request};
use daemon::RootKind;
use rustix::event::{epoll, PollFd, PollFlags};
use rustix::net::{socketpair, AddressFamily, SocketFlags, SocketType};
use rustix::process::{Pid, Signal};

use crate::console::{say, OutputSink};
use crate::system::lookup_user;
use crate::unit::{Kind, Unit};

/// Where a unit stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Waiting for what it requires.
    Waiting,
    /// Running, not ready yet; failed if not ready by the deadline.
    Starting(Instant),
    Ready,
    /// Ran and ended (a oneshot that succeeded, or a service that stopped).
    Exited,
    Failed(String),
}

pub struct Service {
    pub unit: Unit,
    pub state: State,
    pub pid: Option<Pid>,
    control: Option<OwnedFd>,
    output: Option<OwnedFd>,
    sink: OutputSink,
    /// Schemes this instance registered, unmounted when it exits.
    schemes: Vec<String>,
    /// uid and gid it runs as, resolved once at spawn; its mounts get them.
    ids: (u32, u32),
    stopping: bool,
    /// Capability fds an enumerator passed for this instance; handed to the
    /// child as fds 4, 5, … and closed in init once it is started.
    passed: Vec<OwnedFd>,
    /// When it was last started (a counter), so shutdown can stop services
    /// in reverse start order whatever their place in the table.
    started: u64,
}

/// epoll tokens: service index * 2 + channel; the signalfd uses `SIGNAL_TOKEN`.
pub const SIGNAL_TOKEN: u64 = u64::MAX;
const CONTROL: u64 = 0;
const OUTPUT: u64 = 1;

pub struct Services {
    pub list: Vec<Service>,
    epoll: OwnedFd,
    passwd: String,
    scheme_root: PathBuf,
    /// Registered scheme name → index of its service.
    owners: HashMap<String, usize>,
    /// Template units by name, instantiated on an enumerator's request.
    templates: HashMap<String, Unit>,
    /// Start counter for `Service::started`.
    starts: u64,
}

/// Environment every service starts with (plus its unit's `env`).
const BASE_PATH: &str = "/bin:/sbin:/usr/bin:/usr/sbin";

impl Service {
    fn new(unit: Unit) -> Service {
        Service {
            sink: OutputSink::new(&unit.name),
            unit,
            state: State::Waiting,
            pid: None,
            control: None,
            output: None,
            schemes: Vec::new(),
            ids: (0, 0),
            stopping: false,
            passed: Vec::new(),
            started: 0,
        }
    }
}

impl Services {
    pub fn new(units: Vec<Unit>, epoll: OwnedFd, scheme_root: &Path) -> Services {
        let (templates, units): (Vec<Unit>, Vec<Unit>) =
            units.into_iter().partition(|u| u.template);
        Services {
            list: units.into_iter().map(Service::new).collect(),
            epoll,
            passwd: fs::read_to_string("/etc/passwd").unwrap_or_default(),
            scheme_root: scheme_root.to_owned(),
            owners: HashMap::new(),
            templates: templates.into_iter().map(|u| (u.name.clone(), u)).collect(),
            starts: 0,
        }
    }

    /// An enumerator's request to start one instance of a template unit
    /// with the capability fds it passed and the I/O ports it grants. The
    /// instance goes into the table like any service (dependencies,
    /// readiness, output, exit reports).
    fn spawn_instance(
        &mut self,
        requester: usize,
        template: &str,
        instance: &str,
        args: &[String],
        fds: Vec<OwnedFd>,
        ioports: &[RangeInclusive<u16>],
    ) -> Result<(), (i32, String)> {
        let who = self.list[requester].unit.base_name().to_owned();
        let Some(t) = self.templates.get(template) else {
            return Err((
                libc_errno(rustix::io::Errno::NOENT),
                format!("no template unit {template:?}"),
            ));
        };
        if !t.spawned_by.contains(&who) {
            return Err((
                libc_errno(rustix::io::Errno::ACCESS),
                format!("{who} may not start instances of {template}"),
            ));
        }
        if !t.may_grant(ioports) {
            return Err((
                libc_errno(rustix::io::Errno::ACCESS),
                format!(
                    "{who} may not grant ports {} to {template} (grantable: {})",
                    daemon::ports::format_grant(ioports),
                    daemon::ports::format_grant(&t.grantable_ranges)
                ),
            ));
        }
        let unit = t.instantiate(instance, args, ioports);
        let mut svc = Service::new(unit);
        svc.passed = fds;
        let i = match self.list.iter().position(|s| s.unit.name == svc.unit.name) {
            Some(i) if self.list[i].pid.is_some() => {
                return Err((
                    libc_errno(rustix::io::Errno::BUSY),
                    format!("{} is already running", svc.unit.name),
                ))
            }
            // A stopped or failed instance of the same device is replaced.
            Some(i) => {
                self.list[i] = svc;
                i
            }
            None => {
                self.list.push(svc);
                self.list.len() - 1
            }
        };
        self.start_eligible();
        match &self.list[i].state {
            State::Failed(why) => Err((libc_errno(rustix::io::Errno::IO), why.clone())),
            _ => Ok(()),
        }
    }

    /// Starts every waiting unit whose requirements are ready; fails those
    /// whose requirements failed. Units are in dependency order, so one pass
    /// settles everything that can be settled now.
    pub fn start_eligible(&mut self) {
        for i in 0..self.list.len() {
            if self.list[i].state != State::Waiting {
                continue;
            }
            let mut blocked = None;
            let mut all_ready = true;
            for dep in &self.list[i].unit.requires {
                match self
                    .list
                    .iter()
                    .find(|s| &s.unit.name == dep)
                    .map(|s| &s.state)
                {
                    Some(State::Ready) => {}
                    Some(State::Exited) if self.kind_of(dep) == Some(Kind::Oneshot) => {}
                    Some(State::Waiting | State::Starting(_)) => all_ready = false,
                    _ => blocked = Some(dep.clone()),
                }
            }
            if let Some(dep) = blocked {
                self.fail(i, format!("not started: {dep} is not running"));
            } else if all_ready {
                self.spawn(i);
            }
        }
    }

    fn kind_of(&self, name: &str) -> Option<Kind> {
        self.list
            .iter()
            .find(|s| s.unit.name == name)
            .map(|s| s.unit.kind)
    }

    /// True once no unit is waiting or starting.
    pub fn settled(&self) -> bool {
        self.list
            .iter()
            .all(|s| !matches!(s.state, State::Waiting | State::Starting(_)))
    }

    /// The nearest readiness deadline, for the event loop's timeout.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.list
            .iter()
            .filter_map(|s| match s.state {
                State::Starting(d) => Some(d),
                _ => None,
            })
            .min()
    }

    /// Fails every start whose deadline has passed. The process is stopped:
    /// a daemon that never became ready is not left half-running.
    pub fn check_deadlines(&mut self, now: Instant) {
        for i in 0..self.list.len() {
            if let State::Starting(deadline) = self.list[i].state {
                if now >= deadline {
                    let secs = self.list[i].unit.ready_timeout;
                    self.fail(i, format!("not ready after {secs} s, stopping it"));
                    if let Some(pid) = self.list[i].pid {
                        let _ = rustix::process::kill_process(pid, Signal::KILL);
                    }
                }
            }
        }
    }

    fn fail(&mut self, i: usize, why: String) {
        say(&format!("service {} failed: {why}", self.list[i].unit.name));
        self.list[i].state = State::Failed(why);
    }

    fn spawn(&mut self, i: usize) {
        match self.try_spawn(i) {
            Ok(pid) => {
                let svc = &mut self.list[i];
                svc.pid = Some(pid);
                svc.state = if svc.unit.kind == Kind::Simple {
                    State::Ready
                } else {
                    State::Starting(Instant::now() + Duration::from_secs(svc.unit.ready_timeout))
                };
                self.check_scheme_ready(i);
            }
            Err(e) => self.fail(
                i,
                format!("cannot start {}: {e}", self.list[i].unit.command),
            ),
        }
    }

    fn try_spawn(&mut self, i: usize) -> std::io::Result<Pid> {
        let unit = self.list[i].unit.clone();
        let ids = match &unit.user {
            None => None,
            Some(user) => Some(lookup_user(&self.passwd, user).ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("no user {user:?} in /etc/passwd"),
                )
            })?),
        };
        // Passed capabilities are moved above the low numbers first, so the
        // child's dup2 onto 4, 5, … can never overwrite one still to be moved.
        let passed: Vec<OwnedFd> = std::mem::take(&mut self.list[i].passed)
            .iter()
            .map(|fd| rustix::io::fcntl_dupfd_cloexec(fd, 64))
            .collect::<Result<_, _>>()?;
        let passed_raw: Vec<i32> = passed.iter().map(|fd| fd.as_raw_fd()).collect();
        let memlock = unit.memlock_bytes;
        let ioports = unit.ioport_ranges.clone();
        let no_caps = unit.no_capabilities;
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
            .envs((!passed.is_empty()).then(|| {
                let list: Vec<String> = (0..passed.len()).map(|k| (4 + k).to_string()).collect();
                (daemon::PASSED_FDS_ENV, list.join(" "))
            }))
            .envs(
                (!ioports.is_empty())
                    .then(|| (daemon::IOPORTS_ENV, daemon::ports::format_grant(&ioports))),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::from(out_w.try_clone()?))
            .stderr(Stdio::from(out_w));
        let control_raw = theirs.as_raw_fd();
        // SAFETY: the closure runs in the forked child before exec and only
        // makes async-signal-safe system calls (sigprocmask, setsid,
        // dup2/fcntl, setrlimit, ioperm, setgroups/setresgid/setresuid,
        // prctl, capset); it allocates nothing and touches no locks.
        unsafe {
            cmd.pre_exec(move || {
                crate::system::unblock_signals()?;
                rustix::process::setsid()?;
                // The control fd is always number 3 in the daemon. dup2 onto
                // itself would keep CLOEXEC, so clear it in that case.
                // SAFETY: fd 3 is either ours already or free to be replaced
                // in this child, which is about to exec.
                let borrowed = std::os::fd::BorrowedFd::borrow_raw(control_raw);
                if control_raw == 3 {
                    rustix::io::fcntl_setfd(borrowed, rustix::io::FdFlags::empty())?;
                } else {
                    let mut three = std::os::fd::OwnedFd::from_raw_fd(3);
                    let r = rustix::io::dup2(borrowed, &mut three);
                    std::mem::forget(three);
                    r?;
                }
                for (k, &raw) in passed_raw.iter().enumerate() {
                    // SAFETY: `raw` is one of our moved copies (>= 64) and
                    // 4 + k is free to be replaced in this child; dup2 leaves
                    // the new number without CLOEXEC, so exec keeps it.
                    let src = std::os::fd::BorrowedFd::borrow_raw(raw);
                    let mut dst = std::os::fd::OwnedFd::from_raw_fd(4 + k as i32);
                    let r = rustix::io::dup2(src, &mut dst);
                    std::mem::forget(dst);
                    r?;
                }
                // The limit must be raised while still root; the ids are
                // dropped here rather than by std, which would do it first.
                if let Some(bytes) = memlock {
                    rustix::process::setrlimit(
                        rustix::process::Resource::Memlock,
                        rustix::process::Rlimit {
                            current: Some(bytes),
                            maximum: Some(bytes),
                        },
                    )?;
                }
                // Port I/O rights need CAP_SYS_RAWIO, so they are granted
                // now; the bitmap survives the uid change and exec.
                for r in &ioports {
                    let first = libc::c_ulong::from(*r.start());
                    let count = libc::c_ulong::from(*r.end()) - first + 1;
                    // SAFETY: ioperm only changes this (child) thread's I/O
                    // permission bitmap; the arguments are plain integers.
                    if libc::ioperm(first, count, 1) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                // Emptying the bounding set needs CAP_SETPCAP: before the
                // ids change. Nothing exec'd later can regain a capability.
                if no_caps {
                    crate::system::drop_bounding_set()?;
                }
                if let Some((uid, gid)) = ids {
                    // One thread after fork, so the per-thread calls cover
                    // the whole process. Leaving uid 0 clears every capability.
                    rustix::thread::set_thread_groups(&[])?;
                    let gid = rustix::process::Gid::from_raw(gid);
                    rustix::thread::set_thread_res_gid(gid, gid, gid)?;
                    let uid = rustix::process::Uid::from_raw(uid);
                    rustix::thread::set_thread_res_uid(uid, uid, uid)?;
                }
                if no_caps {
                    // Root keeps its uid (for file access) but no capability.
                    crate::system::drop_capabilities()?;
                }
                // No service can gain privileges through exec (setuid files).
                rustix::thread::set_no_new_privs(true)?;
                Ok(())
            });
        }
        let child = cmd.spawn()?;
        drop(cmd); // closes our copies of the child's pipe ends
        drop(theirs);
        drop(passed); // the child holds them now; init keeps no device access
        let pid = Pid::from_child(&child);
        // The child is reaped through waitpid in the SIGCHLD handler.
        std::mem::forget(child);

        let base = i as u64 * 2;
        epoll::add(
            &self.epoll,
            &ours,
            epoll::EventData::new_u64(base + CONTROL),
            epoll::EventFlags::IN,
        )?;
        epoll::add(
            &self.epoll,
            &out_r,
            epoll::EventData::new_u64(base + OUTPUT),
            epoll::EventFlags::IN,
        )?;
        self.starts += 1;
        let svc = &mut self.list[i];
        svc.control = Some(ours);
        svc.output = Some(out_r);
        svc.ids = ids.unwrap_or((0, 0));
        svc.stopping = false;
        svc.started = self.starts;
        say(&format!(
            "started {} (pid {}): {}",
            unit.name,
            pid.as_raw_nonzero(),
            unit.description
        ));
        Ok(pid)
    }

    /// Handles readiness of one service channel.
    pub fn on_event(&mut self, token: u64) {
        let i = (token / 2) as usize;
        if i >= self.list.len() {
            return;
        }
        if token % 2 == CONTROL {
            self.on_control(i);
        } else {
            self.on_output(i);
        }
    }

    fn on_output(&mut self, i: usize) {
        let mut buf = [0u8; 4096];
        loop {
            let Some(fd) = self.list[i].output.as_ref() else {
                return;
            };
            match rustix::io::read(fd, &mut buf) {
                Ok(0) => {
                    self.close_output(i);
                    return;
                }
                Ok(n) => self.list[i].sink.feed(&buf[..n]),
                Err(rustix::io::Errno::AGAIN) => return,
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => {
                    say(&format!(
                        "reading output of {}: {e}",
                        self.list[i].unit.name
                    ));
                    self.close_output(i);
                    return;
                }
            }
        }
    }

    fn close_output(&mut self, i: usize) {
        if let Some(fd) = self.list[i].output.take() {
            let _ = epoll::delete(&self.epoll, &fd);
        }
        self.list[i].sink.finish();
    }

    fn on_control(&mut self, i: usize) {
        loop {
            let Some(fd) = self.list[i].control.as_ref() else {
                return;
            };
            let (msg, passed) = match daemon::recv_with_fds(fd.as_fd()) {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    // Closed: the daemon is gone or does not want to talk.
                    if let Some(fd) = self.list[i].control.take() {
                        let _ = epoll::delete(&self.epoll, &fd);
                    }
                    return;
                }
            };
            let name = self.list[i].unit.name.clone();
            match Request::decode(&msg) {
                Ok(Request::Spawn {
                    unit,
                    instance,
                    args,
                    ioports,
                }) => {
                    let reply =
                        match self.spawn_instance(i, &unit, &instance, &args, passed, &ioports) {
                            Ok(()) => Reply::Ok,
                            Err((errno, why)) => {
                                say(&format!("{name}: cannot start {unit}@{instance}: {why}"));
                                Reply::Err(errno, why)
                            }
                        };
                    if let Some(control) = self.list[i].control.as_ref() {
                        if let Err(e) = daemon::send_with_fd(control.as_fd(), &reply.encode(), None)
                        {
                            say(&format!("{name}: cannot answer on control channel: {e}"));
                        }
                    }
                }
                Ok(Request::Ready) => self.mark_ready(i),
                Ok(Request::Register(scheme, kind)) => {
                    let reply = self.register(i, &scheme, kind);
                    let Some(control) = self.list[i].control.as_ref() else {
                        return;
                    };
                    let sent = match &reply {
                        Ok(fuse) => daemon::send_with_fd(
                            control.as_fd(),
                            &Reply::Ok.encode(),
                            Some(fuse.as_fd()),
                        ),
                        Err((errno, why)) => {
                            say(&format!("{name}: refused scheme {scheme:?}: {why}"));
                            daemon::send_with_fd(
                                control.as_fd(),
                                &Reply::Err(*errno, why.clone()).encode(),
                                None,
                            )
                        }
                    };
                    if let Err(e) = sent {
                        say(&format!("{name}: cannot answer on control channel: {e}"));
                    }
                    self.check_scheme_ready(i);
                }
                Err(e) => say(&format!("{name}: bad control message: {e}")),
            }
        }
    }

    fn mark_ready(&mut self, i: usize) {
        if matches!(self.list[i].state, State::Starting(_)) {
            self.list[i].state = State::Ready;
            say(&format!("{} is ready", self.list[i].unit.name));
        }
    }

    /// A `scheme` unit is ready once each scheme it names exactly is mounted.
    fn check_scheme_ready(&mut self, i: usize) {
        let svc = &self.list[i];
        if svc.unit.kind == Kind::Scheme
            && svc.unit.literal_schemes().next().is_some()
            && svc
                .unit
                .literal_schemes()
                .all(|s| svc.schemes.iter().any(|r| r == s))
        {
            self.mark_ready(i);
        }
    }

    /// The scheme registrar: checks the name against the unit, mounts a fresh
    /// FUSE connection at /scheme/NAME owned by the daemon's uid, and returns
    /// the fd to pass back.
    fn register(
        &mut self,
        i: usize,
        scheme: &str,
        kind: RootKind,
    ) -> Result<OwnedFd, (i32, String)> {
        let unit = &self.list[i].unit;
        if !unit.allows_scheme(scheme) {
            return Err((
                libc_errno(rustix::io::Errno::ACCESS),
                format!("{} may not register {scheme:?}", unit.name),
            ));
        }
        if let Some(&owner) = self.owners.get(scheme) {
            return Err((
                libc_errno(rustix::io::Errno::EXIST),
                format!(
                    "scheme {scheme:?} is already served by {}",
                    self.list[owner].unit.name
                ),
            ));
        }
        let (uid, gid) = self.list[i].ids;
        let target = self.scheme_root.join(scheme);
        let made = match kind {
            RootKind::Dir => fs::create_dir(&target),
            RootKind::File => fs::File::create(&target).map(drop),
        };
        made.map_err(|e| {
            (
                e.raw_os_error().unwrap_or(5),
                format!("cannot create {}: {e}", target.display()),
            )
        })?;
        match scheme::mount_fuse(&target, kind, uid, gid) {
            Ok(fd) => {
                self.owners.insert(scheme.to_owned(), i);
                self.list[i].schemes.push(scheme.to_owned());
                say(&format!(
                    "scheme {scheme} registered by {}",
                    self.list[i].unit.name
                ));
                Ok(fd)
            }
            Err(e) => {
                let _ = remove_mountpoint(&target);
                Err((
                    e.raw_os_error().unwrap_or(5),
                    format!("cannot mount {}: {e}", target.display()),
                ))
            }
        }
    }

    /// Accounts for a reaped child. Returns false if it was not a service.
    pub fn on_exit(&mut self, pid: Pid, status: &str, success: bool) -> bool {
        let Some(i) = self.list.iter().position(|s| s.pid == Some(pid)) else {
            return false;
        };
        let name = self.list[i].unit.name.clone();
        self.list[i].pid = None;
        // Output that was still in the pipe belongs before the exit report.
        self.on_output(i);
        self.close_output(i);
        if let Some(fd) = self.list[i].control.take() {
            let _ = epoll::delete(&self.epoll, &fd);
        }
        for scheme in std::mem::take(&mut self.list[i].schemes) {
            self.owners.remove(&scheme);
            let target = self.scheme_root.join(&scheme);
            let _ = rustix::mount::unmount(&target, rustix::mount::UnmountFlags::DETACH);
            let _ = remove_mountpoint(&target);
            say(&format!("scheme {scheme} removed"));
        }
        let stopping = self.list[i].stopping;
        let svc = &mut self.list[i];
        match (&svc.state, svc.unit.kind) {
            (State::Starting(_), Kind::Oneshot) if success => {
                svc.state = State::Exited;
                say(&format!("{name} finished"));
            }
            (State::Starting(_), _) => {
                self.fail(i, format!("exited during start-up: {status}"));
            }
            _ if stopping => {
                svc.state = State::Exited;
            }
            (State::Ready, _) => {
                // Restart policy comes with the supervisor; for now report it.
                say(&format!("service {name} exited unexpectedly: {status}"));
                svc.state = State::Failed(format!("exited: {status}"));
            }
            _ => {}
        }
        true
    }

    /// The pids to keep running until the power-off: the service that owns
    /// `scheme` (acpid for `acpi`) and everything it requires, directly or
    /// not (pcid: AML reads PCI config through it while `\_PTS`/`\_S5` run).
    pub fn power_services(&self, scheme: &str) -> Vec<Pid> {
        let mut todo: Vec<usize> = self.owners.get(scheme).copied().into_iter().collect();
        let mut seen: Vec<usize> = Vec::new();
        while let Some(i) = todo.pop() {
            if seen.contains(&i) {
                continue;
            }
            seen.push(i);
            for name in &self.list[i].unit.requires {
                if let Some(j) = self.list.iter().position(|s| &s.unit.name == name) {
                    todo.push(j);
                }
            }
        }
        seen.iter().filter_map(|&i| self.list[i].pid).collect()
    }

    /// Running services, most recently started first: the order to stop
    /// them in, so each goes before what it was started after.
    fn stop_order(&self) -> Vec<usize> {
        let mut running: Vec<usize> = (0..self.list.len())
            .filter(|&i| self.list[i].pid.is_some())
            .collect();
        running.sort_by_key(|&i| std::cmp::Reverse(self.list[i].started));
        running
    }

    /// Stops running services in reverse start order, each with SIGTERM and
    /// then SIGKILL if it has not exited within `grace`; `keep` (acpid, which
    /// powers the machine off afterwards, and what it requires) is left
    /// running.
    pub fn stop_all(&mut self, grace: Duration, keep: &[Pid]) {
        for i in self.stop_order() {
            let Some(pid) = self.list[i].pid else {
                continue;
            };
            if keep.contains(&pid) {
                say(&format!(
                    "keeping {} for the power-off",
                    self.list[i].unit.name
                ));
                continue;
            }
            self.list[i].stopping = true;
            let name = self.list[i].unit.name.clone();
            say(&format!("stopping {name}"));
            let pidfd = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).ok();
            if rustix::process::kill_process(pid, Signal::TERM).is_err() {
                continue;
            }
            let exited = pidfd.as_ref().is_some_and(|fd| wait_readable(fd, grace));
            if !exited {
                say(&format!(
                    "{name} did not stop in {} s, killing it",
                    grace.as_secs()
                ));
                let _ = rustix::process::kill_process(pid, Signal::KILL);
                if let Some(fd) = pidfd.as_ref() {
                    wait_readable(fd, grace);
                }
            }
            if let Ok(Some((_, status))) =
                rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::NOHANG)
            {
                self.on_exit(pid, &describe(status), status.exit_status() == Some(0));
            }
        }
    }
}

/// Waits until `fd` is readable (a pidfd: the process exited).
fn wait_readable(fd: &OwnedFd, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ts = rustix::event::Timespec::try_from(left).unwrap_or(rustix::event::Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        });
        let mut fds = [PollFd::new(fd, PollFlags::IN)];
        match rustix::event::poll(&mut fds, Some(&ts)) {
            Ok(n) if n > 0 => return true,
            Ok(_) => return false,
            Err(rustix::io::Errno::INTR) => continue,
            Err(_) => return false,
        }
    }
}

fn remove_mountpoint(target: &Path) -> std::io::Result<()> {
    if target.is_dir() {
        fs::remove_dir(target)
    } else {
        fs::remove_file(target)
    }
}

fn libc_errno(e: rustix::io::Errno) -> i32 {
    e.raw_os_error()
}

/// "exit status 3" or "killed by signal 11 (SIGSEGV)".
pub fn describe(status: rustix::process::WaitStatus) -> String {
    if let Some(code) = status.exit_status() {
        format!("exit status {code}")
    } else if let Some(sig) = status.terminating_signal() {
        let name = nix::sys::signal::Signal::try_from(sig)
            .map(|s| format!(" ({})", s.as_str()))
            .unwrap_or_default();
        format!("killed by signal {sig}{name}")
    } else {
        "stopped".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(name: &str, text: &str) -> Unit {
        Unit::parse(name, text).unwrap()
    }

    fn services(units: Vec<Unit>) -> Services {
        let epoll = epoll::create(epoll::CreateFlags::CLOEXEC).unwrap();
        Services::new(units, epoll, &std::env::temp_dir())
    }

    fn table() -> Services {
        let mut s = services(vec![
            unit("pcid", "command = \"/bin/pcid\"\ntype = \"notify\"\n"),
            unit("acpid", "command = \"/bin/acpid\"\ntype = \"notify\"\n"),
            unit(
                "rtcd",
                "command = \"/nonexistent/rtcd\"\ntype = \"notify\"\ntemplate = true\n\
                 spawned_by = [\"acpid\"]\ngrantable_ioports = [\"0x70-0x77\"]\n",
            ),
        ]);
        // As if started: nothing else may be spawned by the tests.
        for svc in &mut s.list {
            svc.state = State::Ready;
        }
        s
    }

    /// A port grant is asked for over the real control channel, as a
    /// daemon does; init refuses a requester not in `spawned_by` exactly
    /// as it refuses a plain `spawn`, and starts nothing.
    #[test]
    fn a_port_grant_from_a_stranger_is_refused() {
        let mut s = table();
        let (init_end, daemon_end) = socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            None,
        )
        .unwrap();
        rustix::io::ioctl_fionbio(&daemon_end, false).unwrap();
        s.list[0].control = Some(init_end); // pcid asks for rtcd
        let asker = std::thread::spawn(move || {
            let d = daemon::Daemon::from_fd(daemon_end);
            d.spawn_with_ioports("rtcd", "acpi-PNP0B00-0", &[], &[], &[0x70..=0x71])
        });
        let readable = {
            let fd = s.list[0].control.as_ref().unwrap();
            let mut fds = [PollFd::new(fd, PollFlags::IN)];
            rustix::event::poll(
                &mut fds,
                Some(&rustix::event::Timespec {
                    tv_sec: 10,
                    tv_nsec: 0,
                }),
            )
            .unwrap()
        };
        assert_eq!(readable, 1, "no request arrived");
        s.on_control(0);
        let e = asker.join().unwrap().unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::PermissionDenied, "{e}");
        assert!(
            e.to_string()
                .contains("pcid may not start instances of rtcd"),
            "{e}"
        );
        assert_eq!(s.list.len(), 2, "nothing may be added to the table");
        // The plain spawn is refused the same way (same check).
        let plain = s.spawn_instance(0, "rtcd", "acpi-PNP0B00-0", &[], Vec::new(), &[]);
        assert_eq!(plain.unwrap_err().0, libc_errno(rustix::io::Errno::ACCESS));
    }

    #[test]
    fn the_grant_reaches_the_instance_of_an_allowed_requester() {
        let mut s = table();
        // acpid may ask; the command does not exist, so the start itself
        // fails, after the grant was attached to the instance.
        let r = s.spawn_instance(1, "rtcd", "acpi-PNP0B00-0", &[], Vec::new(), &[0x70..=0x71]);
        assert_ne!(r.unwrap_err().0, libc_errno(rustix::io::Errno::ACCESS));
        let inst = s
            .list
            .iter()
            .find(|x| x.unit.name == "rtcd@acpi-PNP0B00-0")
            .expect("the instance is in the table");
        assert_eq!(inst.unit.ioport_ranges, [0x70..=0x71]);
        assert!(matches!(inst.state, State::Failed(_)));
    }

    /// An allowed requester still cannot grant more than the template's
    /// `grantable_ioports`: acpid holds no RTC ports and may not hand out
    /// the PCI configuration ports or the whole space.
    #[test]
    fn a_grant_beyond_grantable_ioports_is_refused() {
        let mut s = table();
        for wide in [
            vec![0x70..=0x78],
            vec![0..=0xffff],
            vec![0x70..=0x71, 0xcf8..=0xcff],
        ] {
            let r = s.spawn_instance(1, "rtcd", "acpi-PNP0B00-0", &[], Vec::new(), &wide);
            let (errno, msg) = r.unwrap_err();
            assert_eq!(errno, libc_errno(rustix::io::Errno::ACCESS), "{msg}");
            assert!(msg.contains("may not grant ports"), "{msg}");
        }
        assert_eq!(s.list.len(), 2, "nothing may be added to the table");
    }

    #[test]
    fn services_stop_in_reverse_start_order() {
        let mut s = table();
        // Table order is not start order: an instance replaced in place, or
        // a unit that waited for a slower dependency, starts later than
        // units after it in the table.
        for (i, started) in [(0, 2), (1, 3)] {
            s.list[i].pid = Some(Pid::from_raw(1000 + i as i32).unwrap());
            s.list[i].started = started;
        }
        s.list
            .push(Service::new(s.templates["rtcd"].instantiate("x", &[], &[])));
        s.list[2].pid = Some(Pid::from_raw(1002).unwrap());
        s.list[2].started = 1;
        s.list.push(Service::new(unit(
            "idle",
            "command = \"/x\"\ntype = \"simple\"\n",
        )));
        assert_eq!(
            s.stop_order(),
            [1, 0, 2],
            "not-running services are skipped"
        );
    }

    #[test]
    fn stop_all_keeps_the_power_service_and_what_it_requires() {
        let mut s = table();
        s.list[1].unit.requires = vec!["pcid".into()];
        s.owners.insert("acpi".into(), 1);
        s.list
            .push(Service::new(s.templates["rtcd"].instantiate("x", &[], &[])));
        let mut children = Vec::new();
        for (i, started) in [(0, 1), (1, 2), (2, 3)] {
            let child = Command::new("sleep").arg("30").spawn().unwrap();
            s.list[i].pid = Some(Pid::from_child(&child));
            s.list[i].started = started;
            s.list[i].state = State::Ready;
            children.push(child);
        }
        let keep = s.power_services("acpi");
        assert_eq!(keep.len(), 2, "acpid and pcid");
        s.stop_all(Duration::from_secs(5), &keep);
        assert_eq!(s.list[2].pid, None, "rtcd was stopped and reaped");
        assert_eq!(s.list[2].state, State::Exited);
        for (i, name) in [(0, "pcid"), (1, "acpid")] {
            assert!(s.list[i].pid.is_some(), "{name} was kept");
            let mut kept = children.remove(0);
            assert!(
                kept.try_wait().unwrap().is_none(),
                "{name} is still running"
            );
            kept.kill().unwrap();
            kept.wait().unwrap();
        }
        assert!(s.power_services("nothing").is_empty());
    }
}
