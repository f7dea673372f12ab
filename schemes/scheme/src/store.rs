//! The runtime's state store: what the next instance of a daemon must know
//! about the FUSE connection it takes over, kept in a memfd that init holds
//! with the connection (`docs/supervision.md`).
//!
//! The kernel keeps the node ids and file handles (`fh`) an instance gave
//! out and cannot list them, so the runtime records them as it hands them
//! out: node ids with their paths, open handles with the path, flags and
//! caller that opened them, and the kernel's poll handles that wait for a
//! notification. A new instance reads the record back, opens every handle
//! again under the same `fh`, and wakes every poll sleeper (they poll again
//! and so register with it).
//!
//! Format: a 24-byte header at offset 0 (magic, version, where the log
//! starts, how long it is), then the log: one text line per change
//! (`node ID PATH`, `forget ID`, `open FH FLAGS STREAM UID GID PID PATH`,
//! `close FH`, `poll KH FH`, `unpoll KH`, `init MINOR`), paths
//! percent-escaped. A change is appended with one `pwrite`, then the header
//! names it: a daemon killed between the two loses only that change, never
//! the store. When the log outgrows its tables, the tables are written anew
//! after it (or at its head, when that room is free) and the header switches
//! to them in one write. No `ftruncate`: a driver's seccomp filter allows
//! only reads and writes on the fds it holds.

use std::collections::BTreeMap;
use std::io;
use std::os::fd::OwnedFd;

use log::warn;

const MAGIC: u32 = 0x5354_4f52; // "STOR"
const VERSION: u32 = 1;
const HEADER: u64 = 24;
/// Where a compacted log may restart: past the header's page.
const HEAD: u64 = 4096;
/// The log is compacted when it is this many times as long as its tables.
const GROWTH: u64 = 4;
const MIN_COMPACT: u64 = 64 * 1024;
/// Longest log a reader accepts. Far above any real table (a line is some
/// 40 bytes a handle or node), it bounds what a corrupt header can ask for.
const MAX_LOG: u64 = 64 << 20;
/// Node ids and `fh`s are counted up from 0 by the runtime and never come
/// near this; a larger one is corruption (and would overflow the counter
/// a new instance continues from).
const MAX_ID: u64 = 1 << 62;

/// One open handle as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenRecord {
    /// Redox `O_*` flags it was opened with.
    pub flags: usize,
    pub stream: bool,
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
    pub path: String,
}

/// Everything the store holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tables {
    /// The protocol minor negotiated at INIT.
    pub minor: Option<u32>,
    /// Node id → path (the root is implicit).
    pub nodes: BTreeMap<u64, String>,
    /// Kernel fh → what it opened.
    pub opens: BTreeMap<u64, OpenRecord>,
    /// Kernel poll handle → the fh it polls.
    pub polls: BTreeMap<u64, u64>,
}

impl Tables {
    /// The next id above every one recorded (node ids, fhs).
    pub fn next_node(&self) -> Option<u64> {
        self.nodes.keys().next_back().map(|n| n + 1)
    }
    pub fn next_fh(&self) -> Option<u64> {
        self.opens.keys().next_back().map(|n| n + 1)
    }

    fn apply(&mut self, line: &str) -> Option<()> {
        let mut w = line.split(' ');
        match w.next()? {
            "init" => self.minor = Some(w.next()?.parse().ok()?),
            "node" => {
                let id = id(w.next()?)?;
                self.nodes.insert(id, unescape(w.next()?)?);
            }
            "forget" => {
                self.nodes.remove(&w.next()?.parse().ok()?);
            }
            "open" => {
                let fh = id(w.next()?)?;
                let rec = OpenRecord {
                    flags: w.next()?.parse().ok()?,
                    stream: w.next()? == "1",
                    uid: w.next()?.parse().ok()?,
                    gid: w.next()?.parse().ok()?,
                    pid: w.next()?.parse().ok()?,
                    path: unescape(w.next()?)?,
                };
                self.opens.insert(fh, rec);
            }
            "close" => {
                let fh = w.next()?.parse().ok()?;
                self.opens.remove(&fh);
                self.polls.retain(|_, f| *f != fh);
            }
            "poll" => {
                let kh = w.next()?.parse().ok()?;
                self.polls.insert(kh, id(w.next()?)?);
            }
            "unpoll" => {
                self.polls.remove(&w.next()?.parse().ok()?);
            }
            _ => return None,
        }
        w.next().is_none().then_some(())
    }

    /// What the runtime's own records always satisfy: one node id per
    /// path, and poll waiters only on open handles (a close drops them).
    fn consistent(&self) -> bool {
        let paths: std::collections::BTreeSet<&String> = self.nodes.values().collect();
        paths.len() == self.nodes.len() && self.polls.values().all(|fh| self.opens.contains_key(fh))
    }

    fn render(&self) -> String {
        let mut s = String::new();
        if let Some(m) = self.minor {
            s += &format!("init {m}\n");
        }
        for (id, path) in &self.nodes {
            s += &format!("node {id} {}\n", escape(path));
        }
        for (fh, o) in &self.opens {
            s += &open_line(*fh, o);
        }
        for (kh, fh) in &self.polls {
            s += &format!("poll {kh} {fh}\n");
        }
        s
    }
}

/// Reads a store back: where its log starts, how long it is, and the
/// tables it holds (`None`: no store was ever written here).
fn read_log(fd: &OwnedFd) -> io::Result<Option<(u64, u64, Tables)>> {
    let mut h = [0u8; HEADER as usize];
    if rustix::io::pread(fd, &mut h, 0)? < h.len() {
        return Ok(None);
    }
    let word = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
    let long = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&h[i..i + 8]);
        u64::from_le_bytes(b)
    };
    if word(0) != MAGIC {
        return Ok(None);
    }
    if word(4) != VERSION {
        return Err(io::Error::other(format!("store version {}", word(4))));
    }
    let (start, len) = (long(8), long(16));
    // The header is believed only as far as the file goes: a corrupt
    // length must not become an allocation of that size.
    let file_size = u64::try_from(rustix::fs::fstat(fd)?.st_size).unwrap_or(0);
    let fits = start >= HEADER && start.checked_add(len).is_some_and(|end| end <= file_size);
    if !fits || len > MAX_LOG {
        return Err(io::Error::other(format!(
            "store header names {len} bytes at {start}, outside its {file_size}-byte file"
        )));
    }
    let size = usize::try_from(len).map_err(|_| io::Error::other("store too long"))?;
    let mut text = vec![0u8; size];
    let mut got = 0;
    while got < size {
        match rustix::io::pread(fd, &mut text[got..], start + got as u64)? {
            0 => return Err(io::Error::other("store shorter than its header says")),
            n => got += n,
        }
    }
    let text = String::from_utf8(text).map_err(|_| io::Error::other("store is not text"))?;
    let mut tables = Tables::default();
    for line in text.lines() {
        if tables.apply(line).is_none() {
            return Err(io::Error::other(format!("bad store line {line:?}")));
        }
    }
    if !tables.consistent() {
        return Err(io::Error::other(
            "store names a path twice or polls a closed handle",
        ));
    }
    Ok(Some((start, len, tables)))
}

/// A node id or `fh` as recorded: a number the runtime could have handed out.
fn id(word: &str) -> Option<u64> {
    word.parse().ok().filter(|&n| n <= MAX_ID)
}

fn open_line(fh: u64, o: &OpenRecord) -> String {
    format!(
        "open {fh} {} {} {} {} {} {}\n",
        o.flags,
        u8::from(o.stream),
        o.uid,
        o.gid,
        o.pid,
        escape(&o.path)
    )
}

/// A change to record.
#[derive(Debug, Clone)]
pub enum Change<'a> {
    Init(u32),
    Node(u64, &'a str),
    Forget(u64),
    Open(u64, OpenRecord),
    Close(u64),
    Poll { kh: u64, fh: u64 },
    Unpoll(u64),
}

/// The store: its memfd (none: a runtime that records nothing, as in
/// tests and on an init that keeps no store) and a copy of its tables.
pub struct Store {
    file: Option<OwnedFd>,
    tables: Tables,
    /// The log: where it starts and how long it is.
    start: u64,
    len: u64,
    /// Length of the tables when last written whole.
    base: u64,
}

impl Store {
    /// Opens the store in `file`, reading what an earlier instance left.
    /// A store that cannot be read is started afresh (and said so): the
    /// kernel's old ids then meet `ENOENT`/`EBADF`, not a wrong file.
    pub fn open(file: Option<OwnedFd>) -> Store {
        let mut store = Store {
            file,
            tables: Tables::default(),
            start: HEAD,
            len: 0,
            base: 0,
        };
        match store.read_back() {
            Ok(Some((start, len, tables))) => {
                store.start = start;
                store.len = len;
                store.base = len;
                store.tables = tables;
            }
            Ok(None) => {}
            Err(e) => warn!("state store unreadable, starting afresh: {e}"),
        }
        store
    }

    pub fn tables(&self) -> &Tables {
        &self.tables
    }

    fn read_back(&self) -> io::Result<Option<(u64, u64, Tables)>> {
        match &self.file {
            Some(fd) => read_log(fd),
            None => Ok(None),
        }
    }

    /// Records one change (in memory always; in the memfd when there is
    /// one). A failed write is logged: the daemon keeps serving, and only a
    /// restart would then miss this change.
    pub fn record(&mut self, change: Change<'_>) {
        let line = match &change {
            Change::Init(m) => format!("init {m}\n"),
            Change::Node(id, path) => format!("node {id} {}\n", escape(path)),
            Change::Forget(id) => format!("forget {id}\n"),
            Change::Open(fh, o) => open_line(*fh, o),
            Change::Close(fh) => format!("close {fh}\n"),
            Change::Poll { kh, fh } => format!("poll {kh} {fh}\n"),
            Change::Unpoll(kh) => format!("unpoll {kh}\n"),
        };
        // The line was made from typed values: it always applies.
        let _ = self.tables.apply(line.trim_end());
        if self.file.is_none() {
            return;
        }
        if let Err(e) = self.append(line.as_bytes()) {
            warn!("state store: {e}");
        }
    }

    fn append(&mut self, line: &[u8]) -> io::Result<()> {
        if self.len > MIN_COMPACT && self.len > GROWTH * self.base.max(1) {
            return self.compact();
        }
        let at = self.start + self.len;
        self.write_all(line, at)?;
        self.len += line.len() as u64;
        self.write_header()
    }

    /// Writes the tables whole where they do not overlap the current log,
    /// then points the header at them.
    fn compact(&mut self) -> io::Result<()> {
        let text = self.tables.render().into_bytes();
        let n = text.len() as u64;
        let at = if HEAD + n <= self.start {
            HEAD
        } else {
            self.start + self.len
        };
        self.write_all(&text, at)?;
        self.start = at;
        self.len = n;
        self.base = n;
        self.write_header()
    }

    fn write_header(&self) -> io::Result<()> {
        let mut h = [0u8; HEADER as usize];
        h[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        h[4..8].copy_from_slice(&VERSION.to_le_bytes());
        h[8..16].copy_from_slice(&self.start.to_le_bytes());
        h[16..24].copy_from_slice(&self.len.to_le_bytes());
        self.write_all(&h, 0)
    }

    fn write_all(&self, mut data: &[u8], mut at: u64) -> io::Result<()> {
        let Some(fd) = &self.file else {
            return Ok(());
        };
        while !data.is_empty() {
            let n = rustix::io::pwrite(fd, data, at)?;
            if n == 0 {
                return Err(io::Error::other("state store: zero-length write"));
            }
            data = &data[n..];
            at += n as u64;
        }
        Ok(())
    }
}

/// Paths are percent-escaped: `%`, space and anything unprintable.
fn escape(path: &str) -> String {
    let mut s = String::with_capacity(path.len());
    for b in path.bytes() {
        if b.is_ascii_graphic() && b != b'%' {
            s.push(b as char);
        } else {
            s += &format!("%{b:02x}");
        }
    }
    if s.is_empty() {
        s.push('%');
    }
    s
}

fn unescape(word: &str) -> Option<String> {
    if word == "%" {
        return Some(String::new());
    }
    let b = word.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memfd() -> OwnedFd {
        rustix::fs::memfd_create("store-test", rustix::fs::MemfdFlags::CLOEXEC).unwrap()
    }

    fn open(path: &str) -> OpenRecord {
        OpenRecord {
            flags: 2,
            stream: false,
            uid: 1000,
            gid: 1000,
            pid: 77,
            path: path.into(),
        }
    }

    #[test]
    fn a_new_instance_reads_back_what_the_last_recorded() {
        let fd = memfd();
        let mut s = Store::open(Some(fd.try_clone().unwrap()));
        assert_eq!(s.tables(), &Tables::default());
        s.record(Change::Init(31));
        s.record(Change::Node(2, "0"));
        s.record(Change::Node(3, "a dir/with%odd\nname"));
        s.record(Change::Node(4, "gone"));
        s.record(Change::Forget(4));
        s.record(Change::Open(5, open("0")));
        s.record(Change::Open(6, open("a dir/with%odd\nname")));
        s.record(Change::Close(5));
        s.record(Change::Poll { kh: 9, fh: 6 });
        s.record(Change::Poll { kh: 10, fh: 6 });
        s.record(Change::Unpoll(10));
        let again = Store::open(Some(fd));
        assert_eq!(again.tables(), s.tables());
        let t = again.tables();
        assert_eq!(t.minor, Some(31));
        assert_eq!(t.nodes.len(), 2);
        assert_eq!(t.nodes[&3], "a dir/with%odd\nname");
        assert_eq!(t.opens.keys().collect::<Vec<_>>(), [&6]);
        assert_eq!(t.polls.get(&9), Some(&6));
        assert_eq!(t.next_fh(), Some(7));
        assert_eq!(t.next_node(), Some(4));
    }

    #[test]
    fn compaction_keeps_the_tables_and_bounds_the_file() {
        let fd = memfd();
        let mut s = Store::open(Some(fd.try_clone().unwrap()));
        s.record(Change::Open(1, open("kept")));
        for fh in 2..20_000 {
            s.record(Change::Open(fh, open("0p1")));
            s.record(Change::Close(fh));
        }
        let again = Store::open(Some(fd.try_clone().unwrap()));
        assert_eq!(again.tables(), s.tables());
        assert_eq!(again.tables().opens.len(), 1);
        let size = rustix::fs::fstat(&fd).unwrap().st_size;
        assert!(size < 1 << 20, "store grew to {size} bytes");
    }

    #[test]
    fn a_half_written_change_is_not_read_back() {
        let fd = memfd();
        let mut s = Store::open(Some(fd.try_clone().unwrap()));
        s.record(Change::Open(1, open("0")));
        // A daemon killed after writing a line but before the header.
        let end = 4096 + s.len;
        rustix::io::pwrite(&fd, b"open 2 0 0 0 0 0 x\n", end).unwrap();
        let again = Store::open(Some(fd.try_clone().unwrap()));
        assert_eq!(again.tables().opens.len(), 1);
        // Garbage in the log is refused whole, not half believed.
        rustix::io::pwrite(&fd, b"opxn", 4096).unwrap();
        let bad = Store::open(Some(fd));
        assert_eq!(bad.tables(), &Tables::default());
    }

    #[test]
    fn without_a_file_the_tables_still_follow() {
        let mut s = Store::open(None);
        s.record(Change::Open(3, open("x")));
        assert_eq!(s.tables().opens.len(), 1);
    }

    /// A header that names more bytes than the file has (or an offset
    /// that overflows) is refused before anything is allocated for it.
    #[test]
    fn a_header_past_the_file_is_refused_unallocated() {
        let fd = memfd();
        let mut s = Store::open(Some(fd.try_clone().unwrap()));
        s.record(Change::Open(1, open("0")));
        for (start, len) in [
            (HEAD, 1 << 40),
            (HEAD, u64::MAX),
            (u64::MAX - 4, 16),
            (0, 8),
            (HEAD, s.len + 1),
        ] {
            let mut h = [0u8; HEADER as usize];
            h[0..4].copy_from_slice(&MAGIC.to_le_bytes());
            h[4..8].copy_from_slice(&VERSION.to_le_bytes());
            h[8..16].copy_from_slice(&start.to_le_bytes());
            h[16..24].copy_from_slice(&len.to_le_bytes());
            rustix::io::pwrite(&fd, &h, 0).unwrap();
            let e = read_log(&fd).unwrap_err();
            assert!(e.to_string().contains("outside its"), "{start}+{len}: {e}");
        }
    }

    #[test]
    fn ids_no_runtime_hands_out_are_refused() {
        let mut t = Tables::default();
        assert!(t.apply(&format!("open {} 0 0 0 0 0 x", u64::MAX)).is_none());
        assert!(t.apply(&format!("node {} x", MAX_ID + 1)).is_none());
        assert!(t
            .apply(&format!("poll {} {}", u64::MAX, MAX_ID + 1))
            .is_none());
        // The kernel's poll handles are its own numbers: any is fine.
        assert!(t.apply(&format!("open {MAX_ID} 0 0 0 0 0 x")).is_some());
        assert!(t.apply(&format!("poll {} {MAX_ID}", u64::MAX)).is_some());
        assert_eq!(t.next_fh(), Some(MAX_ID + 1));
    }

    mod hostile {
        //! Random and damaged stores: each loads as an error, as nothing,
        //! or as tables the runtime could have written; valid logs read
        //! back whole. Deterministic (fixed seed, no failure files);
        //! `PROPTEST_RNG_SEED` explores others.

        use super::*;
        use proptest::prelude::*;

        /// A change the runtime could record, on small ids so that closes
        /// and forgets meet earlier opens and nodes.
        fn change() -> impl Strategy<Value = (u8, u64, u64, String)> {
            (0..7u8, 0..8u64, 0..8u64, "[a-z% /\\n\\x00-\\x7f]{0,12}")
        }

        fn record(s: &mut Store, (kind, a, b, path): &(u8, u64, u64, String)) {
            let change = match kind {
                0 => Change::Init(*a as u32 + 20),
                // One id per path, as the runtime's node map keeps it.
                1 if !s.tables.nodes.values().any(|p| p == path) => Change::Node(*a + 2, path),
                1 | 2 => Change::Forget(*a + 2),
                3 => Change::Open(*a, open(path)),
                4 => Change::Close(*a),
                5 if s.tables.opens.contains_key(b) => Change::Poll { kh: *a, fh: *b },
                _ => Change::Unpoll(*a),
            };
            s.record(change);
        }

        /// The bytes of a store after `changes`, and its tables.
        fn written(changes: &[(u8, u64, u64, String)]) -> (Vec<u8>, Tables) {
            let fd = memfd();
            let mut s = Store::open(Some(fd.try_clone().unwrap()));
            for c in changes {
                record(&mut s, c);
            }
            let size = rustix::fs::fstat(&fd).unwrap().st_size as usize;
            let mut bytes = vec![0u8; size];
            assert_eq!(rustix::io::pread(&fd, &mut bytes, 0).unwrap(), size);
            (bytes, s.tables.clone())
        }

        fn with_bytes(bytes: &[u8]) -> OwnedFd {
            let fd = memfd();
            let mut at = 0;
            while at < bytes.len() {
                at += rustix::io::pwrite(&fd, &bytes[at..], at as u64).unwrap();
            }
            fd
        }

        #[derive(Debug, Clone)]
        enum Damage {
            Flip(usize, u8),
            Truncate(usize),
            Extend(Vec<u8>),
            /// Overwrite the header's start (8) or length (16).
            Header(usize, u64),
        }

        fn damage() -> impl Strategy<Value = Damage> {
            let absurd = prop_oneof![
                any::<u64>(),
                Just(u64::MAX),
                Just(1 << 40),
                0..8192u64,
                Just(HEAD),
            ];
            prop_oneof![
                (any::<usize>(), 1..=255u8).prop_map(|(at, x)| Damage::Flip(at, x)),
                any::<usize>().prop_map(Damage::Truncate),
                prop::collection::vec(any::<u8>(), 1..64).prop_map(Damage::Extend),
                (prop::sample::select(vec![8usize, 16]), absurd)
                    .prop_map(|(at, v)| Damage::Header(at, v)),
            ]
        }

        fn apply(bytes: &mut Vec<u8>, d: &Damage) {
            match d {
                Damage::Flip(at, x) if !bytes.is_empty() => {
                    let i = at % bytes.len();
                    bytes[i] ^= x;
                }
                Damage::Flip(..) => {}
                // Cut mostly in the header or the log, not the zero gap.
                Damage::Truncate(n) => bytes.truncate(n % (bytes.len() + 1)),
                Damage::Extend(more) => bytes.extend_from_slice(more),
                Damage::Header(at, v) if bytes.len() >= 24 => {
                    bytes[*at..*at + 8].copy_from_slice(&v.to_le_bytes());
                }
                Damage::Header(..) => {}
            }
        }

        /// What any loaded table must be: what a runtime could have written.
        fn plausible(t: &Tables) -> bool {
            t.consistent()
                && t.nodes.keys().chain(t.opens.keys()).all(|&id| id <= MAX_ID)
                && t.polls.values().all(|&fh| fh <= MAX_ID)
        }

        proptest! {
            #![proptest_config(seeded::config(256, 0x5703e))]

            #[test]
            fn valid_logs_read_back_whole(changes in prop::collection::vec(change(), 0..64)) {
                let (bytes, tables) = written(&changes);
                let fd = with_bytes(&bytes);
                let got = read_log(&fd).unwrap();
                match got {
                    None => prop_assert!(changes.is_empty() || tables == Tables::default()),
                    Some((_, _, t)) => prop_assert_eq!(t, tables),
                }
            }

            #[test]
            fn damaged_stores_load_as_an_error_or_consistent_tables(
                changes in prop::collection::vec(change(), 0..32),
                damages in prop::collection::vec(damage(), 1..4),
            ) {
                let (mut bytes, _) = written(&changes);
                for d in &damages {
                    apply(&mut bytes, d);
                }
                let fd = with_bytes(&bytes);
                if let Ok(Some((start, len, t))) = read_log(&fd) {
                    prop_assert!(plausible(&t), "{:?}", t);
                    prop_assert!(start.checked_add(len).is_some_and(|e| e <= bytes.len() as u64));
                }
                // A runtime starting from it keeps recording without harm.
                let mut s = Store::open(Some(fd));
                prop_assert!(plausible(s.tables()));
                s.record(Change::Open(3, open("after")));
                prop_assert!(s.tables().opens.contains_key(&3));
            }

            /// Logs made of the store's own words in random order and
            /// number (duplicate paths, polls of closed handles, huge ids,
            /// missing or extra fields), behind a right or a random header.
            #[test]
            fn random_logs_never_panic_the_reader(
                lines in prop::collection::vec(
                    prop::collection::vec(
                        prop::sample::select(vec![
                            "init", "node", "forget", "open", "close", "poll", "unpoll",
                            "0", "1", "2", "7", "4611686018427387904", "18446744073709551615",
                            "-1", "x", "%", "%2", "%zz", "a%20b", "",
                        ]),
                        0..9,
                    ),
                    0..24,
                ),
                header in prop::collection::vec(any::<u8>(), 24),
                right_header in any::<bool>(),
            ) {
                let log: String = lines.iter().map(|l| l.join(" ") + "\n").collect();
                let mut bytes = header;
                if right_header {
                    bytes[0..4].copy_from_slice(&MAGIC.to_le_bytes());
                    bytes[4..8].copy_from_slice(&VERSION.to_le_bytes());
                    bytes[8..16].copy_from_slice(&HEAD.to_le_bytes());
                    bytes[16..24].copy_from_slice(&(log.len() as u64).to_le_bytes());
                }
                bytes.resize(HEAD as usize, 0);
                bytes.extend_from_slice(log.as_bytes());
                let fd = with_bytes(&bytes);
                if let Ok(Some((_, _, t))) = read_log(&fd) {
                    prop_assert!(plausible(&t), "{:?}", t);
                }
            }
        }
    }

    #[test]
    fn escaping_round_trips() {
        for p in ["", "0", "a b", "%", "x%20y", "é\t\n", "fifo/chat"] {
            assert_eq!(unescape(&escape(p)).as_deref(), Some(p), "{p:?}");
        }
    }
}
