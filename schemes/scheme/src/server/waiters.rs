//! The runtime's bookkeeping of requests and sleepers the scheme cannot
//! answer yet: parked reads and writes (retried until they finish), deferred
//! requests (answered when the scheme completes them), handles whose close
//! waits for their deferred requests, and kernel poll handles to notify.
//!
//! Pure bookkeeping: nothing here calls the scheme or writes to the
//! connection. [`super::Server`] does both and asks this module what is
//! waiting, as the ring code in drivers returns indices for the caller to
//! write. The semantics are in docs/scheme-protocol.md (Parking, Deferred
//! replies, poll).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use log::{debug, trace, warn};
use syscall::flag::EventFlags;

use crate::{CallerCtx, Result};

/// A read or write that returned `EAGAIN` on a blocking file.
pub(super) struct Parked {
    pub(super) unique: u64,
    pub(super) fh: u64,
    pub(super) ctx: CallerCtx,
    pub(super) op: ParkedOp,
}

pub(super) enum ParkedOp {
    Read {
        offset: u64,
        size: usize,
        fcntl: u32,
    },
    Write {
        offset: u64,
        data: Vec<u8>,
        fcntl: u32,
    },
}

/// What a deferred request expects back, with the bound its result is
/// checked against.
#[derive(Debug, Clone, Copy)]
pub(super) enum DeferredKind {
    Read { size: usize },
    Write { size: usize },
    Fsync,
    Call,
}

/// A request the scheme took with `EINPROGRESS`: no reply until its
/// completion comes.
struct Deferred {
    fh: u64,
    kind: DeferredKind,
}

/// A kernel poll handle waiting for readiness changes on one open file.
pub(super) struct Poller {
    pub(super) fh: u64,
    pub(super) events: EventFlags,
    /// Readiness last reported or observed; a notification goes out when
    /// a flag appears that was not in here.
    pub(super) last: EventFlags,
    pub(super) ctx: CallerCtx,
}

/// What a `FUSE_INTERRUPT` found.
pub(super) enum Interrupted {
    /// A parked request, now unparked: answer it `EINTR`.
    Parked(u64),
    /// A deferred request: it keeps waiting for its completion.
    Deferred,
    /// Nothing (already answered).
    Unknown,
}

/// What releasing a handle left to do.
pub(super) struct Released {
    /// Parked requests on the handle, oldest first, now unparked: answer
    /// each `EBADF`.
    pub(super) unparked: Vec<u64>,
    /// Close the scheme's handle now; `false` while requests on it are
    /// deferred (then [`Finished::close`] names it after the last one).
    pub(super) close_now: bool,
}

/// A deferred request that completed.
pub(super) struct Finished {
    pub(super) kind: DeferredKind,
    /// A released handle whose last deferred request this was: close it
    /// after the reply.
    pub(super) close: Option<u64>,
}

#[derive(Default)]
pub(super) struct Waiters {
    parked: VecDeque<Parked>,
    /// Deferred requests by unique.
    deferred: BTreeMap<u64, Deferred>,
    /// Handles released while requests on them were deferred: `on_close`
    /// waits for the last of them.
    closing: BTreeSet<u64>,
    /// Poll waiters by kernel handle `kh`.
    pollers: BTreeMap<u64, Poller>,
}

impl Waiters {
    pub(super) fn parked(&self) -> usize {
        self.parked.len()
    }

    pub(super) fn deferred(&self) -> usize {
        self.deferred.len()
    }

    pub(super) fn pollers(&self) -> usize {
        self.pollers.len()
    }

    /// Queues a request behind every one parked before it.
    pub(super) fn park(&mut self, p: Parked) {
        self.parked.push_back(p);
    }

    /// Takes the parked queue out for a retry pass ([`retry`]), so the
    /// attempts may defer requests meanwhile; [`Waiters::requeue`] puts
    /// back what stays.
    pub(super) fn take_parked(&mut self) -> VecDeque<Parked> {
        std::mem::take(&mut self.parked)
    }

    /// Puts back what a retry pass left parked, ahead of anything parked
    /// since (nothing is: a retry never parks anew), so the order holds.
    pub(super) fn requeue(&mut self, mut stay: VecDeque<Parked>) {
        stay.append(&mut self.parked);
        self.parked = stay;
    }

    /// Records a request the scheme took with `EINPROGRESS`.
    pub(super) fn defer(&mut self, unique: u64, fh: u64, kind: DeferredKind) {
        trace!("fuse: request {unique} deferred");
        if self
            .deferred
            .insert(unique, Deferred { fh, kind })
            .is_some()
        {
            // Only a misbehaving kernel reuses a unique still in flight;
            // either way the unique gets one reply.
            warn!("fuse: request {unique} deferred twice");
        }
    }

    /// Ends the deferred request `unique`; `None` if it is not deferred
    /// (unknown, or answered already).
    pub(super) fn finish(&mut self, unique: u64) -> Option<Finished> {
        let d = self.deferred.remove(&unique)?;
        let close = (self.closing.contains(&d.fh) && !self.has_deferred(d.fh)).then(|| {
            self.closing.remove(&d.fh);
            d.fh
        });
        Some(Finished {
            kind: d.kind,
            close,
        })
    }

    fn has_deferred(&self, fh: u64) -> bool {
        self.deferred.values().any(|d| d.fh == fh)
    }

    /// A `FUSE_INTERRUPT` named `unique`.
    pub(super) fn interrupt(&mut self, unique: u64) -> Interrupted {
        if let Some(pos) = self.parked.iter().position(|p| p.unique == unique) {
            match self.parked.remove(pos) {
                Some(p) => Interrupted::Parked(p.unique),
                None => Interrupted::Unknown,
            }
        } else if self.deferred.contains_key(&unique) {
            Interrupted::Deferred
        } else {
            Interrupted::Unknown
        }
    }

    /// The kernel released `fh`: unparks its requests, forgets its poll
    /// waiters, and says whether it can close now.
    pub(super) fn release(&mut self, fh: u64) -> Released {
        let mut unparked = Vec::new();
        self.parked.retain(|p| {
            if p.fh == fh {
                unparked.push(p.unique);
                false
            } else {
                true
            }
        });
        self.pollers.retain(|_, p| p.fh != fh);
        // The kernel holds a file reference for each request in flight, so
        // this happens only on odd paths. The scheme is still doing the
        // I/O: let it finish and answer truthfully, and close after.
        let close_now = if self.has_deferred(fh) {
            debug!("fuse: handle {fh} released with deferred requests");
            self.closing.insert(fh);
            false
        } else {
            true
        };
        Released {
            unparked,
            close_now,
        }
    }

    /// The events an earlier poll on `kh` asked for, if it was on the
    /// same handle (a new poll adds to them).
    pub(super) fn polled_events(&self, kh: u64, fh: u64) -> Option<EventFlags> {
        self.pollers
            .get(&kh)
            .filter(|p| p.fh == fh)
            .map(|p| p.events)
    }

    pub(super) fn is_polling(&self, kh: u64) -> bool {
        self.pollers.contains_key(&kh)
    }

    /// Remembers (or replaces) the poll waiter `kh`.
    pub(super) fn watch(&mut self, kh: u64, p: Poller) {
        self.pollers.insert(kh, p);
    }

    /// Asks `readiness(fh, events, ctx)` about every poll waiter and
    /// returns the `kh`s to notify: those that gained a flag since last
    /// time, and those whose check failed (they come back and collect the
    /// error).
    pub(super) fn check_pollers(
        &mut self,
        mut readiness: impl FnMut(u64, EventFlags, &CallerCtx) -> Result<EventFlags>,
    ) -> Vec<u64> {
        let mut wake = Vec::new();
        for (&kh, p) in self.pollers.iter_mut() {
            match readiness(p.fh, p.events, &p.ctx) {
                Ok(r) => {
                    let r = r & p.events;
                    if !(r - p.last).is_empty() {
                        wake.push(kh);
                    }
                    p.last = r;
                }
                Err(_) => wake.push(kh),
            }
        }
        wake
    }
}

/// Offers every request in `queue`, oldest first, to `attempt`, which
/// returns `true` when it answered one (it leaves the queue) and `false`
/// when it must stay. Repeats while anything was answered: a finished write
/// may unblock a read queued before it.
pub(super) fn retry(queue: &mut VecDeque<Parked>, mut attempt: impl FnMut(&Parked) -> bool) {
    loop {
        let before = queue.len();
        queue.retain(|p| !attempt(p));
        if queue.len() == before {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(unique: u64, fh: u64) -> Parked {
        Parked {
            unique,
            fh,
            ctx: CallerCtx {
                uid: 0,
                gid: 0,
                pid: 0,
                request: unique,
            },
            op: ParkedOp::Read {
                offset: 0,
                size: 1,
                fcntl: 0,
            },
        }
    }

    #[test]
    fn retry_repeats_while_anything_is_answered_and_keeps_the_order() {
        let mut q: VecDeque<Parked> = [1, 2, 3].into_iter().map(|u| read(u, 0)).collect();
        // 3 can go at once; 1 only after 3 went (a write unblocking an
        // older read); 2 never.
        let mut gone = Vec::new();
        retry(&mut q, |p| {
            let ok = p.unique == 3 || (p.unique == 1 && gone.contains(&3));
            if ok {
                gone.push(p.unique);
            }
            ok
        });
        assert_eq!(gone, [3, 1]);
        assert_eq!(q.iter().map(|p| p.unique).collect::<Vec<_>>(), [2]);
    }

    #[test]
    fn a_released_handle_closes_after_its_last_deferred_request() {
        let mut w = Waiters::default();
        w.park(read(1, 7));
        w.park(read(2, 8));
        w.park(read(3, 7));
        w.defer(10, 7, DeferredKind::Fsync);
        w.defer(11, 7, DeferredKind::Read { size: 4 });
        let r = w.release(7);
        assert_eq!(r.unparked, [1, 3]);
        assert!(!r.close_now);
        assert_eq!(w.parked(), 1);
        assert_eq!(w.finish(10).map(|f| f.close), Some(None));
        assert_eq!(w.finish(11).map(|f| f.close), Some(Some(7)));
        assert!(w.finish(11).is_none(), "finished twice");
        assert!(w.release(8).close_now);
    }
}
