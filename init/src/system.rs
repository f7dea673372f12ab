//! The machine-level chores of PID 1: file systems, kernel modules, the
//! kernel command line, users, and powering off.

use std::fs;
use std::io;
use std::path::Path;

use rustix::fs::{Mode, OFlags};
use rustix::mount::{mount, MountFlags};

use crate::console::say;

/// Mounts the file systems every service expects. A failure is reported and
/// boot goes on: a missing /tmp must not stop the machine from coming up.
pub fn mount_filesystems() {
    let nosuid = MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC;
    let table: [(&str, &str, &str, MountFlags, &std::ffi::CStr); 7] = [
        ("proc", "/proc", "proc", nosuid, c""),
        ("sysfs", "/sys", "sysfs", nosuid, c""),
        (
            "devtmpfs",
            "/dev",
            "devtmpfs",
            MountFlags::NOSUID,
            c"mode=0755",
        ),
        (
            "devpts",
            "/dev/pts",
            "devpts",
            MountFlags::NOSUID | MountFlags::NOEXEC,
            c"gid=5,mode=620,ptmxmode=666",
        ),
        (
            "tmpfs",
            "/tmp",
            "tmpfs",
            MountFlags::NOSUID | MountFlags::NODEV,
            c"mode=1777",
        ),
        (
            "tmpfs",
            "/run",
            "tmpfs",
            MountFlags::NOSUID | MountFlags::NODEV,
            c"mode=0755",
        ),
        // Scheme mount points live here; only init creates them.
        ("scheme", "/scheme", "tmpfs", nosuid, c"mode=0755"),
    ];
    for (source, target, fstype, flags, data) in table {
        if let Err(e) = fs::create_dir_all(target) {
            say(&format!("cannot create {target}: {e}"));
            continue;
        }
        if let Err(e) = mount(source, target, fstype, flags, data) {
            say(&format!("cannot mount {fstype} on {target}: {e}"));
        }
    }
    if let Err(e) = fs::create_dir_all("/var/log") {
        say(&format!("cannot create /var/log: {e}"));
    }
}

/// Loads the modules listed (dependencies first) in `list`, from `dir`.
/// Returns how many loaded; an already loaded module counts as loaded.
pub fn load_modules(list: &Path, dir: &Path) -> usize {
    let text = match fs::read_to_string(list) {
        Ok(t) => t,
        Err(e) => {
            say(&format!("no module list {}: {e}", list.display()));
            return 0;
        }
    };
    let mut loaded = 0;
    for name in text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let path = dir.join(name);
        let result = rustix::fs::open(&path, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
            .and_then(|fd| rustix::system::finit_module(&fd, c"", 0));
        match result {
            Ok(()) | Err(rustix::io::Errno::EXIST) => loaded += 1,
            Err(e) => say(&format!("cannot load module {}: {e}", path.display())),
        }
    }
    loaded
}

pub fn kernel_cmdline() -> String {
    fs::read_to_string("/proc/cmdline").unwrap_or_default()
}

/// The value of `key=value` on the kernel command line (the last one wins,
/// as in the kernel).
pub fn cmdline_value<'a>(cmdline: &'a str, key: &str) -> Option<&'a str> {
    cmdline
        .split_whitespace()
        .filter_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        .next_back()
}

/// The terminal of the kernel's console, for the interactive shell: the last
/// `console=` device, without its options.
pub fn console_device(cmdline: &str) -> String {
    match cmdline_value(cmdline, "console") {
        Some(dev) => format!("/dev/{}", dev.split(',').next().unwrap_or(dev)),
        None => "/dev/console".to_owned(),
    }
}

/// Seconds since the kernel started, for boot-time reports.
pub fn uptime() -> f64 {
    fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

/// uid and gid of `user` in /etc/passwd.
pub fn lookup_user(passwd: &str, user: &str) -> Option<(u32, u32)> {
    passwd.lines().find_map(|line| {
        let mut f = line.split(':');
        if f.next()? != user {
            return None;
        }
        let _password = f.next()?;
        Some((f.next()?.parse().ok()?, f.next()?.parse().ok()?))
    })
}

/// Children must not inherit the signals init blocks for its signalfd:
/// the mask survives exec, and a daemon could then not even be stopped.
/// Only makes a system call, so it is safe between fork and exec.
pub fn unblock_signals() -> std::io::Result<()> {
    nix::sys::signal::SigSet::empty()
        .thread_set_mask()
        .map_err(std::io::Error::from)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Power {
    Off,
    Reboot,
    Halt,
}

/// Final step of shutdown: flush and tell the kernel. Only returns on error.
pub fn power(action: Power) -> io::Error {
    rustix::fs::sync();
    let cmd = match action {
        Power::Off => rustix::system::RebootCommand::PowerOff,
        Power::Reboot => rustix::system::RebootCommand::Restart,
        Power::Halt => rustix::system::RebootCommand::Halt,
    };
    match rustix::system::reboot(cmd) {
        Ok(()) => io::Error::other("reboot(2) returned"),
        Err(e) => e.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_values() {
        let c = "console=tty0 console=ttyS0,115200 lab.agent=ttyS1 quiet";
        assert_eq!(cmdline_value(c, "console"), Some("ttyS0,115200"));
        assert_eq!(console_device(c), "/dev/ttyS0");
        assert_eq!(cmdline_value(c, "lab.agent"), Some("ttyS1"));
        assert_eq!(cmdline_value(c, "quiet"), None);
        assert_eq!(console_device("quiet"), "/dev/console");
    }

    #[test]
    fn passwd_lookup() {
        let p = "root:x:0:0:root:/root:/bin/sh\nfifo:x:1004:1004::/:/bin/false\nbad:x:zz:1\n";
        assert_eq!(lookup_user(p, "fifo"), Some((1004, 1004)));
        assert_eq!(lookup_user(p, "root"), Some((0, 0)));
        assert_eq!(lookup_user(p, "bad"), None);
        assert_eq!(lookup_user(p, "nobody"), None);
    }
}
