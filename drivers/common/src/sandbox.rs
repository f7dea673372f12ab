//! Privilege checks and the per-daemon sandbox — the analogue of Redox's
//! null namespace (`setrens(0, 0)`).
//!
//! A daemon, once set up, needs almost nothing new from the kernel: it works
//! on fds it already holds (VFIO, eventfds, epoll, FUSE, sockets to init and
//! pcid) and on its own memory. [`enter_sandbox`] locks it down to what its
//! [`Profile`] names, in two layers:
//!
//! - **Landlock** (the calling thread and every thread it starts later):
//!   every file-system access right of ABI 6 handled, with no rule for a
//!   driver (no file can be opened, whatever seccomp lets through) and
//!   rules beneath a few paths for pcid and acpid; TCP bind and connect
//!   handled with no rule; and both scopes, so no signal reaches a process
//!   outside the daemon's own domain (seccomp allows `tgkill` for `raise`,
//!   and cannot tell a target apart) and no abstract unix socket outside it
//!   can be reached. Where the kernel lacks Landlock, the daemon logs a
//!   warning and goes on with seccomp alone.
//! - **seccomp** (every thread, `TSYNC`): [`BASE`], the calls every daemon
//!   of the kit makes, plus the profile's extras, each with the argument
//!   condition it is allowed under (`mmap` without `PROT_EXEC`, `ioctl`
//!   only with the listed requests, `socketpair` only `AF_UNIX`, the stat
//!   calls only on a held fd). Path lookups a profile does not list
//!   ([`PATH_LOOKUPS`]) fail with `EACCES`, so code that merely probes a
//!   file (std's backtrace printer) degrades instead of dying. Anything
//!   else kills the whole process (`SIGSYS`; the kernel's audit log names
//!   the call), so an attempt cannot go unnoticed.
//!
//! The lists were generated, not guessed: the `sandbox` lab scenario runs
//! the daemons under load, most with [`LOG_ENV`] set (the kill becomes
//! `SECCOMP_RET_LOG`: the kernel logs the call and lets it through),
//! records each call through the guest kernel's `raw_syscalls:sys_enter`
//! histogram, and fails if a daemon called anything outside its list or
//! the kernel logged a seccomp event. Calls it does not see are listed for
//! the paths their `why` names (exit, a panic, `abort`, a takeover). The
//! table of which daemon may call what is in `docs/security.md` ("The
//! sandbox").
//!
//! Consequences for a daemon: spawn every thread and open every file
//! *before* entering the sandbox; a daemon that starts threads earlier
//! calls [`restrict_files`] before it spawns them (Landlock, unlike
//! seccomp, binds only the calling thread and its later children).
//! [`crate::probe`] (`SANDBOX_PROBE`) tries forbidden things from inside.

use std::collections::BTreeMap;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::err;

/// Set (to anything) in a unit's environment: calls outside the profile
/// are logged by the kernel (`SECCOMP_RET_LOG`) and carried out instead of
/// killing the daemon. For recording what a daemon calls (the `sandbox`
/// lab scenario); never in a shipped unit.
pub const LOG_ENV: &str = "SANDBOX_LOG";

/// What [`check_unprivileged`] looks at in `/proc/self/status`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProcStatus {
    /// Real, effective, saved, filesystem uid.
    pub uids: Vec<u32>,
    pub cap_eff: u64,
    pub cap_prm: u64,
    pub no_new_privs: bool,
    /// 0 none, 1 strict, 2 filter.
    pub seccomp: u32,
}

impl ProcStatus {
    /// Parses the text of `/proc/<pid>/status`.
    pub fn parse(text: &str) -> io::Result<ProcStatus> {
        let bad = |what: &str| err(io::ErrorKind::InvalidData, format!("/proc status: {what}"));
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .map(str::trim)
                .ok_or_else(|| bad(&format!("no {name} line")))
        };
        let uids = field("Uid")?
            .split_whitespace()
            .map(|u| u.parse().map_err(|_| bad("bad Uid")))
            .collect::<io::Result<Vec<u32>>>()?;
        if uids.len() != 4 {
            return Err(bad("Uid line needs four ids"));
        }
        let hex = |name: &str| {
            u64::from_str_radix(field(name)?, 16).map_err(|_| bad(&format!("bad {name}")))
        };
        let num = |name: &str| {
            field(name)?
                .parse::<u32>()
                .map_err(|_| bad(&format!("bad {name}")))
        };
        Ok(ProcStatus {
            uids,
            cap_eff: hex("CapEff")?,
            cap_prm: hex("CapPrm")?,
            no_new_privs: num("NoNewPrivs")? == 1,
            seccomp: num("Seccomp")?,
        })
    }

    /// Ok unless some uid is root, a capability is held, or NO_NEW_PRIVS
    /// is off; the error lists every problem.
    pub fn check(&self) -> io::Result<()> {
        let mut problems = Vec::new();
        if self.uids.contains(&0) {
            problems.push(format!("runs with uid 0 (uids {:?})", self.uids));
        }
        if self.cap_eff != 0 {
            problems.push(format!("effective capabilities {:#x}", self.cap_eff));
        }
        if self.cap_prm != 0 {
            problems.push(format!("permitted capabilities {:#x}", self.cap_prm));
        }
        if !self.no_new_privs {
            problems.push("NO_NEW_PRIVS is not set".to_owned());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(err(
                io::ErrorKind::PermissionDenied,
                format!("driver is not unprivileged: {}", problems.join(", ")),
            ))
        }
    }
}

/// Fails unless the process runs as a non-root uid with an empty
/// effective/permitted capability set and NO_NEW_PRIVS.
pub fn check_unprivileged() -> io::Result<()> {
    let text = std::fs::read_to_string("/proc/self/status")?;
    let st = ProcStatus::parse(&text)?;
    log::debug!(
        "privileges: uids {:?}, CapEff {:#x}, CapPrm {:#x}, NoNewPrivs {}, Seccomp {}",
        st.uids,
        st.cap_eff,
        st.cap_prm,
        st.no_new_privs,
        st.seccomp
    );
    st.check()
}

/// The condition a call is allowed under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arg {
    /// Any arguments.
    Any,
    /// Argument `n` (a protection) without `PROT_EXEC`: no new code.
    NoExec(u8),
    /// Argument `n` (flags) holds `AT_EMPTY_PATH`: a stat of a held fd,
    /// never of a path. Without it the call is a path lookup (`EACCES`).
    EmptyPath(u8),
    /// Argument `n` (32 bits: an `ioctl` request, an `fcntl` command, a
    /// socket domain) is one of these.
    OneOf(u8, &'static [u32]),
}

impl Arg {
    /// Whether a call whose conditioned argument was `value` (the
    /// protection, the flags, the request, the domain) passes: what the
    /// filter encodes, for a tracer's records to be checked against.
    pub fn admits(&self, value: u64) -> bool {
        match self {
            Arg::Any => true,
            Arg::NoExec(_) => value & PROT_EXEC == 0,
            Arg::EmptyPath(_) => value & AT_EMPTY_PATH != 0,
            Arg::OneOf(_, r) => r.iter().any(|&q| u64::from(q) == value & 0xffff_ffff),
        }
    }
}

/// One allowed system call: its number, name, condition and why.
#[derive(Debug, Clone, Copy)]
pub struct Call {
    pub nr: i64,
    /// `SYS_read`: [`Call::name`] is `read`.
    sys: &'static str,
    pub arg: Arg,
    pub why: &'static str,
}

impl Call {
    pub fn name(&self) -> &'static str {
        self.sys.trim_start_matches("SYS_")
    }

    /// The condition as the documentation table shows it.
    pub fn condition(&self) -> String {
        match self.arg {
            Arg::Any => String::new(),
            Arg::NoExec(_) => "without PROT_EXEC".to_owned(),
            Arg::EmptyPath(_) => "AT_EMPTY_PATH only".to_owned(),
            Arg::OneOf(_, values) => {
                let names: Vec<String> = values.iter().map(|&v| self.value_name(v)).collect();
                names.join(", ")
            }
        }
    }

    /// What a conditioned argument's value means for this call
    /// (`VFIO_DEVICE_SET_IRQS`, `F_SETFL`, `AF_UNIX`).
    pub fn value_name(&self, value: u32) -> String {
        match (self.nr, value as i32) {
            (libc::SYS_ioctl, _) => ioctl_name(value),
            (libc::SYS_fcntl, libc::F_GETFL) => "F_GETFL".to_owned(),
            (libc::SYS_fcntl, libc::F_SETFL) => "F_SETFL".to_owned(),
            (libc::SYS_fcntl, libc::F_SETFD) => "F_SETFD".to_owned(),
            (libc::SYS_socketpair, libc::AF_UNIX) => "AF_UNIX".to_owned(),
            _ => format!("{value:#x}"),
        }
    }
}

/// An allowed call with its reason (`call!(SYS_read, "…")`) or also its
/// condition (`call!(SYS_mmap, Arg::NoExec(2), "…")`).
/// The number is `libc::SYS_<name>`, the x86-64 table (`syscall_64.tbl`).
macro_rules! call {
    ($name:ident, $why:literal) => {
        call!($name, Arg::Any, $why)
    };
    ($name:ident, $arg:expr, $why:literal) => {
        Call {
            nr: libc::$name,
            sys: stringify!($name),
            arg: $arg,
            why: $why,
        }
    };
}

/// VFIO's ioctl requests: `_IO(';', 100 + n)` (`linux/vfio.h`).
mod vfio_ioctl {
    const fn io(n: u32) -> u32 {
        (0x3b << 8) | (100 + n)
    }
    pub const GET_API_VERSION: u32 = io(0);
    pub const CHECK_EXTENSION: u32 = io(1);
    pub const SET_IOMMU: u32 = io(2);
    pub const GROUP_GET_STATUS: u32 = io(3);
    pub const GROUP_SET_CONTAINER: u32 = io(4);
    pub const GROUP_GET_DEVICE_FD: u32 = io(6);
    pub const DEVICE_GET_INFO: u32 = io(7);
    pub const DEVICE_GET_REGION_INFO: u32 = io(8);
    pub const DEVICE_GET_IRQ_INFO: u32 = io(9);
    pub const DEVICE_SET_IRQS: u32 = io(10);
    pub const DEVICE_RESET: u32 = io(11);
    pub const IOMMU_GET_INFO: u32 = io(12);
    pub const IOMMU_MAP_DMA: u32 = io(13);
    pub const IOMMU_UNMAP_DMA: u32 = io(14);
}

/// A request's name for the documentation (`VFIO_DEVICE_SET_IRQS`).
pub fn ioctl_name(request: u32) -> String {
    use vfio_ioctl::*;
    let name = match request {
        GET_API_VERSION => "VFIO_GET_API_VERSION",
        CHECK_EXTENSION => "VFIO_CHECK_EXTENSION",
        SET_IOMMU => "VFIO_SET_IOMMU",
        GROUP_GET_STATUS => "VFIO_GROUP_GET_STATUS",
        GROUP_SET_CONTAINER => "VFIO_GROUP_SET_CONTAINER",
        GROUP_GET_DEVICE_FD => "VFIO_GROUP_GET_DEVICE_FD",
        DEVICE_GET_INFO => "VFIO_DEVICE_GET_INFO",
        DEVICE_GET_REGION_INFO => "VFIO_DEVICE_GET_REGION_INFO",
        DEVICE_GET_IRQ_INFO => "VFIO_DEVICE_GET_IRQ_INFO",
        DEVICE_SET_IRQS => "VFIO_DEVICE_SET_IRQS",
        DEVICE_RESET => "VFIO_DEVICE_RESET",
        IOMMU_GET_INFO => "VFIO_IOMMU_GET_INFO",
        IOMMU_MAP_DMA => "VFIO_IOMMU_MAP_DMA",
        IOMMU_UNMAP_DMA => "VFIO_IOMMU_UNMAP_DMA",
        other => return format!("{other:#x}"),
    };
    name.to_owned()
}

const PROT_EXEC: u64 = libc::PROT_EXEC as u64;
const AT_EMPTY_PATH: u64 = libc::AT_EMPTY_PATH as u64;

/// What every daemon of the kit calls after set-up: the scheme runtime,
/// init's control channel, logging, memory, and the ways a Rust process
/// ends. Seen under load in every daemon unless the reason says a rare
/// path.
pub const BASE: &[Call] = &[
    call!(SYS_read, "FUSE requests, eventfd counts, signalfd"),
    call!(SYS_write, "FUSE replies; FUSE_NOTIFY_RESEND at a takeover"),
    call!(SYS_writev, "FUSE replies with data, log lines to init"),
    call!(SYS_pread64, "the state store, read back at a takeover"),
    call!(SYS_pwrite64, "the state store, one write per change"),
    call!(SYS_close, "handles and fds let go (rare: removal, restart)"),
    call!(
        SYS_sendmsg,
        "init's control channel: ready, heartbeat answers"
    ),
    call!(SYS_recvmsg, "init's control channel: pings, replies"),
    call!(
        SYS_fcntl,
        Arg::OneOf(1, &[libc::F_GETFL as u32, libc::F_SETFL as u32]),
        "the runtime making the FUSE fd non-blocking, at start"
    ),
    call!(SYS_mmap, Arg::NoExec(2), "large allocations (rare)"),
    call!(SYS_munmap, "large frees (rare)"),
    call!(SYS_mremap, "growing a large buffer (rare)"),
    call!(SYS_madvise, "the allocator returning memory (rare)"),
    call!(SYS_brk, "the allocator's heap"),
    call!(SYS_futex, "std's locks and once-cells"),
    call!(
        SYS_clock_nanosleep,
        "std::thread::sleep in bounded polls (rare)"
    ),
    call!(SYS_exit_group, "returning from main (at exit)"),
    call!(SYS_exit, "a thread ending (rare)"),
    call!(
        SYS_rt_sigreturn,
        "returning from std's SIGSEGV handler (rare)"
    ),
    call!(SYS_rt_sigprocmask, "abort() (rare)"),
    call!(SYS_rt_sigaction, "abort() resetting SIGABRT (rare)"),
    call!(
        SYS_sigaltstack,
        "std's signal stack, freed at thread exit (rare)"
    ),
    call!(
        SYS_tgkill,
        "abort()/raise() on itself; Landlock's scope stops others"
    ),
    call!(SYS_getpid, "abort()/raise() (rare)"),
    call!(SYS_gettid, "abort()/raise() (rare)"),
    call!(SYS_getrandom, "a HashMap's seed (rare)"),
    call!(
        SYS_restart_syscall,
        "a wait interrupted by SIGSTOP/SIGCONT (rare)"
    ),
    call!(SYS_fstat, "std's metadata of a held fd (rare)"),
    call!(
        SYS_newfstatat,
        Arg::EmptyPath(3),
        "std's metadata of a held fd (rare)"
    ),
    call!(
        SYS_statx,
        Arg::EmptyPath(2),
        "std's metadata of a held fd (rare)"
    ),
];

/// `common::DriverLoop` and pcid's loop: epoll.
const EPOLL_LOOP: &[Call] = &[
    call!(SYS_epoll_pwait, "the event loop's wait"),
    call!(SYS_epoll_create1, "DriverLoop::new after set-up"),
    call!(SYS_epoll_ctl, "DriverLoop::new registering the fds"),
];

/// `scheme::serve`: the loop of daemons without interrupts.
const POLL_LOOP: &[Call] = &[call!(SYS_ppoll, "scheme::serve's wait")];

/// Path lookups: `EACCES` unless a profile lists them (pcid, acpid),
/// where Landlock decides which paths.
pub const PATH_LOOKUPS: &[(i64, &str)] = &[
    (libc::SYS_open, "open"),
    (libc::SYS_openat, "openat"),
    (libc::SYS_openat2, "openat2"),
    (libc::SYS_creat, "creat"),
    (libc::SYS_readlink, "readlink"),
    (libc::SYS_readlinkat, "readlinkat"),
    (libc::SYS_access, "access"),
    (libc::SYS_faccessat, "faccessat"),
    (libc::SYS_faccessat2, "faccessat2"),
    (libc::SYS_stat, "stat"),
    (libc::SYS_lstat, "lstat"),
    (libc::SYS_getcwd, "getcwd"),
];

/// What Landlock lets a daemon reach beneath one path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Read files, list directories.
    Read,
    /// Read, and write existing files (sysfs attributes).
    ReadWrite,
    /// Read and write existing device files and send them ioctls.
    Device,
}

/// One Landlock rule: `path` (a trailing `*` is a prefix: every entry of
/// the parent directory whose name starts so) and what may be done beneath.
#[derive(Debug, Clone, Copy)]
pub struct Beneath {
    pub path: &'static str,
    pub access: Access,
    pub why: &'static str,
}

/// One daemon's sandbox: its extras beyond [`BASE`] and the paths
/// Landlock leaves it.
#[derive(Debug, Clone, Copy)]
pub struct Profile {
    pub daemon: &'static str,
    pub extras: &'static [&'static [Call]],
    /// Empty: no file-system access at all.
    pub files: &'static [Beneath],
}

impl Profile {
    /// Every call allowed: [`BASE`] and the extras.
    pub fn calls(&self) -> impl Iterator<Item = &'static Call> + '_ {
        BASE.iter().chain(self.extras.iter().flat_map(|g| g.iter()))
    }

    /// Whether call `nr` may be made at all (under its condition).
    pub fn allows(&self, nr: i64) -> bool {
        self.calls().any(|c| c.nr == nr)
    }

    /// The path lookups answered `EACCES` (those the profile does not list).
    pub fn denied_lookups(&self) -> impl Iterator<Item = &'static (i64, &'static str)> + '_ {
        PATH_LOOKUPS.iter().filter(|(nr, _)| !self.allows(*nr))
    }
}

/// virtio-blkd: MSI-X, so the loop never needs an ioctl.
pub const VIRTIO_BLKD: Profile = Profile {
    daemon: "virtio-blkd",
    extras: &[EPOLL_LOOP],
    files: &[],
};

/// virtio-netd: MSI-X, as virtio-blkd.
pub const VIRTIO_NETD: Profile = Profile {
    daemon: "virtio-netd",
    extras: &[EPOLL_LOOP],
    files: &[],
};

/// e1000d: INTx, unmasked through VFIO after each interrupt.
pub const E1000D: Profile = Profile {
    daemon: "e1000d",
    extras: &[
        EPOLL_LOOP,
        &[call!(
            SYS_ioctl,
            Arg::OneOf(1, &[vfio_ioctl::DEVICE_SET_IRQS]),
            "unmasking the INTx line after each interrupt"
        )],
    ],
    files: &[],
};

/// nvmed: MSI-X, so the loop never needs an ioctl; opening `health`
/// waits (bounded) on the admin queue's interrupt.
pub const NVMED: Profile = Profile {
    daemon: "nvmed",
    extras: &[
        EPOLL_LOOP,
        &[call!(
            SYS_ppoll,
            "the health file's bounded wait for the admin queue's interrupt"
        )],
    ],
    files: &[],
};

/// ahcid: MSI, so the loop needs no ioctl; but an HBA without MSI is
/// served on INTx, unmasked through VFIO after each interrupt.
pub const AHCID: Profile = Profile {
    daemon: "ahcid",
    extras: &[
        EPOLL_LOOP,
        &[call!(
            SYS_ioctl,
            Arg::OneOf(1, &[vfio_ioctl::DEVICE_SET_IRQS]),
            "unmasking the INTx line after each interrupt (no MSI)"
        )],
    ],
    files: &[],
};

/// rtcd: port I/O is instructions, not calls; `scheme::serve`.
pub const RTCD: Profile = Profile {
    daemon: "rtcd",
    extras: &[POLL_LOOP],
    files: &[],
};

/// pcid: claims functions at run time (hot-plug, respawn): sysfs binds,
/// fresh VFIO containers, channels to the new driver; the uevent socket
/// and the SIGHUP signalfd were opened before. Root with capabilities, so
/// Landlock's paths are what keeps it to the PCI bus.
pub const PCID: Profile = Profile {
    daemon: "pcid",
    extras: &[
        EPOLL_LOOP,
        &[
            call!(
                SYS_openat,
                "sysfs config and bind files, rules (Landlock-bound)"
            ),
            call!(SYS_open, "rustix's open of /dev/vfio (Landlock-bound)"),
            call!(SYS_sendto, "answers on the drivers' pcid channels"),
            call!(SYS_ppoll, "a look, without waiting, at a driver's channel"),
            call!(
                SYS_fcntl,
                Arg::OneOf(1, &[libc::F_SETFD as u32]),
                "a new VFIO device fd made close-on-exec"
            ),
            call!(SYS_readlink, "sysfs driver and iommu_group links"),
            call!(
                SYS_getdents64,
                "listing /sys/bus/pci/devices and /etc/pcid.d"
            ),
            call!(SYS_lseek, "std's fs::read of a sysfs file (rare)"),
            call!(SYS_recvfrom, "kernel uevents on the netlink socket"),
            call!(
                SYS_socketpair,
                Arg::OneOf(0, &[libc::AF_UNIX as u32]),
                "the pcid channel handed to each new driver"
            ),
            call!(
                SYS_ioctl,
                Arg::OneOf(
                    1,
                    &[
                        vfio_ioctl::GET_API_VERSION,
                        vfio_ioctl::CHECK_EXTENSION,
                        vfio_ioctl::SET_IOMMU,
                        vfio_ioctl::GROUP_GET_STATUS,
                        vfio_ioctl::GROUP_SET_CONTAINER,
                        vfio_ioctl::GROUP_GET_DEVICE_FD,
                        vfio_ioctl::DEVICE_GET_INFO,
                        vfio_ioctl::DEVICE_GET_REGION_INFO,
                    ]
                ),
                "a fresh VFIO container and device fd per claim"
            ),
        ],
    ],
    files: &[
        Beneath {
            path: "/sys/bus/pci",
            access: Access::ReadWrite,
            why: "enumeration, driver_override, bind, unbind, drivers_probe",
        },
        Beneath {
            path: "/sys/devices/pci*",
            access: Access::ReadWrite,
            why: "where the function directories really are (config, resource)",
        },
        Beneath {
            path: "/dev/vfio",
            access: Access::Device,
            why: "a container and the group per claim",
        },
        Beneath {
            path: "/etc/pcid.d",
            access: Access::Read,
            why: "the rules, reread on SIGHUP",
        },
        Beneath {
            path: "/sys/kernel/iommu_groups",
            access: Access::Read,
            why: "who else is in a function's IOMMU group (one is claimed only alone in its group)",
        },
    ],
};

/// acpid: the AML interpreter's PCI config accesses go to pcid's files;
/// its worker thread is started before the sandbox, so acpid calls
/// [`restrict_files`] first.
pub const ACPID: Profile = Profile {
    daemon: "acpid",
    extras: &[
        POLL_LOOP,
        &[call!(
            SYS_openat,
            "AML PCI_Config: /scheme/pci/…/config (Landlock-bound)"
        )],
    ],
    files: &[
        Beneath {
            path: "/scheme/pci",
            access: Access::ReadWrite,
            why: "AML PCI_Config regions, through pcid",
        },
        Beneath {
            path: "/etc/acpid.d",
            access: Access::Read,
            why: "the platform driver rules, read after the worker starts",
        },
    ],
};

/// pcid_interface's `kit-probe` example: a stand-in driver that sets its
/// device up *inside* the sandbox (DMA maps, IRQs, BAR maps), so the whole
/// kit is proved sandboxed. Wider than any real driver's.
pub const KIT_PROBE: Profile = Profile {
    daemon: "kit-probe",
    extras: &[
        EPOLL_LOOP,
        POLL_LOOP,
        &[
            call!(SYS_eventfd2, "an eventfd per interrupt vector"),
            call!(SYS_sendto, "the handle's requests on its channel"),
            call!(SYS_recvfrom, "the channel's answers"),
            call!(SYS_sched_yield, "waiting out a device reset"),
            call!(
                SYS_ioctl,
                Arg::OneOf(
                    1,
                    &[
                        vfio_ioctl::GET_API_VERSION,
                        vfio_ioctl::CHECK_EXTENSION,
                        vfio_ioctl::DEVICE_GET_INFO,
                        vfio_ioctl::DEVICE_GET_REGION_INFO,
                        vfio_ioctl::DEVICE_GET_IRQ_INFO,
                        vfio_ioctl::DEVICE_SET_IRQS,
                        vfio_ioctl::DEVICE_RESET,
                        vfio_ioctl::IOMMU_GET_INFO,
                        vfio_ioctl::IOMMU_MAP_DMA,
                        vfio_ioctl::IOMMU_UNMAP_DMA,
                    ]
                ),
                "the whole device set-up"
            ),
            call!(
                SYS_mprotect,
                Arg::NoExec(2),
                "never seen; harmless without PROT_EXEC"
            ),
        ],
    ],
    files: &[],
};

/// Every daemon profile, for the documentation and the lab's check.
pub const PROFILES: &[&Profile] = &[
    &VIRTIO_BLKD,
    &E1000D,
    &VIRTIO_NETD,
    &RTCD,
    &PCID,
    &ACPID,
    &NVMED,
    &AHCID,
];

/// Builds the two BPF programs: the path-lookup filter (`EACCES`, rest
/// allowed) and the allow-list (unlisted: kill, or log with `log`). Both
/// run on every call and the kernel takes the stricter verdict, so an
/// `openat` the allow-list passes ends as `EACCES`.
#[cfg(target_arch = "x86_64")]
fn build_filters(
    profile: &Profile,
    log: bool,
) -> io::Result<(Option<seccompiler::BpfProgram>, seccompiler::BpfProgram)> {
    use seccompiler::{
        SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
        SeccompRule, TargetArch,
    };
    let se = |e: seccompiler::BackendError| err(io::ErrorKind::Other, format!("seccomp: {e}"));
    let cond = |arg: u8, len, op, value| SeccompCondition::new(arg, len, op, value).map_err(se);
    let rule = |c: SeccompCondition| SeccompRule::new(vec![c]).map_err(se);
    let no_path = |arg: u8| {
        cond(
            arg,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::MaskedEq(AT_EMPTY_PATH),
            0,
        )
    };

    // 1. Path lookups → EACCES; a stat call with a path too, when the
    // profile allows it only on fds.
    let mut lookups: BTreeMap<i64, Vec<SeccompRule>> = profile
        .denied_lookups()
        .map(|&(n, _)| (n, Vec::new()))
        .collect();
    for c in profile.calls() {
        if let Arg::EmptyPath(flags) = c.arg {
            lookups.insert(c.nr, vec![rule(no_path(flags)?)?]);
        }
    }
    let lookups = if lookups.is_empty() {
        None
    } else {
        let f = SeccompFilter::new(
            lookups,
            SeccompAction::Allow,
            SeccompAction::Errno(libc::EACCES as u32),
            TargetArch::x86_64,
        )
        .map_err(se)?;
        Some(f.try_into().map_err(se)?)
    };

    // 2. The allow-list. The EACCES calls must pass it, so the first
    // filter's verdict stands.
    let mut allow: BTreeMap<i64, Vec<SeccompRule>> = profile
        .denied_lookups()
        .map(|&(n, _)| (n, Vec::new()))
        .collect();
    for c in profile.calls() {
        let rules = match c.arg {
            Arg::Any | Arg::EmptyPath(_) => Vec::new(),
            Arg::NoExec(prot) => vec![rule(cond(
                prot,
                SeccompCmpArgLen::Qword,
                SeccompCmpOp::MaskedEq(PROT_EXEC),
                0,
            )?)?],
            Arg::OneOf(n, values) => values
                .iter()
                .map(|&v| {
                    rule(cond(
                        n,
                        SeccompCmpArgLen::Dword,
                        SeccompCmpOp::Eq,
                        v.into(),
                    )?)
                })
                .collect::<io::Result<_>>()?,
        };
        // A call listed twice is allowed if either listing allows it; an
        // empty rule list is unconditional.
        match allow.get_mut(&c.nr) {
            Some(existing) if existing.is_empty() => {}
            Some(existing) if rules.is_empty() => existing.clear(),
            Some(existing) => existing.extend(rules),
            None => {
                allow.insert(c.nr, rules);
            }
        }
    }
    let mismatch = if log {
        SeccompAction::Log
    } else {
        SeccompAction::KillProcess
    };
    let allow = SeccompFilter::new(allow, mismatch, SeccompAction::Allow, TargetArch::x86_64)
        .map_err(se)?;
    Ok((lookups, allow.try_into().map_err(se)?))
}

/// Set once Landlock binds this process (by [`restrict_files`] or
/// [`enter_sandbox`]).
static LANDLOCKED: AtomicBool = AtomicBool::new(false);

/// How far Landlock holds this daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Landlock {
    /// Every right of ABI 6 handled: files, TCP, signal and socket scopes.
    Full,
    /// The kernel has an older ABI: some of it.
    Partial,
    /// No Landlock in this kernel: seccomp alone.
    None,
}

fn landlock_err(e: impl std::fmt::Display) -> io::Error {
    err(io::ErrorKind::Other, format!("landlock: {e}"))
}

/// The paths a [`Beneath`] names: itself, or for `dir/prefix*` every
/// entry of `dir` whose name starts with `prefix`.
fn expand(rule: &Beneath) -> io::Result<Vec<std::path::PathBuf>> {
    let Some(prefix_path) = rule.path.strip_suffix('*') else {
        return Ok(vec![rule.path.into()]);
    };
    let p = std::path::Path::new(prefix_path);
    let (dir, prefix) = match (p.parent(), p.file_name()) {
        (Some(d), Some(f)) => (d, f.to_string_lossy().into_owned()),
        _ => {
            return Err(err(
                io::ErrorKind::InvalidInput,
                format!("bad rule {}", rule.path),
            ))
        }
    };
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        if e.file_name().to_string_lossy().starts_with(&prefix) {
            out.push(e.path());
        }
    }
    Ok(out)
}

/// Keeps every thread of this process on glibc's main heap. A thread's
/// own malloc arena grows by `mprotect`, which no profile allows (so no
/// memory can become executable): a daemon that starts threads calls this
/// before the first one, or that thread dies of SIGSYS the first time its
/// arena must grow (acpid's AML thread did, under scheme-fuzz).
pub fn one_heap() {
    // SAFETY: mallopt only sets an allocator parameter; no thread exists
    // yet that could be allocating concurrently with the change.
    let ok = unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
    if ok != 1 {
        log::warn!("mallopt(M_ARENA_MAX, 1) refused: a thread's heap may need mprotect");
    }
}

/// Landlock for the calling thread and every thread it starts from now
/// on: only the profile's paths (none for a driver), no TCP bind or
/// connect, signals and abstract unix sockets scoped to this domain.
/// Needs NO_NEW_PRIVS (set here) or CAP_SYS_ADMIN. Without Landlock in the
/// kernel it logs a warning and returns [`Landlock::None`].
pub fn restrict_files(profile: &Profile) -> io::Result<Landlock> {
    use landlock::{
        Access as _, AccessFs, AccessNet, BitFlags, PathBeneath, PathFd, Ruleset, RulesetAttr,
        RulesetCreatedAttr, RulesetStatus, Scope, ABI,
    };
    // ABI 6 is Linux 6.12's: the rights this sandbox was written against.
    let abi = ABI::V6;
    let all = AccessFs::from_all(abi);
    let mut ruleset = Ruleset::default()
        .handle_access(all)
        .map_err(landlock_err)?
        .handle_access(AccessNet::from_all(abi))
        .map_err(landlock_err)?
        .scope(Scope::from_all(abi))
        .map_err(landlock_err)?
        .create()
        .map_err(landlock_err)?;
    for rule in profile.files {
        let read: BitFlags<AccessFs> = AccessFs::ReadFile | AccessFs::ReadDir;
        let rights = match rule.access {
            Access::Read => read,
            Access::ReadWrite => read | AccessFs::WriteFile,
            Access::Device => read | AccessFs::WriteFile | AccessFs::IoctlDev,
        };
        for path in expand(rule)? {
            let fd = PathFd::new(&path).map_err(landlock_err)?;
            ruleset = ruleset
                .add_rule(PathBeneath::new(fd, rights))
                .map_err(landlock_err)?;
        }
    }
    let status = ruleset.restrict_self().map_err(landlock_err)?;
    LANDLOCKED.store(true, Ordering::SeqCst);
    let level = match status.ruleset {
        RulesetStatus::FullyEnforced => Landlock::Full,
        RulesetStatus::PartiallyEnforced => Landlock::Partial,
        RulesetStatus::NotEnforced => Landlock::None,
    };
    match level {
        Landlock::Full => log::debug!("landlock: ABI 6 enforced"),
        Landlock::Partial => log::warn!(
            "landlock: only partly enforced ({:?}): seccomp still holds",
            status.landlock
        ),
        Landlock::None => log::warn!(
            "landlock: not available ({:?}): file, signal and socket scoping rest on seccomp alone",
            status.landlock
        ),
    }
    Ok(level)
}

/// Enters `profile`'s sandbox: Landlock (unless [`restrict_files`] ran
/// already), then the seccomp filters on every thread, then
/// [`crate::probe`]'s one try if `SANDBOX_PROBE` asks for one. Sets
/// NO_NEW_PRIVS first (seccomp requires it of unprivileged processes).
/// Irreversible.
#[cfg(target_arch = "x86_64")]
pub fn enter_sandbox(profile: &Profile) -> io::Result<()> {
    if !rustix::thread::no_new_privs().unwrap_or(false) {
        rustix::thread::set_no_new_privs(true)
            .map_err(|e| crate::os_err("prctl(PR_SET_NO_NEW_PRIVS)", e))?;
    }
    // Read before the sandbox: the probe finds its targets in /proc.
    let probe = crate::probe::arm();
    if !LANDLOCKED.load(Ordering::SeqCst) {
        restrict_files(profile)?;
    }
    let log = std::env::var_os(LOG_ENV).is_some();
    let (lookups, allow) = build_filters(profile, log)?;
    let apply = |prog: &seccompiler::BpfProgram| {
        seccompiler::apply_filter_all_threads(prog).map_err(|e| {
            err(
                io::ErrorKind::Other,
                format!("installing seccomp filter: {e}"),
            )
        })
    };
    // The lookup filter first: once the allow-list is in, the seccomp call
    // itself is fatal.
    if let Some(lookups) = &lookups {
        apply(lookups)?;
    }
    apply(&allow)?;
    if log {
        log::warn!(
            "sandbox {}: {LOG_ENV} set: calls outside the list are logged, not refused",
            profile.daemon
        );
    } else {
        log::debug!("sandbox {} entered", profile.daemon);
    }
    if let Some(p) = probe {
        p.fire();
    }
    Ok(())
}

/// Only x86-64 has a syscall table here.
#[cfg(not(target_arch = "x86_64"))]
pub fn enter_sandbox(_profile: &Profile) -> io::Result<()> {
    Err(err(
        io::ErrorKind::Unsupported,
        "the seccomp filters are only defined for x86-64",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DRIVER: &str = "Name:\tvirtio-blkd\nUmask:\t0022\nState:\tS (sleeping)\n\
        Uid:\t110\t110\t110\t110\nGid:\t110\t110\t110\t110\n\
        CapInh:\t0000000000000000\nCapPrm:\t0000000000000000\nCapEff:\t0000000000000000\n\
        CapBnd:\t000001ffffffffff\nCapAmb:\t0000000000000000\nNoNewPrivs:\t1\n\
        Seccomp:\t0\nSeccomp_filters:\t0\n";

    #[test]
    fn parses_a_driver_status() {
        let st = ProcStatus::parse(DRIVER).unwrap();
        assert_eq!(st.uids, vec![110; 4]);
        assert_eq!(st.cap_eff, 0);
        assert!(st.no_new_privs);
        assert_eq!(st.seccomp, 0);
        st.check().unwrap();
    }

    #[test]
    fn root_caps_or_missing_nnp_are_refused() {
        let root = DRIVER.replace("Uid:\t110\t110\t110\t110", "Uid:\t110\t0\t110\t110");
        let e = ProcStatus::parse(&root).unwrap().check().unwrap_err();
        assert!(e.to_string().contains("uid 0"), "{e}");

        let caps = DRIVER.replace("CapEff:\t0000000000000000", "CapEff:\t0000000000200000");
        let e = ProcStatus::parse(&caps).unwrap().check().unwrap_err();
        assert!(
            e.to_string().contains("effective capabilities 0x200000"),
            "{e}"
        );

        let prm = DRIVER.replace("CapPrm:\t0000000000000000", "CapPrm:\t0000000000000001");
        assert!(ProcStatus::parse(&prm).unwrap().check().is_err());

        let nnp = DRIVER.replace("NoNewPrivs:\t1", "NoNewPrivs:\t0");
        let e = ProcStatus::parse(&nnp).unwrap().check().unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
        assert!(e.to_string().contains("NO_NEW_PRIVS"), "{e}");
    }

    #[test]
    fn malformed_status_is_an_error() {
        assert!(ProcStatus::parse("Name:\tx\n").is_err());
        let bad = DRIVER.replace("Uid:\t110\t110\t110\t110", "Uid:\t110\t110");
        assert!(ProcStatus::parse(&bad).is_err());
        let bad = DRIVER.replace("CapEff:\t0000000000000000", "CapEff:\tzz");
        assert!(ProcStatus::parse(&bad).is_err());
    }

    #[test]
    fn this_test_process_is_judged_by_its_real_status() {
        // The host runs tests as root or as a user; either way the check
        // must agree with what /proc says.
        let text = std::fs::read_to_string("/proc/self/status").unwrap();
        let st = ProcStatus::parse(&text).unwrap();
        let expect_ok =
            !st.uids.contains(&0) && st.cap_eff == 0 && st.cap_prm == 0 && st.no_new_privs;
        assert_eq!(check_unprivileged().is_ok(), expect_ok);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn every_profile_compiles_in_both_modes() {
        for p in PROFILES.iter().copied().chain([&KIT_PROBE]) {
            for log in [false, true] {
                let (lookups, allow) = build_filters(p, log).unwrap();
                assert!(!allow.is_empty(), "{}", p.daemon);
                // seccomp refuses programs longer than 4096 instructions.
                assert!(
                    allow.len() < 4096,
                    "{}: {} instructions",
                    p.daemon,
                    allow.len()
                );
                // Every profile refuses some lookup or stats only fds.
                assert!(lookups.is_some(), "{}", p.daemon);
            }
        }
    }

    #[test]
    fn drivers_get_no_files_sockets_or_new_processes() {
        let forbidden = [
            libc::SYS_socket,
            libc::SYS_connect,
            libc::SYS_execve,
            libc::SYS_execveat,
            libc::SYS_clone,
            libc::SYS_clone3,
            libc::SYS_fork,
            libc::SYS_vfork,
            libc::SYS_ptrace,
            libc::SYS_kill,
            libc::SYS_ioperm,
            libc::SYS_iopl,
            libc::SYS_mount,
            libc::SYS_setuid,
            libc::SYS_unshare,
            libc::SYS_bpf,
            libc::SYS_io_uring_setup,
            libc::SYS_memfd_create,
            libc::SYS_prctl,
            libc::SYS_seccomp,
            libc::SYS_process_vm_readv,
            libc::SYS_mprotect,
        ];
        for p in PROFILES {
            for nr in forbidden {
                assert!(!p.allows(nr), "{} allows call {nr}", p.daemon);
            }
        }
        for p in [&VIRTIO_BLKD, &VIRTIO_NETD, &E1000D, &RTCD, &NVMED, &AHCID] {
            assert!(p.files.is_empty(), "{}", p.daemon);
            assert_eq!(
                p.denied_lookups().count(),
                PATH_LOOKUPS.len(),
                "{}",
                p.daemon
            );
        }
        // Only e1000d and ahcid (INTx) and pcid (claims) may ioctl at all.
        let ioctl: Vec<&str> = PROFILES
            .iter()
            .filter(|p| p.allows(libc::SYS_ioctl))
            .map(|p| p.daemon)
            .collect();
        assert_eq!(ioctl, ["e1000d", "pcid", "ahcid"]);
    }

    #[test]
    fn every_call_says_why_and_conditions_read_well() {
        for p in PROFILES {
            for c in p.calls() {
                assert!(!c.why.is_empty(), "{} {}", p.daemon, c.name());
            }
        }
        assert_eq!(ioctl_name(0x3b6e), "VFIO_DEVICE_SET_IRQS");
        let ioctl = E1000D.calls().find(|c| c.nr == libc::SYS_ioctl).unwrap();
        assert_eq!(ioctl.condition(), "VFIO_DEVICE_SET_IRQS");
        assert!(ioctl.arg.admits(0x3b6e) && !ioctl.arg.admits(0x3b6f));
        let fcntl = BASE.iter().find(|c| c.nr == libc::SYS_fcntl).unwrap();
        assert_eq!(fcntl.condition(), "F_GETFL, F_SETFL");
        let mmap = BASE.iter().find(|c| c.nr == libc::SYS_mmap).unwrap();
        assert_eq!(mmap.condition(), "without PROT_EXEC");
        assert!(mmap.arg.admits(3) && !mmap.arg.admits(5));
        assert!(Arg::EmptyPath(3).admits(0x1000) && !Arg::EmptyPath(3).admits(0));
        assert!(Arg::OneOf(0, &[1]).admits(1) && !Arg::OneOf(0, &[1]).admits(2));
    }
}
