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

/// Sends SIGTERM to every process except init itself and `keep`: what is
/// left after the services (the shell, user programs).
pub fn terminate_others(keep: &[rustix::process::Pid]) {
    let keep: Vec<i32> = keep.iter().map(|p| p.as_raw_nonzero().get()).collect();
    let Ok(dir) = fs::read_dir("/proc") else {
        return;
    };
    for entry in dir.filter_map(Result::ok) {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        if pid <= 1 || keep.contains(&pid) {
            continue;
        }
        // Kernel threads ignore it; a process gone meanwhile is fine.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
}

/// Where acpid takes power requests.
pub const ACPI_POWER: &str = "/scheme/acpi/power";

/// Asks acpid to power off (`poweroff`) or reset (`reboot`) the machine
/// the way the firmware describes, and waits. Returns only if that did not
/// work within `timeout`: the error says why (no acpid, refused, no answer,
/// or the machine simply kept running).
pub fn acpi_power(word: &str, timeout: std::time::Duration) -> io::Error {
    request_power(Path::new(ACPI_POWER), word, timeout)
}

fn request_power(path: &Path, word: &str, timeout: std::time::Duration) -> io::Error {
    use std::io::Write;
    let deadline = std::time::Instant::now() + timeout;
    let (tx, rx) = std::sync::mpsc::channel();
    let line = format!("{word}\n");
    let target = path.to_owned();
    // A thread, so a wedged acpid cannot hang PID 1: the fallback below
    // runs whatever happens to the write.
    let spawned = std::thread::Builder::new()
        .name("acpi-power".into())
        .spawn(move || {
            let r = fs::OpenOptions::new()
                .write(true)
                .open(&target)
                .and_then(|mut f| f.write_all(line.as_bytes()));
            let _ = tx.send(r);
        });
    if let Err(e) = spawned {
        return e;
    }
    let left = deadline.saturating_duration_since(std::time::Instant::now());
    match rx.recv_timeout(left) {
        Ok(Err(e)) => return io::Error::new(e.kind(), format!("{}: {e}", path.display())),
        Ok(Ok(())) => {}
        Err(_) => {
            return io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "{} did not answer in {} s",
                    path.display(),
                    timeout.as_secs()
                ),
            )
        }
    }
    // The write was taken; the machine should be gone before this ends.
    std::thread::sleep(deadline.saturating_duration_since(std::time::Instant::now()));
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!("still running {} s after the request", timeout.as_secs()),
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Power {
    Off,
    Reboot,
    Halt,
}

/// Last resort of shutdown (and the only step for halt): flush and tell
/// the kernel. Only returns on error.
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
    fn power_requests_fall_back_on_every_failure() {
        use std::time::{Duration, Instant};
        let dir = std::env::temp_dir().join(format!("init-power-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let t = Duration::from_millis(300);

        // No acpid: at once.
        let start = Instant::now();
        let e = request_power(&dir.join("missing"), "poweroff", t);
        assert_eq!(e.kind(), io::ErrorKind::NotFound, "{e}");
        assert!(start.elapsed() < t);

        // Taken, but the machine is still up when the time is over.
        let file = dir.join("power");
        fs::write(&file, "").unwrap();
        let start = Instant::now();
        let e = request_power(&file, "reboot", t);
        assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
        assert!(e.to_string().contains("still running"), "{e}");
        assert!(start.elapsed() >= t);
        assert_eq!(fs::read_to_string(&file).unwrap(), "reboot\n");

        // A server that never answers (a FIFO nobody reads blocks the open)
        // cannot hold the caller past the timeout.
        let fifo = dir.join("fifo");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let start = Instant::now();
        let e = request_power(&fifo, "poweroff", t);
        assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
        assert!(e.to_string().contains("did not answer"), "{e}");
        assert!(start.elapsed() < t * 3);
        // Unblock the helper thread so it ends.
        let _ = fs::File::open(&fifo);
        let _ = fs::remove_dir_all(&dir);
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
