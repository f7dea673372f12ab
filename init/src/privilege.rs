//! What a service may do, set in its process between fork and exec: init's
//! one home for the privilege interfaces (`RLIMIT_MEMLOCK`, `ioperm`, the
//! capability bounding set, uid and gid, capabilities, `NO_NEW_PRIVS`).
//! Every call here is async-signal-safe: it runs in the forked child.

use std::io;
use std::ops::RangeInclusive;

/// The privileges a service starts with, taken from its unit.
#[derive(Debug, Clone, Default)]
pub struct Privileges {
    /// RLIMIT_MEMLOCK in bytes (VFIO pins DMA memory against it).
    pub memlock: Option<u64>,
    /// Port ranges granted with `ioperm` (the bitmap survives the uid
    /// change and exec).
    pub ioports: Vec<RangeInclusive<u16>>,
    /// Keep the uid (acpid: root) but no capability, bounding set included.
    pub no_capabilities: bool,
    /// uid and gid to run as; `None` stays root.
    pub ids: Option<(u32, u32)>,
}

impl Privileges {
    /// Drops the calling process to these privileges. Must run in a child
    /// after fork and before exec (one thread: the per-thread calls cover
    /// the whole process); allocates nothing and takes no locks.
    pub fn apply(&self) -> io::Result<()> {
        // The limit must be raised while still root; the ids are dropped
        // here rather than by std, which would do it first.
        if let Some(bytes) = self.memlock {
            rustix::process::setrlimit(
                rustix::process::Resource::Memlock,
                rustix::process::Rlimit {
                    current: Some(bytes),
                    maximum: Some(bytes),
                },
            )?;
        }
        // Port I/O rights need CAP_SYS_RAWIO, so they are granted now.
        for r in &self.ioports {
            let first = libc::c_ulong::from(*r.start());
            let count = libc::c_ulong::from(*r.end()) - first + 1;
            // SAFETY: ioperm only changes this (child) thread's I/O
            // permission bitmap; the arguments are plain integers.
            if unsafe { libc::ioperm(first, count, 1) } != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        // Emptying the bounding set needs CAP_SETPCAP: before the ids
        // change. Nothing exec'd later can regain a capability.
        if self.no_capabilities {
            drop_bounding_set()?;
        }
        if let Some((uid, gid)) = self.ids {
            // Leaving uid 0 clears every capability.
            rustix::thread::set_thread_groups(&[])?;
            let gid = rustix::process::Gid::from_raw(gid);
            rustix::thread::set_thread_res_gid(gid, gid, gid)?;
            let uid = rustix::process::Uid::from_raw(uid);
            rustix::thread::set_thread_res_uid(uid, uid, uid)?;
        }
        if self.no_capabilities {
            // Root keeps its uid (for file access) but no capability.
            drop_capabilities()?;
        }
        // No service can gain privileges through exec (setuid files).
        rustix::thread::set_no_new_privs(true)?;
        Ok(())
    }
}

/// Empties the capability bounding set, so nothing this process executes
/// can gain a capability, even as uid 0. Needs CAP_SETPCAP, so it runs
/// before the ids change. Makes only prctl calls: safe between fork and
/// exec.
fn drop_bounding_set() -> io::Result<()> {
    use rustix::thread::{remove_capability_from_bounding_set, CapabilitySet};
    for cap in 0..64 {
        // The kernel answers EINVAL past its last capability.
        match remove_capability_from_bounding_set(CapabilitySet::from_bits_retain(1 << cap)) {
            Ok(()) => {}
            Err(rustix::io::Errno::INVAL) => break,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Clears the ambient, permitted, effective and inheritable capability
/// sets of the calling thread (the only one, in a child before exec).
fn drop_capabilities() -> io::Result<()> {
    use rustix::thread::{CapabilitySet, CapabilitySets};
    rustix::thread::clear_ambient_capability_set()?;
    rustix::thread::set_capabilities(
        None,
        CapabilitySets {
            effective: CapabilitySet::empty(),
            permitted: CapabilitySet::empty(),
            inheritable: CapabilitySet::empty(),
        },
    )?;
    Ok(())
}
