//! The scheme registrar and fd store: a daemon asks for `/scheme/NAME`;
//! init checks the name against the unit and that no one else serves it,
//! mounts a fresh FUSE connection there owned by the daemon's uid, makes
//! the scheme's state store (a memfd), and passes both back.
//!
//! init keeps its own copies of both (systemd's `FileDescriptorStore` is
//! the same idea), so the mount outlives the daemon: clients keep their
//! open files and their requests wait in the kernel. The next instance of
//! the same service registering the same name gets the same connection and
//! store back (`ok resumed`); while there is none (the service failed or
//! was stopped by hand), init's stand-in answers. The mounts go when the
//! service is stopped at shutdown, or when its device leaves the bus: then
//! lazily (`MNT_DETACH`), so the name is free at once for the device's
//! return while handles still open are answered `EIO` by the stand-in;
//! the kernel ends the connection when the last one closes, and init lets
//! it go.

use std::fs;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use daemon::RootKind;
use rustix::event::epoll;
use scheme::Server;

use super::standin::Refusing;
use super::{libc_errno, token, Services, STANDIN};
use crate::console::say;

/// One registered scheme, as init keeps it.
pub struct Kept {
    pub name: String,
    kind: RootKind,
    /// init's copy of the `/dev/fuse` fd serving the mount.
    fuse: OwnedFd,
    /// The scheme runtime's state store, found again by the next instance.
    state: OwnedFd,
    /// init answering the scheme while no daemon does.
    standin: Option<Server<Refusing>>,
    /// Unmounted lazily (its device is gone): no one takes it over; it
    /// lives until the kernel ends the connection.
    detached: bool,
}

/// What a registration hands the daemon: the FUSE fd, the state store, and
/// whether the mount outlived an earlier instance.
pub struct Granted {
    pub fuse: OwnedFd,
    pub state: OwnedFd,
    pub resumed: bool,
}

impl Services {
    /// Registers `scheme` for service `i`: its kept connection if it had
    /// one, else a new mount.
    pub(super) fn register(
        &mut self,
        i: usize,
        scheme: &str,
        kind: RootKind,
    ) -> Result<Granted, (i32, String)> {
        let unit = &self.list[i].unit;
        if !unit.allows_scheme(scheme) {
            return Err((
                libc_errno(rustix::io::Errno::ACCESS),
                format!("{} may not register {scheme:?}", unit.name),
            ));
        }
        if let Some(k) = self.list[i]
            .kept
            .iter()
            .position(|k| k.name == scheme && !k.detached)
        {
            return self.resume(i, k, kind);
        }
        if let Some(&owner) = self.owners.get(scheme) {
            return Err((
                libc_errno(rustix::io::Errno::EXIST),
                format!(
                    "scheme {scheme:?} is already served by {}",
                    self.list[owner].unit.name
                ),
            ));
        }
        let (uid, gid) = self.list[i].ids;
        let target = self.scheme_root.join(scheme);
        let made = match kind {
            RootKind::Dir => fs::create_dir(&target),
            RootKind::File => fs::File::create(&target).map(drop),
        };
        made.map_err(|e| {
            (
                e.raw_os_error().unwrap_or(5),
                format!("cannot create {}: {e}", target.display()),
            )
        })?;
        let mounted = scheme::mount_fuse(&target, kind, uid, gid).and_then(|fuse| {
            let state = rustix::fs::memfd_create(
                format!("state:{scheme}"),
                rustix::fs::MemfdFlags::CLOEXEC,
            )?;
            Ok((fuse, state))
        });
        let (fuse, state) = match mounted {
            Ok(pair) => pair,
            Err(e) => {
                let _ = rustix::mount::unmount(&target, rustix::mount::UnmountFlags::DETACH);
                let _ = remove_mountpoint(&target);
                return Err((
                    e.raw_os_error().unwrap_or(5),
                    format!("cannot mount {}: {e}", target.display()),
                ));
            }
        };
        let granted = Granted {
            fuse: fuse.try_clone().map_err(dup_failed)?,
            state: state.try_clone().map_err(dup_failed)?,
            resumed: false,
        };
        self.owners.insert(scheme.to_owned(), i);
        self.list[i].kept.push(Kept {
            name: scheme.to_owned(),
            kind,
            fuse,
            state,
            standin: None,
            detached: false,
        });
        say(&format!(
            "scheme {scheme} registered by {}",
            self.list[i].unit.name
        ));
        Ok(granted)
    }

    /// Hands kept scheme `k` of service `i` to its new instance.
    fn resume(&mut self, i: usize, k: usize, kind: RootKind) -> Result<Granted, (i32, String)> {
        let kept = &self.list[i].kept[k];
        if kept.kind != kind {
            return Err((
                libc_errno(rustix::io::Errno::INVAL),
                format!("scheme {} was registered as a {:?}", kept.name, kept.kind),
            ));
        }
        let granted = Granted {
            fuse: kept.fuse.try_clone().map_err(dup_failed)?,
            state: kept.state.try_clone().map_err(dup_failed)?,
            resumed: true,
        };
        self.stop_standin(i, k);
        say(&format!(
            "scheme {} taken over by {}",
            self.list[i].kept[k].name, self.list[i].unit.name
        ));
        Ok(granted)
    }

    /// Names of the schemes service `i` serves (or init stands in for).
    pub(super) fn scheme_names(&self, i: usize) -> impl Iterator<Item = &str> {
        self.list[i]
            .kept
            .iter()
            .filter(|k| !k.detached)
            .map(|k| k.name.as_str())
    }

    /// init answers every kept scheme of service `i`, which no daemon
    /// serves now (failed or stopped): the requests its last daemon had
    /// read come back and are refused with the rest.
    pub(super) fn standin_all(&mut self, i: usize) {
        for k in 0..self.list[i].kept.len() {
            if self.list[i].kept[k].standin.is_some() {
                continue;
            }
            let started = self.list[i].kept[k]
                .fuse
                .try_clone()
                .and_then(|fd| Server::new(fd, Refusing))
                .and_then(|server| {
                    epoll::add(
                        &self.epoll,
                        server.as_fd(),
                        epoll::EventData::new_u64(token(i, STANDIN + k as u64)),
                        epoll::EventFlags::IN,
                    )?;
                    scheme::notify_resend(server.as_fd())?;
                    Ok(server)
                });
            let name = self.list[i].kept[k].name.clone();
            match started {
                Ok(server) => {
                    self.list[i].kept[k].standin = Some(server);
                    say(&format!(
                        "scheme {name}: answered by init until its service is back"
                    ));
                }
                Err(e) => say(&format!("scheme {name}: cannot stand in: {e}")),
            }
        }
    }

    fn stop_standin(&mut self, i: usize, k: usize) {
        if let Some(server) = self.list[i].kept[k].standin.take() {
            let _ = epoll::delete(&self.epoll, server.as_fd());
        }
    }

    /// Requests for a scheme init stands in for.
    pub(super) fn on_standin(&mut self, i: usize, k: usize) {
        let Some(server) = self.list[i]
            .kept
            .get_mut(k)
            .and_then(|k| k.standin.as_mut())
        else {
            return;
        };
        match server.process() {
            Ok(scheme::Status::Unmounted) => self.drop_kept(i, k),
            Ok(scheme::Status::Running) => {}
            Err(e) => say(&format!("stand-in for {}: {e}", self.list[i].unit.name)),
        }
    }

    /// Service `i`'s device is gone: each scheme is unmounted lazily and
    /// answered by the stand-in until its last handle closes.
    pub(super) fn detach_all(&mut self, i: usize) {
        self.standin_all(i);
        for k in 0..self.list[i].kept.len() {
            let kept = &mut self.list[i].kept[k];
            if kept.detached {
                continue;
            }
            kept.detached = true;
            let name = kept.name.clone();
            self.owners.remove(&name);
            let target = self.scheme_root.join(&name);
            if let Err(e) = rustix::mount::unmount(&target, rustix::mount::UnmountFlags::DETACH) {
                say(&format!("scheme {name}: cannot unmount: {e}"));
            }
            let _ = remove_mountpoint(&target);
            say(&format!(
                "scheme {name} detached: open handles get EIO until they close"
            ));
        }
    }

    /// Lets kept scheme `k` of service `i` go: the kernel ended its
    /// connection (a detached mount's last handle closed).
    fn drop_kept(&mut self, i: usize, k: usize) {
        self.stop_standin(i, k);
        let kept = self.list[i].kept.remove(k);
        if !kept.detached {
            // Not ours to end: someone unmounted it under us.
            self.owners.remove(&kept.name);
        }
        say(&format!("scheme {}: connection ended", kept.name));
        // The entries after it moved down one: their stand-in tokens too.
        for (k, later) in self.list[i].kept.iter().enumerate().skip(k) {
            if let Some(server) = later.standin.as_ref() {
                let _ = epoll::modify(
                    &self.epoll,
                    server.as_fd(),
                    epoll::EventData::new_u64(token(i, STANDIN + k as u64)),
                    epoll::EventFlags::IN,
                );
            }
        }
    }

    /// Unmounts every scheme service `i` registered (it was stopped for
    /// good: shutdown).
    pub(super) fn unregister_all(&mut self, i: usize) {
        for k in (0..self.list[i].kept.len()).rev() {
            self.stop_standin(i, k);
            let kept = self.list[i].kept.remove(k);
            self.owners.remove(&kept.name);
            let target = self.scheme_root.join(&kept.name);
            let _ = rustix::mount::unmount(&target, rustix::mount::UnmountFlags::DETACH);
            let _ = remove_mountpoint(&target);
            say(&format!("scheme {} removed", kept.name));
        }
    }
}

fn dup_failed(e: std::io::Error) -> (i32, String) {
    (
        e.raw_os_error().unwrap_or(5),
        format!("cannot duplicate a kept fd: {e}"),
    )
}

fn remove_mountpoint(target: &Path) -> std::io::Result<()> {
    if target.is_dir() {
        fs::remove_dir(target)
    } else {
        fs::remove_file(target)
    }
}
