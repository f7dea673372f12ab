//! The runtime against the real kernel: a small in-memory directory scheme
//! on a real FUSE mount (needs root and /dev/fuse).

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::sync::{Arc, Mutex};

use scheme::testing::TestMount;
use scheme::{
    ioctl, CallerCtx, DirEntry, DirentBuf, DirentKind, OpenResult, RootKind, Scheme, Stat,
};
use syscall::error::{Error, Result, EBADF, EISDIR, ENOENT, ENOTDIR, ENOTTY};
use syscall::flag::{MODE_DIR, MODE_FILE, O_CREAT, O_TRUNC};

const SET: u32 = ioctl::iow(b'M', 1, 4);
const GET: u32 = ioctl::ior(b'M', 2, 4);
const SWAP: u32 = ioctl::iowr(b'M', 3, 8);

/// Files `a`, `sub/b`, `many/file-NNN…`; `O_CREAT` creates in the root.
struct Mem {
    files: BTreeMap<String, Vec<u8>>,
    handles: BTreeMap<usize, String>,
    next: usize,
    value: u32,
    last_ctx: Arc<Mutex<Option<CallerCtx>>>,
}

fn is_dir(path: &str) -> bool {
    matches!(path, "" | "sub" | "many")
}

impl Mem {
    fn new(last_ctx: Arc<Mutex<Option<CallerCtx>>>) -> Mem {
        let mut files = BTreeMap::new();
        files.insert("a".to_owned(), b"0123456789".to_vec());
        files.insert("sub/b".to_owned(), b"bee".to_vec());
        for i in 0..300 {
            files.insert(
                format!("many/file-{i:03}-with-a-rather-long-name-to-fill-pages"),
                vec![],
            );
        }
        Mem {
            files,
            handles: BTreeMap::new(),
            next: 1,
            value: 0,
            last_ctx,
        }
    }

    fn file(&mut self, id: usize) -> Result<&mut Vec<u8>> {
        let path = self.handles.get(&id).ok_or(Error::new(EBADF))?;
        if is_dir(path) {
            return Err(Error::new(EISDIR));
        }
        self.files.get_mut(path).ok_or(Error::new(EBADF))
    }
}

impl Scheme for Mem {
    fn openat(&mut self, path: &str, flags: usize, ctx: &CallerCtx) -> Result<OpenResult> {
        *self.last_ctx.lock().unwrap() = Some(*ctx);
        if !is_dir(path) && !self.files.contains_key(path) {
            if flags & O_CREAT == 0 {
                return Err(Error::new(ENOENT));
            }
            self.files.insert(path.to_owned(), Vec::new());
        }
        if flags & O_TRUNC != 0 {
            if let Some(f) = self.files.get_mut(path) {
                f.clear();
            }
        }
        let id = self.next;
        self.next += 1;
        self.handles.insert(id, path.to_owned());
        Ok(OpenResult::file(id))
    }

    fn read(
        &mut self,
        id: usize,
        buf: &mut [u8],
        offset: u64,
        _f: u32,
        _c: &CallerCtx,
    ) -> Result<usize> {
        let f = self.file(id)?;
        let start = (offset as usize).min(f.len());
        let n = buf.len().min(f.len() - start);
        buf[..n].copy_from_slice(&f[start..start + n]);
        Ok(n)
    }

    fn write(
        &mut self,
        id: usize,
        buf: &[u8],
        offset: u64,
        _f: u32,
        _c: &CallerCtx,
    ) -> Result<usize> {
        let f = self.file(id)?;
        let end = offset as usize + buf.len();
        if f.len() < end {
            f.resize(end, 0);
        }
        f[offset as usize..end].copy_from_slice(buf);
        Ok(buf.len())
    }

    fn fstat(&mut self, id: usize, stat: &mut Stat, _ctx: &CallerCtx) -> Result<()> {
        let path = self.handles.get(&id).ok_or(Error::new(EBADF))?;
        if is_dir(path) {
            stat.st_mode = MODE_DIR | 0o755;
        } else {
            stat.st_mode = MODE_FILE | 0o640;
            stat.st_size = self.files.get(path).map_or(0, |f| f.len() as u64);
            stat.st_uid = 12;
        }
        Ok(())
    }

    fn getdents(
        &mut self,
        id: usize,
        buf: &mut DirentBuf,
        off: u64,
        _ctx: &CallerCtx,
    ) -> Result<()> {
        let dir = self.handles.get(&id).ok_or(Error::new(EBADF))?.clone();
        if !is_dir(&dir) {
            return Err(Error::new(ENOTDIR));
        }
        let mut names: Vec<(String, DirentKind)> = Vec::new();
        if dir.is_empty() {
            names.push(("sub".into(), DirentKind::Directory));
            names.push(("many".into(), DirentKind::Directory));
        }
        let prefix = if dir.is_empty() {
            String::new()
        } else {
            format!("{dir}/")
        };
        for p in self.files.keys() {
            if let Some(rest) = p.strip_prefix(&prefix) {
                if !rest.contains('/') {
                    names.push((rest.to_owned(), DirentKind::Regular));
                }
            }
        }
        for (i, (name, kind)) in names.iter().enumerate().skip(off as usize) {
            if !buf.entry(DirEntry {
                name,
                kind: *kind,
                next_opaque_id: i as u64 + 1,
            }) {
                break;
            }
        }
        Ok(())
    }

    fn ftruncate(&mut self, id: usize, len: u64, _ctx: &CallerCtx) -> Result<()> {
        self.file(id)?.resize(len as usize, 0);
        Ok(())
    }

    fn call(
        &mut self,
        _id: usize,
        payload: &mut [u8],
        meta: &[u64],
        _ctx: &CallerCtx,
    ) -> Result<usize> {
        match meta.first().map(|&c| c as u32) {
            Some(SET) => {
                self.value = u32::from_ne_bytes(payload[..4].try_into().unwrap());
                Ok(0)
            }
            Some(GET) => {
                payload[..4].copy_from_slice(&self.value.to_ne_bytes());
                Ok(0)
            }
            Some(SWAP) => {
                payload.reverse();
                Ok(7)
            }
            _ => Err(Error::new(ENOTTY)),
        }
    }

    fn on_close(&mut self, id: usize) {
        self.handles.remove(&id);
    }
}

fn mount() -> (TestMount, Arc<Mutex<Option<CallerCtx>>>) {
    let ctx = Arc::new(Mutex::new(None));
    (
        TestMount::new(RootKind::Dir, Mem::new(ctx.clone())).expect("mount"),
        ctx,
    )
}

#[test]
fn open_read_write_stat_and_enoent() {
    let (m, ctx) = mount();
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.join("a"))
        .expect("open a");
    let mut s = String::new();
    f.read_to_string(&mut s).expect("read");
    assert_eq!(s, "0123456789");
    // Seekable: positioned reads and writes reach the scheme's offsets.
    f.write_all_at(b"XY", 3).expect("pwrite");
    let mut two = [0u8; 4];
    f.read_exact_at(&mut two, 2).expect("pread");
    assert_eq!(&two, b"2XY5");
    f.seek(SeekFrom::Start(8)).expect("seek");
    let mut rest = Vec::new();
    f.read_to_end(&mut rest).expect("read");
    assert_eq!(rest, b"89");
    let md = f.metadata().expect("fstat");
    assert!(md.is_file());
    assert_eq!((md.len(), md.mode() & 0o777, md.uid()), (10, 0o640, 12));
    let c = ctx.lock().unwrap().expect("ctx recorded");
    assert_eq!((c.uid, c.gid), (0, 0));
    assert!(c.pid > 0);

    let e = File::open(m.join("nope")).expect_err("ENOENT");
    assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
    let e = std::fs::metadata(m.join("sub/nope")).expect_err("ENOENT");
    assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
    assert_eq!(std::fs::read(m.join("sub/b")).expect("read sub/b"), b"bee");
    assert!(std::fs::metadata(m.join("sub")).expect("stat sub").is_dir());
    assert!(std::fs::metadata(m.path()).expect("stat root").is_dir());
    // access(2) and statfs(2) are answered.
    assert!(rustix::fs::access(m.join("a").as_path(), rustix::fs::Access::READ_OK).is_ok());
    let st = rustix::fs::statfs(m.path()).expect("statfs");
    assert_eq!(st.f_bsize, 4096);
}

#[test]
fn create_truncate_and_setattr() {
    let (m, _) = mount();
    // O_CREAT on a missing name arrives as FUSE_CREATE.
    std::fs::write(m.join("new"), b"hello world").expect("create");
    assert_eq!(std::fs::read(m.join("new")).expect("read"), b"hello world");
    // O_TRUNC travels with the open (atomic_o_trunc).
    std::fs::write(m.join("new"), b"hi").expect("rewrite");
    assert_eq!(std::fs::read(m.join("new")).expect("read"), b"hi");
    // truncate(2) by path and ftruncate(2) by handle: SETATTR size.
    let path = CString::new(m.join("a").as_os_str().as_bytes()).expect("path");
    // SAFETY: `path` is a valid NUL-terminated string for the call.
    assert_eq!(unsafe { libc::truncate(path.as_ptr(), 4) }, 0, "truncate");
    assert_eq!(std::fs::read(m.join("a")).expect("read"), b"0123");
    let f = OpenOptions::new()
        .write(true)
        .open(m.join("a"))
        .expect("open");
    f.set_len(1).expect("ftruncate");
    assert_eq!(f.metadata().expect("fstat").len(), 1);
    // chmod/utimes are accepted (and ignored).
    f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod");
}

#[test]
fn readdir_pages_through_long_listings() {
    let (m, _) = mount();
    let mut root: Vec<String> = std::fs::read_dir(m.path())
        .expect("readdir")
        .map(|e| e.expect("entry").file_name().into_string().expect("utf8"))
        .collect();
    root.sort();
    assert_eq!(root, ["a", "many", "sub"]);
    let many: Vec<_> = std::fs::read_dir(m.join("many"))
        .expect("readdir")
        .collect::<std::result::Result<_, _>>()
        .expect("entries");
    // 300 entries of ~80 bytes need several READDIR requests.
    assert_eq!(many.len(), 300);
    assert!(many.iter().all(|e| e.file_type().expect("type").is_file()));
    let mut names: Vec<_> = many.iter().map(|e| e.file_name()).collect();
    names.dedup();
    assert_eq!(names.len(), 300);
}

#[test]
fn ioctl_moves_data_both_ways() {
    let (m, _) = mount();
    let f = File::open(m.join("a")).expect("open");
    let fd = f.as_raw_fd();
    let mut v = 0xdead_beefu32;
    // SAFETY: each command's _IOC_SIZE matches the buffer passed, which
    // lives across the call.
    unsafe {
        assert_eq!(libc::ioctl(fd, SET as _, &mut v as *mut u32), 0);
        let mut out = 0u32;
        assert_eq!(libc::ioctl(fd, GET as _, &mut out as *mut u32), 0);
        assert_eq!(out, 0xdead_beef);
        let mut buf = *b"12345678";
        assert_eq!(libc::ioctl(fd, SWAP as _, buf.as_mut_ptr()), 7);
        assert_eq!(&buf, b"87654321");
        assert_eq!(libc::ioctl(fd, ioctl::io(b'M', 9) as _, 0), -1);
        assert_eq!(
            std::io::Error::last_os_error().raw_os_error(),
            Some(libc::ENOTTY)
        );
    }
    // Still serving afterwards.
    assert!(std::fs::read(m.join("a")).is_ok());
}
