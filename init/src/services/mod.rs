//! The service table and its state machine: units started in dependency
//! order, readiness and its deadlines, exits. The other jobs on the table
//! are files of their own: starting a process (`launch`), init's control
//! protocol (`control`), the scheme registrar (`registrar`), forwarding
//! output (`output`) and stopping everything (`shutdown`).

mod control;
mod launch;
mod output;
mod registrar;
mod shutdown;
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
        let passed = std::mem::take(&mut self.list[i].passed);
        let launch::Launched {
            pid,
            control,
            output,
        } = launch::launch(&unit, ids, passed)?;
        let base = i as u64 * 2;
        epoll::add(
            &self.epoll,
            &control,
            epoll::EventData::new_u64(base + CONTROL),
            epoll::EventFlags::IN,
        )?;
        epoll::add(
            &self.epoll,
            &output,
            epoll::EventData::new_u64(base + OUTPUT),
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
        self.unregister_all(i);
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
