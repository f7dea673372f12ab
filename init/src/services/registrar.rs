//! The scheme registrar: a daemon asks for `/scheme/NAME`; init checks the
//! name against the unit and that no one else serves it, mounts a fresh
//! FUSE connection there owned by the daemon's uid and passes the fd back.
//! The mounts go when their daemon exits.

use std::fs;
use std::os::fd::OwnedFd;
use std::path::Path;

use daemon::RootKind;

use super::{libc_errno, Services};
use crate::console::say;

impl Services {
    /// The scheme registrar: checks the name against the unit, mounts a fresh
    /// FUSE connection at /scheme/NAME owned by the daemon's uid, and returns
    /// the fd to pass back.
    pub(super) fn register(
        &mut self,
        i: usize,
        scheme: &str,
        kind: RootKind,
    ) -> Result<OwnedFd, (i32, String)> {
        let unit = &self.list[i].unit;
        if !unit.allows_scheme(scheme) {
            return Err((
                libc_errno(rustix::io::Errno::ACCESS),
                format!("{} may not register {scheme:?}", unit.name),
            ));
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
        match scheme::mount_fuse(&target, kind, uid, gid) {
            Ok(fd) => {
                self.owners.insert(scheme.to_owned(), i);
                self.list[i].schemes.push(scheme.to_owned());
                say(&format!(
                    "scheme {scheme} registered by {}",
                    self.list[i].unit.name
                ));
                Ok(fd)
            }
            Err(e) => {
                let _ = remove_mountpoint(&target);
                Err((
                    e.raw_os_error().unwrap_or(5),
                    format!("cannot mount {}: {e}", target.display()),
                ))
            }
        }
    }

    /// Unmounts every scheme service `i` registered (it has exited).
    pub(super) fn unregister_all(&mut self, i: usize) {
        for scheme in std::mem::take(&mut self.list[i].schemes) {
            self.owners.remove(&scheme);
            let target = self.scheme_root.join(&scheme);
            let _ = rustix::mount::unmount(&target, rustix::mount::UnmountFlags::DETACH);
            let _ = remove_mountpoint(&target);
            say(&format!("scheme {scheme} removed"));
        }
    }
}

fn remove_mountpoint(target: &Path) -> std::io::Result<()> {
    if target.is_dir() {
        fs::remove_dir(target)
    } else {
        fs::remove_file(target)
    }
}
