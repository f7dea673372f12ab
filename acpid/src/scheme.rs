//! `/scheme/acpi`:
//!
//! ```text
//! tables/            raw tables by name (APIC, FACP, DSDT, SSDT-<id>, …), the
//!                    kernel's exact bytes; NAME.txt decoded views; index.txt
//! symbols/…          the AML namespace (see `symbols.rs`); running a method
//!                    is root only
//! devices/NAME       one text file per device with _HID/_CID (NAME is the
//!                    device's platform instance name, e.g. acpi-PNP0B00-0)
//! power              root only: write `poweroff` (S5) or `reboot` (FADT
//!                    reset register); read shows what would be done
//! ```
//!
//! Files are snapshots taken at open, so one reader sees one consistent
//! text. Everything but `power` and methods is read-only for everyone.

use std::fmt::Write as _;

use acpi::aml::namespace::NameSeg;
use scheme::{CallerCtx, DirentBuf, DirentKind, Handles, OpenResult, Scheme, Stat};
use syscall::error::{Error, Result, EACCES, EBADF, EINVAL, EIO, EISDIR, ENOENT, ENOTDIR};
use syscall::flag::{MODE_DIR, MODE_FILE, O_ACCMODE, O_DIRECTORY, O_RDONLY, O_STAT};

use crate::aml::{absolute, AmlWorker, EvalError};
use crate::devices::{device_text, Device};
use crate::facts::FadtInfo;
use crate::power;
use crate::symbols::{self, SymbolKind};
use crate::tables::Tables;
use crate::views;

/// Everything acpid knows, served by [`AcpiScheme`].
pub struct Acpi {
    pub tables: Tables,
    pub aml: AmlWorker,
    pub devices: Vec<Device>,
    pub fadt: Option<FadtInfo>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    Root,
    TablesDir,
    Index,
    TableRaw(usize),
    TableText(usize),
    SymbolsDir(Vec<NameSeg>),
    Method(Vec<NameSeg>),
    Value(Vec<NameSeg>),
    DevicesDir,
    Device(usize),
    Power,
}

enum Handle {
    /// `O_STAT`: attributes only.
    Stat(Node),
    /// A directory listing, taken at open.
    Dir(Vec<(String, DirentKind)>),
    /// A file's text or bytes, taken at open.
    Data { mode: u16, bytes: Vec<u8> },
    /// A method opened by root (a stream): runs on the first read, or on
    /// each write (with the written arguments); reads take the result.
    Method {
        path: Vec<NameSeg>,
        result: Option<Vec<u8>>,
    },
    /// The power file opened by root.
    Power { text: Vec<u8> },
}

const ROOT_ENTRIES: [(&str, DirentKind); 4] = [
    ("tables", DirentKind::Directory),
    ("symbols", DirentKind::Directory),
    ("devices", DirentKind::Directory),
    ("power", DirentKind::Regular),
];

pub struct AcpiScheme {
    acpi: Acpi,
    handles: Handles<Handle>,
}

impl AcpiScheme {
    pub fn new(acpi: Acpi) -> AcpiScheme {
        AcpiScheme {
            acpi,
            handles: Handles::new(),
        }
    }

    pub fn acpi(&self) -> &Acpi {
        &self.acpi
    }

    /// Open handles (tests check closes are not leaked).
    pub fn open_handles(&self) -> usize {
        self.handles.len()
    }

    fn resolve(&mut self, path: &str) -> Result<Node> {
        let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        let enoent = Error::new(ENOENT);
        match parts.as_slice() {
            [] => Ok(Node::Root),
            ["tables"] => Ok(Node::TablesDir),
            ["tables", "index.txt"] => Ok(Node::Index),
            ["tables", name] => {
                let t = &self.acpi.tables.tables;
                if let Some(i) = t.iter().position(|t| t.name == *name) {
                    return Ok(Node::TableRaw(i));
                }
                let base = name.strip_suffix(".txt").ok_or(enoent)?;
                t.iter()
                    .position(|t| t.name == base)
                    .map(Node::TableText)
                    .ok_or(enoent)
            }
            ["symbols", rest @ ..] => {
                let segs = symbols::parse(rest).ok_or(enoent)?;
                let lookup = segs.clone();
                let kind = self
                    .acpi
                    .aml
                    .call(move |aml| symbols::kind(aml, &lookup))
                    .map_err(aml_errno)?;
                match kind.ok_or(enoent)? {
                    SymbolKind::Dir => Ok(Node::SymbolsDir(segs)),
                    SymbolKind::Method { .. } => Ok(Node::Method(segs)),
                    SymbolKind::Value => Ok(Node::Value(segs)),
                }
            }
            ["devices"] => Ok(Node::DevicesDir),
            ["devices", name] => self
                .acpi
                .devices
                .iter()
                .position(|d| d.name == *name)
                .map(Node::Device)
                .ok_or(enoent),
            ["power"] => Ok(Node::Power),
            _ => Err(enoent),
        }
    }

    /// A read-only file's content (`None` for directories, methods and the
    /// power file, whose content depends on who opens it).
    fn content(&mut self, node: &Node) -> Result<Option<Vec<u8>>> {
        let tables = &self.acpi.tables.tables;
        Ok(Some(match node {
            Node::Index => self.acpi.tables.index_text().into_bytes(),
            Node::TableRaw(i) => tables.get(*i).ok_or(Error::new(ENOENT))?.bytes.clone(),
            Node::TableText(i) => {
                views::table_text(tables.get(*i).ok_or(Error::new(ENOENT))?).into_bytes()
            }
            Node::Value(segs) => {
                let segs = segs.clone();
                self.acpi
                    .aml
                    .call(move |aml| symbols::value_text(aml, &segs))
                    .map_err(aml_errno)?
                    .ok_or(Error::new(ENOENT))?
                    .into_bytes()
            }
            Node::Device(i) => {
                device_text(self.acpi.devices.get(*i).ok_or(Error::new(ENOENT))?).into_bytes()
            }
            _ => return Ok(None),
        }))
    }

    fn listing(&mut self, node: &Node) -> Result<Vec<(String, DirentKind)>> {
        Ok(match node {
            Node::Root => ROOT_ENTRIES
                .iter()
                .map(|(n, k)| ((*n).to_owned(), *k))
                .collect(),
            Node::TablesDir => {
                let mut v = vec![("index.txt".to_owned(), DirentKind::Regular)];
                for t in &self.acpi.tables.tables {
                    v.push((t.name.clone(), DirentKind::Regular));
                    v.push((format!("{}.txt", t.name), DirentKind::Regular));
                }
                v
            }
            Node::SymbolsDir(segs) => {
                let segs = segs.clone();
                self.acpi
                    .aml
                    .call(move |aml| symbols::list(aml, &segs))
                    .map_err(aml_errno)?
                    .ok_or(Error::new(ENOENT))?
                    .into_iter()
                    .map(|(n, dir)| {
                        let k = if dir {
                            DirentKind::Directory
                        } else {
                            DirentKind::Regular
                        };
                        (n, k)
                    })
                    .collect()
            }
            Node::DevicesDir => self
                .acpi
                .devices
                .iter()
                .map(|d| (d.name.clone(), DirentKind::Regular))
                .collect(),
            _ => return Err(Error::new(ENOTDIR)),
        })
    }

    fn power_text(&mut self) -> Vec<u8> {
        let mut s = String::from("write \"poweroff\" (S5) or \"reboot\" (reset register)\n");
        match self.acpi.aml.call(power::s5_values) {
            Ok(Err(e)) => {
                let _ = writeln!(s, "s5: unavailable: {e}");
            }
            Ok(Ok((a, b))) => {
                let _ = writeln!(s, "s5: SLP_TYPa {a} SLP_TYPb {b}");
            }
            Err(e) => {
                let _ = writeln!(s, "s5: unavailable: {e}");
            }
        }
        match self.acpi.fadt.as_ref() {
            Some(f) => {
                let pm1 = |g: &Option<acpi::address::GenericAddress>| {
                    g.as_ref()
                        .map(views::gas_text)
                        .unwrap_or_else(|| "none".into())
                };
                let _ = writeln!(s, "pm1a-control: {}", pm1(&f.pm1a_control));
                let _ = writeln!(s, "pm1b-control: {}", pm1(&f.pm1b_control));
                match &f.reset {
                    Some((g, v)) => {
                        let _ = writeln!(s, "reset: {} value {v:#x}", views::gas_text(g));
                    }
                    None => s.push_str("reset: unavailable\n"),
                }
            }
            None => s.push_str("no FADT\n"),
        }
        s.into_bytes()
    }

    fn fill_stat(&mut self, node: &Node, len: Option<usize>, stat: &mut Stat) -> Result<()> {
        let (mode, size) = match node {
            Node::Root | Node::TablesDir | Node::SymbolsDir(_) | Node::DevicesDir => {
                (MODE_DIR | 0o555, 0)
            }
            // A method's result (and the power file's text, which asks AML
            // for \_S5) exists only once a root open made it, so a lookup
            // reports a bound, as sysfs does for its attributes; reads
            // return the real length. Linux 6.12's FUSE serves
            // sendfile/splice (busybox `cat`) from the page cache, which
            // stops at the reported size: 0 would read as empty
            // (docs/scheme-protocol.md, Direct I/O).
            Node::Method(_) | Node::Power => (MODE_FILE | 0o600, len.unwrap_or(UNRUN_SIZE_BOUND)),
            other => {
                let size = match len {
                    Some(l) => l,
                    None => self.content(other)?.map(|c| c.len()).unwrap_or(0),
                };
                (MODE_FILE | 0o444, size)
            }
        };
        stat.st_mode = mode;
        stat.st_size = size as u64;
        stat.st_nlink = if mode & MODE_DIR == MODE_DIR { 2 } else { 1 };
        stat.st_uid = 0;
        stat.st_gid = 0;
        Ok(())
    }
}

/// Errors of the AML thread as an errno (the details are logged).
fn aml_errno(e: EvalError) -> Error {
    log::warn!("AML: {e}");
    Error::new(EIO)
}

/// Runs a method with arguments written as text; `Err((bad_args, why))`.
fn run_text(
    aml: &mut AmlWorker,
    path: &[NameSeg],
    args: String,
) -> std::result::Result<String, (bool, String)> {
    let segs = path.to_vec();
    aml.call(move |aml| {
        let args = symbols::parse_args(&args).map_err(|e| (true, e))?;
        symbols::run_method(aml, &segs, args).map_err(|e| (false, e))
    })
    .map_err(|e| (false, e.to_string()))?
}

/// The size a method or the power file reports before a root open has
/// made its text: a bound on it (see `fill_stat`).
const UNRUN_SIZE_BOUND: usize = 4096;

impl Scheme for AcpiScheme {
    fn openat(&mut self, path: &str, flags: usize, ctx: &CallerCtx) -> Result<OpenResult> {
        let node = self.resolve(path)?;
        if flags & O_STAT != 0 {
            return Ok(OpenResult::file(self.handles.insert(Handle::Stat(node))));
        }
        let writing = flags & O_ACCMODE != O_RDONLY;
        let is_dir = matches!(
            node,
            Node::Root | Node::TablesDir | Node::SymbolsDir(_) | Node::DevicesDir
        );
        if is_dir {
            if writing {
                return Err(Error::new(EISDIR));
            }
            let listing = self.listing(&node)?;
            return Ok(OpenResult::file(self.handles.insert(Handle::Dir(listing))));
        }
        if flags & O_DIRECTORY != 0 {
            return Err(Error::new(ENOTDIR));
        }
        let handle = match node {
            Node::Method(path) => {
                if ctx.uid != 0 {
                    return Err(Error::new(EACCES));
                }
                // A stream: a writer's file position must not hide the
                // result it asked for.
                let id = self.handles.insert(Handle::Method { path, result: None });
                return Ok(OpenResult::stream(id));
            }
            Node::Power => {
                if ctx.uid != 0 {
                    return Err(Error::new(EACCES));
                }
                Handle::Power {
                    text: self.power_text(),
                }
            }
            other => {
                if writing {
                    return Err(Error::new(EACCES));
                }
                let bytes = self.content(&other)?.ok_or(Error::new(ENOENT))?;
                Handle::Data { mode: 0o444, bytes }
            }
        };
        Ok(OpenResult::file(self.handles.insert(handle)))
    }

    fn read(
        &mut self,
        id: usize,
        buf: &mut [u8],
        offset: u64,
        _fcntl_flags: u32,
        _ctx: &CallerCtx,
    ) -> Result<usize> {
        let run = match self.handles.get(id)? {
            Handle::Data { bytes, .. } => return Ok(scheme::read_at(bytes, buf, offset)),
            Handle::Power { text } => return Ok(scheme::read_at(text, buf, offset)),
            Handle::Method {
                result: Some(_), ..
            } => Vec::new(),
            Handle::Method { path, result: None } => path.clone(),
            Handle::Dir(_) => return Err(Error::new(EISDIR)),
            Handle::Stat(_) => return Err(Error::new(EBADF)),
        };
        if !run.is_empty() {
            let text = run_text(&mut self.acpi.aml, &run, String::new()).map_err(|(_, e)| {
                log::warn!("evaluating {}: {e}", absolute(&run));
                Error::new(EIO)
            })?;
            if let Handle::Method { result, .. } = self.handles.get_mut(id)? {
                *result = Some(text.into_bytes());
            }
        }
        // Hand out what is left of the result; empty is end of file.
        match self.handles.get_mut(id)? {
            Handle::Method {
                result: Some(r), ..
            } => {
                let n = buf.len().min(r.len());
                buf[..n].copy_from_slice(&r[..n]);
                r.drain(..n);
                Ok(n)
            }
            _ => Ok(0),
        }
    }

    fn write(
        &mut self,
        id: usize,
        buf: &[u8],
        _offset: u64,
        _fcntl_flags: u32,
        _ctx: &CallerCtx,
    ) -> Result<usize> {
        let text = std::str::from_utf8(buf).map_err(|_| Error::new(EINVAL))?;
        match self.handles.get(id)? {
            Handle::Method { path, .. } => {
                let path = path.clone();
                let out = run_text(&mut self.acpi.aml, &path, text.to_owned()).map_err(
                    |(bad_args, e)| {
                        log::warn!("evaluating {}: {e}", absolute(&path));
                        Error::new(if bad_args { EINVAL } else { EIO })
                    },
                )?;
                if let Handle::Method { result, .. } = self.handles.get_mut(id)? {
                    *result = Some(out.into_bytes());
                }
                Ok(buf.len())
            }
            Handle::Power { .. } => {
                let Some(fadt) = self.acpi.fadt.clone() else {
                    log::error!("power: no valid FADT");
                    return Err(Error::new(EIO));
                };
                let res = match text.trim() {
                    "poweroff" => self
                        .acpi
                        .aml
                        .call(move |aml| power::poweroff(aml, &fadt))
                        .unwrap_or_else(|e| Err(e.to_string())),
                    "reboot" => self
                        .acpi
                        .aml
                        .call(move |aml| power::reboot(aml, &fadt))
                        .unwrap_or_else(|e| Err(e.to_string())),
                    _ => return Err(Error::new(EINVAL)),
                };
                res.map_err(|e| {
                    log::error!("power {}: {e}", text.trim());
                    Error::new(EIO)
                })?;
                Ok(buf.len())
            }
            Handle::Dir(_) => Err(Error::new(EISDIR)),
            _ => Err(Error::new(EBADF)),
        }
    }

    fn fstat(&mut self, id: usize, stat: &mut Stat, _ctx: &CallerCtx) -> Result<()> {
        match self.handles.get(id)? {
            Handle::Stat(node) => {
                let node = node.clone();
                self.fill_stat(&node, None, stat)
            }
            Handle::Dir(_) => self.fill_stat(&Node::Root, None, stat),
            Handle::Data { mode, bytes } => {
                stat.st_mode = MODE_FILE | *mode;
                stat.st_size = bytes.len() as u64;
                stat.st_nlink = 1;
                Ok(())
            }
            Handle::Method { result, .. } => {
                let len = result.as_ref().map(Vec::len);
                self.fill_stat(&Node::Method(Vec::new()), len, stat)
            }
            Handle::Power { text } => {
                let len = text.len();
                self.fill_stat(&Node::Power, Some(len), stat)
            }
        }
    }

    fn getdents(
        &mut self,
        id: usize,
        buf: &mut DirentBuf,
        opaque_offset: u64,
        _ctx: &CallerCtx,
    ) -> Result<()> {
        match self.handles.get(id)? {
            Handle::Dir(entries) => {
                buf.list(opaque_offset, entries.iter().map(|(n, k)| (n.as_str(), *k)));
                Ok(())
            }
            _ => Err(Error::new(ENOTDIR)),
        }
    }

    fn on_close(&mut self, id: usize) {
        self.handles.remove(id);
    }
}
