//! `.cargo/config.toml` sets `RUSTC_BOOTSTRAP = "acpi"` so the `acpi`
//! crate (which needs the unstable `allocator_api`) builds on our stable
//! toolchain. rustc reads a crate *name* there: only the crate called
//! `acpi` may use unstable features; every other crate stays on stable.
//! This checks both halves with the rustc that built us.

use std::process::Command;

fn rustc_with_feature(crate_name: &str) -> std::process::Output {
    let dir = std::env::temp_dir().join(format!(
        "acpid-bootstrap-{}-{crate_name}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("lib.rs");
    std::fs::write(&src, "#![feature(allocator_api)]\npub fn f() {}\n").unwrap();
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let out = Command::new(rustc)
        .args([
            "--edition",
            "2021",
            "--crate-type",
            "lib",
            "--crate-name",
            crate_name,
        ])
        .arg("--out-dir")
        .arg(&dir)
        .arg(&src)
        .env("RUSTC_BOOTSTRAP", "acpi")
        .output()
        .expect("rustc runs");
    let _ = std::fs::remove_dir_all(&dir);
    out
}

#[test]
fn the_workspace_scopes_rustc_bootstrap_to_the_acpi_crate() {
    // Cargo's [env] reaches the processes it runs, tests included.
    assert_eq!(std::env::var("RUSTC_BOOTSTRAP").as_deref(), Ok("acpi"));
    let acpi = rustc_with_feature("acpi");
    assert!(
        acpi.status.success(),
        "{}",
        String::from_utf8_lossy(&acpi.stderr)
    );
    let other = rustc_with_feature("not_acpi");
    assert!(
        !other.status.success(),
        "a feature gate leaked to another crate"
    );
    assert!(
        String::from_utf8_lossy(&other.stderr)
            .contains("may not be used on the stable release channel"),
        "{}",
        String::from_utf8_lossy(&other.stderr)
    );
}
