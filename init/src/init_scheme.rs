//! `/scheme/init`, served by init itself: what the supervisor did, and its
//! controls.
//!
//! | file | content |
//! | --- | --- |
//! | `services` | one line per service: name, state, pid, restarts, hangs, uptime, last exit |
//! | `<service>` | the same for one service, one `key: value` per line |
//! | `control` | root only, write-only: `restart NAME`, `stop NAME`, `start NAME` |
//!
//! init's event loop refreshes the snapshot ([`InitScheme::set_views`])
//! before it serves requests, and applies the controls written
//! ([`InitScheme::take_controls`]) after; init never reads its own scheme,
//! so nothing here can block it.

use scheme::{CallerCtx, DirentBuf, DirentKind, Handles, OpenResult, Scheme, Stat};
use syscall::error::{Error, Result, EACCES, EINVAL, EISDIR, ENOENT, ENOTDIR};
use syscall::flag::{MODE_DIR, MODE_FILE, O_ACCMODE, O_DIRECTORY, O_RDONLY, O_STAT, O_WRONLY};

use crate::services::supervise::Control;

/// One service as `/scheme/init` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct View {
    pub name: String,
    pub state: String,
    /// Why it failed, when it did.
    pub why: Option<String>,
    pub pid: Option<u32>,
    pub restarts: u32,
    pub hangs: u32,
    /// Seconds it has been running, if it is.
    pub uptime: Option<f64>,
    /// How it last ended and when (seconds since boot).
    pub last_exit: Option<(String, f64)>,
    pub restart_policy: String,
    pub heartbeat: bool,
}

impl View {
    fn line(&self) -> String {
        let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
        format!(
            "{:<32} {:<10} {:>5} {:>8} {:>5} {:>8} {}\n",
            self.name,
            self.state,
            opt(self.pid.map(|p| p.to_string())),
            self.restarts,
            self.hangs,
            opt(self.uptime.map(|u| format!("{u:.1}"))),
            opt(self
                .last_exit
                .as_ref()
                .map(|(why, at)| format!("{why} at {at:.2}"))),
        )
    }

    fn detail(&self) -> String {
        let mut s = format!("name: {}\nstate: {}\n", self.name, self.state);
        if let Some(why) = &self.why {
            s += &format!("reason: {why}\n");
        }
        let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
        s += &format!(
            "pid: {}\nrestarts: {}\nhangs: {}\nuptime: {}\nlast_exit: {}\nlast_exit_at: {}\n\
             restart: {}\nheartbeat: {}\n",
            opt(self.pid.map(|p| p.to_string())),
            self.restarts,
            self.hangs,
            opt(self.uptime.map(|u| format!("{u:.1}"))),
            opt(self.last_exit.as_ref().map(|e| e.0.clone())),
            opt(self.last_exit.as_ref().map(|e| format!("{:.2}", e.1))),
            self.restart_policy,
            if self.heartbeat { "on" } else { "off" },
        );
        s
    }
}

const HEADER: &str =
    "service                          state        pid restarts hangs   uptime last exit\n";

#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    Root,
    Services,
    Control,
    Service(String),
}

struct Open {
    node: Node,
    /// The content, rendered when opened (a consistent snapshot).
    data: Vec<u8>,
}

/// The scheme: the latest snapshot and the controls written since the
/// loop last took them.
#[derive(Default)]
pub struct InitScheme {
    views: Vec<View>,
    controls: Vec<Control>,
    handles: Handles<Open>,
}

impl InitScheme {
    pub fn new() -> InitScheme {
        InitScheme::default()
    }

    pub fn set_views(&mut self, views: Vec<View>) {
        self.views = views;
    }

    pub fn take_controls(&mut self) -> Vec<Control> {
        std::mem::take(&mut self.controls)
    }

    fn resolve(&self, path: &str) -> Result<Node> {
        match path.trim_matches('/') {
            "" => Ok(Node::Root),
            "services" => Ok(Node::Services),
            "control" => Ok(Node::Control),
            name if self.views.iter().any(|v| v.name == name) => Ok(Node::Service(name.to_owned())),
            _ => Err(Error::new(ENOENT)),
        }
    }

    fn render(&self, node: &Node) -> Vec<u8> {
        match node {
            Node::Root | Node::Control => Vec::new(),
            Node::Services => {
                let mut s = HEADER.to_owned();
                for v in &self.views {
                    s += &v.line();
                }
                s.into_bytes()
            }
            Node::Service(name) => self
                .views
                .iter()
                .find(|v| &v.name == name)
                .map(|v| v.detail().into_bytes())
                .unwrap_or_default(),
        }
    }
}

impl Scheme for InitScheme {
    fn openat(&mut self, path: &str, flags: usize, ctx: &CallerCtx) -> Result<OpenResult> {
        let node = self.resolve(path)?;
        let stat_only = flags & O_STAT != 0;
        let mode = flags & O_ACCMODE;
        match node {
            Node::Root if !stat_only && mode != O_RDONLY => return Err(Error::new(EISDIR)),
            Node::Control if !stat_only && (mode != O_WRONLY || ctx.uid != 0) => {
                return Err(Error::new(EACCES))
            }
            Node::Services | Node::Service(_) if flags & O_DIRECTORY != 0 => {
                return Err(Error::new(ENOTDIR))
            }
            Node::Services | Node::Service(_) if !stat_only && mode != O_RDONLY => {
                return Err(Error::new(EACCES))
            }
            _ => {}
        }
        // A lookup renders too, for the size: Linux 6.12 serves sendfile
        // (busybox `cat`) from the page cache up to it.
        let data = self.render(&node);
        Ok(OpenResult::file(self.handles.insert(Open { node, data })))
    }

    fn read(
        &mut self,
        id: usize,
        buf: &mut [u8],
        offset: u64,
        _fcntl_flags: u32,
        _ctx: &CallerCtx,
    ) -> Result<usize> {
        let open = self.handles.get(id)?;
        match open.node {
            Node::Root => Err(Error::new(EISDIR)),
            Node::Control => Err(Error::new(EACCES)),
            _ => Ok(scheme::read_at(&open.data, buf, offset)),
        }
    }

    fn write(
        &mut self,
        id: usize,
        buf: &[u8],
        _offset: u64,
        _fcntl_flags: u32,
        ctx: &CallerCtx,
    ) -> Result<usize> {
        if self.handles.get(id)?.node != Node::Control || ctx.uid != 0 {
            return Err(Error::new(EACCES));
        }
        let text = std::str::from_utf8(buf).map_err(|_| Error::new(EINVAL))?;
        let control = Control::parse(text).ok_or(Error::new(EINVAL))?;
        let (Control::Restart(name) | Control::Stop(name) | Control::Start(name)) = &control;
        if !self.views.iter().any(|v| &v.name == name) {
            return Err(Error::new(ENOENT));
        }
        self.controls.push(control);
        Ok(buf.len())
    }

    fn fstat(&mut self, id: usize, stat: &mut Stat, _ctx: &CallerCtx) -> Result<()> {
        let open = self.handles.get(id)?;
        let (mode, nlink) = match open.node {
            Node::Root => (MODE_DIR | 0o555, 2),
            Node::Control => (MODE_FILE | 0o200, 1),
            _ => (MODE_FILE | 0o444, 1),
        };
        stat.st_mode = mode;
        stat.st_nlink = nlink;
        stat.st_size = open.data.len() as u64;
        Ok(())
    }

    fn getdents(
        &mut self,
        id: usize,
        buf: &mut DirentBuf,
        opaque_offset: u64,
        _ctx: &CallerCtx,
    ) -> Result<()> {
        if self.handles.get(id)?.node != Node::Root {
            return Err(Error::new(ENOTDIR));
        }
        let names = ["services", "control"]
            .into_iter()
            .chain(self.views.iter().map(|v| v.name.as_str()));
        buf.list(opaque_offset, names.map(|n| (n, DirentKind::Regular)));
        Ok(())
    }

    fn on_close(&mut self, id: usize) {
        self.handles.remove(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(name: &str, state: &str) -> View {
        View {
            name: name.into(),
            state: state.into(),
            why: None,
            pid: Some(42),
            restarts: 2,
            hangs: 1,
            uptime: Some(3.25),
            last_exit: Some(("killed by signal 9 (SIGKILL)".into(), 7.5)),
            restart_policy: "always".into(),
            heartbeat: true,
        }
    }

    fn ctx(uid: u32) -> CallerCtx {
        CallerCtx {
            uid,
            ..CallerCtx::default()
        }
    }

    fn read_all(s: &mut InitScheme, path: &str) -> String {
        let id = s.openat(path, O_RDONLY, &ctx(1000)).unwrap().id;
        let mut buf = vec![0u8; 4096];
        let n = s.read(id, &mut buf, 0, 0, &ctx(1000)).unwrap();
        s.on_close(id);
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn services_and_one_service_read_as_the_snapshot_says() {
        let mut s = InitScheme::new();
        s.set_views(vec![
            view("fifo", "running"),
            view("e1000d@pci-0000-00-05.0", "failed"),
        ]);
        let table = read_all(&mut s, "services");
        assert!(table.starts_with("service "), "{table}");
        assert!(table.contains("e1000d@pci-0000-00-05.0"), "{table}");
        assert!(table.contains("failed"), "{table}");
        let one = read_all(&mut s, "fifo");
        assert!(
            one.contains("state: running\n") && one.contains("restarts: 2\n"),
            "{one}"
        );
        assert!(
            one.contains("last_exit: killed by signal 9 (SIGKILL)\n"),
            "{one}"
        );
        // The lookup's size is the content's (sendfile stops there).
        let mut st = Stat::default();
        s.stat_path("fifo", &mut st, &ctx(1000)).unwrap();
        assert_eq!(st.st_size as usize, one.len());
        assert_eq!(
            s.openat("nope", O_RDONLY, &ctx(0)).unwrap_err().errno,
            ENOENT
        );
    }

    #[test]
    fn controls_are_root_only_and_checked() {
        let mut s = InitScheme::new();
        s.set_views(vec![view("fifo", "running")]);
        assert_eq!(
            s.openat("control", O_WRONLY, &ctx(1000)).unwrap_err().errno,
            EACCES
        );
        assert_eq!(
            s.openat("control", O_RDONLY, &ctx(0)).unwrap_err().errno,
            EACCES
        );
        let id = s.openat("control", O_WRONLY, &ctx(0)).unwrap().id;
        assert_eq!(s.write(id, b"stop fifo\n", 0, 0, &ctx(0)), Ok(10));
        assert_eq!(
            s.write(id, b"stop nope", 0, 0, &ctx(0)).unwrap_err().errno,
            ENOENT
        );
        assert_eq!(
            s.write(id, b"kill fifo", 0, 0, &ctx(0)).unwrap_err().errno,
            EINVAL
        );
        assert_eq!(s.take_controls(), [Control::Stop("fifo".into())]);
        assert!(s.take_controls().is_empty());
        assert_eq!(
            s.openat("services", O_WRONLY, &ctx(0)).unwrap_err().errno,
            EACCES
        );
    }
}
