//! The service table against fake units and processes: ordering,
//! readiness, templates and their grants, exits and shutdown order.

use std::os::fd::AsFd;
use std::process::Command;

use rustix::event::{PollFd, PollFlags};
use rustix::net::{socketpair, AddressFamily, SocketFlags, SocketType};

use super::*;

fn unit(name: &str, text: &str) -> Unit {
    Unit::parse(name, text).unwrap()
}

fn services(units: Vec<Unit>) -> Services {
    let epoll = epoll::create(epoll::CreateFlags::CLOEXEC).unwrap();
    Services::new(units, epoll, &std::env::temp_dir())
}

fn table() -> Services {
    let mut s = services(vec![
        unit("pcid", "command = \"/bin/pcid\"\ntype = \"notify\"\n"),
        unit("acpid", "command = \"/bin/acpid\"\ntype = \"notify\"\n"),
        unit(
            "rtcd",
            "command = \"/nonexistent/rtcd\"\ntype = \"notify\"\ntemplate = true\n\
             spawned_by = [\"acpid\"]\ngrantable_ioports = [\"0x70-0x77\"]\n",
        ),
    ]);
    // As if started: nothing else may be spawned by the tests.
    for svc in &mut s.list {
        svc.state = State::Ready;
    }
    s
}

/// A control channel as init makes one: (init's end, the daemon's end),
/// both non-blocking.
fn control_pair() -> (OwnedFd, OwnedFd) {
    socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )
    .unwrap()
}

/// A port grant is asked for over the real control channel, as a
/// daemon does; init refuses a requester not in `spawned_by` exactly
/// as it refuses a plain `spawn`, and starts nothing.
#[test]
fn a_port_grant_from_a_stranger_is_refused() {
    let mut s = table();
    let (init_end, daemon_end) = control_pair();
    rustix::io::ioctl_fionbio(&daemon_end, false).unwrap();
    s.list[0].control = Some(init_end); // pcid asks for rtcd
    let asker = std::thread::spawn(move || {
        let d = daemon::Daemon::from_fd(daemon_end);
        d.spawn_with_ioports("rtcd", "acpi-PNP0B00-0", &[], &[], &[0x70..=0x71])
    });
    let readable = {
        let fd = s.list[0].control.as_ref().unwrap();
        let mut fds = [PollFd::new(fd, PollFlags::IN)];
        rustix::event::poll(
            &mut fds,
            Some(&rustix::event::Timespec {
                tv_sec: 10,
                tv_nsec: 0,
            }),
        )
        .unwrap()
    };
    assert_eq!(readable, 1, "no request arrived");
    s.on_control(0);
    let e = asker.join().unwrap().unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::PermissionDenied, "{e}");
    assert!(
        e.to_string()
            .contains("pcid may not start instances of rtcd"),
        "{e}"
    );
    assert_eq!(s.list.len(), 2, "nothing may be added to the table");
    // The plain spawn is refused the same way (same check).
    let plain = s.spawn_instance(0, "rtcd", "acpi-PNP0B00-0", &[], Vec::new(), &[]);
    assert_eq!(plain.unwrap_err().0, libc_errno(rustix::io::Errno::ACCESS));
}

#[test]
fn the_grant_reaches_the_instance_of_an_allowed_requester() {
    let mut s = table();
    // acpid may ask; the command does not exist, so the start itself
    // fails, after the grant was attached to the instance.
    let r = s.spawn_instance(1, "rtcd", "acpi-PNP0B00-0", &[], Vec::new(), &[0x70..=0x71]);
    assert_ne!(r.unwrap_err().0, libc_errno(rustix::io::Errno::ACCESS));
    let inst = s
        .list
        .iter()
        .find(|x| x.unit.name == "rtcd@acpi-PNP0B00-0")
        .expect("the instance is in the table");
    assert_eq!(inst.unit.ioport_ranges, [0x70..=0x71]);
    assert!(matches!(inst.state, State::Failed(_)));
}

/// An allowed requester still cannot grant more than the template's
/// `grantable_ioports`: acpid holds no RTC ports and may not hand out
/// the PCI configuration ports or the whole space.
#[test]
fn a_grant_beyond_grantable_ioports_is_refused() {
    let mut s = table();
    for wide in [
        vec![0x70..=0x78],
        vec![0..=0xffff],
        vec![0x70..=0x71, 0xcf8..=0xcff],
    ] {
        let r = s.spawn_instance(1, "rtcd", "acpi-PNP0B00-0", &[], Vec::new(), &wide);
        let (errno, msg) = r.unwrap_err();
        assert_eq!(errno, libc_errno(rustix::io::Errno::ACCESS), "{msg}");
        assert!(msg.contains("may not grant ports"), "{msg}");
    }
    assert_eq!(s.list.len(), 2, "nothing may be added to the table");
}

#[test]
fn services_stop_in_reverse_start_order() {
    let mut s = table();
    // Table order is not start order: an instance replaced in place, or
    // a unit that waited for a slower dependency, starts later than
    // units after it in the table.
    for (i, started) in [(0, 2), (1, 3)] {
        s.list[i].pid = Some(Pid::from_raw(1000 + i as i32).unwrap());
        s.list[i].started = started;
    }
    s.list
        .push(Service::new(s.templates["rtcd"].instantiate("x", &[], &[])));
    s.list[2].pid = Some(Pid::from_raw(1002).unwrap());
    s.list[2].started = 1;
    s.list.push(Service::new(unit(
        "idle",
        "command = \"/x\"\ntype = \"simple\"\n",
    )));
    assert_eq!(
        s.stop_order(),
        [1, 0, 2],
        "not-running services are skipped"
    );
}

#[test]
fn stop_all_keeps_the_power_service_and_what_it_requires() {
    let mut s = table();
    s.list[1].unit.requires = vec!["pcid".into()];
    s.owners.insert("acpi".into(), 1);
    s.list
        .push(Service::new(s.templates["rtcd"].instantiate("x", &[], &[])));
    let mut children = Vec::new();
    for (i, started) in [(0, 1), (1, 2), (2, 3)] {
        let child = Command::new("sleep").arg("30").spawn().unwrap();
        s.list[i].pid = Some(Pid::from_child(&child));
        s.list[i].started = started;
        s.list[i].state = State::Ready;
        children.push(child);
    }
    let keep = s.power_services("acpi");
    assert_eq!(keep.len(), 2, "acpid and pcid");
    s.stop_all(Duration::from_secs(5), &keep);
    assert_eq!(s.list[2].pid, None, "rtcd was stopped and reaped");
    assert_eq!(s.list[2].state, State::Exited);
    for (i, name) in [(0, "pcid"), (1, "acpid")] {
        assert!(s.list[i].pid.is_some(), "{name} was kept");
        let mut kept = children.remove(0);
        assert!(
            kept.try_wait().unwrap().is_none(),
            "{name} is still running"
        );
        kept.kill().unwrap();
        kept.wait().unwrap();
    }
    assert!(s.power_services("nothing").is_empty());
}

/// A daemon flooding its control channel with garbage, cut packets and
/// requests it may not make: init reads at most `PACKETS_PER_WAKE` per
/// wake-up (the rest wait for the next), refuses each, keeps the channel,
/// starts and stops nothing, and answers a good request after the flood.
#[test]
fn a_flood_of_bad_requests_is_read_in_shares_and_refused() {
    let mut s = table();
    let (init_end, daemon_end) = control_pair();
    s.list[1].control = Some(init_end); // acpid misbehaves
    let bad: [&[u8]; 6] = [
        b"\xff\xfe garbage",
        b"spawn",
        b"gone pcid x",
        b"spawn rtcd",
        b"register",
        b"pong -1",
    ];
    let mut long = b"spawn rtcd acpi-PNP0B00-0 ".to_vec();
    long.resize(daemon::proto::MAX_MESSAGE * 2, b'a');
    let total = 3 * control::PACKETS_PER_WAKE;
    for n in 0..total {
        let msg: &[u8] = if n % 7 == 6 { &long } else { bad[n % 6] };
        daemon::send_with_fds(daemon_end.as_fd(), msg, &[]).unwrap();
    }
    daemon::send_with_fds(daemon_end.as_fd(), b"ready", &[]).unwrap();
    let queued = |fd: &OwnedFd| {
        let mut fds = [PollFd::new(fd, PollFlags::IN)];
        rustix::event::poll(&mut fds, Some(&rustix::event::Timespec::default())).unwrap() == 1
    };
    s.list[1].state = State::Starting(std::time::Instant::now());
    let mut wakes = 0;
    while queued(s.list[1].control.as_ref().unwrap()) {
        s.on_control(1);
        wakes += 1;
        assert!(wakes <= 10, "the flood was not drained");
    }
    // 3 × 64 bad packets and `ready`: four shares.
    assert_eq!(wakes, 4);
    assert!(s.list[1].control.is_some(), "the channel was dropped");
    assert_eq!(s.list[1].state, State::Ready, "the good request was lost");
    assert_eq!(s.list.len(), 2, "nothing may be added to the table");
    assert!(s.list.iter().all(|x| x.pid.is_none()), "nothing started");
}
