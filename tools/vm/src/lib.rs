//! The machine we boot: QEMU's q35 with the Intel vIOMMU, the device
//! arguments our drivers need (modern virtio behind the IOMMU), and the
//! kernel command line (which built-in Linux drivers are kept off). One
//! definition for `make run` (`vm-run`), the test lab and `make bench`.

use std::path::{Path, PathBuf};

/// The workspace root (two levels above this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Where `make image` puts `vmlinuz` and `initfs.cpio.gz`
/// (`LAB_IMAGE_DIR` overrides).
pub fn image_dir() -> PathBuf {
    std::env::var_os("LAB_IMAGE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("build/image"))
}

/// The machine every boot uses: q35 with a split irqchip and the virtual
/// IOMMU (it must come before the devices it translates for).
pub fn machine_args(memory_mb: u32, smp: u32) -> Vec<String> {
    [
        "-machine",
        "q35,kernel-irqchip=split",
        "-accel",
        "tcg",
        "-m",
        &memory_mb.to_string(),
        "-smp",
        &smp.to_string(),
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
        "-device",
        "intel-iommu,intremap=on,caching-mode=on",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// QEMU arguments for a virtio-blk disk backed by `file` at slot `addr`
/// (`"04.0"`, so it is `pci-0000-00-04.0`). Modern-only and behind the
/// IOMMU: without `iommu_platform=on` QEMU's virtio devices bypass the vIOMMU
/// and DMA to guest-physical addresses, which a driver that only holds IOVAs
/// must refuse (ours does).
pub fn virtio_blk_args(id: &str, file: &Path, addr: &str) -> Vec<String> {
    vec![
        "-drive".to_owned(),
        format!("file={},if=none,id={id},format=raw", file.display()),
        "-device".to_owned(),
        format!(
            "virtio-blk-pci,drive={id},id={id},addr={addr},disable-legacy=on,iommu_platform=on"
        ),
    ]
}

/// QEMU arguments for an NVMe controller (`-device nvme`, 1b36:0010)
/// with id `id` at slot `addr` on the root bus, `props` appended to its
/// properties (`",mdts=2"`, or empty), and a namespace `nvme-ns` backed by
/// `file` for each `(nsid, file)`. QEMU's NVMe model DMAs through the
/// vIOMMU like any emulated PCI device: nothing like virtio's
/// `iommu_platform` is needed.
pub fn nvme_args(id: &str, addr: &str, props: &str, namespaces: &[(u32, &Path)]) -> Vec<String> {
    nvme_args_with(id, addr, props, "", namespaces)
}

/// As [`nvme_args`], `drive_opts` appended to each namespace's `-drive`
/// (`",discard=unmap"`: QEMU then passes deallocation on to the file,
/// punching holes; by default, `discard=ignore`, it drops it).
pub fn nvme_args_with(
    id: &str,
    addr: &str,
    props: &str,
    drive_opts: &str,
    namespaces: &[(u32, &Path)],
) -> Vec<String> {
    let mut args = vec![
        "-device".to_owned(),
        format!("nvme,id={id},serial={id}-serial,addr={addr}{props}"),
    ];
    for (nsid, file) in namespaces {
        let drive = format!("{id}n{nsid}");
        args.extend([
            "-drive".to_owned(),
            format!(
                "file={},if=none,id={drive},format=raw{drive_opts}",
                file.display()
            ),
            "-device".to_owned(),
            format!("nvme-ns,drive={drive},bus={id},nsid={nsid}"),
        ]);
    }
    args
}

/// QEMU arguments for an AHCI HBA (ICH9, `-device ahci`: 6 ports, NCQ,
/// one MSI vector) with id `id` behind the PCIe root port `bus`
/// (`"rp1"`: the HBA is `pci-0000-01-00.0` when that port has bus 1), and
/// an `ide-hd` on port P backed by `file` for each `(P, file)`. Behind a
/// root port the HBA is alone in its IOMMU group and has a reset VFIO can
/// use (the secondary bus reset); q35's own AHCI at 00:1f.2 has neither.
pub fn ahci_args(id: &str, bus: &str, disks: &[(u32, &Path)]) -> Vec<String> {
    let mut args = vec![
        "-device".to_owned(),
        format!("ahci,id={id},bus={bus},addr=00.0"),
    ];
    for (port, file) in disks {
        let drive = format!("{id}p{port}");
        args.extend([
            "-drive".to_owned(),
            format!("file={},if=none,id={drive},format=raw", file.display()),
            "-device".to_owned(),
            format!("ide-hd,bus={id}.{port},drive={drive}"),
        ]);
    }
    args
}

/// QEMU arguments for an e1000 (82540EM) NIC on back end `netdev` at slot
/// `addr` with MAC `mac`. QEMU's e1000 DMAs through the vIOMMU like any
/// emulated PCI device, so nothing more is needed.
pub fn e1000_args(id: &str, netdev: &str, addr: &str, mac: &str) -> Vec<String> {
    vec![
        "-device".to_owned(),
        format!("e1000,netdev={netdev},id={id},addr={addr},mac={mac}"),
    ]
}

/// QEMU arguments for a virtio-net NIC on back end `netdev` at slot `addr`
/// with MAC `mac`, modern-only and behind the IOMMU (see
/// [`virtio_blk_args`] for why both options are needed).
pub fn virtio_net_args(id: &str, netdev: &str, addr: &str, mac: &str) -> Vec<String> {
    vec![
        "-device".to_owned(),
        format!(
            "virtio-net-pci,netdev={netdev},id={id},addr={addr},mac={mac},\
             disable-legacy=on,iommu_platform=on"
        ),
    ]
}

/// QEMU arguments for `count` (at most 16) empty PCIe root ports to
/// hot-plug into, ids `rp1` … (`device_add …,bus=rp1`), at slots 0x10 on,
/// clear of the slots our devices are given (04.0 …). The firmware numbers
/// buses in slot order, so port `n` gets bus `n` when no other bridge
/// comes first, and a device added there is `pci-0000-0n-00.0`.
pub fn root_port_args(count: u32) -> Vec<String> {
    (1..=count.min(16))
        .flat_map(|n| root_port(&format!("rp{n}"), n, &format!("{:x}.0", 0x10 + n - 1)))
        .collect()
}

/// QEMU arguments for one PCIe root port `id` at slot `addr` with chassis
/// and slot number `n`, for a device of its own rather than for hot-plug.
/// Buses go in slot order, so a port at a slot after [`root_port_args`]'
/// leaves theirs numbered as they say.
pub fn root_port(id: &str, n: u32, addr: &str) -> Vec<String> {
    vec![
        "-device".to_owned(),
        format!("pcie-root-port,id={id},chassis={n},slot={n},addr={addr}"),
    ]
}

/// QEMU arguments for an e1000 at slot `e1000` and a virtio-net at slot
/// `virtio` on one QEMU hub (`hub`): each hears every frame the other
/// sends. Back ends `h{2·hub}`, `h{2·hub+1}`; MACs `52:54:00:12:34:SS`,
/// SS the slot's device number.
pub fn nic_pair_on_hub(hub: u32, e1000: &str, virtio: &str) -> Vec<String> {
    let (a, b) = (format!("h{}", 2 * hub), format!("h{}", 2 * hub + 1));
    let mac = |slot: &str| format!("52:54:00:12:34:{}", slot.split('.').next().unwrap_or("00"));
    let mut args = Vec::new();
    for id in [&a, &b] {
        args.push("-netdev".to_owned());
        args.push(format!("hubport,id={id},hubid={hub}"));
    }
    args.extend(e1000_args(
        &format!("nic{}", 2 * hub),
        &a,
        e1000,
        &mac(e1000),
    ));
    args.extend(virtio_net_args(
        &format!("nic{}", 2 * hub + 1),
        &b,
        virtio,
        &mac(virtio),
    ));
    args
}

/// Built-in Linux drivers kept from starting (`initcall_blacklist=`),
/// because a daemon of ours owns their devices:
/// - `cmos_init`: `rtc_cmos`. rtcd owns the CMOS clock, and two drivers
///   sharing its index/data port pair would corrupt each other's accesses.
/// - `virtio_pci_driver_init`: Debian 13 builds `virtio_pci` in
///   (`CONFIG_VIRTIO_PCI=y`), so it would bind every virtio function at
///   boot, before pcid could give it to our driver.
pub const BUILTINS_KEPT_OFF: [&str; 2] = ["cmos_init", "virtio_pci_driver_init"];
/// The initcall of Linux's own virtio-PCI transport.
pub const LINUX_VIRTIO_PCI: &str = "virtio_pci_driver_init";

/// Kernel command line with every driver in [`BUILTINS_KEPT_OFF`] kept off
/// but those in `allowed`; `extra` words are appended.
pub fn kernel_cmdline(extra: &[String], allowed: &[&str]) -> String {
    let kept_off: Vec<&str> = BUILTINS_KEPT_OFF
        .iter()
        .copied()
        .filter(|b| !allowed.contains(b))
        .collect();
    let mut words = vec![
        "console=ttyS0,115200".to_owned(),
        "intel_iommu=on".to_owned(),
        "iommu=pt".to_owned(),
        "panic=-1".to_owned(),
        "quiet".to_owned(),
    ];
    if !kept_off.is_empty() {
        words.push(format!("initcall_blacklist={}", kept_off.join(",")));
    }
    words.extend(extra.iter().cloned());
    words.join(" ")
}
