//! One disk's I/O engine: byte-range requests become block operations on
//! the device, each request a small state machine advanced by completions.
//!
//! - A read covers the blocks its bytes touch, split at `max_transfer`.
//! - A write that does not start and end on block boundaries first reads
//!   its edge blocks (read-modify-write), then writes whole blocks.
//! - Writes whose block spans overlap run one after another in arrival
//!   order (a write waits while an earlier overlapping write, or its RMW,
//!   is unfinished), so two writes sharing a block never lose each other's
//!   bytes. Reads and non-overlapping writes run concurrently.
//! - A discard (whole blocks, split at `max_discard`) is ordered like a
//!   write: it waits for earlier overlapping writes and discards, and
//!   later overlapping ones wait for it.
//! - At most `queue_depth` operations are at the device; the rest wait in
//!   a FIFO here and are submitted as completions free slots (also after
//!   the device refuses one with `EAGAIN`).
//!
//! A request finishes only when all its operations have come back, so no
//! operation ever refers to a request that is gone.

use std::collections::{BTreeMap, VecDeque};

use log::{error, warn};
use scheme::{Completed, Completion};
use syscall::error::{Error, Result, EAGAIN, EIO, EWOULDBLOCK};

use crate::{BlockDevice, DiskInfo, Done, Op};

/// The token of requests the scheme makes for itself (partition tables);
/// FUSE never uses unique 0.
pub(crate) const INTERNAL: u64 = 0;

/// Bound on `wait` rounds for one synchronous read, in case a device never
/// completes but its `wait` keeps returning.
const SYNC_WAIT_ROUNDS: usize = 100_000;

/// The device's geometry, checked once.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Geometry {
    /// Block size in bytes (0 for a device that reported nonsense: such a
    /// disk has no blocks).
    pub bs: u64,
    pub blocks: u64,
    /// Largest operation, in blocks (at least 1).
    pub max_blocks: u64,
    /// Largest discard, in blocks (0: the device cannot discard).
    pub max_discard: u64,
    pub depth: usize,
}

impl Geometry {
    fn new(info: &DiskInfo) -> Geometry {
        let bs = u64::from(info.block_size);
        if bs < 512 || !bs.is_power_of_two() {
            error!("disk reports block size {bs}: serving it as empty");
            return Geometry {
                bs: 512,
                blocks: 0,
                max_blocks: 1,
                max_discard: 0,
                depth: 1,
            };
        }
        // Keep every byte offset representable.
        let blocks = info.blocks.min(u64::MAX / bs);
        let max_blocks = (info.max_transfer as u64 / bs).clamp(1, u64::from(u32::MAX));
        Geometry {
            bs,
            blocks,
            max_blocks,
            max_discard: info.max_discard,
            depth: info.queue_depth.max(1),
        }
    }

    /// Size in bytes.
    pub fn bytes(&self) -> u64 {
        self.blocks * self.bs
    }

    /// The blocks covering `len > 0` bytes at `offset`.
    fn span(&self, offset: u64, len: usize) -> Span {
        let first = offset / self.bs;
        let end = (offset + len as u64).div_ceil(self.bs);
        Span {
            lba: first,
            blocks: end - first,
        }
    }
}

/// A run of blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Span {
    lba: u64,
    blocks: u64,
}

impl Span {
    fn end(&self) -> u64 {
        self.lba + self.blocks
    }
    fn overlaps(&self, other: &Span) -> bool {
        self.lba < other.end() && other.lba < self.end()
    }
}

/// One device operation of a request.
#[derive(Debug, Clone, Copy)]
struct Sub {
    key: u64,
    kind: SubKind,
}

#[derive(Debug, Clone, Copy)]
enum SubKind {
    /// Read `blocks` at `lba` into the request's buffer at byte `at`.
    Read {
        lba: u64,
        blocks: u32,
        at: usize,
    },
    /// Write `blocks` at `lba` from the request's buffer at byte `at`.
    Write {
        lba: u64,
        blocks: u32,
        at: usize,
    },
    Flush,
    Discard {
        lba: u64,
        blocks: u64,
    },
}

struct Req {
    /// The FUSE unique to complete (or [`INTERNAL`]).
    token: u64,
    kind: ReqKind,
    /// Operations not yet back from the device (or not yet submitted).
    pending: usize,
    /// The first error of any operation.
    error: Option<Error>,
}

enum ReqKind {
    /// `buf` holds whole blocks; the answer is `buf[skip..skip + len]`.
    Read {
        buf: Vec<u8>,
        skip: usize,
        len: usize,
    },
    Write(WriteReq),
    Flush,
    /// Blocks to discard, and whether its operations are queued yet.
    Discard {
        span: Span,
        started: bool,
    },
}

struct WriteReq {
    span: Span,
    state: WriteState,
    /// The caller's bytes, until they are laid into `buf`.
    data: Vec<u8>,
    /// Whole blocks of `span`, once started.
    buf: Vec<u8>,
    /// Where `data` goes in `buf`.
    skip: usize,
    len: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WriteState {
    /// An earlier overlapping write is unfinished.
    Waiting,
    /// Reading the partial edge blocks.
    Filling,
    /// Writing whole blocks.
    Writing,
}

/// The I/O engine of one disk.
pub(crate) struct Engine<D> {
    dev: D,
    info: DiskInfo,
    geo: Geometry,
    next_key: u64,
    next_tag: u64,
    reqs: BTreeMap<u64, Req>,
    /// Operations waiting for a device slot, oldest first.
    queue: VecDeque<Sub>,
    /// Operations at the device, by tag.
    inflight: BTreeMap<u64, Sub>,
    /// Unfinished writes and discards (waiting or running) by key, i.e.
    /// arrival order.
    writes: BTreeMap<u64, Span>,
    finished: Vec<Completion>,
    done: Vec<Done>,
}

impl<D: BlockDevice> Engine<D> {
    pub fn new(dev: D) -> Engine<D> {
        let info = dev.info();
        Engine {
            geo: Geometry::new(&info),
            info,
            dev,
            next_key: 1,
            next_tag: 1,
            reqs: BTreeMap::new(),
            queue: VecDeque::new(),
            inflight: BTreeMap::new(),
            writes: BTreeMap::new(),
            finished: Vec::new(),
            done: Vec::new(),
        }
    }

    pub fn geometry(&self) -> Geometry {
        self.geo
    }

    pub fn info(&self) -> DiskInfo {
        self.info
    }

    pub fn device_mut(&mut self) -> &mut D {
        &mut self.dev
    }

    /// Requests not yet finished.
    pub fn active(&self) -> usize {
        self.reqs.len()
    }

    /// Moves finished requests into `out`.
    pub fn take_finished(&mut self, out: &mut Vec<Completion>) {
        out.append(&mut self.finished);
    }

    fn key(&mut self) -> u64 {
        let k = self.next_key;
        self.next_key += 1;
        k
    }

    /// `len` bytes at `offset`, finished with `Completed::Read`. Requests
    /// outside the disk fail with `EIO` (the scheme bounds them first).
    pub fn read(&mut self, token: u64, offset: u64, len: usize) {
        if !self.in_range(offset, len) {
            self.fail_now(token, "read", offset, len);
            return;
        }
        let span = self.geo.span(offset, len);
        let bs = self.geo.bs;
        let key = self.key();
        let subs = self.split(span, |lba, blocks, at| SubKind::Read { lba, blocks, at });
        self.reqs.insert(
            key,
            Req {
                token,
                kind: ReqKind::Read {
                    buf: vec![0; (span.blocks * bs) as usize],
                    skip: (offset % bs) as usize,
                    len,
                },
                pending: subs.len(),
                error: None,
            },
        );
        self.queue
            .extend(subs.into_iter().map(|kind| Sub { key, kind }));
        self.pump();
    }

    /// `data` at `offset`, finished with `Completed::Written(data.len())`.
    pub fn write(&mut self, token: u64, offset: u64, data: Vec<u8>) {
        if !self.in_range(offset, data.len()) {
            self.fail_now(token, "write", offset, data.len());
            return;
        }
        let span = self.geo.span(offset, data.len());
        let kind = ReqKind::Write(WriteReq {
            span,
            state: WriteState::Waiting,
            skip: (offset % self.geo.bs) as usize,
            len: data.len(),
            data,
            buf: Vec::new(),
        });
        self.begin_ordered(token, span, kind);
    }

    /// Enters a write or discard over `span` in arrival order and starts
    /// it unless an earlier overlapping one is unfinished.
    fn begin_ordered(&mut self, token: u64, span: Span, kind: ReqKind) {
        let key = self.key();
        self.writes.insert(key, span);
        self.reqs.insert(
            key,
            Req {
                token,
                kind,
                pending: 0,
                error: None,
            },
        );
        if self.may_start(key, span) {
            self.start_write(key);
        }
        self.pump();
    }

    /// A cache flush, finished with `Completed::Synced`.
    pub fn flush(&mut self, token: u64) {
        let key = self.key();
        self.reqs.insert(
            key,
            Req {
                token,
                kind: ReqKind::Flush,
                pending: 1,
                error: None,
            },
        );
        self.queue.push_back(Sub {
            key,
            kind: SubKind::Flush,
        });
        self.pump();
    }

    /// Discards `blocks > 0` blocks at `lba`, finished with
    /// `Completed::Called(0)`. The scheme checks alignment, bounds and
    /// that the device can discard; a request outside the disk or on a
    /// device that cannot discard fails with `EIO`.
    pub fn discard(&mut self, token: u64, lba: u64, blocks: u64) {
        let span = Span { lba, blocks };
        let inside = blocks > 0
            && lba
                .checked_add(blocks)
                .is_some_and(|e| e <= self.geo.blocks);
        if !inside || self.geo.max_discard == 0 {
            warn!("discard of {blocks} blocks at {lba} outside the disk or not supported");
            self.finished.push(Completion {
                request: token,
                result: Err(Error::new(EIO)),
            });
            return;
        }
        let kind = ReqKind::Discard {
            span,
            started: false,
        };
        self.begin_ordered(token, span, kind);
    }

    /// Collects the device's finished operations and advances requests.
    pub fn poll(&mut self) {
        let mut done = std::mem::take(&mut self.done);
        self.dev.complete(&mut done);
        for d in done.drain(..) {
            match self.inflight.remove(&d.tag) {
                Some(sub) => self.sub_done(sub, d.result),
                None => warn!("device completed unknown tag {}: ignored", d.tag),
            }
        }
        self.done = done;
        self.pump();
    }

    /// Reads `blocks` at `lba` synchronously, calling `wait` whenever the
    /// device has to make progress. Only for start-up, when nothing else is
    /// in flight.
    pub fn read_blocks_sync(
        &mut self,
        lba: u64,
        blocks: u32,
        wait: &mut dyn FnMut() -> std::io::Result<()>,
    ) -> Result<Vec<u8>> {
        let bytes = u64::from(blocks)
            .checked_mul(self.geo.bs)
            .and_then(|b| usize::try_from(b).ok())
            .ok_or(Error::new(EIO))?;
        let offset = lba.checked_mul(self.geo.bs).ok_or(Error::new(EIO))?;
        self.read(INTERNAL, offset, bytes);
        for _ in 0..SYNC_WAIT_ROUNDS {
            self.poll();
            if let Some(i) = self.finished.iter().position(|c| c.request == INTERNAL) {
                let c = self.finished.remove(i);
                return match c.result {
                    Ok(Completed::Read(data)) if data.len() == bytes => Ok(data),
                    Ok(_) => Err(Error::new(EIO)),
                    Err(e) => Err(e),
                };
            }
            if let Err(e) = wait() {
                warn!("waiting for the device: {e}");
                return Err(Error::new(EIO));
            }
        }
        Err(Error::new(EIO))
    }

    fn in_range(&self, offset: u64, len: usize) -> bool {
        len > 0
            && offset
                .checked_add(len as u64)
                .is_some_and(|end| end <= self.geo.bytes())
    }

    fn fail_now(&mut self, token: u64, what: &str, offset: u64, len: usize) {
        warn!("{what} of {len} bytes at {offset} outside the disk");
        self.finished.push(Completion {
            request: token,
            result: Err(Error::new(EIO)),
        });
    }

    /// Splits `span` into operations of at most `max_blocks`; `make` gets
    /// (lba, blocks, byte offset from the span's start).
    fn split(&self, span: Span, make: impl Fn(u64, u32, usize) -> SubKind) -> Vec<SubKind> {
        let mut subs = Vec::new();
        let mut lba = span.lba;
        while lba < span.end() {
            let n = (span.end() - lba).min(self.geo.max_blocks);
            // n <= max_blocks <= u32::MAX, and spans stay below 4 GiB of
            // bytes (the scheme's requests are at most a few MiB).
            subs.push(make(
                lba,
                n as u32,
                ((lba - span.lba) * self.geo.bs) as usize,
            ));
            lba += n;
        }
        subs
    }

    /// No earlier unfinished write overlaps `span`.
    fn may_start(&self, key: u64, span: Span) -> bool {
        self.writes.range(..key).all(|(_, s)| !s.overlaps(&span))
    }

    /// Waiting → Filling (edge reads) or straight to Writing; a discard
    /// queues its operations.
    fn start_write(&mut self, key: u64) {
        let bs = self.geo.bs;
        let max_discard = self.geo.max_discard.max(1);
        let w = match self.reqs.get_mut(&key) {
            Some(Req {
                kind: ReqKind::Discard { span, started },
                pending,
                ..
            }) => {
                *started = true;
                let mut subs = Vec::new();
                let mut lba = span.lba;
                while lba < span.end() {
                    let blocks = (span.end() - lba).min(max_discard);
                    subs.push(Sub {
                        key,
                        kind: SubKind::Discard { lba, blocks },
                    });
                    lba += blocks;
                }
                *pending = subs.len();
                self.queue.extend(subs);
                return;
            }
            Some(Req {
                kind: ReqKind::Write(w),
                pending,
                ..
            }) => (w, pending),
            _ => return,
        };
        let (w, pending) = w;
        let head = w.skip != 0;
        let tail = !((w.skip + w.len) as u64).is_multiple_of(bs);
        if !head && !tail {
            w.buf = std::mem::take(&mut w.data);
            self.begin_writing(key);
            return;
        }
        w.state = WriteState::Filling;
        w.buf = vec![0; (w.span.blocks * bs) as usize];
        let mut subs = Vec::new();
        if head {
            subs.push(SubKind::Read {
                lba: w.span.lba,
                blocks: 1,
                at: 0,
            });
        }
        // A one-block write with both edges partial needs one read.
        if tail && !(head && w.span.blocks == 1) {
            subs.push(SubKind::Read {
                lba: w.span.end() - 1,
                blocks: 1,
                at: ((w.span.blocks - 1) * bs) as usize,
            });
        }
        *pending = subs.len();
        self.queue
            .extend(subs.into_iter().map(|kind| Sub { key, kind }));
    }

    /// Queues the whole-block writes of a write whose `buf` is complete.
    fn begin_writing(&mut self, key: u64) {
        let Some(Req {
            kind: ReqKind::Write(w),
            ..
        }) = self.reqs.get(&key)
        else {
            return;
        };
        let subs = self.split(w.span, |lba, blocks, at| SubKind::Write { lba, blocks, at });
        if let Some(Req {
            kind: ReqKind::Write(w),
            pending,
            ..
        }) = self.reqs.get_mut(&key)
        {
            w.state = WriteState::Writing;
            *pending = subs.len();
        }
        self.queue
            .extend(subs.into_iter().map(|kind| Sub { key, kind }));
    }

    /// Submits queued operations while the device has room.
    fn pump(&mut self) {
        while self.inflight.len() < self.geo.depth {
            let Some(sub) = self.queue.pop_front() else {
                break;
            };
            let tag = self.next_tag;
            self.next_tag += 1;
            let bs = self.geo.bs as usize;
            let res = match (sub.kind, self.reqs.get(&sub.key)) {
                (_, None) => {
                    warn!("operation of a finished request dropped");
                    continue;
                }
                (SubKind::Read { lba, blocks, .. }, Some(_)) => {
                    self.dev.submit(tag, Op::Read { lba, blocks })
                }
                (SubKind::Write { lba, blocks, at }, Some(req)) => {
                    let data = match &req.kind {
                        ReqKind::Write(w) => w.buf.get(at..at + blocks as usize * bs),
                        _ => None,
                    };
                    match data {
                        Some(data) => self.dev.submit(tag, Op::Write { lba, data }),
                        None => Err(Error::new(EIO)),
                    }
                }
                (SubKind::Flush, Some(_)) => self.dev.submit(tag, Op::Flush),
                (SubKind::Discard { lba, blocks }, Some(_)) => {
                    self.dev.submit(tag, Op::Discard { lba, blocks })
                }
            };
            match res {
                Ok(()) => {
                    self.inflight.insert(tag, sub);
                }
                Err(e) if (e.errno == EAGAIN || e.errno == EWOULDBLOCK) => {
                    if self.inflight.is_empty() {
                        // Nothing will complete to make room: fail instead
                        // of waiting forever.
                        warn!("device refused an operation with an empty queue");
                        self.sub_done(sub, Err(Error::new(EIO)));
                        continue;
                    }
                    self.queue.push_front(sub);
                    break;
                }
                Err(e) => self.sub_done(sub, Err(e)),
            }
        }
    }

    /// One operation came back (or failed to submit).
    fn sub_done(&mut self, sub: Sub, result: Result<Vec<u8>>) {
        let bs = self.geo.bs as usize;
        let Some(req) = self.reqs.get_mut(&sub.key) else {
            warn!("completion of a finished request ignored");
            return;
        };
        req.pending = req.pending.saturating_sub(1);
        match (result, sub.kind) {
            (Err(e), _) => {
                req.error.get_or_insert(e);
            }
            (Ok(data), SubKind::Read { blocks, at, .. }) => {
                let want = blocks as usize * bs;
                let buf = match &mut req.kind {
                    ReqKind::Read { buf, .. } => Some(buf),
                    ReqKind::Write(w) => Some(&mut w.buf),
                    ReqKind::Flush | ReqKind::Discard { .. } => None,
                };
                match buf {
                    Some(buf) if data.len() == want => {
                        if at == 0 && buf.len() == want {
                            // The whole request in one operation: no copy.
                            *buf = data;
                        } else if let Some(dst) = buf.get_mut(at..at + want) {
                            dst.copy_from_slice(&data);
                        } else {
                            req.error.get_or_insert(Error::new(EIO));
                        }
                    }
                    _ => {
                        warn!("device returned {} bytes for {want}", data.len());
                        req.error.get_or_insert(Error::new(EIO));
                    }
                }
            }
            (Ok(_), SubKind::Write { .. } | SubKind::Flush | SubKind::Discard { .. }) => {}
        }
        if req.pending == 0 {
            self.advance(sub.key);
        }
    }

    /// All operations of the request's current stage are back.
    fn advance(&mut self, key: u64) {
        let Some(req) = self.reqs.get_mut(&key) else {
            return;
        };
        if let ReqKind::Write(w) = &mut req.kind {
            if w.state == WriteState::Filling && req.error.is_none() {
                // Lay the caller's bytes over the edge blocks just read.
                match w.buf.get_mut(w.skip..w.skip + w.len) {
                    Some(dst) => {
                        dst.copy_from_slice(&w.data);
                        w.data = Vec::new();
                        self.begin_writing(key);
                        return;
                    }
                    None => {
                        req.error = Some(Error::new(EIO));
                    }
                }
            }
        }
        let Some(req) = self.reqs.remove(&key) else {
            return;
        };
        let result = match (req.error, req.kind) {
            (Some(e), _) => Err(e),
            (None, ReqKind::Read { mut buf, skip, len }) => {
                buf.truncate(skip + len);
                buf.drain(..skip);
                Ok(Completed::Read(buf))
            }
            (None, ReqKind::Write(w)) => Ok(Completed::Written(w.len)),
            (None, ReqKind::Flush) => Ok(Completed::Synced),
            (None, ReqKind::Discard { .. }) => Ok(Completed::Called(0)),
        };
        self.finished.push(Completion {
            request: req.token,
            result,
        });
        if self.writes.remove(&key).is_some() {
            self.start_ready_writes();
        }
    }

    /// Starts every waiting write or discard no earlier one overlaps any
    /// more.
    fn start_ready_writes(&mut self) {
        let waiting: Vec<(u64, Span)> = self
            .writes
            .iter()
            .filter(|(k, _)| {
                matches!(
                    self.reqs.get(k),
                    Some(Req {
                        kind: ReqKind::Write(WriteReq {
                            state: WriteState::Waiting,
                            ..
                        }) | ReqKind::Discard { started: false, .. },
                        ..
                    })
                )
            })
            .map(|(k, s)| (*k, *s))
            .collect();
        for (key, span) in waiting {
            if self.may_start(key, span) {
                self.start_write(key);
            }
        }
    }
}
