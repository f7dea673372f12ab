//! The AML thread: AML that never finishes (a firmware loop, or bytes the
//! interpreter's parser loops on) costs one bounded wait, never acpid's
//! scheme; a corrupt DSDT never escapes as a panic.
//!
//! Abandoned threads keep spinning (at nice 19) until this test binary
//! exits, which is why these tests live in their own binary.

mod support;

use std::time::{Duration, Instant};

use acpid::aml::{name, AmlWorker, EvalError, MAX_ABANDONED};
use acpid::devices;
use acpid::tables::Tables;
use support::{fixture, method, with_ssdt, Recorder};

const SHORT: Duration = Duration::from_millis(800);

fn grant() -> Vec<std::ops::RangeInclusive<u16>> {
    vec![0x600..=0x67f, 0xcf9..=0xcf9]
}

/// `While (One) {}`
const FOREVER: [u8; 3] = [0xa2, 0x02, 0x01];

#[test]
fn a_looping_method_is_abandoned_and_a_fresh_interpreter_answers_next() {
    let mut body = Vec::new();
    body.extend(method(b"ZOK2", &[0x0a, 0x2a])); // Return (42)
                                                 // Method (ZLOP) { While (One) {} } (no Return: the loop never ends).
    let mut lop = vec![0x14, 0];
    lop.extend_from_slice(b"ZLOP");
    lop.push(0);
    lop.extend_from_slice(&FOREVER);
    lop[1] = (lop.len() - 1) as u8;
    body.extend(lop);
    let tables = with_ssdt(&body);
    let mut w = AmlWorker::start(
        Recorder::new(grant()),
        &tables,
        Duration::from_secs(20),
        SHORT,
    );
    assert!(w.disabled().is_none());
    assert!(w.report.errors.is_empty(), "{:?}", w.report.errors);

    let ok = || name("\\ZOK2");
    let lop = || name("\\ZLOP");
    for round in 1..MAX_ABANDONED {
        let v = w.call(move |aml| aml.evaluate(&ok(), vec![]).map(|v| v.as_integer().ok()));
        assert!(matches!(v, Ok(Ok(Some(42)))), "round {round}: {v:?}");
        let started = Instant::now();
        let r = w.call(move |aml| aml.evaluate(&lop(), vec![]).is_ok());
        assert!(matches!(r, Err(EvalError::Hung)), "{r:?}");
        assert!(started.elapsed() < SHORT + Duration::from_secs(5));
        assert_eq!(w.abandoned(), round);
        assert!(w.disabled().is_none());
    }
    // A fresh interpreter answers after each abandoned one...
    let v = w.call(move |aml| aml.evaluate(&ok(), vec![]).map(|v| v.as_integer().ok()));
    assert!(matches!(v, Ok(Ok(Some(42)))), "{v:?}");
    // ...until too many threads are stuck: then AML is switched off.
    let r = w.call(move |aml| aml.evaluate(&lop(), vec![]).is_ok());
    assert!(matches!(r, Err(EvalError::Hung)), "{r:?}");
    assert!(w.disabled().is_some());
    let r = w.call(move |aml| aml.evaluate(&ok(), vec![]).is_ok());
    assert!(matches!(r, Err(EvalError::Unavailable(_))), "{r:?}");
}

#[test]
fn a_table_that_loops_while_loading_switches_aml_off_in_bounded_time() {
    let tables = with_ssdt(&FOREVER);
    let started = Instant::now();
    let mut w = AmlWorker::start(Recorder::new(grant()), &tables, SHORT, SHORT);
    assert!(started.elapsed() < SHORT + Duration::from_secs(5));
    let why = w.disabled().expect("AML switched off").to_owned();
    assert!(why.contains("loading the AML did not finish"), "{why}");
    let r = w.call(devices::walk);
    assert!(matches!(r, Err(EvalError::Unavailable(_))), "{r:?}");
}

/// Random corruption of the DSDT's AML (checksum fixed so it is loaded):
/// loads and walks end in errors, odd devices or a bounded hang, never in a
/// panic that escapes.
#[test]
fn corrupted_aml_never_escapes_as_a_panic() {
    let good = fixture("DSDT");
    let mut x = 0x1234_5678_u64;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let (mut runs, mut failed, mut hung) = (0, 0, 0);
    // Each hang leaves a spinning thread behind: stop after a few.
    while runs < 80 && hung < 3 {
        runs += 1;
        let mut bad = good.clone();
        for _ in 0..1 + next() % 4 {
            let at = 36 + (next() as usize) % (bad.len() - 36);
            bad[at] = next() as u8;
        }
        bad[9] = 0;
        let sum = bad.iter().fold(0u8, |s, b| s.wrapping_add(*b));
        bad[9] = 0u8.wrapping_sub(sum);
        let tables =
            Tables::from_files(vec![("FACP".into(), fixture("FACP")), ("DSDT".into(), bad)]);
        let mut w = AmlWorker::start(Recorder::new(grant()), &tables, SHORT, SHORT);
        if w.disabled().is_some() {
            hung += 1;
            continue;
        }
        if !w.report.errors.is_empty() {
            failed += 1;
        }
        match w.call(devices::walk) {
            Ok(_) => {}
            Err(EvalError::Hung) => hung += 1,
            Err(e) => panic!("unexpected {e}"),
        }
    }
    eprintln!("{runs} corrupted DSDTs: {failed} with load errors, {hung} hung");
    assert!(runs >= 10);
}

/// A panic in acpid's own code on the AML thread is reported as such, is
/// not counted as a hang, and a fresh interpreter answers the next call.
#[test]
fn a_panicking_request_is_not_a_hang_and_the_next_call_works() {
    let tables = with_ssdt(&method(b"ZOK3", &[0x0a, 0x2a])); // Return (42)
    let mut w = AmlWorker::start(
        Recorder::new(grant()),
        &tables,
        Duration::from_secs(20),
        Duration::from_secs(20),
    );
    assert!(w.disabled().is_none());
    let r: Result<(), EvalError> = w.call(|_aml| panic!("a bug in a request"));
    assert!(matches!(r, Err(EvalError::Panicked(_))), "{r:?}");
    assert_eq!(w.abandoned(), 0, "a panic is not a hung thread");
    let ok = || name("\\ZOK3");
    let v = w.call(move |aml| aml.evaluate(&ok(), vec![]).map(|v| v.as_integer().ok()));
    assert!(matches!(v, Ok(Ok(Some(42)))), "{v:?}");
}
