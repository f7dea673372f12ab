//! Platform devices: acpid starts rtcd for the CMOS clock with exactly the
//! clock's `_CRS` ports, `/scheme/time` agrees with the host clock, rtcd
//! runs unprivileged and sandboxed, a process started the same way cannot
//! touch any port outside its grant, and `poweroff`/`reboot` go through
//! acpid (S5, the FADT reset register) rather than reboot(2).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lab::{Config, Vm};

const RTCD: &str = "rtcd@acpi-PNP0B00-0";

fn host_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The values of `name:` in a /proc/PID/status text.
fn field(status: &str, name: &str) -> Vec<String> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .map(|v| v.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default()
}

/// The RTC's I/O ranges as acpid's device view lists them (`io: 0x70-0x77`),
/// in INIT_IOPORTS form (`70-77`).
fn rtc_ports_from_acpid(vm: &mut Vm) -> lab::Result<String> {
    let text = vm.ok("for f in /scheme/acpi/devices/*; do \
           if grep -q '^hid: PNP0B00$' \"$f\"; then cat \"$f\"; fi; done")?;
    let io = text
        .lines()
        .find_map(|l| l.strip_prefix("io:"))
        .ok_or_else(|| format!("no io line for the RTC in /scheme/acpi/devices:\n{text}"))?;
    Ok(io
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|w| !w.is_empty())
        .map(|w| w.replace("0x", ""))
        .collect::<Vec<_>>()
        .join(" "))
}

#[test]
#[ignore = "boots QEMU: run through `make test`"]
fn rtcd_time_privileges_and_poweroff() -> lab::Result<()> {
    let mut vm = Vm::boot(Config::new("platform").arg(&["-rtc", "base=utc"]))?;
    let console = vm.console();
    assert!(
        console.contains(&format!("init: started {RTCD} (pid")),
        "init did not start {RTCD}\n{console}"
    );

    // acpid asked for exactly the clock's _CRS ports, and rtcd got them.
    let crs = rtc_ports_from_acpid(&mut vm)?;
    assert_eq!(crs, "70-77", "QEMU's RTC _CRS is IO(0x70, length 8)");
    let pid = vm.ok("pidof rtcd")?.trim().to_owned();
    assert!(!pid.is_empty() && !pid.contains(' '), "one rtcd: {pid:?}");
    let env = vm.ok(&format!("tr '\\0' '\\n' < /proc/{pid}/environ"))?;
    assert!(
        env.lines().any(|l| l == format!("INIT_IOPORTS={crs}")),
        "rtcd's grant is not the _CRS ({crs}):\n{env}"
    );

    // Unprivileged and sandboxed.
    let status = vm.ok(&format!("cat /proc/{pid}/status"))?;
    assert_eq!(field(&status, "Uid"), ["220"; 4], "{status}");
    assert_eq!(field(&status, "Gid"), ["220"; 4], "{status}");
    for cap in ["CapPrm", "CapEff", "CapInh", "CapAmb"] {
        assert_eq!(field(&status, cap), ["0000000000000000"], "{cap}");
    }
    assert_eq!(field(&status, "NoNewPrivs"), ["1"]);
    assert_eq!(field(&status, "Seccomp"), ["2"], "seccomp filter mode");

    // acpid (unit key no_capabilities) keeps uid 0 but holds no capability
    // at all, not even in its bounding set, and has its own port grant.
    let acpid = vm.ok("cat /proc/$(pidof acpid)/status")?;
    assert_eq!(field(&acpid, "Uid"), ["0"; 4], "{acpid}");
    for cap in ["CapPrm", "CapEff", "CapInh", "CapAmb", "CapBnd"] {
        assert_eq!(field(&acpid, cap), ["0000000000000000"], "acpid {cap}");
    }
    assert_eq!(field(&acpid, "NoNewPrivs"), ["1"]);
    let acpid_env = vm.ok("tr '\\0' '\\n' < /proc/$(pidof acpid)/environ")?;
    assert!(
        acpid_env
            .lines()
            .any(|l| l == "INIT_IOPORTS=600-67f cf9-cf9"),
        "{acpid_env}"
    );

    // /scheme/time agrees with the host clock (QEMU's RTC follows the
    // host's UTC clock with -rtc base=utc).
    let before = host_now();
    let now = vm.ok("cat /scheme/time/now")?;
    let after = host_now();
    let mut words = now.split_whitespace();
    let secs: i64 = words
        .next()
        .and_then(|w| w.parse().ok())
        .ok_or_else(|| format!("bad /scheme/time/now: {now:?}"))?;
    assert!(
        secs >= before - 3 && secs <= after + 3,
        "guest clock {secs} vs host {before}..{after}"
    );
    // The ISO form names the same second.
    let iso = words.next().unwrap_or_default().to_owned();
    let host_iso = std::process::Command::new("date")
        .args(["-u", "-d", &format!("@{secs}"), "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .map_err(|e| format!("date: {e}"))?;
    assert_eq!(iso, String::from_utf8_lossy(&host_iso.stdout).trim());

    let cmos = vm.ok("cat /scheme/time/cmos")?;
    for key in [
        "seconds 0x",
        "minutes 0x",
        "hours 0x",
        "year 0x",
        "status_b 0x",
    ] {
        assert!(cmos.contains(key), "{key} missing from cmos:\n{cmos}");
    }
    // QEMU's FADT names CMOS 0x32 as the century register, and rtcd read it
    // from acpid's copy of the FADT.
    assert!(cmos.contains("century 0x20 (register 0x32)"), "{cmos}");
    let log = vm.ok(&format!("cat /var/log/{RTCD}.log"))?;
    assert!(
        log.contains("century register 0x32 (from the FADT)"),
        "{log}"
    );
    let listing = vm.ok("ls /scheme/time")?;
    let mut names: Vec<&str> = listing.split_whitespace().collect();
    names.sort();
    assert_eq!(names, ["cmos", "now"]);
    // Read-only, for root too.
    let w = vm.sh("echo 0 > /scheme/time/now")?;
    assert!(!w.success(), "writing the clock must fail");

    // Linux's own rtc_cmos driver is kept off (initcall_blacklist), so
    // rtcd is the only user of ports 0x70/0x71.
    // (Without it rtc_cmos binds the PNP0B00 device as rtc0 and claims
    // 0070-0077 in /proc/ioports.)
    let rtc = vm.ok("ls /sys/class/rtc 2>/dev/null; grep rtc /proc/ioports; true")?;
    assert!(rtc.trim().is_empty(), "a kernel RTC driver is bound: {rtc}");

    // poweroff: services stop in reverse start order (rtcd, started by
    // acpid late, before fifo, started at boot); acpid and pcid, which it
    // requires (AML reads PCI config through it), are kept and acpid
    // enters S5; QEMU exits by itself, without init's reboot(2) fallback.
    let from = vm.console().len();
    // Not `Vm::poweroff`, which consumes the VM: the console is checked
    // afterwards. The agent is stopped during shutdown and may not answer.
    let _ = vm.sh_timeout("poweroff", Duration::from_secs(2));
    let exit = vm.wait_exit(Duration::from_secs(90))?;
    assert!(exit.success(), "QEMU exit status after poweroff: {exit}");
    let console = vm.console();
    let tail = &console[from..];
    assert!(
        tail.contains("init: writing poweroff to /scheme/acpi/power"),
        "{tail}"
    );
    assert!(!tail.contains("falling back to reboot(2)"), "{tail}");
    assert!(!tail.contains("calling reboot(2)"), "{tail}");
    assert!(
        tail.contains("init: keeping acpid for the power-off"),
        "{tail}"
    );
    assert!(
        tail.contains("init: keeping pcid for the power-off"),
        "{tail}"
    );
    assert!(!tail.contains("init: stopping acpid"), "{tail}");
    assert!(!tail.contains("init: stopping pcid"), "{tail}");
    let pos = |s: &str| tail.find(s).ok_or_else(|| format!("{s:?} not in\n{tail}"));
    assert!(pos(&format!("init: stopping {RTCD}"))? < pos("init: stopping fifo")?);
    Ok(())
}

/// A lab rule (sorting before rtc.toml) makes acpid start `portprobe` for
/// the clock instead of rtcd: same template mechanics, same uid, the same
/// grant. Raw `in` instructions on ports inside the grant work; on ports
/// just outside it and elsewhere the kernel kills the process (SIGSEGV).
#[test]
#[ignore = "boots QEMU: run through `make test`"]
fn ports_outside_the_grant_fault_and_reboot_resets() -> lab::Result<()> {
    const PROBE: &str = "portprobe@acpi-PNP0B00-0";
    let rule = "[[drivers]]\nname = \"lab port probe\"\nids = [\"PNP0B00\"]\n\
                command = [\"portprobe\", \"0x6f\", \"0x78\", \"0x80\", \"0x64\"]\n";
    // Not restarted: the probe's end is what the test waits for.
    let unit = "command = \"/bin/portprobe\"\ntype = \"simple\"\ntemplate = true\n\
                spawned_by = [\"acpid\"]\ngrantable_ioports = [\"0x70-0x77\"]\nuser = \"rtcd\"\n\
                restart = \"never\"\n";
    let cfg = Config::new("platform-probe")
        .file("/etc/acpid.d/00-portprobe.toml", rule.as_bytes(), 0o644)
        .file("/etc/init.d/portprobe.toml", unit.as_bytes(), 0o644);
    let mut vm = Vm::boot(cfg)?;
    vm.wait_console(
        &format!("service {PROBE} exited unexpectedly: killed by signal 11 (SIGSEGV)"),
        Duration::from_secs(60),
    )?;
    let log = vm.ok(&format!("cat /var/log/{PROBE}.log"))?;
    let has = |line: &str| log.lines().any(|l| l == line);
    // The same grant rtcd gets (the clock's _CRS), inside which raw reads
    // work: the first data port and the last granted port.
    assert!(has("grant 70-77"), "{log}");
    assert!(log.lines().any(|l| l.starts_with("in: 0x71 = 0x")), "{log}");
    assert!(log.lines().any(|l| l.starts_with("in: 0x77 = 0x")), "{log}");
    // Each outside port, in a child that first read 0x71 fine: just below
    // and just above the grant, the POST port and the keyboard controller.
    for port in ["0x6f", "0x78", "0x80", "0x64"] {
        assert!(
            log.lines()
                .any(|l| l.starts_with(&format!("child {port}: 0x71 = 0x"))),
            "the child for {port} could not even read its granted port:\n{log}"
        );
        assert!(has(&format!("out {port}: killed by signal 11")), "{log}");
    }
    assert!(!log.contains("NOT REFUSED"), "{log}");
    // And the process init started dies the same way on its own access.
    assert!(has("self: reading 0x6f"), "{log}");
    // The probe replaced rtcd for this boot.
    assert!(!vm.ok("ls /scheme")?.split_whitespace().any(|n| n == "time"));

    // reboot: acpid writes the FADT reset register; under -no-reboot QEMU
    // exits. init's reboot(2) fallback must not be what did it.
    let from = vm.console().len();
    // The agent is stopped during shutdown and may never answer.
    let _ = vm.sh_timeout("reboot", Duration::from_secs(2));
    let exit = vm.wait_exit(Duration::from_secs(90))?;
    assert!(exit.success(), "QEMU exit status after reboot: {exit}");
    let console = vm.console();
    let tail = &console[from..];
    assert!(
        tail.contains("init: writing reboot to /scheme/acpi/power"),
        "{tail}"
    );
    assert!(!tail.contains("falling back to reboot(2)"), "{tail}");
    assert!(!tail.contains("calling reboot(2)"), "{tail}");
    Ok(())
}
