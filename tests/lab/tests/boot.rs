//! Boot: the image comes up under our init with every service ready, the
//! scheme daemons run unprivileged, and `poweroff` ends QEMU by itself.

use std::time::Duration;

use lab::{Config, Vm};

#[test]
#[ignore = "boots QEMU: run through `make test`"]
fn boot_schemes_and_poweroff() -> lab::Result<()> {
    let mut vm = Vm::boot(Config::new("boot"))?;
    let console = vm.console();
    let banner = console
        .lines()
        .find(|l| l.contains(lab::READY_BANNER))
        .unwrap_or_default()
        .to_owned();
    assert!(!banner.contains("failed"), "a service failed: {banner}");
    eprintln!("boot: {banner}; {:.1} s wall from QEMU start", vm.boot_wall);

    // Our init is PID 1.
    let comm = vm.ok("cat /proc/1/comm")?;
    assert_eq!(comm.trim(), "init");

    let schemes = vm.ok("ls /scheme")?;
    let mut names: Vec<&str> = schemes.split_whitespace().collect();
    names.sort();
    // No PCI devices here beyond the machine's own, so no PCI driver
    // scheme; acpid finds the CMOS clock and starts rtcd (/scheme/time);
    // init serves its own supervisor view (/scheme/init).
    assert_eq!(
        names,
        ["acpi", "fifo", "init", "null", "pci", "rand", "time", "zero"]
    );

    // The kernel modules init loaded from the image: every file in its
    // load list, the VFIO stack among them.
    let modules = vm.ok("cut -d' ' -f1 /proc/modules")?;
    let listed = vm.ok("cat /etc/modules.load")?;
    let listed: Vec<String> = listed
        .lines()
        .map(|f| f.trim_end_matches(".ko").replace('-', "_"))
        .collect();
    for m in ["vfio", "vfio_pci", "vfio_iommu_type1"] {
        assert!(
            listed.iter().any(|l| l == m),
            "{m} not in modules.load: {listed:?}"
        );
    }
    for m in &listed {
        assert!(
            modules.lines().any(|l| l == m),
            "module {m} not loaded: {modules}"
        );
    }
    // Debian 13 builds virtio_pci in; the lab's command line keeps it from
    // registering (initcall_blacklist), so no virtio function can be bound
    // to it before pcid gives it to our drivers.
    let drivers = vm.ok("ls /sys/bus/pci/drivers")?;
    assert!(
        !drivers.split_whitespace().any(|d| d == "virtio-pci"),
        "virtio-pci registered: {drivers}"
    );
    // FUSE is built into Debian 13's kernel (a module in Debian 12's).
    let filesystems = vm.ok("cat /proc/filesystems")?;
    assert!(
        filesystems
            .lines()
            .any(|l| l.split_whitespace().last() == Some("fuse")),
        "no fuse file system: {filesystems}"
    );

    // Every scheme daemon runs as its own non-root uid with no capabilities
    // and cannot gain any through exec.
    for (daemon, user) in [
        ("nulld", 100),
        ("zerod", 101),
        ("randd", 102),
        ("fifod", 103),
    ] {
        let status = vm.ok(&format!("cat /proc/$(pidof {daemon})/status"))?;
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.split_whitespace().collect::<Vec<_>>())
                .unwrap_or_default()
        };
        assert_eq!(field("Uid:"), vec![user.to_string(); 4], "{daemon} uids");
        assert_eq!(field("Gid:"), vec![user.to_string(); 4], "{daemon} gids");
        assert_eq!(field("Groups:"), Vec::<String>::new(), "{daemon} groups");
        for cap in ["CapPrm:", "CapEff:", "CapInh:", "CapAmb:"] {
            assert_eq!(field(cap), ["0000000000000000"], "{daemon} {cap}");
        }
        assert_eq!(field("NoNewPrivs:"), ["1"], "{daemon} no_new_privs");
    }

    // Each service's output is kept in a log any user can read.
    let logs = vm.ok("ls /var/log")?;
    for log in ["init.log", "fifo.log", "null.log"] {
        assert!(logs.contains(log), "missing /var/log/{log}: {logs}");
    }
    let init_log = vm.ok("cat /var/log/init.log")?;
    assert!(
        init_log.contains("scheme fifo registered by fifo"),
        "{init_log}"
    );

    let status = vm.poweroff(Duration::from_secs(60))?;
    assert!(
        status.success(),
        "QEMU exit status after poweroff: {status}"
    );
    Ok(())
}
