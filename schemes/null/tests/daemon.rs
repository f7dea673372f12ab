//! The real `nulld` binary, started the way init starts it: a control
//! socket in INIT_CONTROL_FD, registration answered with a mounted
//! /dev/fuse fd, then served until the mount goes away (needs root).

use std::io::Read;
use std::os::fd::{AsFd, AsRawFd};
use std::process::Command;
use std::time::Duration;

use daemon::proto::{Reply, Request};
use daemon::{recv_with_fd, send_with_fd, RootKind as InitRootKind, CONTROL_FD_ENV};
use rustix::net::{socketpair, AddressFamily, SocketFlags, SocketType};
use scheme::testing::wait_until;
use scheme::{mount_fuse, unmount, RootKind};

#[test]
fn registers_serves_and_exits_on_unmount() {
    let (ours, theirs) = socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )
    .expect("socketpair");
    // The daemon's end must survive exec.
    rustix::io::fcntl_setfd(&theirs, rustix::io::FdFlags::empty()).expect("clear cloexec");
    let mut child = Command::new(env!("CARGO_BIN_EXE_nulld"))
        .env(CONTROL_FD_ENV, theirs.as_raw_fd().to_string())
        .spawn()
        .expect("spawn nulld");
    drop(theirs);

    let (msg, _) = recv_with_fd(ours.as_fd()).expect("register request");
    assert_eq!(
        Request::decode(&msg),
        Ok(Request::Register("null".into(), InitRootKind::File))
    );
    let base = std::env::temp_dir().join(format!("nulld-daemon-test-{}", std::process::id()));
    std::fs::create_dir_all(&base).expect("mkdir");
    let target = base.join("null");
    drop(std::fs::File::create(&target).expect("mount point"));
    let fuse = mount_fuse(&target, RootKind::File, 0, 0).expect("mount");
    send_with_fd(ours.as_fd(), &Reply::Ok.encode(), Some(fuse.as_fd())).expect("send fd");
    // Only the daemon holds the connection now.
    drop(fuse);
    let (msg, _) = recv_with_fd(ours.as_fd()).expect("ready");
    assert_eq!(Request::decode(&msg), Ok(Request::Ready));

    let mut buf = Vec::new();
    let n = std::fs::File::open(&target)
        .expect("open")
        .read_to_end(&mut buf)
        .expect("read");
    assert_eq!(n, 0);
    std::fs::write(&target, b"gone").expect("write");

    unmount(&target).expect("unmount");
    let mut status = None;
    let exited = wait_until(Duration::from_secs(10), || {
        status = child.try_wait().expect("wait");
        status.is_some()
    });
    if !exited {
        let _ = child.kill();
        let _ = child.wait();
    }
    let _ = std::fs::remove_dir_all(&base);
    assert!(exited, "nulld did not exit after unmount");
    assert!(
        status.expect("status").success(),
        "nulld failed: {status:?}"
    );
}
