//! Command-line behaviour of `initfs-build`: argument errors must be loud
//! and name what is wrong (the Makefile relies on a non-zero exit).

use std::process::Command;

fn run(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_initfs-build"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn no_arguments_prints_usage_and_fails() {
    let (ok, _, err) = run(&[]);
    assert!(!ok);
    assert!(err.contains("usage:"), "{err}");
}

#[test]
fn help_succeeds() {
    let (ok, out, _) = run(&["--help"]);
    assert!(ok);
    assert!(out.contains("initfs-build image"), "{out}");
}

#[test]
fn unknown_flag_is_rejected() {
    let (ok, _, err) = run(&["kernel", "--cache", "/tmp/x", "--bogus", "1"]);
    assert!(!ok);
    assert!(err.contains("--bogus"), "{err}");
}

#[test]
fn image_needs_exactly_one_kernel_source() {
    let (ok, _, err) = run(&["image", "--manifest", "m", "--bins", "b", "--out", "o"]);
    assert!(!ok);
    assert!(err.contains("--kernel-cache"), "{err}");
}

#[test]
fn image_reports_missing_required_flag() {
    let (ok, _, err) = run(&["image", "--bins", "b", "--out", "o", "--kernel-dir", "k"]);
    assert!(!ok);
    assert!(err.contains("--manifest is required"), "{err}");
}

#[test]
fn bad_kernel_dir_is_named() {
    let (ok, _, err) = run(&[
        "image",
        "--manifest",
        "m",
        "--bins",
        "b",
        "--out",
        "o",
        "--kernel-dir",
        "/nonexistent/kernel",
    ]);
    assert!(!ok);
    assert!(err.contains("/nonexistent/kernel"), "{err}");
}
