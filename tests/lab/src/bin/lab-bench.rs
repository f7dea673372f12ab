//! `make bench`: our drivers against Linux's own, in one VM run, on
//! identical devices, with the same workload binary. Prints both numbers and
//! the ratio; under TCG only the ratio means anything. Not a test: nothing
//! here passes or fails on speed.
//!
//!   lab-bench [block] [net] [nvme] [ahci] [nvme-queues]   (default: all five)
//!
//! `nvme-queues` boots twice more: nvmed on one controller told to use 1,
//! then 2 I/O queue pairs (`NVMED_IO_QUEUES`), the same blkbench on each.
//!
//! The machine: our virtio-blk at 04.0 and Linux's at 07.0; our e1000 (05.0)
//! and virtio-net (06.0) on QEMU hub 0, and an identical e1000 (08.0) and
//! virtio-net (09.0) on hub 1 for Linux. pcid is told to leave 07.0-09.0
//! alone; Linux's modules are loaded only after pcid has bound ours to
//! vfio-pci, so they find only the ignored functions. With `nvme`, our
//! NVMe controller at 0a.0 (nvmed) and Linux's at 0b.0 (its `nvme`
//! module), one 64 MiB namespace each.
//! For `ahci`, two
//! QEMU `ahci` HBAs with one disk each behind root ports: ours at 01:00.0,
//! Linux's (`ahci`, `libahci`, `libata`, `sd_mod`) at 02:00.0. Linux's
//! `ahci` also takes q35's own HBA at 00:1f.2, which has no disks.
//!
//! Debian 13's kernel has `virtio_pci` built in, which the lab normally
//! keeps off (`initcall_blacklist=virtio_pci_driver_init`). Here it runs, so
//! Linux's `virtio_blk` and `virtio_net` have a transport: it binds every
//! virtio function at boot, pcid unbinds ours from it before binding them
//! to vfio-pci (as it does for any kernel driver it finds bound), and the
//! ignored ones stay with it.

use std::time::Duration;

use lab::{Config, Vm};
use serde_json::Value;

const OURS: &str = "/scheme/disk.pci-0000-00-04.0_virtio_blk/0";
const OUR_AHCI: &str = "/scheme/disk.pci-0000-01-00.0_ahci/0";
const KERNEL_AHCI: &str = "0000:02:00.0";
const KERNEL_DISK: &str = "0000:00:07.0";
const KERNEL_E1000: &str = "0000:00:08.0";
const KERNEL_VIRTIO_NET: &str = "0000:00:09.0";
const OUR_NVME: &str = "/scheme/disk.pci-0000-00-0a.0_nvme/1";
const KERNEL_NVME: &str = "0000:00:0b.0";
const OUR_E1000: &str = "/scheme/network.pci-0000-00-05.0_e1000";
const OUR_VIRTIO_NET: &str = "/scheme/network.pci-0000-00-06.0_virtio_net";
const DISK_MIB: u64 = 64;
/// Frames per network run, and how many may be in flight beyond the
/// highest one received (the same for both sides).
const NET_FRAMES: u64 = 10_000;
const NET_WINDOW: u64 = 64;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let block = args.is_empty() || args.iter().any(|a| a == "block");
    let net = args.is_empty() || args.iter().any(|a| a == "net");
    let nvme = args.is_empty() || args.iter().any(|a| a == "nvme");
    let ahci = args.is_empty() || args.iter().any(|a| a == "ahci");
    let queues = args.is_empty() || args.iter().any(|a| a == "nvme-queues");
    let parts = block || net || nvme || ahci;
    if parts {
        if let Err(e) = run(block, net, nvme, ahci) {
            eprintln!("lab-bench: {e}");
            std::process::exit(1);
        }
    }
    if queues {
        if let Err(e) = bench_nvme_queues() {
            eprintln!("lab-bench: nvme-queues: {e}");
            std::process::exit(1);
        }
    }
}

/// Waits (bounded, 60 s) until `driver` serves `path`.
fn wait_served(vm: &mut Vm, path: &str, driver: &str) -> Result<(), String> {
    vm.ok(&format!(
        "for i in $(seq 600); do [ -e {path} ] && exit 0; sleep 0.1; done; exit 1"
    ))
    .map(|_| ())
    .map_err(|e| format!("{driver} never served {path}: {e}"))
}

fn disk(name: &str) -> Result<std::path::PathBuf, String> {
    let dir = lab::workspace_root().join("target/lab");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let path = dir.join(name);
    let f = std::fs::File::create(&path).map_err(|e| e.to_string())?;
    f.set_len(DISK_MIB << 20).map_err(|e| e.to_string())?;
    Ok(path)
}

fn run(block: bool, net: bool, nvme: bool, ahci: bool) -> Result<(), String> {
    let (a, b) = (disk("bench-ours.img")?, disk("bench-kernel.img")?);
    let (na, nb) = (disk("bench-nvme-ours.img")?, disk("bench-nvme-kernel.img")?);
    let mut cfg = Config::new("bench")
        .args(lab::virtio_blk_args("a", &a, "04.0"))
        .args(lab::virtio_blk_args("b", &b, "07.0"))
        .args(lab::nic_pair_on_hub(0, "05.0", "06.0"))
        .args(lab::nic_pair_on_hub(1, "08.0", "09.0"))
        .allow_builtin(lab::LINUX_VIRTIO_PCI)
        .cmdline(&[&format!(
            "pcid.ignore={KERNEL_DISK},{KERNEL_E1000},{KERNEL_VIRTIO_NET},{KERNEL_NVME},{KERNEL_AHCI}"
        )]);
    if nvme {
        cfg = cfg
            .args(lab::nvme_args("n0", "0a.0", "", &[(1, &na)]))
            .args(lab::nvme_args("n1", "0b.0", "", &[(1, &nb)]));
    }
    if ahci {
        let (c, d) = (disk("bench-ahci-ours.img")?, disk("bench-ahci-kernel.img")?);
        cfg = cfg
            .args(lab::root_port_args(2))
            .args(lab::ahci_args("ahci0", "rp1", &[(0, &c)]))
            .args(lab::ahci_args("ahci1", "rp2", &[(0, &d)]));
    }
    let mut vm = Vm::boot(cfg)?;
    if nvme {
        wait_served(&mut vm, OUR_NVME, "nvmed")?;
    }
    if ahci {
        wait_served(&mut vm, OUR_AHCI, "ahcid")?;
    }
    // Our drivers first (bound to vfio-pci, so Linux's cannot take them).
    if net {
        vm.ok(&format!(
            "for i in $(seq 600); do [ \"$(cat {OUR_E1000}/link 2>/dev/null)\" = up ] && \
             [ \"$(cat {OUR_VIRTIO_NET}/link 2>/dev/null)\" = up ] && exit 0; sleep 0.1; done; exit 1"
        ))
        .map_err(|e| format!("our NICs never came up: {e}"))?;
    }
    // Linux's drivers, loaded only now and only finding the ignored devices.
    vm.ok("for m in $(cat /etc/modules.optional); do insmod /lib/modules/$m || exit 1; done")?;
    let block_result = if block {
        Some(bench_block(&mut vm)?)
    } else {
        None
    };
    let nvme_result = if nvme {
        Some(bench_nvme(&mut vm)?)
    } else {
        None
    };
    let ahci_result = if ahci {
        Some(bench_ahci(&mut vm)?)
    } else {
        None
    };
    let net_result = if net { Some(bench_net(&mut vm)?) } else { None };
    let recovery = bench_recovery(&mut vm, block, net, ahci)?;
    let _ = vm.poweroff(Duration::from_secs(60));
    if let Some((dev, ours, kernel)) = block_result {
        print_block("virtio-blkd", "virtio_blk", &dev, &ours, &kernel);
    }
    if let Some((dev, ours, kernel)) = nvme_result {
        print_block("nvmed", "nvme", &dev, &ours, &kernel);
    }
    if let Some((dev, ours, kernel)) = ahci_result {
        print_block("ahcid", "ahci", &dev, &ours, &kernel);
    }
    if let Some(rows) = net_result {
        print_net(&rows);
    }
    println!(
        "recovery after kill -9 (guest time, from the end to ready again; docs/supervision.md):"
    );
    for (driver, ms) in recovery {
        println!("  {driver:<14} {ms} ms");
    }
    Ok(())
}

/// nvmed with 1 and with 2 I/O queue pairs on the same controller model,
/// one boot each, the same blkbench: what a second queue (and vector)
/// buys when every request still arrives through one /dev/fuse.
fn bench_nvme_queues() -> Result<(), String> {
    let img = lab::workspace_root().join("target/lab/bench-nvmeq.img");
    let mut runs = Vec::new();
    for queues in [1u32, 2] {
        // Written out whole before each run: a sparse file makes the first
        // run's writes pay for the host's block allocation, and the second
        // run's not.
        std::fs::write(&img, vec![0u8; (DISK_MIB << 20) as usize]).map_err(|e| e.to_string())?;
        let unit = lab::unit_with_env("nvmed", &[("NVMED_IO_QUEUES", &queues.to_string())])?;
        let cfg = Config::new(&format!("bench-nvmeq{queues}"))
            .args(lab::nvme_args("n0", "0a.0", "", &[(1, &img)]))
            .file("/etc/init.d/nvmed.toml", &unit, 0o644);
        let mut vm = Vm::boot(cfg)?;
        wait_served(&mut vm, OUR_NVME, "nvmed")?;
        let said = format!("nvme: {queues} I/O queue pairs");
        if !vm.console().contains(&said) {
            return Err(format!("nvmed did not report {said:?}"));
        }
        let result = measure(
            &mut vm,
            &format!("blkbench {OUR_NVME} --mib {DISK_MIB} --ops 4096"),
            Duration::from_secs(1800),
        )?;
        let _ = vm.poweroff(Duration::from_secs(60));
        runs.push(result);
    }
    println!("nvme: nvmed with 1 and 2 I/O queue pairs (one event loop), one boot each, TCG");
    println!(
        "{:<28} {:>12} {:>12} {:>8}",
        "workload", "1 queue", "2 queues", "2q/1q"
    );
    for (key, label) in BLOCK_ROWS {
        let one = runs[0][key].as_f64().unwrap_or(f64::NAN);
        let two = runs[1][key].as_f64().unwrap_or(f64::NAN);
        println!("{label:<28} {one:>12.1} {two:>12.1} {:>8.2}", two / one);
    }
    Ok(())
}

/// Kills each of our drivers once, after the benchmarks, and reads init's
/// `service … back N ms after it ended`.
fn bench_recovery(
    vm: &mut Vm,
    block: bool,
    net: bool,
    ahci: bool,
) -> Result<Vec<(&'static str, u64)>, String> {
    let mut drivers = Vec::new();
    if block {
        drivers.push(("virtio-blkd", "virtio-blkd@pci-0000-00-04.0"));
    }
    if ahci {
        drivers.push(("ahcid", "ahcid@pci-0000-01-00.0"));
    }
    if net {
        drivers.push(("e1000d", "e1000d@pci-0000-00-05.0"));
        drivers.push(("virtio-netd", "virtio-netd@pci-0000-00-06.0"));
    }
    let mut times = Vec::new();
    for (bin, service) in drivers {
        let from = vm.console().len();
        let needle = format!("service {service} back ");
        vm.ok(&format!("kill -9 $(pidof {bin})"))?;
        vm.wait_console_after(from, " ms after it ended", Duration::from_secs(60))?;
        let console = vm.console();
        let ms = console[from..]
            .lines()
            .find_map(|l| {
                l.split(&needle)
                    .nth(1)?
                    .strip_suffix(" ms after it ended")?
                    .parse()
                    .ok()
            })
            .ok_or_else(|| format!("{service} did not report its recovery"))?;
        times.push((bin, ms));
    }
    Ok(times)
}

fn bench_block(vm: &mut Vm) -> Result<(String, Value, Value), String> {
    let dev = vm.ok(&format!(
        "for i in $(seq 100); do d=$(ls /sys/bus/pci/devices/{KERNEL_DISK}/virtio*/block 2>/dev/null); \
         [ -n \"$d\" ] && [ -b /dev/$d ] && echo /dev/$d && exit 0; sleep 0.1; done; exit 1"
    ))?;
    let dev = dev.trim().to_owned();
    let (ours, kernel) = measure_pair(vm, OURS, &dev)?;
    Ok((dev, ours, kernel))
}

/// blkbench on our scheme disk `ours` and on Linux's block device `dev`.
fn measure_pair(vm: &mut Vm, ours: &str, dev: &str) -> Result<(Value, Value), String> {
    let args = format!("--mib {DISK_MIB} --ops 4096");
    let timeout = Duration::from_secs(1800);
    let ours = measure(vm, &format!("blkbench {ours} {args}"), timeout)?;
    let kernel = measure(vm, &format!("blkbench {dev} --direct {args}"), timeout)?;
    Ok((ours, kernel))
}

/// nvmed's namespace against Linux's nvme driver's on an identical
/// controller.
fn bench_nvme(vm: &mut Vm) -> Result<(String, Value, Value), String> {
    let dev = vm.ok(&format!(
        "for i in $(seq 100); do d=$(ls -d /sys/bus/pci/devices/{KERNEL_NVME}/nvme/nvme*/nvme*n1 2>/dev/null | head -n1); \
         [ -n \"$d\" ] && b=$(basename $d) && [ -b /dev/$b ] && echo /dev/$b && exit 0; sleep 0.1; done; exit 1"
    ))?;
    let dev = dev.trim().to_owned();
    let (ours, kernel) = measure_pair(vm, OUR_NVME, &dev)?;
    Ok((dev, ours, kernel))
}

/// ahcid against Linux's ahci, each on its own HBA with one disk.
fn bench_ahci(vm: &mut Vm) -> Result<(String, Value, Value), String> {
    let dev = vm.ok(&format!(
        "for i in $(seq 100); do d=$(ls /sys/bus/pci/devices/{KERNEL_AHCI}/ata*/host*/target*/*/block 2>/dev/null); \
         [ -n \"$d\" ] && [ -b /dev/$d ] && echo /dev/$d && exit 0; sleep 0.1; done; exit 1"
    ))?;
    let dev = dev.trim().to_owned();
    let (ours, kernel) = measure_pair(vm, OUR_AHCI, &dev)?;
    Ok((dev, ours, kernel))
}

/// blkbench's results: (JSON key, label).
const BLOCK_ROWS: [(&str, &str); 4] = [
    ("seq_read_mbs", "seq read 1 MiB (MB/s)"),
    ("seq_write_mbs", "seq write 1 MiB (MB/s)"),
    ("rand4k_qd1_iops", "rand read 4 KiB QD1 (IOPS)"),
    ("rand4k_qd32_iops", "rand read 4 KiB QD32 (IOPS)"),
];

fn print_block(driver: &str, linux: &str, dev: &str, ours: &Value, kernel: &Value) {
    println!("block: {driver} (/scheme/disk…) vs Linux {linux} ({dev}, O_DIRECT), same VM, TCG");
    println!(
        "{:<28} {:>12} {:>12} {:>8}",
        "workload", "ours", "linux", "ratio"
    );
    for (key, label) in BLOCK_ROWS {
        let o = ours[key].as_f64().unwrap_or(f64::NAN);
        let k = kernel[key].as_f64().unwrap_or(f64::NAN);
        println!("{label:<28} {o:>12.1} {k:>12.1} {:>8.2}", o / k);
    }
}

fn measure(vm: &mut Vm, cmd: &str, timeout: Duration) -> Result<Value, String> {
    let out = vm.sh_timeout(cmd, timeout)?;
    if !out.success() {
        return Err(format!("{cmd}: {}{}", out.stdout_str(), out.stderr_str()));
    }
    serde_json::from_str(out.stdout_str().trim()).map_err(|e| format!("{cmd}: {e}"))
}

/// One network workload: frames/s and MB/s, ours and Linux's.
struct NetRow {
    label: String,
    ours: (f64, f64),
    linux: (f64, f64),
}

/// The interface Linux made for PCI function `addr`, brought up (IPv6 off,
/// so the only traffic is ours) once its carrier is there.
fn kernel_iface(vm: &mut Vm, addr: &str) -> Result<String, String> {
    let name = vm.ok(&format!(
        "for i in $(seq 100); do n=$(ls /sys/bus/pci/devices/{addr}/net /sys/bus/pci/devices/{addr}/virtio*/net 2>/dev/null | grep -v : | head -1); \
         [ -n \"$n\" ] && echo $n && exit 0; sleep 0.1; done; exit 1"
    ))
    .map_err(|e| format!("no Linux interface for {addr}: {e}"))?;
    let name = name.trim().to_owned();
    vm.ok(&format!(
        "echo 1 > /proc/sys/net/ipv6/conf/{name}/disable_ipv6 2>/dev/null; ip link set {name} up && \
         for i in $(seq 100); do [ \"$(cat /sys/class/net/{name}/carrier 2>/dev/null)\" = 1 ] && exit 0; sleep 0.1; done; exit 1"
    ))
    .map_err(|e| format!("{name} has no carrier: {e}"))?;
    Ok(name)
}

/// `frames pair FROM TO` → (frames/s, MB/s) at the receiver; every frame
/// must arrive intact, or the number means nothing.
fn pair_rate(vm: &mut Vm, from: &str, to: &str, size: usize) -> Result<(f64, f64), String> {
    let cmd = format!(
        "frames pair {from} {to} --count {NET_FRAMES} --size {size} --window {NET_WINDOW} --timeout-ms 20000"
    );
    let out = vm.sh_timeout(&cmd, Duration::from_secs(1800))?;
    let text = out.stdout_str();
    if !out.success() {
        return Err(format!("{cmd}: {text}{}", out.stderr_str()));
    }
    let line = text
        .lines()
        .find(|l| l.starts_with("received "))
        .ok_or_else(|| format!("{cmd}: {text}"))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let field = |k: &str| -> f64 {
        words
            .iter()
            .position(|w| *w == k)
            .and_then(|i| words.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(f64::NAN)
    };
    Ok((field("fps"), field("mbps")))
}

fn bench_net(vm: &mut Vm) -> Result<Vec<NetRow>, String> {
    let e = kernel_iface(vm, KERNEL_E1000)?;
    let v = kernel_iface(vm, KERNEL_VIRTIO_NET)?;
    let (le, lv) = (format!("packet:{e}"), format!("packet:{v}"));
    let mut rows = Vec::new();
    for size in [64usize, 1514] {
        for (dir, (of, ot), (lf, lt)) in [
            (
                "e1000 → virtio-net",
                (OUR_E1000, OUR_VIRTIO_NET),
                (le.as_str(), lv.as_str()),
            ),
            (
                "virtio-net → e1000",
                (OUR_VIRTIO_NET, OUR_E1000),
                (lv.as_str(), le.as_str()),
            ),
        ] {
            let ours = pair_rate(vm, of, ot, size)?;
            let linux = pair_rate(vm, lf, lt, size)?;
            rows.push(NetRow {
                label: format!("{dir} {size} B"),
                ours,
                linux,
            });
        }
    }
    Ok(rows)
}

fn print_net(rows: &[NetRow]) {
    println!(
        "network: e1000d + virtio-netd (/scheme/network…/frames) vs Linux e1000 + virtio_net \
         (AF_PACKET), two NICs on one QEMU hub each, same VM, TCG; {NET_FRAMES} frames, \
         window {NET_WINDOW}"
    );
    println!(
        "{:<26} {:>10} {:>10} {:>6}   {:>9} {:>9} {:>6}",
        "workload", "ours f/s", "linux f/s", "ratio", "ours MB/s", "linux MB/s", "ratio"
    );
    for r in rows {
        println!(
            "{:<26} {:>10.0} {:>10.0} {:>6.2}   {:>9.2} {:>9.2} {:>6.2}",
            r.label,
            r.ours.0,
            r.linux.0,
            r.ours.0 / r.linux.0,
            r.ours.1,
            r.linux.1,
            r.ours.1 / r.linux.1
        );
    }
}
