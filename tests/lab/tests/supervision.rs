//! init as supervisor: services that fail to start, never become ready or
//! crash later are reported; one that crashes later is restarted, its
//! scheme answered again by the new instance; init stays up.

use std::time::Duration;

use lab::{Config, Vm};

#[test]
#[ignore = "boots QEMU: run through `make test`"]
fn failures_are_reported_and_init_stays_up() -> lab::Result<()> {
    let cfg = Config::new("supervision")
        // Exits during start-up.
        .file(
            "/etc/init.d/crasher.toml",
            b"command = \"/bin/sh\"\nargs = [\"-c\", \"echo about to fail; exit 3\"]\ntype = \"notify\"\n",
            0o644,
        )
        // Requires the one that fails: never started.
        .file(
            "/etc/init.d/dependent.toml",
            b"command = \"/bin/true\"\ntype = \"oneshot\"\nrequires = [\"crasher\"]\n",
            0o644,
        )
        // Runs but never says it is ready.
        .file(
            "/etc/init.d/silent.toml",
            b"command = \"/bin/sleep\"\nargs = [\"1000\"]\ntype = \"notify\"\nready_timeout = 3\n",
            0o644,
        )
        // Not a valid unit at all.
        .file("/etc/init.d/broken.toml", b"command = \n", 0o644)
        // Asks init for a driver instance it has no right to start: one
        // packet on the control socket (fd 3), the reply read back whole.
        .file(
            "/etc/init.d/rogue.toml",
            b"command = \"/bin/sh\"\nargs = [\"-c\", \"echo spawn virtio-blkd pci-0000-00-09.0 >&3; dd bs=300 count=1 <&3 > /run/rogue.reply 2>/dev/null\"]\ntype = \"oneshot\"\n",
            0o644,
        );
    let mut vm = Vm::boot(cfg)?;
    let console = vm.console();
    let expect = |needle: &str| {
        assert!(
            console.contains(needle),
            "console lacks {needle:?}:\n{console}"
        );
    };
    expect("[crasher] about to fail");
    expect("service crasher failed: exited during start-up: exit status 3");
    expect("service dependent failed: not started: crasher is not running");
    expect("service silent: not ready after 3 s; stopping it");
    expect("service silent failed: exited during start-up: not ready after 3 s");
    expect("bad unit /etc/init.d/broken.toml");
    let banner = console
        .lines()
        .find(|l| l.contains(lab::READY_BANNER))
        .unwrap_or_default();
    for name in ["crasher", "dependent", "silent"] {
        assert!(
            banner.contains(name),
            "banner does not list {name} as failed: {banner}"
        );
    }
    // Only pcid may start drivers: the request is refused, nothing started.
    let reply = vm.ok("cat /run/rogue.reply")?;
    assert!(
        reply.starts_with("err 13 rogue may not start instances of virtio-blkd"),
        "{reply}"
    );
    expect("rogue: cannot start virtio-blkd@pci-0000-00-09.0");
    assert!(!console.contains("started virtio-blkd@pci-0000-00-09.0"));

    // The healthy services came up regardless.
    vm.ok("test -f /scheme/null && test -d /scheme/fifo")?;

    // A scheme daemon that crashes later: reported and restarted (its unit
    // says on-failure); its scheme stays mounted and the new instance takes
    // it over. init and the other schemes are unaffected.
    let mark = vm.console().len();
    // SIGABRT is how a Rust daemon that aborts dies (a kill(1)ed SIGSEGV
    // would only reset std's stack-overflow handler).
    vm.ok("kill -ABRT $(pidof fifod)")?;
    vm.wait_console_after(
        mark,
        "service fifo exited: killed by signal 6 (SIGABRT); restarting it",
        Duration::from_secs(30),
    )?;
    vm.wait_console_after(
        mark,
        "init: scheme fifo taken over by fifo",
        Duration::from_secs(30),
    )?;
    let schemes = vm.ok("ls /scheme")?;
    assert!(
        schemes.split_whitespace().any(|s| s == "fifo"),
        "fifo not listed: {schemes}"
    );
    assert_eq!(
        vm.ok("probe write /scheme/fifo/x hi && probe read /scheme/fifo/x 2")?
            .trim(),
        "ok 2\nok 2 6869"
    );
    assert_eq!(vm.ok("cat /proc/1/comm")?.trim(), "init");
    assert_eq!(
        vm.ok("dd if=/scheme/zero bs=512 count=2 2>/dev/null | wc -c")?
            .trim(),
        "1024"
    );
    let log = vm.ok("cat /var/log/init.log")?;
    assert!(
        log.contains("service fifo exited: killed by signal 6"),
        "{log}"
    );

    // And the machine still shuts down cleanly.
    let status = vm.poweroff(Duration::from_secs(60))?;
    assert!(
        status.success(),
        "QEMU exit status after poweroff: {status}"
    );
    Ok(())
}
