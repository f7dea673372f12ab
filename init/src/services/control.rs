//! init's side of the control protocol (`daemon::proto`): a daemon's
//! requests on its control socket (register a scheme, report ready, spawn a
//! driver instance) and init's replies.

use std::ops::RangeInclusive;
use std::os::fd::{AsFd, OwnedFd};

use daemon::proto::{Reply, Request};
use rustix::event::epoll;

use super::{libc_errno, Service, Services, State};
use crate::console::say;
use crate::unit::Kind;

/// Packets read from one control channel per wake-up: a daemon that keeps
/// sending cannot keep init from its other channels (epoll wakes init
/// again for the rest).
pub(super) const PACKETS_PER_WAKE: usize = 64;

/// init's complaints about one service's requests shown per second; the
/// rest are counted and the count said.
pub(super) const COMPLAINTS_PER_SEC: u32 = 20;

impl Services {
    pub(super) fn on_control(&mut self, i: usize) {
        for _ in 0..PACKETS_PER_WAKE {
            let Some(fd) = self.list[i].control.as_ref() else {
                return;
            };
            let (msg, passed) = match daemon::recv_with_fds(fd.as_fd()) {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                    // A cut packet: refused whole, the channel stays.
                    let name = self.list[i].unit.name.clone();
                    self.complain(i, &format!("{name}: bad control message: {e}"));
                    continue;
                }
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
                                self.complain(
                                    i,
                                    &format!("{name}: cannot start {unit}@{instance}: {why}"),
                                );
                                Reply::Err(errno, why)
                            }
                        };
                    let sent = self.list[i].control.as_ref().map(|control| {
                        daemon::send_with_fd(control.as_fd(), &reply.encode(), None)
                    });
                    if let Some(Err(e)) = sent {
                        self.complain(i, &format!("{name}: cannot answer on control channel: {e}"));
                    }
                }
                Ok(Request::Ready) => self.mark_ready(i),
                Ok(Request::Removed) => self.on_removed(i),
                Ok(Request::Gone { unit, instance }) => self.on_gone(i, &unit, &instance),
                Ok(Request::Pong(_)) => self.on_pong(i),
                Ok(Request::Register(scheme, kind)) => {
                    let reply = self.register(i, &scheme, kind);
                    if let Err((_, why)) = &reply {
                        self.complain(i, &format!("{name}: refused scheme {scheme:?}: {why}"));
                    }
                    let Some(control) = self.list[i].control.as_ref() else {
                        return;
                    };
                    let sent = match &reply {
                        Ok(g) => daemon::send_with_fds(
                            control.as_fd(),
                            &if g.resumed { Reply::Resumed } else { Reply::Ok }.encode(),
                            &[g.fuse.as_fd(), g.state.as_fd()],
                        ),
                        Err((errno, why)) => daemon::send_with_fd(
                            control.as_fd(),
                            &Reply::Err(*errno, why.clone()).encode(),
                            None,
                        ),
                    };
                    if let Err(e) = sent {
                        self.complain(i, &format!("{name}: cannot answer on control channel: {e}"));
                    }
                    self.check_scheme_ready(i);
                }
                Err(e) => self.complain(i, &format!("{name}: bad control message: {e}")),
            }
        }
    }

    /// Says what was wrong with service `i`'s request, within its quota.
    pub(super) fn complain(&mut self, i: usize, msg: &str) {
        let name = self.list[i].unit.name.clone();
        let admit = self.list[i].complaints.admit(std::time::Instant::now());
        if admit.hidden > 0 {
            say(&hidden_complaints(&name, admit.hidden));
        }
        if admit.show {
            say(msg);
        }
    }

    pub(super) fn mark_ready(&mut self, i: usize) {
        if matches!(self.list[i].state, State::Starting(_)) {
            self.list[i].state = State::Ready;
            self.record_start(i);
            say(&format!("{} is ready", self.list[i].unit.name));
        }
    }

    /// A `scheme` unit is ready once each scheme it names exactly is mounted.
    pub(super) fn check_scheme_ready(&mut self, i: usize) {
        let svc = &self.list[i];
        if svc.unit.kind == Kind::Scheme
            && svc.unit.literal_schemes().next().is_some()
            && svc
                .unit
                .literal_schemes()
                .all(|s| self.scheme_names(i).any(|r| r == s))
        {
            self.mark_ready(i);
        }
    }

    /// An enumerator's request to start one instance of a template unit
    /// with the capability fds it passed and the I/O ports it grants. The
    /// instance goes into the table like any service (dependencies,
    /// readiness, output, exit reports).
    pub(super) fn spawn_instance(
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
        svc.claims_device = !fds.is_empty();
        svc.passed = fds;
        svc.enumerator = Some(self.list[requester].unit.name.clone());
        let i = match self.list.iter().position(|s| s.unit.name == svc.unit.name) {
            Some(i) if self.list[i].pid.is_some() => {
                return Err((
                    libc_errno(rustix::io::Errno::BUSY),
                    format!("{} is already running", svc.unit.name),
                ))
            }
            // Stopped by hand: only a start by hand brings it back.
            Some(i) if self.list[i].state == State::Stopped => {
                return Err((
                    libc_errno(rustix::io::Errno::PERM),
                    format!("{} was stopped by hand", svc.unit.name),
                ))
            }
            // The same device again (a restart, or a failed instance given
            // another chance): the new start keeps the supervisor's record
            // and the kept schemes, which its daemon takes over.
            Some(i) => {
                let old = &mut self.list[i];
                svc.record = std::mem::take(&mut old.record);
                svc.kept = std::mem::take(&mut old.kept);
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
}

/// What init says of the complaints about `name` its quota kept back.
pub(super) fn hidden_complaints(name: &str, hidden: u64) -> String {
    format!("{name}: {hidden} more complaints about its requests not shown")
}
