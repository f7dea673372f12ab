//! One epoll loop per daemon over its scheme, IRQ and control fds.
//!
//! Level-triggered: a token comes back from every [`EventLoop::wait`] until
//! its fd has been drained, so a handler that does only part of the work
//! is called again rather than forgotten. Error and hang-up conditions are
//! reported as ready too (the handler's read then says what happened).

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use rustix::event::epoll;

use crate::os_err;

/// How many events one `epoll_wait` can return; more stay pending for the
/// next call (level-triggered, nothing is lost).
const BATCH: usize = 32;

pub struct EventLoop {
    epoll: OwnedFd,
    events: Vec<epoll::Event>,
}

impl EventLoop {
    pub fn new() -> io::Result<EventLoop> {
        let epoll =
            epoll::create(epoll::CreateFlags::CLOEXEC).map_err(|e| os_err("epoll_create1", e))?;
        Ok(EventLoop {
            epoll,
            events: Vec::with_capacity(BATCH),
        })
    }

    /// Watches `fd` for readability, reporting it as `token`.
    pub fn add(&self, fd: BorrowedFd<'_>, token: u64) -> io::Result<()> {
        epoll::add(
            &self.epoll,
            fd,
            epoll::EventData::new_u64(token),
            epoll::EventFlags::IN,
        )
        .map_err(|e| os_err("epoll_ctl(ADD)", e))
    }

    /// Stops watching `fd`.
    pub fn remove(&self, fd: BorrowedFd<'_>) -> io::Result<()> {
        epoll::delete(&self.epoll, fd).map_err(|e| os_err("epoll_ctl(DEL)", e))
    }

    /// Waits (EINTR retried, with the time left) and returns the tokens
    /// that are ready. `None` waits forever; an empty result means the
    /// timeout passed.
    pub fn wait(&mut self, timeout: Option<Duration>) -> io::Result<Vec<u64>> {
        let deadline = timeout.map(|t| Instant::now().checked_add(t));
        loop {
            let ts = match deadline {
                None | Some(None) => None,
                Some(Some(d)) => {
                    let left = d.saturating_duration_since(Instant::now());
                    Some(rustix::event::Timespec {
                        tv_sec: left.as_secs().min(i64::MAX as u64) as i64,
                        tv_nsec: left.subsec_nanos() as _,
                    })
                }
            };
            self.events.clear();
            match epoll::wait(
                &self.epoll,
                rustix::buffer::spare_capacity(&mut self.events),
                ts.as_ref(),
            ) {
                Ok(_) => {
                    return Ok(self.events.iter().map(|e| e.data.u64()).collect());
                }
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(os_err("epoll_wait", e)),
            }
        }
    }
}

impl std::fmt::Debug for EventLoop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventLoop")
            .field("epoll", &self.epoll)
            .finish()
    }
}

impl AsFd for EventLoop {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.epoll.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::irq::new_eventfd;

    #[test]
    fn tokens_level_triggered_and_removable() {
        let mut el = EventLoop::new().unwrap();
        let a = new_eventfd().unwrap();
        let b = new_eventfd().unwrap();
        el.add(a.as_fd(), 7).unwrap();
        el.add(b.as_fd(), u64::MAX).unwrap();
        assert!(el.wait(Some(Duration::ZERO)).unwrap().is_empty());

        rustix::io::write(&b, &1u64.to_ne_bytes()).unwrap();
        assert_eq!(
            el.wait(Some(Duration::from_secs(5))).unwrap(),
            vec![u64::MAX]
        );
        // Not drained: still ready (level-triggered).
        assert_eq!(el.wait(Some(Duration::ZERO)).unwrap(), vec![u64::MAX]);

        rustix::io::write(&a, &1u64.to_ne_bytes()).unwrap();
        let mut got = el.wait(None).unwrap();
        got.sort();
        assert_eq!(got, vec![7, u64::MAX]);

        el.remove(b.as_fd()).unwrap();
        assert_eq!(el.wait(Some(Duration::ZERO)).unwrap(), vec![7]);
        assert!(el.remove(b.as_fd()).is_err(), "not registered any more");
    }

    #[test]
    fn timeout_is_honoured() {
        let mut el = EventLoop::new().unwrap();
        let t0 = Instant::now();
        assert!(el.wait(Some(Duration::from_millis(40))).unwrap().is_empty());
        assert!(t0.elapsed() >= Duration::from_millis(40));
    }
}
