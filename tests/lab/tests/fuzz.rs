//! The scheme fuzzer, briefly (`lab::fuzz`; `make fuzz` is the long
//! campaign): root and ordinary-user workers making random calls on every
//! scheme at once, from a fixed seed. It must end with no call unanswered
//! within the bound, no fuzzer process crashed, every daemon alive with
//! the same pid and no restart, every scheme answering, no file leaked by
//! a daemon, the check disk's md5 unchanged and the ordinary user refused
//! everything it has no right to.
//!
//!
//! And the checks are live: with fifod stopped (`SIGSTOP`) two seconds
//! into the workers' run, the fuzzer reports calls on `/scheme/fifo` answered too
//! late, and the campaign reports fifod hung and restarted by init.
//!
//! `cargo test --release -p lab --test fuzz -- --include-ignored --nocapture`

use std::time::Duration;

use lab::fuzz::{run, Campaign};

#[test]
#[ignore = "boots QEMU: run through `make test`"]
fn hostile_clients_change_nothing_they_have_no_right_to() -> lab::Result<()> {
    let report = run(&Campaign {
        name: "fuzz-short".to_owned(),
        seed: 42,
        rounds: 1,
        procs: 8,
        ops: 16000,
        round_bound: Duration::from_secs(300),
        call_bound: Duration::from_secs(10),
        sabotage: None,
    })?;
    report.print();
    assert_eq!(report.hangs, 0, "hangs: {:?}", report.incidents);
    assert_eq!(report.crashes, 0, "crashes: {:?}", report.incidents);
    assert_eq!(report.wrong, 0, "wrong answers: {:?}", report.incidents);
    assert!(report.incidents.is_empty(), "{:?}", report.incidents);
    assert!(
        report.service_changes.is_empty(),
        "{:?}",
        report.service_changes
    );
    assert!(report.unanswered.is_empty(), "{:?}", report.unanswered);
    assert!(report.fd_leaks.is_empty(), "{:?}", report.fd_leaks);
    assert!(report.disk_changed.is_empty(), "the check disk changed");
    assert!(report.user_allowed.is_empty(), "{:?}", report.user_allowed);
    assert_eq!(report.seeds.len(), 8, "{:?}", report.seeds);
    assert!(
        report.requests >= 60_000,
        "only {} requests",
        report.requests
    );
    assert!(report.checked > 0, "no read was checked");
    for scheme in [
        "null", "zero", "rand", "fifo", "disk", "network", "pci", "acpi", "time", "init",
    ] {
        let (requests, _) = report.schemes.get(scheme).copied().unwrap_or_default();
        assert!(requests > 0, "no request reached {scheme}");
    }
    let refused = report.errnos.get("EACCES").copied().unwrap_or(0);
    assert!(refused > 0, "the ordinary user was never refused");
    Ok(())
}

#[test]
#[ignore = "boots QEMU: run through `make test`"]
fn a_daemon_that_stops_answering_is_caught() -> lab::Result<()> {
    let report = run(&Campaign {
        name: "fuzz-stopped".to_owned(),
        seed: 7,
        rounds: 1,
        procs: 4,
        ops: 2000,
        round_bound: Duration::from_secs(300),
        call_bound: Duration::from_secs(1),
        // Two seconds after the workers are running (the parent and its
        // four), so the stop lands on their calls, not on the discovery of
        // paths before them.
        sabotage: Some(
            "(for i in $(seq 600); do [ $(pidof scheme-fuzz | wc -w) -ge 5 ] && break; sleep 0.05; done; \
              sleep 2; kill -STOP $(pidof fifod)) &"
                .to_owned(),
        ),
    })?;
    report.print();
    assert!(!report.clean(), "a stopped fifod went unnoticed");
    assert!(report.hangs > 0, "no late call reported");
    assert!(
        report.incidents.iter().any(|l| l.contains("/scheme/fifo")),
        "no late call on /scheme/fifo: {:?}",
        report.incidents
    );
    assert!(
        report
            .service_changes
            .iter()
            .any(|l| l.contains("fifo") && l.contains("hung")),
        "fifod's hang not reported: {:?}",
        report.service_changes
    );
    // Its successor serves: every scheme answers afterwards.
    assert!(report.unanswered.is_empty(), "{:?}", report.unanswered);
    Ok(())
}
