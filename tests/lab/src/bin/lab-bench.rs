//! `make bench`: our drivers against Linux's own, in one VM run, on
//! identical devices, with the same workload binary. Prints both numbers and
//! the ratio; under TCG only the ratio means anything. Not a test: nothing
//! here passes or fails on speed.

use std::time::Duration;

use lab::{Config, Vm};
use serde_json::Value;

const OURS: &str = "/scheme/disk.pci-0000-00-04.0_virtio_blk/0";
/// Served by Linux's virtio_blk: pcid is told to leave 00:06.0 alone.
const KERNEL_ADDR: &str = "0000:00:06.0";
const DISK_MIB: u64 = 64;

fn main() {
    if let Err(e) = run() {
        eprintln!("lab-bench: {e}");
        std::process::exit(1);
    }
}

fn disk(name: &str) -> Result<std::path::PathBuf, String> {
    let dir = lab::workspace_root().join("target/lab");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let path = dir.join(name);
    let f = std::fs::File::create(&path).map_err(|e| e.to_string())?;
    f.set_len(DISK_MIB << 20).map_err(|e| e.to_string())?;
    Ok(path)
}

fn run() -> Result<(), String> {
    let (a, b) = (disk("bench-ours.img")?, disk("bench-kernel.img")?);
    let cfg = Config::new("bench")
        .args(lab::virtio_blk_args("a", &a, "04.0"))
        .args(lab::virtio_blk_args("b", &b, "06.0"))
        .cmdline(&[&format!("pcid.ignore={KERNEL_ADDR}")]);
    let mut vm = Vm::boot(cfg)?;
    // Linux's driver, loaded only now and only finding the ignored device
    // (ours is bound to vfio-pci).
    vm.ok("for m in $(cat /etc/modules.optional); do insmod /lib/modules/$m || exit 1; done")?;
    let dev = vm.ok(&format!(
        "for i in $(seq 100); do d=$(ls /sys/bus/pci/devices/{KERNEL_ADDR}/virtio*/block 2>/dev/null); \
         [ -n \"$d\" ] && [ -b /dev/$d ] && echo /dev/$d && exit 0; sleep 0.1; done; exit 1"
    ))?;
    let dev = dev.trim().to_owned();
    let args = format!("--mib {DISK_MIB} --ops 4096");
    let timeout = Duration::from_secs(1800);
    let ours = measure(&mut vm, &format!("blkbench {OURS} {args}"), timeout)?;
    let kernel = measure(&mut vm, &format!("blkbench {dev} --direct {args}"), timeout)?;
    let _ = vm.poweroff(Duration::from_secs(60));

    println!(
        "block: virtio-blkd (/scheme/disk…/0) vs Linux virtio_blk ({dev}, O_DIRECT), same VM, TCG"
    );
    println!(
        "{:<28} {:>12} {:>12} {:>8}",
        "workload", "ours", "linux", "ratio"
    );
    for (key, label) in [
        ("seq_read_mbs", "seq read 1 MiB (MB/s)"),
        ("seq_write_mbs", "seq write 1 MiB (MB/s)"),
        ("rand4k_qd1_iops", "rand read 4 KiB QD1 (IOPS)"),
        ("rand4k_qd32_iops", "rand read 4 KiB QD32 (IOPS)"),
    ] {
        let o = ours[key].as_f64().unwrap_or(f64::NAN);
        let k = kernel[key].as_f64().unwrap_or(f64::NAN);
        println!("{label:<28} {o:>12.1} {k:>12.1} {:>8.2}", o / k);
    }
    Ok(())
}

fn measure(vm: &mut Vm, cmd: &str, timeout: Duration) -> Result<Value, String> {
    let out = vm.sh_timeout(cmd, timeout)?;
    if !out.success() {
        return Err(format!("{cmd}: {}{}", out.stdout_str(), out.stderr_str()));
    }
    serde_json::from_str(out.stdout_str().trim()).map_err(|e| format!("{cmd}: {e}"))
}
