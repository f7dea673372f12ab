//! Privilege checks and the driver seccomp filter — the analogue of Redox's
//! null namespace (`setrens(0, 0)`).
//!
//! A driver daemon, once set up, needs no new resources from the kernel: it
//! works on fds it already holds (VFIO, eventfds, epoll, FUSE, sockets to
//! init and pcid) and on its own memory. [`enter_sandbox`] installs a
//! filter that allows exactly that. The allow-list:
//!
//! | Group | System calls | Why |
//! | --- | --- | --- |
//! | fd I/O | `read` `write` `readv` `writev` `pread64` `pwrite64` `lseek` `close` `dup` `fcntl` | scheme requests, eventfds, VFIO config space, logs |
//! | device control | `ioctl` (any request) | VFIO: IRQ unmask, DMA map, reset |
//! | sockets already open | `recvmsg` `sendmsg` `recvfrom` `sendto` | init control channel, pcid channel |
//! | waiting | `epoll_wait` `epoll_pwait` `epoll_ctl` `epoll_create1` `poll` `ppoll` `eventfd2` | the event loop, IRQ waits |
//! | memory | `mmap` `mprotect` (both without `PROT_EXEC`), `munmap` `mremap` `madvise` `brk` | allocator, DMA buffers, BAR maps |
//! | threads/time | `futex` `sched_yield` `nanosleep` `clock_nanosleep` `clock_gettime` `clock_getres` `gettimeofday` `restart_syscall` | std's locks and sleeps |
//! | signals/exit | `rt_sigreturn` `rt_sigprocmask` `rt_sigaction` `sigaltstack` `tgkill` `exit` `exit_group` | panics, `abort`, returning from main |
//! | identity | `getpid` `gettid` `getuid` `geteuid` `getgid` `getegid` | logging, std |
//! | metadata | `fstat`, `newfstatat` and `statx` on an fd (`AT_EMPTY_PATH`) | std's `File`/stdio checks on held fds |
//! | randomness | `getrandom` | `HashMap` seeds |
//! | panics | `getcwd` | std's backtrace printer shortens paths with it |
//!
//! Path lookups fail with `EACCES`: `open`, `openat`, `openat2`, `creat`,
//! `readlink`, `readlinkat`, `access`, `faccessat`, `faccessat2`, `stat`,
//! `lstat`, and `newfstatat`/`statx` with a path (no `AT_EMPTY_PATH`). There
//! is no file system access, and code that merely probes a file (std's
//! backtrace printer reads `/proc/self/exe`) degrades instead of dying.
//! Everything else — `socket`, `connect`, `execve`, `clone`/`fork`,
//! `ptrace`, `mount`, `prctl`, `seccomp`, `kill`, … — kills the whole
//! process (`SIGSYS`), so an attempt cannot go unnoticed. Consequences for
//! drivers: spawn every thread and open every file *before* entering the
//! sandbox.

use std::collections::BTreeMap;
use std::io;

use crate::err;

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

/// x86-64 system call numbers (`arch/x86/entry/syscalls/syscall_64.tbl`).
#[cfg(target_arch = "x86_64")]
mod sys {
    pub const READ: i64 = 0;
    pub const STAT: i64 = 4;
    pub const LSTAT: i64 = 6;
    pub const ACCESS: i64 = 21;
    pub const READLINK: i64 = 89;
    pub const READLINKAT: i64 = 267;
    pub const FACCESSAT: i64 = 269;
    pub const FACCESSAT2: i64 = 439;
    pub const WRITE: i64 = 1;
    pub const OPEN: i64 = 2;
    pub const CLOSE: i64 = 3;
    pub const FSTAT: i64 = 5;
    pub const POLL: i64 = 7;
    pub const LSEEK: i64 = 8;
    pub const MMAP: i64 = 9;
    pub const MPROTECT: i64 = 10;
    pub const MUNMAP: i64 = 11;
    pub const BRK: i64 = 12;
    pub const RT_SIGACTION: i64 = 13;
    pub const RT_SIGPROCMASK: i64 = 14;
    pub const RT_SIGRETURN: i64 = 15;
    pub const IOCTL: i64 = 16;
    pub const PREAD64: i64 = 17;
    pub const PWRITE64: i64 = 18;
    pub const READV: i64 = 19;
    pub const WRITEV: i64 = 20;
    pub const SCHED_YIELD: i64 = 24;
    pub const MREMAP: i64 = 25;
    pub const MADVISE: i64 = 28;
    pub const DUP: i64 = 32;
    pub const NANOSLEEP: i64 = 35;
    pub const GETPID: i64 = 39;
    pub const SENDTO: i64 = 44;
    pub const RECVFROM: i64 = 45;
    pub const SENDMSG: i64 = 46;
    pub const RECVMSG: i64 = 47;
    pub const EXIT: i64 = 60;
    pub const FCNTL: i64 = 72;
    pub const CREAT: i64 = 85;
    pub const GETCWD: i64 = 79;
    pub const GETTIMEOFDAY: i64 = 96;
    pub const GETUID: i64 = 102;
    pub const GETGID: i64 = 104;
    pub const GETEUID: i64 = 107;
    pub const GETEGID: i64 = 108;
    pub const SIGALTSTACK: i64 = 131;
    pub const GETTID: i64 = 186;
    pub const FUTEX: i64 = 202;
    pub const RESTART_SYSCALL: i64 = 219;
    pub const CLOCK_GETTIME: i64 = 228;
    pub const CLOCK_GETRES: i64 = 229;
    pub const CLOCK_NANOSLEEP: i64 = 230;
    pub const EXIT_GROUP: i64 = 231;
    pub const EPOLL_WAIT: i64 = 232;
    pub const EPOLL_CTL: i64 = 233;
    pub const TGKILL: i64 = 234;
    pub const OPENAT: i64 = 257;
    pub const NEWFSTATAT: i64 = 262;
    pub const PPOLL: i64 = 271;
    pub const EPOLL_PWAIT: i64 = 281;
    pub const EVENTFD2: i64 = 290;
    pub const EPOLL_CREATE1: i64 = 291;
    pub const GETRANDOM: i64 = 318;
    pub const STATX: i64 = 332;
    pub const OPENAT2: i64 = 437;
}

/// Allowed without conditions (see the table in the module docs).
#[cfg(target_arch = "x86_64")]
const ALLOWED: &[i64] = &[
    sys::READ,
    sys::WRITE,
    sys::READV,
    sys::WRITEV,
    sys::PREAD64,
    sys::PWRITE64,
    sys::LSEEK,
    sys::CLOSE,
    sys::DUP,
    sys::FCNTL,
    sys::IOCTL,
    sys::RECVMSG,
    sys::SENDMSG,
    sys::RECVFROM,
    sys::SENDTO,
    sys::EPOLL_WAIT,
    sys::EPOLL_PWAIT,
    sys::EPOLL_CTL,
    sys::EPOLL_CREATE1,
    sys::POLL,
    sys::PPOLL,
    sys::EVENTFD2,
    sys::MUNMAP,
    sys::MREMAP,
    sys::MADVISE,
    sys::BRK,
    sys::FUTEX,
    sys::SCHED_YIELD,
    sys::NANOSLEEP,
    sys::CLOCK_NANOSLEEP,
    sys::CLOCK_GETTIME,
    sys::CLOCK_GETRES,
    sys::GETTIMEOFDAY,
    sys::RESTART_SYSCALL,
    sys::RT_SIGRETURN,
    sys::RT_SIGPROCMASK,
    sys::RT_SIGACTION,
    sys::SIGALTSTACK,
    sys::TGKILL,
    sys::EXIT,
    sys::EXIT_GROUP,
    sys::GETPID,
    sys::GETTID,
    sys::GETUID,
    sys::GETEUID,
    sys::GETGID,
    sys::GETEGID,
    sys::FSTAT,
    sys::GETRANDOM,
    sys::GETCWD,
];

/// Allowed only without `PROT_EXEC` in their protection argument (arg 2):
/// a driver never needs new executable memory.
#[cfg(target_arch = "x86_64")]
const ALLOWED_NO_EXEC: &[i64] = &[sys::MMAP, sys::MPROTECT];

/// Answered with `EACCES`.
#[cfg(target_arch = "x86_64")]
const DENIED_EACCES: &[i64] = &[
    sys::OPEN,
    sys::OPENAT,
    sys::OPENAT2,
    sys::CREAT,
    sys::READLINK,
    sys::READLINKAT,
    sys::ACCESS,
    sys::FACCESSAT,
    sys::FACCESSAT2,
    sys::STAT,
    sys::LSTAT,
];

/// `(syscall, index of its flags argument)`: answered with `EACCES` unless
/// the flags hold `AT_EMPTY_PATH` (a stat of an fd we hold, not a path).
#[cfg(target_arch = "x86_64")]
const DENIED_WITH_PATH: &[(i64, u8)] = &[(sys::NEWFSTATAT, 3), (sys::STATX, 2)];

const PROT_EXEC: u64 = 4;
const AT_EMPTY_PATH: u64 = 0x1000;
const EACCES: u32 = 13;

/// Builds the two BPF programs: the "no filesystem" filter (`open*` →
/// EACCES, rest allowed) and the allow-list (unlisted → kill process).
/// Both run on every call and the kernel takes the stricter verdict, so
/// `openat` — allowed by the second — ends as EACCES.
#[cfg(target_arch = "x86_64")]
fn build_filters() -> io::Result<(seccompiler::BpfProgram, seccompiler::BpfProgram)> {
    use seccompiler::{
        SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
        SeccompRule, TargetArch,
    };
    let se = |e: seccompiler::BackendError| err(io::ErrorKind::Other, format!("seccomp: {e}"));

    let mut no_fs: BTreeMap<i64, Vec<SeccompRule>> =
        DENIED_EACCES.iter().map(|&n| (n, Vec::new())).collect();
    for &(n, flags_arg) in DENIED_WITH_PATH {
        let path_lookup = SeccompCondition::new(
            flags_arg,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::MaskedEq(AT_EMPTY_PATH),
            0,
        )
        .map_err(se)?;
        no_fs.insert(n, vec![SeccompRule::new(vec![path_lookup]).map_err(se)?]);
    }
    let no_fs = SeccompFilter::new(
        no_fs,
        SeccompAction::Allow,
        SeccompAction::Errno(EACCES),
        TargetArch::x86_64,
    )
    .map_err(se)?;

    // The EACCES calls must pass this filter, so the first one's verdict
    // stands.
    let mut allow: BTreeMap<i64, Vec<SeccompRule>> = ALLOWED
        .iter()
        .chain(DENIED_EACCES)
        .chain(DENIED_WITH_PATH.iter().map(|(n, _)| n))
        .map(|&n| (n, Vec::new()))
        .collect();
    for &n in ALLOWED_NO_EXEC {
        let no_exec = SeccompCondition::new(
            2,
            SeccompCmpArgLen::Qword,
            SeccompCmpOp::MaskedEq(PROT_EXEC),
            0,
        )
        .map_err(se)?;
        allow.insert(n, vec![SeccompRule::new(vec![no_exec]).map_err(se)?]);
    }
    let allow = SeccompFilter::new(
        allow,
        SeccompAction::KillProcess,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(se)?;

    let no_fs: seccompiler::BpfProgram = no_fs.try_into().map_err(se)?;
    let allow: seccompiler::BpfProgram = allow.try_into().map_err(se)?;
    Ok((no_fs, allow))
}

/// Installs the driver seccomp allow-list on every thread of the process.
/// Sets NO_NEW_PRIVS first if it is not set (seccomp requires it of
/// unprivileged processes). Irreversible.
#[cfg(target_arch = "x86_64")]
pub fn enter_sandbox() -> io::Result<()> {
    if !rustix::thread::no_new_privs().unwrap_or(false) {
        rustix::thread::set_no_new_privs(true)
            .map_err(|e| crate::os_err("prctl(PR_SET_NO_NEW_PRIVS)", e))?;
    }
    let (no_fs, allow) = build_filters()?;
    let apply = |prog: &seccompiler::BpfProgram| {
        seccompiler::apply_filter_all_threads(prog).map_err(|e| {
            err(
                io::ErrorKind::Other,
                format!("installing seccomp filter: {e}"),
            )
        })
    };
    // `no_fs` first: once `allow` is in, the seccomp call itself is fatal.
    apply(&no_fs)?;
    apply(&allow)?;
    log::debug!("seccomp sandbox entered");
    Ok(())
}

/// Only x86-64 has a syscall table here.
#[cfg(not(target_arch = "x86_64"))]
pub fn enter_sandbox() -> io::Result<()> {
    Err(err(
        io::ErrorKind::Unsupported,
        "the driver seccomp filter is only defined for x86-64",
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
    fn filters_compile() {
        let (no_fs, allow) = build_filters().unwrap();
        assert!(!no_fs.is_empty() && !allow.is_empty());
        // seccomp refuses programs longer than 4096 instructions.
        assert!(allow.len() < 4096, "{} instructions", allow.len());
    }
}
