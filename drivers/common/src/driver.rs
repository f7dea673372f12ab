//! A driver daemon's one event loop: its scheme and its interrupts.
//!
//! Every driver runs the same loop (Redox's drivers each write it out): wait
//! on the FUSE fd and the interrupt eventfds; a readable FUSE fd means
//! requests ([`Server::process`]), until the mount goes away; a fired
//! interrupt runs the driver's handler for it between taking the eventfd's
//! count and acknowledging the line, then lets the scheme answer what the
//! interrupt finished ([`Server::wake`]); a readable control socket is
//! init, whose heartbeat the loop answers (a loop that stops answering is a
//! hung driver, which init kills and restarts). A driver's `main.rs` hands this
//! loop its handlers and calls [`DriverLoop::run`]; the device logic stays
//! in the scheme. Anything every driver's loop must do (the supervisor's
//! heartbeat, orderly removal) belongs here, once.

use std::io;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use daemon::Daemon;
use log::{info, warn};
use scheme::{Scheme, Server, Status};

use crate::event::EventLoop;
use crate::irq::Irq;

/// What a handler may do to the driver: everything the scheme owns.
type Handler<S> = Box<dyn FnMut(&mut S) -> io::Result<()>>;

/// The FUSE fd's token; interrupt `i` is `i + 1`.
const SCHEME_TOKEN: u64 = 0;
/// init's control socket.
const CONTROL_TOKEN: u64 = u64::MAX;
/// The kernel asking for the device back (hot-unplug).
const REMOVAL_TOKEN: u64 = u64::MAX - 1;
/// How long a removed device's requests in flight may take to complete
/// before the driver lets go anyway (init's stand-in then answers them
/// `EIO`): the kernel's removal waits on us.
pub const DRAIN_BOUND: Duration = Duration::from_secs(2);

/// One interrupt and what it means to the driver.
struct IrqArm<S> {
    irq: Irq,
    handler: Handler<S>,
}

/// Work a round left undone on purpose (a receive budget ran out): the
/// loop comes straight back for it, after the requests already waiting.
struct Backlog<S> {
    pending: Box<dyn Fn(&S) -> bool>,
    work: Handler<S>,
}

/// A driver's scheme server and the interrupts it serves.
pub struct DriverLoop<S: Scheme> {
    server: Server<S>,
    daemon: Daemon,
    events: EventLoop,
    irqs: Vec<IrqArm<S>>,
    backlog: Option<Backlog<S>>,
    removal: Option<Irq>,
}

impl<S: Scheme> DriverLoop<S> {
    /// Serves `server`, answering init on `daemon`'s control socket.
    pub fn new(server: Server<S>, daemon: Daemon) -> io::Result<DriverLoop<S>> {
        let events = EventLoop::new()?;
        events.add(server.as_fd(), SCHEME_TOKEN)?;
        events.add(daemon.control_fd(), CONTROL_TOKEN)?;
        Ok(DriverLoop {
            server,
            daemon,
            events,
            irqs: Vec::new(),
            backlog: None,
            removal: None,
        })
    }

    /// On each firing of `irq`: its count is taken, `handler` runs (read
    /// and clear the device's cause, reclaim, complete), then the line is
    /// acknowledged — only now, since unmasking a level-triggered INTx
    /// line while its cause is still set would fire it again at once — and
    /// the scheme answers what became possible. An error from `handler`
    /// ends the loop, and with it the daemon: for a device that has stopped
    /// working, so the supervisor restarts it on a reset device.
    pub fn on_irq(
        mut self,
        irq: Irq,
        handler: impl FnMut(&mut S) -> io::Result<()> + 'static,
    ) -> io::Result<DriverLoop<S>> {
        let token = self.irqs.len() as u64 + 1;
        self.events.add(irq.as_fd(), token)?;
        self.irqs.push(IrqArm {
            irq,
            handler: Box::new(handler),
        });
        Ok(self)
    }

    /// While `pending` says a round left work behind, the loop does not
    /// sleep: it serves what is ready, then runs `work` and answers what it
    /// finished.
    pub fn with_backlog(
        mut self,
        pending: impl Fn(&S) -> bool + 'static,
        work: impl FnMut(&mut S) -> io::Result<()> + 'static,
    ) -> DriverLoop<S> {
        self.backlog = Some(Backlog {
            pending: Box::new(pending),
            work: Box::new(work),
        });
        self
    }

    /// `irq` fires when the kernel wants the device back (VFIO's device
    /// request, on hot-unplug): the loop stops taking requests, lets what
    /// the device has in flight complete (at most [`DRAIN_BOUND`]), tells
    /// init it is going for good, and returns `Ok`, so the daemon exits
    /// and its device fds close, which lets the removal finish. Requests it
    /// had read and not answered come back to init's stand-in (`EIO`).
    /// `None` (a function VFIO offers no request interrupt for) changes
    /// nothing.
    pub fn on_removal(mut self, irq: Option<Irq>) -> io::Result<DriverLoop<S>> {
        if let Some(irq) = irq {
            self.events.add(irq.as_fd(), REMOVAL_TOKEN)?;
            self.removal = Some(irq);
        }
        Ok(self)
    }

    /// Quiesce, drain, let go: see [`DriverLoop::on_removal`].
    fn let_go(&mut self) -> io::Result<()> {
        if let Some(irq) = self.removal.as_ref() {
            let _ = irq.take();
        }
        info!(
            "the kernel asks for the device back: draining {} requests in flight",
            self.server.deferred()
        );
        if let Err(e) = self.daemon.removed() {
            warn!("cannot tell init the device is going: {e}");
        }
        self.events.remove(self.server.as_fd())?;
        let until = Instant::now() + DRAIN_BOUND;
        while self.server.deferred() > 0 {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                warn!(
                    "{} requests did not complete; init answers them",
                    self.server.deferred()
                );
                break;
            }
            for token in self.events.wait(Some(left))? {
                if token == CONTROL_TOKEN {
                    let _ = self.daemon.serve_control();
                    continue;
                }
                let Some(arm) = usize::try_from(token.wrapping_sub(1))
                    .ok()
                    .and_then(|i| self.irqs.get_mut(i))
                else {
                    continue;
                };
                arm.irq.take()?;
                (arm.handler)(self.server.scheme_mut())?;
                arm.irq.ack()?;
                self.server.wake();
            }
        }
        info!("device released");
        Ok(())
    }

    /// Serves until the scheme is unmounted or the device is removed
    /// (`Ok`), or something fails.
    pub fn run(mut self) -> io::Result<()> {
        loop {
            let backlog = self
                .backlog
                .as_ref()
                .is_some_and(|b| (b.pending)(self.server.scheme()));
            let tokens = self.events.wait(backlog.then_some(Duration::ZERO))?;
            crate::fault::at_event("the driver loop");
            if let Some(b) = self.backlog.as_mut().filter(|_| backlog) {
                (b.work)(self.server.scheme_mut())?;
                self.server.wake();
            }
            for token in tokens {
                if token == CONTROL_TOKEN {
                    for notice in self.daemon.serve_control()? {
                        warn!("init sent {notice:?}, which a driver does not take");
                    }
                    continue;
                }
                if token == REMOVAL_TOKEN {
                    return self.let_go();
                }
                if token == SCHEME_TOKEN {
                    if self.server.process()? == Status::Unmounted {
                        info!("scheme unmounted; exiting");
                        return Ok(());
                    }
                    continue;
                }
                let arm = usize::try_from(token - 1)
                    .ok()
                    .and_then(|i| self.irqs.get_mut(i));
                let Some(arm) = arm else {
                    warn!("event loop: unknown token {token}");
                    continue;
                };
                arm.irq.take()?;
                (arm.handler)(self.server.scheme_mut())?;
                arm.irq.ack()?;
                self.server.wake();
            }
        }
    }
}
