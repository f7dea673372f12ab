//! pcid in the guest, on the fixtures' machine: real sysfs, real vfio-pci
//! binding and VFIO containers, real init spawning. The driver is a
//! stand-in (a shell script, as a template unit) that records what it was
//! given and waits, so this tests pcid and not any one driver:
//!
//! - a bad rule file is reported with its line and the others still apply;
//! - matched functions are bound to vfio-pci and their "driver" starts as
//!   `UNIT@pci-…`, unprivileged, with the container, device and channel at
//!   fds 4, 5, 6 and the rule's extra arguments; `pcid.ignore` is honoured;
//! - `/scheme/pci`: listing, `config` equal to sysfs, `summary` with owner
//!   and kernel driver, `channel` busy while a driver owns the function,
//!   refused to non-root, answering JSON for root;
//! - when the driver dies, pcid sees its channel hang up and releases the
//!   function.

use std::time::Duration;

use lab::Vm;

mod support;
use support::{lab_machine, ScratchDisk};

const DRIVER_UNIT: &str = r#"
description = "pcid lab test: stands in for a driver"
command = "/bin/sh"
args = ["/bin/pcid-test-driver", "{instance}"]
type = "simple"
template = true
spawned_by = ["pcid"]
user = "user"
# Not restarted: the test kills it to see pcid release the function.
restart = "never"
"#;

/// Records its arguments, passed fds and uid, then waits to be killed
/// (`exec` keeps the pid and the fds).
const DRIVER_SCRIPT: &str = r#"
out=/tmp/pcid-test-driver.$1
{
  echo "args: $*"
  echo "passed: $INIT_PASSED_FDS"
  for n in 4 5 6; do echo "fd $n: $(readlink /proc/$$/fd/$n)"; done
  echo "uid: $(id -u)"
  echo "pid: $$"
} > $out.tmp
mv $out.tmp $out
exec sleep 100000
"#;

/// Replaces the shipped rule: every virtio function goes to the stand-in.
const RULES: &str = r#"
[[drivers]]
name = "lab test: every virtio function"
vendor = 0x1af4
command = ["pcid-test-driver", "--extra"]
"#;

/// Sorts first; its error must not stop the other files.
const BAD_RULES: &str = "[[drivers]]\nclass = = 1\ncommand = [\"x\"]\n";

/// Waits in the guest (bounded) until `cond` (a shell test) holds.
fn wait_for(vm: &mut Vm, cond: &str) -> lab::Result<()> {
    vm.ok(&format!(
        "i=0; until {cond}; do i=$((i+1)); [ $i -gt 100 ] && exit 1; sleep 0.1; done"
    ))
    .map(|_| ())
}

#[test]
#[ignore = "boots QEMU: run through `make test`"]
fn pcid_claims_spawns_serves_and_releases() -> lab::Result<()> {
    let disk = ScratchDisk::new("lab-pcid");
    let mut cfg = lab_machine("pcid", &disk.0)
        .file(
            "/etc/init.d/pcid-test-driver.toml",
            DRIVER_UNIT.as_bytes(),
            0o644,
        )
        .file("/bin/pcid-test-driver", DRIVER_SCRIPT.as_bytes(), 0o755)
        .file("/etc/pcid.d/virtio-blk.toml", RULES.as_bytes(), 0o644)
        .file("/etc/pcid.d/00-bad.toml", BAD_RULES.as_bytes(), 0o644);
    cfg.cmdline.push("pcid.ignore=0000:00:03.0".into());
    cfg.boot_timeout = Duration::from_secs(180);
    let mut vm = Vm::boot(cfg)?;

    let log = vm.ok("cat /var/log/pcid.log")?;
    assert!(
        log.contains("00-bad.toml:2: "),
        "bad rule file reported:\n{log}"
    );
    assert!(log.contains("ignored (pcid.ignore)"), "{log}");

    // Both virtio-blk functions got a driver; the ignored virtio-net none.
    for name in ["pci-0000-00-01.0", "pci-0000-01-00.0"] {
        wait_for(&mut vm, &format!("[ -f /tmp/pcid-test-driver.{name} ]"))?;
        let rec = vm.ok(&format!("cat /tmp/pcid-test-driver.{name}"))?;
        for want in [
            format!("args: {name} --extra"),
            "passed: 4 5 6".into(),
            "fd 4: /dev/vfio/vfio".into(),
            "fd 5: anon_inode:[vfio-device]".into(),
            "fd 6: socket:[".into(),
            "uid: 1000".into(),
        ] {
            assert!(rec.contains(&want), "{name}: {want:?} missing:\n{rec}");
        }
        let address = name.trim_start_matches("pci-").replacen('-', ":", 2);
        let driver = vm.ok(&format!("readlink /sys/bus/pci/devices/{address}/driver"))?;
        assert!(driver.trim().ends_with("/vfio-pci"), "{name}: {driver}");
    }
    let ignored = vm.sh("ls /tmp/pcid-test-driver.pci-0000-00-03.0")?;
    assert!(!ignored.success(), "the ignored function got a driver");
    let net_driver = vm.sh("readlink /sys/bus/pci/devices/0000:00:03.0/driver")?;
    assert!(!net_driver.success(), "the ignored function was bound");

    // The scheme.
    let list = vm.ok("ls /scheme/pci")?;
    let names: Vec<&str> = list.split_whitespace().collect();
    assert_eq!(names.len(), 10, "{list}");
    assert!(names.contains(&"pci-0000-01-00.0"), "{list}");
    vm.ok("cmp /scheme/pci/pci-0000-01-00.0/config /sys/bus/pci/devices/0000:01:00.0/config")?;
    let summary = vm.ok("cat /scheme/pci/pci-0000-00-01.0/summary")?;
    for want in [
        "id         1af4:1001",
        "driver     vfio-pci",
        "owner      driver pcid-test-driver@pci-0000-00-01.0",
        "virtio common config",
    ] {
        assert!(summary.contains(want), "{want:?} missing:\n{summary}");
    }
    let busy = vm.sh("probe open /scheme/pci/pci-0000-00-01.0/channel rw")?;
    assert_eq!(busy.stdout_str().trim(), "err EBUSY");

    // Non-root: may read, may not claim.
    let user = vm.ok(
        "su user -c 'probe open /scheme/pci/pci-0000-00-03.0/channel rw || true; \
         head -c 4 /scheme/pci/pci-0000-00-03.0/config | od -An -tx1; \
         grep owner /scheme/pci/pci-0000-00-03.0/summary'",
    )?;
    assert!(user.contains("err EACCES"), "{user}");
    assert!(user.contains("f4 1a 00 10"), "{user}");
    assert!(user.contains("owner      none"), "{user}");

    // Root on a free function's channel: JSON in, JSON out.
    // One read(2) per reply: dd, not cat, whose sendfile Linux 6.12 serves
    // from the page cache (docs/scheme-protocol.md, Direct I/O).
    let reply = vm.ok(
        "exec 3<>/scheme/pci/pci-0000-00-03.0/channel; R='dd bs=65536 count=1 status=none'; \
         printf '\"Info\"' >&3; $R <&3; echo; \
         printf '{\"ConfigRead\":{\"offset\":0,\"len\":4}}' >&3; $R <&3; echo; \
         printf 'nonsense' >&3; $R <&3",
    )?;
    let lines: Vec<&str> = reply.lines().collect();
    assert_eq!(lines.len(), 3, "{reply}");
    let info: serde_json::Value = serde_json::from_str(lines[0]).map_err(|e| e.to_string())?;
    assert_eq!(info["Info"]["name"], "pci-0000-00-03.0", "{reply}");
    assert_eq!(info["Info"]["device"], 0x1000, "{reply}");
    assert_eq!(lines[1], r#"{"Config":[244,26,0,16]}"#);
    assert!(lines[2].starts_with(r#"{"Error":"#), "{reply}");

    // The driver of 00:01.0 dies: pcid releases the function.
    let rec = vm.ok("cat /tmp/pcid-test-driver.pci-0000-00-01.0")?;
    let pid = rec
        .lines()
        .find_map(|l| l.strip_prefix("pid: "))
        .ok_or("no pid recorded")?
        .trim()
        .to_owned();
    vm.ok(&format!("kill {pid}"))?;
    wait_for(
        &mut vm,
        "grep -q 'owner      none' /scheme/pci/pci-0000-00-01.0/summary",
    )?;
    let log = vm.ok("cat /var/log/pcid.log")?;
    assert!(
        log.contains("pci-0000-00-01.0: pcid-test-driver@pci-0000-00-01.0 closed its channel"),
        "{log}"
    );
    assert_eq!(
        vm.ok("probe open /scheme/pci/pci-0000-00-01.0/channel rw")?
            .trim(),
        "ok"
    );
    // The other driver is untouched.
    let other = vm.ok("grep owner /scheme/pci/pci-0000-01-00.0/summary")?;
    assert!(
        other.contains("driver pcid-test-driver@pci-0000-01-00.0"),
        "{other}"
    );
    assert!(!vm.console().contains("panicked"), "{}", vm.console());
    Ok(())
}
