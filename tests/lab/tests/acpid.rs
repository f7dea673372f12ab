//! acpid on the lab machine (with three CPUs): every table it serves is
//! the kernel's copy byte for byte; the MADT view counts the CPUs QEMU was
//! given; the MCFG view has the ECAM window the kernel uses; the devices
//! view lists the RTC, both serial ports and the keyboard controller with
//! the resources QEMU's ACPI tables give them; AML runs only for root;
//! PCI configuration reads from AML go through pcid; bad paths are ENOENT;
//! and acpid survives all of it with the same pid.

use lab::{Config, Vm};

/// More than the fixtures' 2, so the MADT count is this boot's.
const SMP: u32 = 3;

/// The text of every device file, split into (file name, text).
fn device_files(vm: &mut Vm) -> lab::Result<Vec<(String, String)>> {
    let out =
        vm.ok("for f in /scheme/acpi/devices/*; do echo \"== ${f##*/}\"; cat \"$f\"; done")?;
    let mut files = Vec::new();
    for block in out.split("== ").filter(|b| !b.is_empty()) {
        let (name, text) = block.split_once('\n').unwrap_or((block, ""));
        files.push((name.to_owned(), text.to_owned()));
    }
    Ok(files)
}

fn field<'a>(text: &'a str, key: &str) -> &'a str {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .map(str::trim)
        .unwrap_or("")
}

/// The one device with this `hid:` and this `io:` line.
fn find_device<'a>(devs: &'a [(String, String)], hid: &str, io: &str) -> Option<&'a str> {
    devs.iter()
        .map(|(_, t)| t.as_str())
        .find(|t| field(t, "hid") == hid && field(t, "io") == io)
}

#[test]
#[ignore = "boots QEMU: run through `make test`"]
fn acpid_tables_views_devices_and_access() -> lab::Result<()> {
    let mut cfg = Config::new("acpi");
    cfg.smp = SMP;
    let mut vm = Vm::boot(cfg)?;
    let pid = vm.ok("pidof acpid")?.trim().to_owned();
    assert!(!pid.is_empty() && !pid.contains(' '), "one acpid: {pid:?}");

    // Tables: every raw file is in index.txt, and each one is the kernel's
    // copy, compared in the guest with cmp.
    let listed = vm.ok("cd /scheme/acpi/tables && n=0 && \
         while read name kernel rest; do \
           case \"$name\" in '#'*) continue;; esac; \
           cmp \"$name\" \"/sys/firmware/acpi/tables/$kernel\" || exit 1; \
           n=$((n+1)); \
         done < index.txt && echo $n")?;
    let kernel = vm.ok("cd /sys/firmware/acpi/tables && for f in * dynamic/*; do \
           if [ -f \"$f\" ]; then echo \"$f\"; fi; done | wc -l")?;
    assert_eq!(
        listed.trim(),
        kernel.trim(),
        "tables served vs the kernel's"
    );
    let raw = vm.ok("ls /scheme/acpi/tables | grep -v '\\.txt$' | wc -l")?;
    assert_eq!(
        raw.trim(),
        kernel.trim(),
        "raw files vs the kernel's tables"
    );
    assert!(vm
        .ok("cat /scheme/acpi/tables/index.txt")?
        .contains("DSDT  DSDT"));

    // MADT: one enabled CPU per -smp.
    let madt = vm.ok("cat /scheme/acpi/tables/APIC.txt")?;
    let cpus = madt
        .lines()
        .filter(|l| l.starts_with("cpu ") && l.contains(" enabled"))
        .count();
    assert_eq!(cpus, SMP as usize, "{madt}");
    assert!(
        madt.contains(&format!("cpus {SMP}  enabled {SMP}")),
        "{madt}"
    );
    let online = vm.ok("cat /sys/devices/system/cpu/online")?;
    assert_eq!(online.trim(), format!("0-{}", SMP - 1));

    // MCFG: the ECAM window is the one the kernel reserved.
    let mcfg = vm.ok("cat /scheme/acpi/tables/MCFG.txt")?;
    let base = mcfg
        .lines()
        .find_map(|l| l.strip_prefix("ecam  base "))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|h| u64::from_str_radix(h.trim_start_matches("0x"), 16).ok())
        .ok_or_else(|| format!("no ECAM window in\n{mcfg}"))?;
    assert_eq!(base, 0xb000_0000, "q35's MMCONFIG base");
    // Linux names the reservation "PCI ECAM" since 6.9 (before: "PCI MMCONFIG").
    let iomem = vm.ok("grep -iE 'PCI (ECAM|MMCONFIG)' /proc/iomem")?;
    let start = iomem
        .split('-')
        .next()
        .and_then(|h| u64::from_str_radix(h.trim(), 16).ok())
        .ok_or_else(|| format!("no ECAM reservation in /proc/iomem: {iomem}"))?;
    assert_eq!(start, base, "MCFG vs the kernel's reservation: {iomem}");

    // FADT: the power registers acpid uses.
    let fadt = vm.ok("cat /scheme/acpi/tables/FACP.txt")?;
    assert!(
        fadt.contains("pm1a-control SystemIO 0x604 (16 bits)"),
        "{fadt}"
    );
    assert!(fadt.contains("reset-register SystemIO 0xcf9"), "{fadt}");

    // Devices: the RTC, both serial ports, the keyboard controller.
    let devs = device_files(&mut vm)?;
    let names: Vec<&str> = devs.iter().map(|(n, _)| n.as_str()).collect();
    let rtc = find_device(&devs, "PNP0B00", "0x70-0x77")
        .or_else(|| find_device(&devs, "PNP0B00", "0x70-0x71"))
        .ok_or_else(|| format!("no RTC in {names:?}"))?;
    assert_eq!(field(rtc, "irqs"), "8", "{rtc}");
    assert!(field(rtc, "status").starts_with("0x0f"), "{rtc}");
    let com1 = find_device(&devs, "PNP0501", "0x3f8-0x3ff")
        .ok_or_else(|| format!("no COM1 in {devs:?}"))?;
    assert_eq!(field(com1, "irqs"), "4");
    let com2 = find_device(&devs, "PNP0501", "0x2f8-0x2ff")
        .ok_or_else(|| format!("no COM2 in {devs:?}"))?;
    assert_eq!(field(com2, "irqs"), "3");
    let kbd = find_device(&devs, "PNP0303", "0x60-0x60 0x64-0x64")
        .ok_or_else(|| format!("no keyboard controller in {devs:?}"))?;
    assert_eq!(field(kbd, "irqs"), "1");
    for name in [
        "acpi-PNP0B00-0",
        "acpi-PNP0501-1",
        "acpi-PNP0501-2",
        "acpi-PNP0303-0",
    ] {
        assert!(names.contains(&name), "{name} in {names:?}");
    }

    // AML reached real PCI configuration space through pcid: the interrupt
    // link LNKA decodes its routing register PIRQA in the LPC bridge
    // (00:1f.0, offset 0x60: bit 7 "disabled", bits 3..0 the IRQ). Compare
    // with the byte the kernel reads from sysfs (a refused read would give
    // 0xff: IRQ 15, disabled).
    let lnka = devs
        .iter()
        .find(|(n, _)| n == "acpi-PNP0C0F-0")
        .map(|(_, t)| t.as_str())
        .ok_or_else(|| format!("no LNKA in {names:?}"))?;
    let pirqa: u8 = vm
        .ok("dd if=/sys/bus/pci/devices/0000:00:1f.0/config bs=1 skip=96 count=1 2>/dev/null | od -An -tu1")?
        .trim()
        .parse()
        .map_err(|e| format!("PIRQA: {e}"))?;
    assert_ne!(pirqa, 0xff, "the kernel's own read of PIRQA failed");
    let want_status = if pirqa & 0x80 != 0 { "0x09" } else { "0x0b" };
    assert!(
        field(lnka, "status").starts_with(want_status),
        "PIRQA {pirqa:#x}\n{lnka}"
    );
    assert_eq!(
        field(lnka, "irqs"),
        (pirqa & 0x0f).to_string(),
        "PIRQA {pirqa:#x}\n{lnka}"
    );

    // Symbols: values for everyone, methods for root only.
    assert_eq!(
        vm.ok("su user -c 'cat /scheme/acpi/symbols/_SB/PCI0/SF8/RTC/_HID'")?,
        "0xbd041 (PNP0B00)\n"
    );
    // Root runs a method by reading it: LNKA._STA, from the same register.
    let sta = if pirqa & 0x80 != 0 { "0x9\n" } else { "0xb\n" };
    assert_eq!(vm.ok("cat /scheme/acpi/symbols/_SB/LNKA/_STA")?, sta);
    for denied in [
        "cat /scheme/acpi/symbols/_SB/LNKA/_STA",
        "cat /scheme/acpi/symbols/_SB/HPET/_STA",
        "echo '\"Linux\"' > /scheme/acpi/symbols/_OSI",
        "cat /scheme/acpi/power",
        "echo poweroff > /scheme/acpi/power",
    ] {
        let out = vm.sh(&format!("su user -c '{}'", denied.replace('\'', "'\\''")))?;
        assert!(!out.success(), "user could: {denied}");
        assert!(
            out.stderr_str().contains("Permission denied"),
            "{denied}: {}",
            out.stderr_str()
        );
    }

    // Bad paths.
    for bad in [
        "/scheme/acpi/nope",
        "/scheme/acpi/tables/NOPE",
        "/scheme/acpi/symbols/_SB/NOPE",
        "/scheme/acpi/symbols/lowercase",
        "/scheme/acpi/devices/acpi-NOPE-0",
    ] {
        let out = vm.sh(&format!("cat {bad}"))?;
        assert!(!out.success(), "{bad} exists");
        assert!(
            out.stderr_str().contains("No such file or directory"),
            "{bad}: {}",
            out.stderr_str()
        );
    }
    // Read-only files stay read-only, also for root.
    let out = vm.sh("echo x > /scheme/acpi/tables/DSDT")?;
    assert!(!out.success());

    // The HPET's _STA reads its registers in memory, which acpid refuses
    // and logs (once) instead of mapping anything.
    let log = vm.ok("cat /var/log/acpid.log")?;
    assert!(
        log.contains("AML access refused: system memory read at 0xfed00000"),
        "{log}"
    );
    assert!(!log.contains("panicked"), "{log}");

    // acpid is the same process after all of this.
    assert_eq!(vm.ok("pidof acpid")?.trim(), pid);
    Ok(())
}
