//! The service table and its state machine: units started in dependency
//! order, readiness and its deadlines, exits. The other jobs on the table
//! are files of their own: starting a process (`launch`), init's control
//! protocol (`control`), the scheme registrar and fd store (`registrar`),
//! what answers a scheme while nothing serves it (`standin`), the
//! supervisor's restarts, backoff and heartbeat (`supervise`), forwarding
//! output (`output`) and stopping everything (`shutdown`).

mod control;
mod launch;
mod output;
mod registrar;
mod shutdown;
mod standin;
pub mod supervise;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fs;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::event::epoll;
use rustix::process::{Pid, Signal};

use crate::console::{say, OutputSink};
use crate::system::lookup_user;
use crate::unit::{Kind, Unit};

pub use registrar::Kept;
pub use supervise::Record;

/// Where a unit stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Waiting for what it requires.
    Waiting,
    /// Running, not ready yet; failed if not ready by the deadline.
    Starting(Instant),
    Ready,
    /// Ended by itself; the supervisor starts it again at this time.
    Restarting(Instant),
    /// A driver instance whose enumerator was asked to claim the device
    /// again and `spawn` it; failed if it has not by the deadline.
    Respawning(Instant),
    /// Ran and ended (a oneshot that succeeded, or a service stopped at
    /// shutdown).
    Exited,
    /// Stopped by hand (`/scheme/init/control`); its schemes stay mounted,
    /// answered by init, until it is started again.
    Stopped,
    /// Its device left the bus (hot-unplug): stopped for good, not failed;
    /// its schemes are unmounted (lazily: handles still open are answered
    /// `EIO` by init until they close). The same device coming back is a
    /// new start.
    Removed,
    Failed(String),
}

impl State {
    /// The word `/scheme/init` shows.
    pub fn word(&self) -> &'static str {
        match self {
            State::Waiting => "waiting",
            State::Starting(_) => "starting",
            State::Ready => "running",
            State::Restarting(_) | State::Respawning(_) => "restarting",
            State::Exited => "exited",
            State::Stopped | State::Removed => "stopped",
            State::Failed(_) => "failed",
        }
    }
}

pub struct Service {
    pub unit: Unit,
    pub state: State,
    pub pid: Option<Pid>,
    control: Option<OwnedFd>,
    output: Option<OwnedFd>,
    sink: OutputSink,
    /// Schemes this service registered: their mounts, FUSE connections and
    /// state stores, which init keeps across restarts (the fd store).
    kept: Vec<Kept>,
    /// What the supervisor has seen of it.
    pub record: Record,
    /// The enumerator (by unit name) that asked for this instance with the
    /// device's fds, so only it can start it again.
    enumerator: Option<String>,
    /// Whether the enumerator passed device fds: then only it can start
    /// the instance again (a fresh claim); an instance given only ports
    /// (acpid's) init restarts itself, with the same grant.
    claims_device: bool,
    /// uid and gid it runs as, resolved once at spawn; its mounts get them.
    ids: (u32, u32),
    /// Being stopped at shutdown: its schemes go with it.
    stopping: bool,
    /// What was asked of it by hand, acted on when it has exited.
    pending: Option<supervise::ByHand>,
    /// Capability fds an enumerator passed for this instance; handed to the
    /// child as fds 4, 5, … and closed in init once it is started.
    passed: Vec<OwnedFd>,
    /// When it was last started (a counter), so shutdown can stop services
    /// in reverse start order whatever their place in the table.
    started: u64,
    /// init's complaints about what it sent (bad or refused requests), so
    /// a flood of them cannot flood the console.
    complaints: crate::console::RateLimit,
}

/// epoll tokens: service index << 8 | channel; the signalfd uses
/// `SIGNAL_TOKEN`, `/scheme/init` `INIT_SCHEME_TOKEN`.
pub const SIGNAL_TOKEN: u64 = u64::MAX;
pub const INIT_SCHEME_TOKEN: u64 = u64::MAX - 1;
const CONTROL: u64 = 0;
const OUTPUT: u64 = 1;
/// The stand-in for kept scheme `k` of a service is channel `STANDIN + k`.
const STANDIN: u64 = 2;

fn token(i: usize, channel: u64) -> u64 {
    ((i as u64) << 8) | channel
}

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

impl Service {
    fn new(unit: Unit) -> Service {
        Service {
            sink: OutputSink::new(&unit.name),
            unit,
            state: State::Waiting,
            pid: None,
            control: None,
            output: None,
            kept: Vec::new(),
            record: Record::default(),
            enumerator: None,
            claims_device: false,
            ids: (0, 0),
            stopping: false,
            pending: None,
            passed: Vec::new(),
            started: 0,
            complaints: crate::console::RateLimit::new(
                control::COMPLAINTS_PER_SEC,
                std::time::Duration::from_secs(1),
            ),
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

    /// Stops every start whose deadline has passed: a daemon that never
    /// became ready is not left half-running. Its exit is then handled like
    /// any other (the supervisor's policy decides what follows).
    pub fn check_deadlines(&mut self, now: Instant) {
        for i in 0..self.list.len() {
            let svc = &mut self.list[i];
            let State::Starting(deadline) = svc.state else {
                continue;
            };
            if now < deadline || svc.record.killed_for.is_some() {
                continue;
            }
            let why = format!("not ready after {} s", svc.unit.ready_timeout);
            say(&format!("service {}: {why}; stopping it", svc.unit.name));
            svc.record.killed_for = Some(why);
            if let Some(pid) = svc.pid {
                let _ = rustix::process::kill_process(pid, Signal::KILL);
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
                self.record_start(i);
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
        let passed = std::mem::take(&mut self.list[i].passed);
        let launch::Launched {
            pid,
            control,
            output,
        } = launch::launch(&unit, ids, passed, self.list[i].record.restarts)?;
        epoll::add(
            &self.epoll,
            &control,
            epoll::EventData::new_u64(token(i, CONTROL)),
            epoll::EventFlags::IN,
        )?;
        epoll::add(
            &self.epoll,
            &output,
            epoll::EventData::new_u64(token(i, OUTPUT)),
            epoll::EventFlags::IN,
        )?;
        self.starts += 1;
        let svc = &mut self.list[i];
        svc.control = Some(control);
        svc.output = Some(output);
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
        let i = (token >> 8) as usize;
        if i >= self.list.len() {
            return;
        }
        match token & 0xff {
            CONTROL => self.on_control(i),
            OUTPUT => self.on_output(i),
            k => self.on_standin(i, (k - STANDIN) as usize),
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
        if self.list[i].stopping {
            self.unregister_all(i);
            self.list[i].state = State::Exited;
            return true;
        }
        match (&self.list[i].state, self.list[i].unit.kind) {
            (State::Starting(_), Kind::Oneshot) if success => {
                self.list[i].state = State::Exited;
                say(&format!("{name} finished"));
            }
            (State::Starting(_) | State::Ready, _) => self.supervise_exit(i, status, success),
            // Failed at its deadline and killed: already reported.
            _ => self.standin_all(i),
        }
        true
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
