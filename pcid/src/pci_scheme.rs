//! `/scheme/pci`:
//!
//! ```text
//! /                      one directory per function, pci-SSSS-BB-DD.F
//! /pci-…/config          raw config space, read-only, as sysfs gives it now
//! /pci-…/summary         the function described in text
//! /pci-…/channel         root only; opening claims the function (EBUSY if
//!                        owned); write a JSON ChannelRequest, then read the
//!                        JSON ChannelReply; close releases the claim
//! ```
//!
//! Listing, `summary` and `config` are for everyone; `channel` needs uid 0.

use pci_types::PciAddress;
use scheme::{CallerCtx, DirEntry, DirentBuf, DirentKind, Handles, OpenResult, Scheme, Stat};
use syscall::error::{Error, Result, EACCES, EBADF, EBUSY, EIO, EISDIR, ENODEV, ENOENT, ENOTDIR};
use syscall::flag::{EventFlags, MODE_DIR, MODE_FILE, O_ACCMODE, O_DIRECTORY, O_RDONLY, O_STAT};

use crate::addr::{address_key, function_name, parse_function_name};
use crate::channel;
use crate::summary;
use crate::sysfs::Sysfs;
use crate::table::{Owner, Table};

/// The files in each function's directory, in listing order.
const FILES: [&str; 3] = ["config", "summary", "channel"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Node {
    Root,
    Dir(PciAddress),
    Config(PciAddress),
    Summary(PciAddress),
    Channel(PciAddress),
}

enum Handle {
    /// `O_STAT`: attributes only, never a claim.
    Stat(Node),
    Root,
    Dir(PciAddress),
    /// `config` or `summary`: a snapshot taken at open, so one reader sees
    /// one consistent text.
    Data(Node, Vec<u8>),
    /// An open channel; holds the claim. `reply` is the answer not yet read.
    Channel {
        address: PciAddress,
        reply: Vec<u8>,
    },
}

/// The scheme and the function table it serves.
pub struct PciScheme {
    table: Table,
    sysfs: Sysfs,
    handles: Handles<Handle>,
}

impl PciScheme {
    pub fn new(table: Table, sysfs: Sysfs) -> PciScheme {
        PciScheme {
            table,
            sysfs,
            handles: Handles::new(),
        }
    }

    pub fn table(&self) -> &Table {
        &self.table
    }

    pub fn table_mut(&mut self) -> &mut Table {
        &mut self.table
    }

    pub fn sysfs(&self) -> &Sysfs {
        &self.sysfs
    }

    /// Open handles (tests check that closes are not leaked).
    pub fn open_handles(&self) -> usize {
        self.handles.len()
    }

    fn resolve(&self, path: &str) -> Result<Node> {
        let path = path.trim_matches('/');
        if path.is_empty() {
            return Ok(Node::Root);
        }
        let mut parts = path.split('/');
        let name = parts.next().unwrap_or_default();
        let address = parse_function_name(name)
            .filter(|a| self.table.get(*a).is_some())
            .ok_or(Error::new(ENOENT))?;
        let node = match parts.next() {
            None => Node::Dir(address),
            Some("config") => Node::Config(address),
            Some("summary") => Node::Summary(address),
            Some("channel") => Node::Channel(address),
            Some(_) => return Err(Error::new(ENOENT)),
        };
        if parts.next().is_some() {
            return Err(Error::new(ENOENT));
        }
        Ok(node)
    }

    fn summary_text(&self, a: PciAddress) -> Result<Vec<u8>> {
        let f = self.table.get(a).ok_or(Error::new(ENODEV))?;
        let driver = self.sysfs.driver(a);
        Ok(summary::render(f, driver.as_deref()).into_bytes())
    }

    fn fill_stat(&self, node: Node, data_len: Option<usize>, stat: &mut Stat) -> Result<()> {
        let (mode, size) = match node {
            Node::Root | Node::Dir(_) => (MODE_DIR | 0o555, 0),
            Node::Config(a) => {
                let f = self.table.get(a).ok_or(Error::new(ENODEV))?;
                (MODE_FILE | 0o444, data_len.unwrap_or(f.config.len()))
            }
            Node::Summary(a) => {
                let len = match data_len {
                    Some(l) => l,
                    None => self.summary_text(a)?.len(),
                };
                (MODE_FILE | 0o444, len)
            }
            Node::Channel(a) => {
                self.table.get(a).ok_or(Error::new(ENODEV))?;
                (MODE_FILE | 0o600, 0)
            }
        };
        stat.st_mode = mode;
        stat.st_size = size as u64;
        stat.st_nlink = if mode & MODE_DIR == MODE_DIR { 2 } else { 1 };
        stat.st_uid = 0;
        stat.st_gid = 0;
        Ok(())
    }

    /// Drops the claim `handle` holds on `a`, if it still holds it.
    fn release(&mut self, a: PciAddress, handle: usize) {
        if let Some(f) = self.table.get_mut(a) {
            if matches!(f.owner, Owner::Channel { handle: h, .. } if h == handle) {
                log::info!("{}: channel closed; released", f.name);
                f.owner = Owner::None;
            }
        }
    }
}

impl Scheme for PciScheme {
    fn openat(&mut self, path: &str, flags: usize, ctx: &CallerCtx) -> Result<OpenResult> {
        let node = self.resolve(path)?;
        if flags & O_STAT != 0 {
            return Ok(OpenResult::file(self.handles.insert(Handle::Stat(node))));
        }
        let writing = flags & O_ACCMODE != O_RDONLY;
        let is_dir = matches!(node, Node::Root | Node::Dir(_));
        if is_dir {
            if writing {
                return Err(Error::new(EISDIR));
            }
            let h = match node {
                Node::Dir(a) => Handle::Dir(a),
                _ => Handle::Root,
            };
            return Ok(OpenResult::file(self.handles.insert(h)));
        }
        if flags & O_DIRECTORY != 0 {
            return Err(Error::new(ENOTDIR));
        }
        match node {
            Node::Config(a) => {
                if writing {
                    return Err(Error::new(EACCES));
                }
                let data = self.sysfs.read_config(a).map_err(|e| {
                    log::warn!("{}: reading config: {e}", function_name(a));
                    Error::new(EIO)
                })?;
                Ok(OpenResult::file(
                    self.handles.insert(Handle::Data(node, data)),
                ))
            }
            Node::Summary(a) => {
                if writing {
                    return Err(Error::new(EACCES));
                }
                let data = self.summary_text(a)?;
                Ok(OpenResult::file(
                    self.handles.insert(Handle::Data(node, data)),
                ))
            }
            Node::Channel(a) => {
                if ctx.uid != 0 {
                    return Err(Error::new(EACCES));
                }
                let owner = &self.table.get(a).ok_or(Error::new(ENODEV))?.owner;
                if !owner.is_none() {
                    return Err(Error::new(EBUSY));
                }
                let id = self.handles.insert(Handle::Channel {
                    address: a,
                    reply: Vec::new(),
                });
                if let Some(f) = self.table.get_mut(a) {
                    f.owner = Owner::Channel {
                        pid: ctx.pid,
                        handle: id,
                    };
                    log::info!("{}: claimed by channel (pid {})", f.name, ctx.pid);
                }
                Ok(OpenResult::stream(id))
            }
            Node::Root | Node::Dir(_) => Err(Error::new(EISDIR)),
        }
    }

    fn read(
        &mut self,
        id: usize,
        buf: &mut [u8],
        offset: u64,
        _fcntl_flags: u32,
        _ctx: &CallerCtx,
    ) -> Result<usize> {
        match self.handles.get_mut(id)? {
            Handle::Data(_, data) => Ok(scheme::read_at(data, buf, offset)),
            Handle::Channel { address, reply } => {
                let a = *address;
                // Take what fits; the rest stays for the next read. Nothing
                // pending reads as end of file (there is nothing to wait for).
                let n = buf.len().min(reply.len());
                buf[..n].copy_from_slice(&reply[..n]);
                reply.drain(..n);
                if self.table.get(a).is_none() {
                    return Err(Error::new(ENODEV));
                }
                Ok(n)
            }
            Handle::Root | Handle::Dir(_) => Err(Error::new(EISDIR)),
            Handle::Stat(_) => Err(Error::new(EBADF)),
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
        let address = match self.handles.get(id)? {
            Handle::Channel { address, .. } => *address,
            Handle::Root | Handle::Dir(_) => return Err(Error::new(EISDIR)),
            _ => return Err(Error::new(EBADF)),
        };
        let f = self.table.get(address).ok_or(Error::new(ENODEV))?;
        // Each write is one request; a new request replaces an unread reply.
        let answer = channel::answer_bytes(f, &self.sysfs, buf);
        if let Handle::Channel { reply, .. } = self.handles.get_mut(id)? {
            *reply = answer;
        }
        Ok(buf.len())
    }

    fn fstat(&mut self, id: usize, stat: &mut Stat, _ctx: &CallerCtx) -> Result<()> {
        let (node, len) = match self.handles.get(id)? {
            Handle::Stat(n) => (*n, None),
            Handle::Root => (Node::Root, None),
            Handle::Dir(a) => (Node::Dir(*a), None),
            Handle::Data(n, d) => (*n, Some(d.len())),
            Handle::Channel { address, .. } => (Node::Channel(*address), None),
        };
        self.fill_stat(node, len, stat)
    }

    fn getdents(
        &mut self,
        id: usize,
        buf: &mut DirentBuf,
        opaque_offset: u64,
        _ctx: &CallerCtx,
    ) -> Result<()> {
        match self.handles.get(id)? {
            Handle::Root => {
                // Offsets are address keys (+1), not indexes, so a listing
                // stays right while functions come and go.
                for f in self.table.iter() {
                    let key = address_key(f.address);
                    if key < opaque_offset {
                        continue;
                    }
                    let e = DirEntry {
                        name: &f.name,
                        kind: DirentKind::Directory,
                        next_opaque_id: key + 1,
                    };
                    if !buf.entry(e) {
                        break;
                    }
                }
                Ok(())
            }
            Handle::Dir(a) => {
                if self.table.get(*a).is_none() {
                    return Err(Error::new(ENODEV));
                }
                buf.list(
                    opaque_offset,
                    FILES.iter().map(|n| (*n, DirentKind::Regular)),
                );
                Ok(())
            }
            _ => Err(Error::new(ENOTDIR)),
        }
    }

    fn fevent(&mut self, id: usize, flags: EventFlags, _ctx: &CallerCtx) -> Result<EventFlags> {
        match self.handles.get(id)? {
            Handle::Channel { reply, .. } => {
                let mut ready = EventFlags::EVENT_WRITE;
                if !reply.is_empty() {
                    ready |= EventFlags::EVENT_READ;
                }
                Ok(ready & flags)
            }
            _ => Ok(flags),
        }
    }

    fn on_close(&mut self, id: usize) {
        if let Some(Handle::Channel { address, .. }) = self.handles.remove(id) {
            self.release(address, id);
        }
    }
}
