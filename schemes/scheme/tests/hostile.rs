//! A hostile kernel side: random and mutated FUSE requests fed to a real
//! `Server` over a `SOCK_SEQPACKET` pair (which keeps message boundaries
//! like `/dev/fuse`, so no mount and no root are needed).
//!
//! What it proves: no request, however malformed, panics the runtime; a
//! malformed one gets a clear error (`EIO` for a wrong length, `EINVAL` for
//! a short body, `ENOSYS` for an unknown opcode) or, where the protocol has
//! no reply, none; no request is answered twice; the server keeps serving
//! (a valid request after the garbage gets its correct reply); and no fd
//! is leaked. Valid writes read back through the server as written.
//!
//! Run: `cargo test --release -p scheme --test hostile`. Cases come from a
//! fixed seed (CI sees the same ones every run); set `PROPTEST_RNG_SEED`
//! to explore others and `PROPTEST_CASES` for more of them. Failures are
//! not persisted to files: proptest prints the shrunk input instead.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::Mutex;

use proptest::prelude::*;
use rustix::io::Errno;
use rustix::net::{socketpair, AddressFamily, SocketFlags, SocketType};
use scheme::abi::*;
use scheme::{CallerCtx, DirentBuf, DirentKind, EventFlags, OpenResult, Scheme, Server, Stat};
use scheme::{Handles, Status};
use syscall::error::{Error, Result, EAGAIN, EBADF, EFBIG, ENOENT, ENOTTY};
use syscall::flag::{MODE_DIR, MODE_FILE};
use zerocopy::{FromBytes, IntoBytes};

/// The fd count is process-wide: the tests of this file take turns.
static SERIAL: Mutex<()> = Mutex::new(());

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

/// Largest file the test scheme keeps, so offsets from the fuzzer cannot
/// make it allocate without bound.
const FILE_CAP: u64 = 64 * 1024;
/// What the stream holds before writes park.
const STREAM_CAP: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Node {
    Root,
    File,
    Stream,
}

/// `""` a directory holding `file` (positioned, in memory) and `stream`
/// (reads park while empty, writes park while full, poll reports both).
#[derive(Default)]
struct Board {
    handles: Handles<Node>,
    file: Vec<u8>,
    stream: Vec<u8>,
}

impl Board {
    fn node(path: &str) -> Result<Node> {
        match path {
            "" => Ok(Node::Root),
            "file" => Ok(Node::File),
            "stream" => Ok(Node::Stream),
            _ => Err(Error::new(ENOENT)),
        }
    }
}

impl Scheme for Board {
    fn openat(&mut self, path: &str, _flags: usize, _ctx: &CallerCtx) -> Result<OpenResult> {
        let node = Board::node(path)?;
        let id = self.handles.insert(node);
        Ok(match node {
            Node::Stream => OpenResult::stream(id),
            _ => OpenResult::file(id),
        })
    }
    fn fstat(&mut self, id: usize, stat: &mut Stat, _ctx: &CallerCtx) -> Result<()> {
        match self.handles.get(id)? {
            Node::Root => stat.st_mode = MODE_DIR | 0o755,
            Node::File => {
                stat.st_mode = MODE_FILE | 0o644;
                stat.st_size = self.file.len() as u64;
            }
            Node::Stream => stat.st_mode = MODE_FILE | 0o666,
        }
        Ok(())
    }
    fn read(
        &mut self,
        id: usize,
        buf: &mut [u8],
        off: u64,
        _f: u32,
        _c: &CallerCtx,
    ) -> Result<usize> {
        match self.handles.get(id)? {
            Node::Root => Err(Error::new(EBADF)),
            Node::File => Ok(scheme::read_at(&self.file, buf, off)),
            Node::Stream if self.stream.is_empty() => Err(Error::new(EAGAIN)),
            Node::Stream => {
                let n = buf.len().min(self.stream.len());
                buf[..n].copy_from_slice(&self.stream[..n]);
                self.stream.drain(..n);
                Ok(n)
            }
        }
    }
    fn write(&mut self, id: usize, buf: &[u8], off: u64, _f: u32, _c: &CallerCtx) -> Result<usize> {
        match self.handles.get(id)? {
            Node::Root => Err(Error::new(EBADF)),
            Node::File => {
                let end = off
                    .checked_add(buf.len() as u64)
                    .filter(|&e| e <= FILE_CAP)
                    .ok_or(Error::new(EFBIG))?;
                if self.file.len() < end as usize {
                    self.file.resize(end as usize, 0);
                }
                self.file[off as usize..end as usize].copy_from_slice(buf);
                Ok(buf.len())
            }
            Node::Stream => {
                let n = buf.len().min(STREAM_CAP - self.stream.len());
                if n == 0 && !buf.is_empty() {
                    return Err(Error::new(EAGAIN));
                }
                self.stream.extend_from_slice(&buf[..n]);
                Ok(n)
            }
        }
    }
    fn ftruncate(&mut self, id: usize, len: u64, _ctx: &CallerCtx) -> Result<()> {
        match self.handles.get(id)? {
            Node::File if len <= FILE_CAP => {
                self.file.resize(len as usize, 0);
                Ok(())
            }
            Node::File => Err(Error::new(EFBIG)),
            _ => Ok(()),
        }
    }
    fn getdents(&mut self, id: usize, buf: &mut DirentBuf, off: u64, _c: &CallerCtx) -> Result<()> {
        if *self.handles.get(id)? != Node::Root {
            return Err(Error::new(syscall::error::ENOTDIR));
        }
        buf.list(
            off,
            [
                ("file", DirentKind::Regular),
                ("stream", DirentKind::Regular),
            ],
        );
        Ok(())
    }
    fn fevent(&mut self, id: usize, flags: EventFlags, _c: &CallerCtx) -> Result<EventFlags> {
        let mut ready = EventFlags::empty();
        if *self.handles.get(id)? == Node::Stream {
            if !self.stream.is_empty() {
                ready |= EventFlags::EVENT_READ;
            }
            if self.stream.len() < STREAM_CAP {
                ready |= EventFlags::EVENT_WRITE;
            }
        }
        Ok(ready & flags)
    }
    /// Echoes the input reversed; command 1 only.
    fn call(
        &mut self,
        id: usize,
        payload: &mut [u8],
        meta: &[u64],
        _c: &CallerCtx,
    ) -> Result<usize> {
        self.handles.get(id)?;
        if meta.first() != Some(&1) {
            return Err(Error::new(ENOTTY));
        }
        payload.reverse();
        Ok(payload.len())
    }
    fn on_close(&mut self, id: usize) {
        self.handles.remove(id);
    }
}

/// One reply as the peer reads it.
#[derive(Debug, Clone)]
struct Reply {
    unique: u64,
    error: i32,
    body: Vec<u8>,
}

/// The server and the kernel's end of its "connection", with what was sent.
struct Peer {
    server: Server<Board>,
    kernel: OwnedFd,
    next_unique: u64,
    /// Requests sent per unique and replies seen per unique (unique 0
    /// notifications excluded), to catch a request answered twice.
    sent: HashMap<u64, usize>,
    answered: HashMap<u64, usize>,
    rbuf: Vec<u8>,
}

impl Peer {
    fn new() -> Peer {
        let (a, b) = socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            None,
        )
        .expect("socketpair");
        Peer {
            server: Server::new(a, Board::default()).expect("server"),
            kernel: b,
            next_unique: 2,
            sent: HashMap::new(),
            answered: HashMap::new(),
            rbuf: vec![0; 2 * REQUEST_BUFFER_SIZE],
        }
    }

    /// Hands one message to the server and collects what it answers.
    fn send_raw(&mut self, msg: &[u8]) -> Vec<Reply> {
        if let Ok((h, _)) = InHeader::read_from_prefix(msg) {
            *self.sent.entry(h.unique).or_default() += 1;
        }
        match rustix::io::write(&self.kernel, msg) {
            Ok(n) => assert_eq!(n, msg.len()),
            // Larger than the socket takes: the kernel would not send it.
            Err(Errno::MSGSIZE) | Err(Errno::NOBUFS) => return Vec::new(),
            Err(e) => panic!("write to the server: {e}"),
        }
        assert_eq!(self.server.process().expect("process"), Status::Running);
        self.replies()
    }

    fn replies(&mut self) -> Vec<Reply> {
        let mut out = Vec::new();
        loop {
            let n = match rustix::io::read(&self.kernel, &mut self.rbuf) {
                Ok(n) => n,
                Err(Errno::AGAIN) => return out,
                Err(e) => panic!("read a reply: {e}"),
            };
            let (h, body) = OutHeader::read_from_prefix(&self.rbuf[..n]).expect("reply header");
            assert_eq!(h.len as usize, n, "reply length");
            if h.unique == 0 && h.error == FUSE_NOTIFY_POLL {
                assert_eq!(body.len(), 8, "poll notification body");
            } else {
                assert!((-4095..=0).contains(&h.error), "errno {}", h.error);
                let seen = self.answered.entry(h.unique).or_default();
                *seen += 1;
                let sent = self.sent.get(&h.unique).copied().unwrap_or(0);
                assert!(
                    *seen <= sent,
                    "unique {} answered {} times, sent {sent}",
                    h.unique,
                    *seen
                );
            }
            out.push(Reply {
                unique: h.unique,
                error: h.error,
                body: body.to_vec(),
            });
        }
    }

    /// A fresh unique above anything the fuzzer's seeds use.
    fn unique(&mut self) -> u64 {
        self.next_unique += 2;
        (1 << 40) + self.next_unique
    }

    /// Sends a well-formed request and returns its unique and its reply
    /// (other replies that arrive with it, to earlier requests, are checked
    /// and dropped).
    fn call(&mut self, opcode: u32, nodeid: u64, body: &[u8]) -> (u64, Option<Reply>) {
        let unique = self.unique();
        let msg = request(opcode, unique, nodeid, body);
        let reply = self.send_raw(&msg).into_iter().find(|r| r.unique == unique);
        (unique, reply)
    }

    fn ok(&mut self, opcode: u32, nodeid: u64, body: &[u8]) -> Vec<u8> {
        let (u, r) = self.call(opcode, nodeid, body);
        let r = r.unwrap_or_else(|| panic!("no reply to opcode {opcode} ({u})"));
        assert_eq!(r.error, 0, "opcode {opcode}");
        r.body
    }

    fn init(&mut self) {
        let body = self.ok(FUSE_INIT, 0, init_in().as_bytes());
        let (out, _) = InitOut::read_from_prefix(&body).expect("init out");
        assert_eq!(
            (out.major, out.minor),
            (KERNEL_VERSION, KERNEL_MINOR_VERSION)
        );
    }

    fn lookup(&mut self, name: &str) -> u64 {
        let body = self.ok(FUSE_LOOKUP, ROOT_ID, &c_str(name));
        EntryOut::read_from_prefix(&body).expect("entry").0.nodeid
    }

    fn open(&mut self, nodeid: u64) -> u64 {
        let body = self.ok(FUSE_OPEN, nodeid, OpenIn::default().as_bytes());
        OpenOut::read_from_prefix(&body).expect("open out").0.fh
    }

    fn write(&mut self, nodeid: u64, fh: u64, offset: u64, data: &[u8]) -> u32 {
        let body = self.ok(FUSE_WRITE, nodeid, &write_body(fh, offset, data));
        WriteOut::read_from_prefix(&body).expect("write out").0.size
    }

    fn read(&mut self, nodeid: u64, fh: u64, offset: u64, size: u32) -> Vec<u8> {
        self.ok(FUSE_READ, nodeid, read_in(fh, offset, size).as_bytes())
    }

    /// The server still does its job: attributes, a lookup, an open, a
    /// write read back, an ioctl and a release, each answered correctly.
    fn still_serving(&mut self) {
        let body = self.ok(FUSE_GETATTR, ROOT_ID, GetattrIn::default().as_bytes());
        let attr = AttrOut::read_from_prefix(&body).expect("attr").0.attr;
        assert_eq!(attr.ino, ROOT_ID);
        let node = self.lookup("file");
        let fh = self.open(node);
        assert_eq!(self.write(node, fh, 100, b"alive"), 5);
        assert_eq!(self.read(node, fh, 100, 5), b"alive");
        let io = IoctlIn {
            fh,
            cmd: 1,
            in_size: 3,
            out_size: 3,
            ..Default::default()
        };
        let mut body = io.as_bytes().to_vec();
        body.extend_from_slice(b"abc");
        let out = self.ok(FUSE_IOCTL, node, &body);
        assert_eq!(&out[16..], b"cba");
        let rel = ReleaseIn {
            fh,
            ..Default::default()
        };
        assert!(self.ok(FUSE_RELEASE, node, rel.as_bytes()).is_empty());
    }
}

fn request(opcode: u32, unique: u64, nodeid: u64, body: &[u8]) -> Vec<u8> {
    let h = InHeader {
        len: (std::mem::size_of::<InHeader>() + body.len()) as u32,
        opcode,
        unique,
        nodeid,
        uid: 1000,
        gid: 1000,
        pid: 4242,
        ..Default::default()
    };
    let mut msg = h.as_bytes().to_vec();
    msg.extend_from_slice(body);
    msg
}

fn c_str(name: &str) -> Vec<u8> {
    let mut v = name.as_bytes().to_vec();
    v.push(0);
    v
}

fn init_in() -> InitIn {
    InitIn {
        major: KERNEL_VERSION,
        minor: 41,
        max_readahead: 1 << 17,
        flags: FUSE_ATOMIC_O_TRUNC | FUSE_BIG_WRITES | FUSE_MAX_PAGES | FUSE_INIT_EXT,
    }
}

fn read_in(fh: u64, offset: u64, size: u32) -> ReadIn {
    ReadIn {
        fh,
        offset,
        size,
        ..Default::default()
    }
}

fn write_body(fh: u64, offset: u64, data: &[u8]) -> Vec<u8> {
    let w = WriteIn {
        fh,
        offset,
        size: data.len() as u32,
        ..Default::default()
    };
    let mut body = w.as_bytes().to_vec();
    body.extend_from_slice(data);
    body
}

/// Valid requests of every opcode the runtime knows, aimed at the nodes
/// and handles `Peer::prepared` sets up (node 2 `file`, 3 `stream`; fh 0
/// the file, 1 the stream, 2 the root directory), with small uniques.
fn seeds() -> Vec<Vec<u8>> {
    let mut init_ext = init_in().as_bytes().to_vec();
    init_ext.extend_from_slice(&0x1ffu32.to_le_bytes());
    let forgets: Vec<u8> = [ForgetOne {
        nodeid: 2,
        nlookup: 1,
    }; 3]
        .iter()
        .flat_map(|f| f.as_bytes().to_vec())
        .collect();
    let mut batch = BatchForgetIn { count: 3, dummy: 0 }.as_bytes().to_vec();
    batch.extend_from_slice(&forgets);
    let mut ioctl = IoctlIn {
        fh: 0,
        cmd: 1,
        in_size: 4,
        out_size: 8,
        ..Default::default()
    }
    .as_bytes()
    .to_vec();
    ioctl.extend_from_slice(b"data");
    let mut create = CreateIn::default().as_bytes().to_vec();
    create.extend_from_slice(&c_str("file"));
    let setattr = SetattrIn {
        valid: FATTR_SIZE | FATTR_FH,
        fh: 0,
        size: 10,
        ..Default::default()
    };
    let poll = |fh| PollIn {
        fh,
        kh: 7,
        flags: FUSE_POLL_SCHEDULE_NOTIFY,
        events: 1,
    };
    let mut u = 0;
    let mut req = |op, node, body: &[u8]| {
        u += 1;
        request(op, u, node, body)
    };
    vec![
        req(FUSE_INIT, 0, init_ext.as_slice()),
        req(FUSE_LOOKUP, ROOT_ID, &c_str("file")),
        req(FUSE_LOOKUP, ROOT_ID, &c_str("nothing")),
        req(FUSE_OPEN, 2, OpenIn::default().as_bytes()),
        req(FUSE_OPENDIR, ROOT_ID, OpenIn::default().as_bytes()),
        req(FUSE_READ, 2, read_in(0, 0, 4096).as_bytes()),
        req(FUSE_READ, 3, read_in(1, 0, 64).as_bytes()),
        req(FUSE_WRITE, 2, &write_body(0, 3, b"hello")),
        req(FUSE_WRITE, 3, &write_body(1, 0, &[7; 100])),
        req(
            FUSE_RELEASE,
            3,
            ReleaseIn {
                fh: 1,
                ..Default::default()
            }
            .as_bytes(),
        ),
        req(FUSE_POLL, 3, poll(1).as_bytes()),
        req(FUSE_IOCTL, 2, &ioctl),
        req(FUSE_INTERRUPT, 0, InterruptIn { unique: 6 }.as_bytes()),
        req(FUSE_FORGET, 2, ForgetIn { nlookup: 1 }.as_bytes()),
        req(FUSE_BATCH_FORGET, 0, &batch),
        req(
            FUSE_GETATTR,
            2,
            GetattrIn {
                getattr_flags: 1,
                dummy: 0,
                fh: 0,
            }
            .as_bytes(),
        ),
        req(FUSE_SETATTR, 2, setattr.as_bytes()),
        req(FUSE_CREATE, ROOT_ID, &create),
        req(FUSE_READDIR, ROOT_ID, read_in(2, 0, 4096).as_bytes()),
        req(
            FUSE_FSYNC,
            2,
            FsyncIn {
                fh: 0,
                ..Default::default()
            }
            .as_bytes(),
        ),
        req(FUSE_FLUSH, 2, &[0; 24]),
        req(FUSE_STATFS, ROOT_ID, &[]),
        req(FUSE_ACCESS, 2, &[0; 8]),
        req(
            FUSE_RELEASEDIR,
            ROOT_ID,
            ReleaseIn {
                fh: 2,
                ..Default::default()
            }
            .as_bytes(),
        ),
    ]
}

impl Peer {
    /// A connection past INIT with node 2 `file`, node 3 `stream`, fh 0 on
    /// the file, fh 1 on the stream and fh 2 on the root, as the seeds
    /// expect.
    fn prepared() -> Peer {
        let mut p = Peer::new();
        p.init();
        assert_eq!(p.lookup("file"), 2);
        assert_eq!(p.lookup("stream"), 3);
        assert_eq!(p.open(2), 0);
        assert_eq!(p.open(3), 1);
        let body = p.ok(FUSE_OPENDIR, ROOT_ID, OpenIn::default().as_bytes());
        assert_eq!(OpenOut::read_from_prefix(&body).expect("open out").0.fh, 2);
        p
    }
}

/// One way to damage a message.
#[derive(Debug, Clone)]
enum Mutation {
    /// XOR these bytes in at these positions (modulo the length).
    Flip(Vec<(usize, u8)>),
    /// Cut to this many bytes (modulo the length + 1).
    Truncate(usize),
    /// Append bytes.
    Extend(Vec<u8>),
    /// Overwrite the header's `len` / `opcode` / `nodeid`.
    Len(u32),
    Opcode(u32),
    Nodeid(u64),
    /// Overwrite one little-endian u32 of the body: sizes, counts, flags.
    BodyWord(usize, u32),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let known = prop::sample::select(vec![
        FUSE_INIT,
        FUSE_LOOKUP,
        FUSE_OPEN,
        FUSE_READ,
        FUSE_WRITE,
        FUSE_RELEASE,
        FUSE_POLL,
        FUSE_IOCTL,
        FUSE_INTERRUPT,
        FUSE_FORGET,
        FUSE_BATCH_FORGET,
        FUSE_SETATTR,
        FUSE_CREATE,
        FUSE_READDIR,
        FUSE_GETATTR,
    ]);
    prop_oneof![
        prop::collection::vec((any::<usize>(), 1..=255u8), 1..8).prop_map(Mutation::Flip),
        any::<usize>().prop_map(Mutation::Truncate),
        prop::collection::vec(any::<u8>(), 1..64).prop_map(Mutation::Extend),
        prop_oneof![any::<u32>(), 0..200u32].prop_map(Mutation::Len),
        prop_oneof![known, any::<u32>()].prop_map(Mutation::Opcode),
        prop_oneof![0..5u64, any::<u64>()].prop_map(Mutation::Nodeid),
        (
            any::<usize>(),
            prop_oneof![any::<u32>(), Just(u32::MAX), 0..16u32, Just(1 << 20)]
        )
            .prop_map(|(at, v)| Mutation::BodyWord(at, v)),
    ]
}

fn apply(msg: &mut Vec<u8>, m: &Mutation) {
    let put = |msg: &mut Vec<u8>, at: usize, bytes: &[u8]| {
        if msg.len() >= at + bytes.len() {
            msg[at..at + bytes.len()].copy_from_slice(bytes);
        }
    };
    match m {
        Mutation::Flip(flips) if !msg.is_empty() => {
            for &(at, x) in flips {
                let i = at % msg.len();
                msg[i] ^= x;
            }
        }
        Mutation::Flip(_) => {}
        Mutation::Truncate(n) => msg.truncate(n % (msg.len() + 1)),
        Mutation::Extend(more) => msg.extend_from_slice(more),
        Mutation::Len(len) => put(msg, 0, &len.to_le_bytes()),
        Mutation::Opcode(op) => put(msg, 4, &op.to_le_bytes()),
        Mutation::Nodeid(n) => put(msg, 16, &n.to_le_bytes()),
        Mutation::BodyWord(at, v) if msg.len() >= 44 => {
            let words = (msg.len() - 40) / 4;
            put(msg, 40 + (at % words) * 4, &v.to_le_bytes());
        }
        Mutation::BodyWord(..) => {}
    }
}

/// A damaged message: a seed, some mutations, and (usually) its header's
/// length set right again so the body reaches the opcode's parser rather
/// than stopping at the length check.
#[derive(Debug, Clone)]
struct Hostile {
    seed: usize,
    mutations: Vec<Mutation>,
    fix_len: bool,
}

fn hostile() -> impl Strategy<Value = Hostile> {
    (
        any::<usize>(),
        prop::collection::vec(mutation(), 1..4),
        prop::bool::weighted(0.7),
    )
        .prop_map(|(seed, mutations, fix_len)| Hostile {
            seed,
            mutations,
            fix_len,
        })
}

impl Hostile {
    fn bytes(&self, seeds: &[Vec<u8>]) -> Vec<u8> {
        let mut msg = seeds[self.seed % seeds.len()].clone();
        for m in &self.mutations {
            apply(&mut msg, m);
        }
        if self.fix_len && msg.len() >= 40 {
            let len = msg.len() as u32;
            msg[..4].copy_from_slice(&len.to_le_bytes());
        }
        msg
    }
}

/// A message for the server: a damaged seed, or bytes of any kind.
#[derive(Debug, Clone)]
enum Input {
    Mutated(Hostile),
    Random(Vec<u8>),
}

fn input() -> impl Strategy<Value = Input> {
    prop_oneof![
        4 => hostile().prop_map(Input::Mutated),
        1 => prop::collection::vec(any::<u8>(), 0..200).prop_map(Input::Random),
    ]
}

proptest! {
    #![proptest_config(seeded::config(256, 0x5eed_f05e))]

    /// Sequences of damaged and random requests: nothing panics, every
    /// reply is well-formed and answers a request sent (at most once),
    /// and afterwards the server serves correctly and holds no new fd.
    #[test]
    fn garbage_never_stops_the_server(inputs in prop::collection::vec(input(), 1..24)) {
        let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let before = open_fds();
        {
            let seeds = seeds();
            let mut p = Peer::prepared();
            for i in &inputs {
                let msg = match i {
                    Input::Mutated(h) => h.bytes(&seeds),
                    Input::Random(b) => b.clone(),
                };
                p.send_raw(&msg);
            }
            p.still_serving();
        }
        prop_assert_eq!(open_fds(), before, "fd leaked");
    }

    /// A valid request whose header's length is wrong (cut short or
    /// extended) is answered EIO under its own unique; one cut inside the
    /// header is dropped without a reply.
    #[test]
    fn a_wrong_length_is_eio_and_no_header_is_silence(
        seed in any::<usize>(),
        cut in any::<usize>(),
        extra in prop::collection::vec(any::<u8>(), 0..32),
    ) {
        let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let seeds = seeds();
        let mut msg = seeds[seed % seeds.len()].clone();
        let unique = InHeader::read_from_prefix(&msg).expect("seed header").0.unique;
        if extra.is_empty() {
            msg.truncate(cut % msg.len());
        } else {
            msg.extend_from_slice(&extra);
        }
        let mut p = Peer::prepared();
        let replies: Vec<Reply> = p.send_raw(&msg).into_iter().filter(|r| r.unique == unique).collect();
        if msg.len() < 40 {
            prop_assert!(replies.is_empty(), "{:?}", replies);
        } else {
            prop_assert_eq!(replies.len(), 1);
            prop_assert_eq!(replies[0].error, -5, "EIO");
            prop_assert!(replies[0].body.is_empty());
        }
        p.still_serving();
    }

    /// A body cut inside its opcode's fixed argument, with a consistent
    /// header, is EINVAL; opcodes that have no reply (FORGET, BATCH_FORGET,
    /// INTERRUPT) stay silent.
    #[test]
    fn a_short_body_is_einval(seed in any::<usize>(), cut in any::<usize>()) {
        let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let seeds = seeds();
        let full = &seeds[seed % seeds.len()];
        let h = InHeader::read_from_prefix(full).expect("seed header").0;
        let fixed = match h.opcode {
            FUSE_INIT => 16,
            FUSE_OPEN | FUSE_OPENDIR => 8,
            FUSE_READ | FUSE_WRITE | FUSE_READDIR => 40,
            FUSE_RELEASE | FUSE_RELEASEDIR | FUSE_POLL => 24,
            FUSE_IOCTL => 32,
            FUSE_SETATTR => 88,
            FUSE_CREATE => 16,
            FUSE_FSYNC => 16,
            FUSE_FORGET | FUSE_INTERRUPT | FUSE_BATCH_FORGET => 8,
            // No fixed argument (LOOKUP's name, GETATTR's optional one…).
            _ => 0,
        };
        prop_assume!(fixed > 0);
        let mut msg = full[..40 + cut % fixed].to_vec();
        let len = msg.len() as u32;
        msg[..4].copy_from_slice(&len.to_le_bytes());
        let mut p = Peer::prepared();
        let replies: Vec<Reply> = p.send_raw(&msg).into_iter().filter(|r| r.unique == h.unique).collect();
        match h.opcode {
            FUSE_FORGET | FUSE_INTERRUPT | FUSE_BATCH_FORGET => prop_assert!(replies.is_empty()),
            _ => {
                prop_assert_eq!(replies.len(), 1);
                prop_assert_eq!(replies[0].error, -22, "EINVAL for opcode {}", h.opcode);
            }
        }
        p.still_serving();
    }

    /// Opcodes the runtime does not implement get ENOSYS, whatever follows.
    #[test]
    fn unknown_opcodes_are_enosys(
        opcode in any::<u32>(),
        body in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let known = [
            FUSE_LOOKUP, FUSE_FORGET, FUSE_GETATTR, FUSE_SETATTR, FUSE_OPEN, FUSE_READ,
            FUSE_WRITE, FUSE_STATFS, FUSE_RELEASE, FUSE_FSYNC, FUSE_FLUSH, FUSE_INIT,
            FUSE_OPENDIR, FUSE_READDIR, FUSE_RELEASEDIR, FUSE_FSYNCDIR, FUSE_ACCESS,
            FUSE_CREATE, FUSE_INTERRUPT, FUSE_DESTROY, FUSE_IOCTL, FUSE_POLL,
            FUSE_BATCH_FORGET,
        ];
        prop_assume!(!known.contains(&opcode));
        let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let mut p = Peer::prepared();
        let (_, reply) = p.call(opcode, ROOT_ID, &body);
        prop_assert_eq!(reply.map(|r| r.error), Some(-38), "ENOSYS");
    }

    /// Round trip: writes at any offset inside the file read back as
    /// written, through the wire format both ways.
    #[test]
    fn valid_writes_read_back(
        writes in prop::collection::vec(
            (0..FILE_CAP - 4096, prop::collection::vec(any::<u8>(), 1..4096)),
            1..8,
        ),
    ) {
        let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let mut p = Peer::prepared();
        let mut model = Vec::new();
        for (offset, data) in &writes {
            prop_assert_eq!(p.write(2, 0, *offset, data), data.len() as u32);
            let end = *offset as usize + data.len();
            if model.len() < end {
                model.resize(end, 0);
            }
            model[*offset as usize..end].copy_from_slice(data);
        }
        for (offset, data) in &writes {
            let got = p.read(2, 0, *offset, data.len() as u32);
            let end = *offset as usize + data.len();
            prop_assert_eq!(got.as_slice(), &model[*offset as usize..end]);
        }
        let all = p.read(2, 0, 0, FILE_CAP as u32);
        prop_assert_eq!(all, model);
    }
}

/// A parked read, the garbage around it, then its interrupt: the read is
/// answered once (EINTR) and the server goes on.
#[test]
fn a_parked_read_survives_garbage_and_ends_once() {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut p = Peer::prepared();
    let (read, r) = p.call(FUSE_READ, 3, read_in(1, 0, 16).as_bytes());
    assert!(r.is_none(), "an empty stream parks the read");
    assert_eq!(p.server.parked(), 1);
    for junk in [&[0xffu8; 39][..], &[0u8; 40], &[0xff; 200]] {
        p.send_raw(junk);
    }
    let (_, r) = p.call(FUSE_INTERRUPT, 0, InterruptIn { unique: read }.as_bytes());
    assert!(r.is_none(), "an interrupt is never answered");
    assert_eq!(p.answered.get(&read), Some(&1), "EINTR, once");
    assert_eq!(p.server.parked(), 0);
    p.still_serving();
}
