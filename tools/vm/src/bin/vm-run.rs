//! `make run`: boots the image with the default device set (a virtio-blk
//! disk, an NVMe controller with two namespaces, an AHCI HBA with one disk
//! behind its own root port, an e1000 and a virtio-net NIC, four empty root
//! ports) and the console (multiplexed with QEMU's monitor: Ctrl-A c) on
//! this terminal.
//!
//! Environment: `DISK` (raw image used as the first virtio-blk disk; default
//! build/scratch.img, created empty at 64 MiB), `AHCI_DISK` (the AHCI
//! disk on port 0; default build/ahci.img, created empty at 64 MiB),
//! `NVME_DISK1`, `NVME_DISK2` (the NVMe namespaces 1 and 2; default
//! build/nvme-1.img and build/nvme-2.img, likewise),
//! `QEMU_ARGS` (appended, split on whitespace), `QMP` (socket path;
//! default build/qmp.sock).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The raw image named by `$var`, else `default`; created empty at 64 MiB
/// if missing.
fn disk_image(var: &str, default: &Path) -> PathBuf {
    let disk = std::env::var_os(var)
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| default.to_path_buf());
    if !disk.exists() {
        let made = std::fs::File::create(&disk).and_then(|f| f.set_len(64 << 20));
        if let Err(e) = made {
            eprintln!("vm-run: cannot create {}: {e}", disk.display());
            std::process::exit(1);
        }
    }
    disk
}

fn main() {
    let root = vm::workspace_root();
    let image = vm::image_dir();
    let disk = disk_image("DISK", &root.join("build/scratch.img"));
    let ahci_disk = disk_image("AHCI_DISK", &root.join("build/ahci.img"));
    let namespaces = [
        disk_image("NVME_DISK1", &root.join("build/nvme-1.img")),
        disk_image("NVME_DISK2", &root.join("build/nvme-2.img")),
    ];
    let qmp = std::env::var_os("QMP")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("build/qmp.sock"));
    let mut args = vm::machine_args(1024, 2);
    args.extend([
        "-kernel".into(),
        image.join("vmlinuz").display().to_string(),
        "-initrd".into(),
        image.join("initfs.cpio.gz").display().to_string(),
        "-append".into(),
        vm::kernel_cmdline(&[], &[]),
        "-serial".into(),
        "mon:stdio".into(),
        "-qmp".into(),
        format!("unix:{},server=on,wait=off", qmp.display()),
    ]);
    // Four empty root ports to hot-plug into (ids rp1 … rp4).
    args.extend(vm::root_port_args(4));
    // The first disk, served by virtio-blkd as /scheme/disk.pci-0000-00-04.0_virtio_blk.
    args.extend(vm::virtio_blk_args("disk0", &disk, "04.0"));
    // An AHCI HBA behind its own root port at slot 0x17, after the
    // hot-plug ports' (their buses stay 1-4): bus 5, so ahcid serves
    // /scheme/disk.pci-0000-05-00.0_ahci/0.
    args.extend(vm::root_port("rp-ahci", 23, "17.0"));
    args.extend(vm::ahci_args("ahci0", "rp-ahci", &[(0, &ahci_disk)]));
    // An NVMe controller on the root bus (the root ports stay free for
    // hot-plug), served by nvmed as /scheme/disk.pci-0000-00-08.0_nvme/1
    // and /2, its namespaces.
    args.extend(vm::nvme_args(
        "nvme0",
        "08.0",
        "",
        &[(1, &namespaces[0]), (2, &namespaces[1])],
    ));
    // Two NICs, each on its own QEMU user network (DHCP server and gateway
    // at 10.0.2.2; `restrict=on` keeps the host itself unreachable):
    // e1000d serves /scheme/network.pci-0000-00-05.0_e1000 and virtio-netd
    // /scheme/network.pci-0000-00-06.0_virtio_net.
    for netdev in ["net0", "net1"] {
        args.extend(["-netdev".into(), format!("user,id={netdev},restrict=on")]);
    }
    args.extend(vm::e1000_args("nic0", "net0", "05.0", "52:54:00:12:34:05"));
    args.extend(vm::virtio_net_args(
        "nic1",
        "net1",
        "06.0",
        "52:54:00:12:34:06",
    ));
    if let Ok(extra) = std::env::var("QEMU_ARGS") {
        args.extend(extra.split_whitespace().map(str::to_owned));
    }
    eprintln!(
        "vm-run: QMP socket at {}; Ctrl-A x quits, Ctrl-A c is the monitor",
        qmp.display()
    );
    let err = Command::new("qemu-system-x86_64").args(&args).exec();
    eprintln!("vm-run: cannot start qemu-system-x86_64: {err}");
    std::process::exit(1);
}
