//! Stopping the services at power-off: newest first, SIGTERM then SIGKILL
//! after a grace period, keeping the owner of the power scheme (acpid) and
//! what it requires.

use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags};
use rustix::process::{Pid, Signal};

use super::{describe, Services};
use crate::console::say;

impl Services {
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
    pub(super) fn stop_order(&self) -> Vec<usize> {
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
