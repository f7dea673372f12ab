//! The sandbox probe: a daemon trying one forbidden thing from inside its
//! real sandbox, so a test can see each attempt fail (the `sandbox` lab
//! scenario, `docs/security.md`).
//!
//! Off unless the environment says `SANDBOX_PROBE=WHAT+WHAT+…` at start.
//! The instance with start number k (`INIT_START`, from init) tries entry
//! k, so one boot covers the list, one instance per entry, with restarts in
//! between; `none` and entries past the end try nothing (so start 0 can
//! serve normally and a sibling instance of the same unit never probes).
//! [`crate::sandbox::enter_sandbox`] arms it before the filters go in (a
//! target's pid is found in `/proc` then) and fires it right after: the
//! daemon logs `probe: trying WHAT`, makes the one call, and, if it
//! survives, `probe: WHAT refused: EACCES` (or `probe: WHAT SUCCEEDED`, a
//! hole), then goes on serving. A kill by the filter (`SIGSYS`) is reported
//! by init and by the kernel's audit log, which names the call.
//!
//! | what | the call |
//! | --- | --- |
//! | `open-file` | `openat("/etc/passwd", O_RDONLY)` |
//! | `create-file` | `openat("/tmp/sandbox-probe", O_CREAT \| O_EXCL \| O_WRONLY)` |
//! | `open-vfio` | `openat("/dev/vfio/vfio", O_RDWR)` |
//! | `execve` | `execve("/bin/sh", …)` |
//! | `socket-inet`, `socket-netlink`, `socket-unix` | `socket(AF_INET, SOCK_STREAM)`, `socket(AF_NETLINK, …, NETLINK_KOBJECT_UEVENT)`, `socket(AF_UNIX, …)` |
//! | `ptrace` | `ptrace(PTRACE_ATTACH, sibling)` |
//! | `read-memory` | `process_vm_readv(sibling, …)` |
//! | `mmap-exec`, `mprotect-exec` | an anonymous `PROT_READ \| PROT_EXEC` mapping; a RW one made executable |
//! | `kill-init` | `kill(1, SIGTERM)` |
//! | `signal-init` | `tgkill(1, 1, 0)`: the permission check alone |
//! | `signal-sibling` | `tgkill(sibling, sibling, SIGKILL)` |
//! | `ioperm`, `iopl` | `ioperm(0x80, 1, 1)`, `iopl(3)` |
//! | `fork` | `clone(SIGCHLD)`, what `fork()` makes |
//! | `mount`, `setuid`, `unshare` | `mount` of a tmpfs on `/tmp`, `setuid(0)`, `unshare(CLONE_NEWUSER)` |
//! | `bpf`, `io-uring`, `memfd` | `bpf(BPF_PROG_LOAD)`, `io_uring_setup`, `memfd_create` |
//!
//! The *sibling* is another process with this one's name and uid (a second
//! instance of the same driver): only Landlock's signal scope stops a
//! signal to it, since the uids match.

use std::ffi::CStr;

/// The environment variable that names the probes.
pub const ENV: &str = "SANDBOX_PROBE";

/// One forbidden thing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    OpenFile,
    CreateFile,
    OpenVfio,
    Execve,
    SocketInet,
    SocketNetlink,
    SocketUnix,
    Ptrace,
    ReadMemory,
    MmapExec,
    MprotectExec,
    KillInit,
    SignalInit,
    SignalSibling,
    Ioperm,
    Iopl,
    Fork,
    Mount,
    Setuid,
    Unshare,
    Bpf,
    IoUring,
    Memfd,
}

/// Every probe by the name `SANDBOX_PROBE` uses.
pub const ALL: &[(&str, Probe)] = &[
    ("open-file", Probe::OpenFile),
    ("create-file", Probe::CreateFile),
    ("open-vfio", Probe::OpenVfio),
    ("execve", Probe::Execve),
    ("socket-inet", Probe::SocketInet),
    ("socket-netlink", Probe::SocketNetlink),
    ("socket-unix", Probe::SocketUnix),
    ("ptrace", Probe::Ptrace),
    ("read-memory", Probe::ReadMemory),
    ("mmap-exec", Probe::MmapExec),
    ("mprotect-exec", Probe::MprotectExec),
    ("kill-init", Probe::KillInit),
    ("signal-init", Probe::SignalInit),
    ("signal-sibling", Probe::SignalSibling),
    ("ioperm", Probe::Ioperm),
    ("iopl", Probe::Iopl),
    ("fork", Probe::Fork),
    ("mount", Probe::Mount),
    ("setuid", Probe::Setuid),
    ("unshare", Probe::Unshare),
    ("bpf", Probe::Bpf),
    ("io-uring", Probe::IoUring),
    ("memfd", Probe::Memfd),
];

impl Probe {
    pub fn name(self) -> &'static str {
        ALL.iter()
            .find(|(_, p)| *p == self)
            .map(|(n, _)| *n)
            .unwrap_or("?")
    }

    fn needs_sibling(self) -> bool {
        matches!(
            self,
            Probe::Ptrace | Probe::ReadMemory | Probe::SignalSibling
        )
    }
}

/// The entry of `list` (`a+b+…`) for start number `start`: `Ok(None)` for
/// `none` or past the end, `Err` for a name no probe has.
pub fn pick(list: &str, start: usize) -> Result<Option<Probe>, String> {
    let Some(word) = list.split('+').nth(start) else {
        return Ok(None);
    };
    if word == "none" {
        return Ok(None);
    }
    ALL.iter()
        .find(|(n, _)| *n == word)
        .map(|(_, p)| Some(*p))
        .ok_or_else(|| format!("unknown probe {word:?}"))
}

/// A probe chosen for this instance, with its target.
#[derive(Debug)]
pub struct Armed {
    probe: Probe,
    start: usize,
    sibling: Option<i32>,
}

/// Reads [`ENV`] and `INIT_START` and, for a probe aimed at a sibling,
/// finds one in `/proc`: before the sandbox.
pub fn arm() -> Option<Armed> {
    let list = std::env::var(ENV).ok()?;
    let start = std::env::var("INIT_START")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let probe = match pick(&list, start) {
        Ok(p) => p?,
        Err(e) => {
            log::warn!("probe: {ENV}={list:?}: {e}; nothing tried");
            return None;
        }
    };
    let sibling = probe.needs_sibling().then(find_sibling).flatten();
    Some(Armed {
        probe,
        start,
        sibling,
    })
}

/// Another process with this one's name and real uid.
fn find_sibling() -> Option<i32> {
    let own = std::fs::read_to_string("/proc/self/status").ok()?;
    let key = |text: &str| -> Option<(String, String)> {
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.split_whitespace().next().unwrap_or("").to_owned())
        };
        Some((field("Name:")?, field("Uid:")?))
    };
    let me = key(&own)?;
    let pid = std::process::id() as i32;
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let other: i32 = e.file_name().to_str()?.parse().ok()?;
        let text = std::fs::read_to_string(e.path().join("status")).ok()?;
        (other != pid && key(&text)? == me).then_some(other)
    })
}

/// An errno's name, for the log line the test reads.
fn errno_name(e: i32) -> String {
    let name = match e {
        libc::EACCES => "EACCES",
        libc::EPERM => "EPERM",
        libc::ENOSYS => "ENOSYS",
        libc::EINVAL => "EINVAL",
        libc::ENOENT => "ENOENT",
        libc::EBADF => "EBADF",
        libc::EFAULT => "EFAULT",
        libc::ESRCH => "ESRCH",
        libc::ENOMEM => "ENOMEM",
        libc::EEXIST => "EEXIST",
        libc::EROFS => "EROFS",
        other => return format!("errno {other}"),
    };
    name.to_owned()
}

/// One raw system call: the probe must make exactly the call it names,
/// not whatever a libc wrapper would.
fn sys(nr: libc::c_long, a: [libc::c_long; 5]) -> Result<libc::c_long, i32> {
    // SAFETY: every probe passes integers, null, or pointers to live local
    // buffers of the sizes it names; a call that succeeds creates only what
    // `Armed::fire` then releases or leaves unused.
    let r = unsafe { libc::syscall(nr, a[0], a[1], a[2], a[3], a[4]) };
    if r < 0 {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    } else {
        Ok(r)
    }
}

fn ptr<T>(p: *const T) -> libc::c_long {
    p as libc::c_long
}

fn open(path: &CStr, flags: i32) -> Result<libc::c_long, i32> {
    let fd = sys(
        libc::SYS_openat,
        [
            libc::AT_FDCWD as libc::c_long,
            ptr(path.as_ptr()),
            libc::c_long::from(flags | libc::O_CLOEXEC),
            0o600,
            0,
        ],
    )?;
    let _ = sys(libc::SYS_close, [fd, 0, 0, 0, 0]);
    Ok(fd)
}

fn socket(domain: i32, kind: i32, protocol: i32) -> Result<libc::c_long, i32> {
    let fd = sys(
        libc::SYS_socket,
        [
            domain.into(),
            libc::c_long::from(kind | libc::SOCK_CLOEXEC),
            protocol.into(),
            0,
            0,
        ],
    )?;
    let _ = sys(libc::SYS_close, [fd, 0, 0, 0, 0]);
    Ok(fd)
}

impl Armed {
    /// Tries the probe and logs what became of it (if this process is
    /// still there to say).
    pub fn fire(self) {
        let name = self.probe.name();
        let target = match (self.probe.needs_sibling(), self.sibling) {
            (true, Some(pid)) => format!(", target pid {pid}"),
            (true, None) => {
                log::warn!("probe: {name}: no other process of this name and uid; nothing tried");
                return;
            }
            (false, _) => String::new(),
        };
        log::info!("probe: trying {name} (start {}{target})", self.start);
        let sib = libc::c_long::from(self.sibling.unwrap_or(0));
        let r = match self.probe {
            Probe::OpenFile => open(c"/etc/passwd", libc::O_RDONLY),
            Probe::CreateFile => open(
                c"/tmp/sandbox-probe",
                libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL,
            ),
            Probe::OpenVfio => open(c"/dev/vfio/vfio", libc::O_RDWR),
            Probe::Execve => {
                let argv = [
                    c"sh".as_ptr(),
                    c"-c".as_ptr(),
                    c"echo probe: execve ran".as_ptr(),
                    std::ptr::null(),
                ];
                let envp: [*const libc::c_char; 1] = [std::ptr::null()];
                sys(
                    libc::SYS_execve,
                    [
                        ptr(c"/bin/sh".as_ptr()),
                        ptr(argv.as_ptr()),
                        ptr(envp.as_ptr()),
                        0,
                        0,
                    ],
                )
            }
            Probe::SocketInet => socket(libc::AF_INET, libc::SOCK_STREAM, 0),
            Probe::SocketNetlink => socket(
                libc::AF_NETLINK,
                libc::SOCK_DGRAM,
                libc::NETLINK_KOBJECT_UEVENT,
            ),
            Probe::SocketUnix => socket(libc::AF_UNIX, libc::SOCK_STREAM, 0),
            Probe::Ptrace => sys(
                libc::SYS_ptrace,
                [libc::PTRACE_ATTACH as libc::c_long, sib, 0, 0, 0],
            )
            .inspect(|_| {
                let _ = sys(
                    libc::SYS_ptrace,
                    [libc::PTRACE_DETACH as libc::c_long, sib, 0, 0, 0],
                );
            }),
            Probe::ReadMemory => {
                let mut buf = [0u8; 8];
                let local = libc::iovec {
                    iov_base: buf.as_mut_ptr().cast(),
                    iov_len: buf.len(),
                };
                // Any address: a sandbox that let the call through has
                // failed whatever it reads.
                let remote = libc::iovec {
                    iov_base: 0x40_0000 as *mut libc::c_void,
                    iov_len: buf.len(),
                };
                sys(
                    libc::SYS_process_vm_readv,
                    [sib, ptr(&raw const local), 1, ptr(&raw const remote), 1],
                )
            }
            Probe::MmapExec => self
                .mmap(libc::PROT_READ | libc::PROT_EXEC)
                .inspect(|&a| self.unmap(a)),
            Probe::MprotectExec => self.mmap(libc::PROT_READ | libc::PROT_WRITE).and_then(|a| {
                let r = sys(
                    libc::SYS_mprotect,
                    [
                        a,
                        4096,
                        libc::c_long::from(libc::PROT_READ | libc::PROT_EXEC),
                        0,
                        0,
                    ],
                );
                self.unmap(a);
                r
            }),
            Probe::KillInit => sys(libc::SYS_kill, [1, libc::SIGTERM.into(), 0, 0, 0]),
            Probe::SignalInit => sys(libc::SYS_tgkill, [1, 1, 0, 0, 0]),
            Probe::SignalSibling => sys(libc::SYS_tgkill, [sib, sib, libc::SIGKILL.into(), 0, 0]),
            Probe::Ioperm => sys(libc::SYS_ioperm, [0x80, 1, 1, 0, 0]),
            Probe::Iopl => sys(libc::SYS_iopl, [3, 0, 0, 0, 0]),
            Probe::Fork => match sys(libc::SYS_clone, [libc::SIGCHLD.into(), 0, 0, 0, 0]) {
                Ok(0) => {
                    // The child of a fork that should never have happened:
                    // gone at once, touching nothing.
                    let _ = sys(libc::SYS_exit_group, [0, 0, 0, 0, 0]);
                    Ok(0)
                }
                other => other,
            },
            Probe::Mount => sys(
                libc::SYS_mount,
                [
                    ptr(c"none".as_ptr()),
                    ptr(c"/tmp".as_ptr()),
                    ptr(c"tmpfs".as_ptr()),
                    0,
                    0,
                ],
            ),
            Probe::Setuid => sys(libc::SYS_setuid, [0, 0, 0, 0, 0]),
            Probe::Unshare => sys(
                libc::SYS_unshare,
                [libc::CLONE_NEWUSER as libc::c_long, 0, 0, 0, 0],
            ),
            Probe::Bpf => {
                // BPF_PROG_LOAD with an empty attribute block.
                let attr = [0u8; 128];
                sys(libc::SYS_bpf, [5, ptr(attr.as_ptr()), 128, 0, 0])
            }
            Probe::IoUring => {
                let params = [0u8; 120];
                sys(libc::SYS_io_uring_setup, [1, ptr(params.as_ptr()), 0, 0, 0])
            }
            Probe::Memfd => sys(libc::SYS_memfd_create, [ptr(c"probe".as_ptr()), 0, 0, 0, 0])
                .inspect(|&fd| {
                    let _ = sys(libc::SYS_close, [fd, 0, 0, 0, 0]);
                }),
        };
        match r {
            Ok(v) => {
                log::error!("probe: {name} SUCCEEDED (returned {v}): the sandbox let it through")
            }
            Err(e) => log::info!("probe: {name} refused: {}", errno_name(e)),
        }
    }

    /// One anonymous page with protection `prot`, its address.
    fn mmap(&self, prot: i32) -> Result<libc::c_long, i32> {
        sys(
            libc::SYS_mmap,
            [
                0,
                4096,
                prot.into(),
                libc::c_long::from(libc::MAP_PRIVATE | libc::MAP_ANONYMOUS),
                -1,
            ],
        )
    }

    fn unmap(&self, addr: libc::c_long) {
        let _ = sys(libc::SYS_munmap, [addr, 4096, 0, 0, 0]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_start_number_picks_the_entry() {
        let list = "none+open-file+execve";
        assert_eq!(pick(list, 0), Ok(None));
        assert_eq!(pick(list, 1), Ok(Some(Probe::OpenFile)));
        assert_eq!(pick(list, 2), Ok(Some(Probe::Execve)));
        assert_eq!(pick(list, 3), Ok(None));
        assert!(pick("open-fil", 0).is_err());
    }

    #[test]
    fn every_probe_has_one_name() {
        for (n, p) in ALL {
            assert_eq!(p.name(), *n);
            assert_eq!(pick(n, 0), Ok(Some(*p)));
        }
        let mut names: Vec<_> = ALL.iter().map(|(n, _)| n).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), ALL.len());
    }

    #[test]
    fn errnos_are_named() {
        assert_eq!(errno_name(libc::EACCES), "EACCES");
        assert_eq!(errno_name(libc::EPERM), "EPERM");
        assert_eq!(errno_name(4095), "errno 4095");
    }
}
