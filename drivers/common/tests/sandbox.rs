//! The seccomp sandbox, for real: each case re-runs this test binary as a
//! child, running only that same test with `COMMON_SANDBOX_CHILD` set; there
//! the test enters the sandbox, does one thing and reports on stdout, and
//! the parent asserts on what it said and how it died. A filter is
//! irreversible and process-wide, so it must never be installed in the
//! test process itself. No test here passes without asserting: the child
//! half runs only under the variable, and the parent checks its result.

use std::os::fd::AsFd;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Output};
use std::time::Duration;

use common::irq::new_eventfd;
use common::{EventLoop, MmioRegion};

const MODE_ENV: &str = "COMMON_SANDBOX_CHILD";
const SIGSYS: i32 = 31;
const EACCES: i32 = 13;

/// Writes straight to fd 1: the harness's output capture would lose
/// anything buffered when the process is killed.
fn say(msg: &str) {
    let _ = rustix::io::write(std::io::stdout().as_fd(), format!("{msg}\n").as_bytes());
}

/// Resources a driver gets during set-up, before its sandbox: a pipe
/// (standing in for its sockets), an eventfd (an interrupt) and a second
/// fd on the pipe (for the metadata check).
struct SetUp {
    pipe: (std::os::fd::OwnedFd, std::os::fd::OwnedFd),
    irq: std::os::fd::OwnedFd,
    pipe_copy: std::fs::File,
}

/// What a driver does after set-up (virtio-blkd's profile): epoll over
/// an eventfd, memory, pipe I/O, logging, sleeping, hashing. Any forbidden
/// syscall here kills the child and the parent sees the missing marker.
fn allowed_work(setup: &SetUp) {
    let pipe = &setup.pipe;
    let mut el = EventLoop::new().expect("epoll_create1");
    let ev = &setup.irq;
    el.add(ev.as_fd(), 42).expect("epoll_ctl");
    rustix::io::write(ev, &1u64.to_ne_bytes()).expect("eventfd write");
    assert_eq!(
        el.wait(Some(Duration::from_secs(5))).expect("epoll_wait"),
        vec![42]
    );

    let mut region = MmioRegion::anonymous(3 * 4096).expect("mmap");
    region.write32(8192, 0x5a5a_5a5a);
    assert_eq!(region.read32(8192), 0x5a5a_5a5a);
    drop(region); // munmap

    // A large allocation goes through mmap, small ones through brk.
    let big = vec![7u8; 8 << 20];
    let small: Vec<String> = (0..100).map(|i| i.to_string()).collect();
    assert_eq!(big[(8 << 20) - 1], 7);
    assert_eq!(small.len(), 100);

    rustix::io::write(&pipe.1, b"through the pipe").expect("pipe write");
    let mut buf = [0u8; 16];
    rustix::io::read(&pipe.0, &mut buf).expect("pipe read");
    assert_eq!(&buf, b"through the pipe");

    eprintln!("stderr still works");
    std::thread::sleep(Duration::from_millis(5));
    let mut m = std::collections::HashMap::new();
    m.insert("k", 1);
    assert_eq!(m["k"], 1);
    let _ = std::time::Instant::now();
    let _ = std::process::id();
}

/// The child half: enters the sandbox and does what `mode` names.
fn sandboxed_child(mode: &str) {
    let pipe = rustix::pipe::pipe().expect("pipe");
    let setup = SetUp {
        pipe_copy: std::fs::File::from(pipe.0.try_clone().expect("dup")),
        irq: new_eventfd().expect("eventfd2"),
        pipe,
    };

    common::sandbox::enter_sandbox(&common::sandbox::VIRTIO_BLKD).expect("enter_sandbox");
    say("ENTERED");

    allowed_work(&setup);
    say("ALLOWED-OK");

    match std::fs::File::open("/proc/self/status") {
        Ok(_) => say("OPENAT-SUCCEEDED"),
        Err(e) if e.raw_os_error() == Some(EACCES) => say("OPENAT-EACCES"),
        Err(e) => say(&format!("OPENAT-OTHER {e}")),
    }

    // Metadata of a held fd is fine (std uses newfstatat/statx with
    // AT_EMPTY_PATH); of a path it is not.
    match (setup.pipe_copy.metadata(), std::fs::metadata("/")) {
        (Ok(_), Err(e)) if e.raw_os_error() == Some(EACCES) => say("STAT-FD-OK-PATH-EACCES"),
        (f, p) => say(&format!("STAT-WRONG {f:?} {p:?}")),
    }

    match mode {
        "clean" => {}
        "execve" => {
            say("EXECVE-NEXT");
            use std::os::unix::process::CommandExt;
            let e = Command::new("/bin/true").exec();
            say(&format!("EXECVE-RETURNED {e}"));
        }
        "socket" => {
            say("SOCKET-NEXT");
            let r = std::net::UdpSocket::bind("127.0.0.1:0");
            say(&format!("SOCKET-RETURNED {}", r.is_ok()));
        }
        "mmap-exec" => {
            say("MMAP-EXEC-NEXT");
            // SAFETY: a fresh anonymous mapping; never used.
            let r = unsafe {
                rustix::mm::mmap_anonymous(
                    std::ptr::null_mut(),
                    4096,
                    rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::EXEC,
                    rustix::mm::MapFlags::PRIVATE,
                )
            };
            say(&format!("MMAP-EXEC-RETURNED {}", r.is_ok()));
        }
        "abort" => {
            say("ABORT-NEXT");
            std::process::abort();
        }
        "panic" => {
            say("PANIC-NEXT");
            panic!("deliberate panic inside the sandbox");
        }
        other => say(&format!("UNKNOWN-MODE {other}")),
    }
}

/// In the parent: re-runs test `test` alone in a child with `mode` set and
/// returns its output. In that child (the variable is set): runs the
/// sandboxed half and returns `None`, so the test ends there and its exit
/// status is what the parent checks.
fn run_child(test: &str, mode: &str) -> Option<Output> {
    if let Ok(mode) = std::env::var(MODE_ENV) {
        sandboxed_child(&mode);
        return None;
    }
    let exe = std::env::current_exe().expect("current_exe");
    let o = Command::new(exe)
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(MODE_ENV, mode)
        .output()
        .expect("run the child");
    // The filter must have matched exactly this test, or nothing ran.
    assert!(
        !stdout(&o).contains("running 0 tests"),
        "no test named {test}: {}",
        stdout(&o)
    );
    Some(o)
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn assert_common_part(o: &Output) {
    let out = stdout(o);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(out.contains("ENTERED"), "stdout: {out}\nstderr: {err}");
    assert!(
        out.contains("ALLOWED-OK"),
        "allowed work was killed: {out}\nstderr: {err}"
    );
    assert!(
        out.contains("OPENAT-EACCES"),
        "openat not EACCES: {out}\nstderr: {err}"
    );
    assert!(
        out.contains("STAT-FD-OK-PATH-EACCES"),
        "stat: {out}\nstderr: {err}"
    );
}

#[test]
fn sandbox_allows_driver_work_and_a_clean_exit() {
    let Some(o) = run_child("sandbox_allows_driver_work_and_a_clean_exit", "clean") else {
        return;
    };
    assert_common_part(&o);
    assert!(
        o.status.success(),
        "status {:?}, stdout {}, stderr {}",
        o.status,
        stdout(&o),
        String::from_utf8_lossy(&o.stderr)
    );
}

fn assert_killed_after(test: &str, mode: &str, marker: &str) {
    let Some(o) = run_child(test, mode) else {
        return;
    };
    assert_common_part(&o);
    let out = stdout(&o);
    assert!(out.contains(marker), "{out}");
    assert!(!out.contains("RETURNED"), "forbidden call returned: {out}");
    assert_eq!(
        o.status.signal(),
        Some(SIGSYS),
        "status {:?}: {out}",
        o.status
    );
}

#[test]
fn sandbox_kills_execve() {
    assert_killed_after("sandbox_kills_execve", "execve", "EXECVE-NEXT");
}

#[test]
fn sandbox_kills_socket() {
    assert_killed_after("sandbox_kills_socket", "socket", "SOCKET-NEXT");
}

#[test]
fn sandbox_kills_executable_mappings() {
    assert_killed_after(
        "sandbox_kills_executable_mappings",
        "mmap-exec",
        "MMAP-EXEC-NEXT",
    );
}

#[test]
fn sandbox_lets_abort_and_panic_report_normally() {
    // abort() raises SIGABRT through rt_sigprocmask/gettid/tgkill: the
    // process must die of SIGABRT, not of the filter.
    const TEST: &str = "sandbox_lets_abort_and_panic_report_normally";
    let Some(o) = run_child(TEST, "abort") else {
        return;
    };
    assert_common_part(&o);
    assert!(stdout(&o).contains("ABORT-NEXT"));
    assert_eq!(o.status.signal(), Some(6), "status {:?}", o.status);

    // A panic unwinds, prints its message and the harness exits 101.
    let Some(o) = run_child(TEST, "panic") else {
        return;
    };
    assert_common_part(&o);
    let all = format!("{}{}", stdout(&o), String::from_utf8_lossy(&o.stderr));
    assert!(all.contains("deliberate panic inside the sandbox"), "{all}");
    assert_eq!(o.status.code(), Some(101), "status {:?}: {all}", o.status);
}
