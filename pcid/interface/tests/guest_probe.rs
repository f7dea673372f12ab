//! The driver kit against real VFIO, in the guest: boots the lab with two
//! virtio-blk functions, copies the `kit-probe` example in and runs it as
//! root on each (and once more as an unprivileged, sandboxed "driver").
//! pcid's virtio-blk rule is replaced for this boot so the functions are
//! left to the probe. The example must be built first:
//!
//! ```sh
//! cargo build --release -p pcid_interface --example kit-probe
//! cargo test --release -p pcid_interface --test guest_probe -- --ignored --nocapture
//! ```

use std::path::PathBuf;
use std::time::Duration;

use lab::{Config, Vm};

const SECTOR0: &[u8] = b"KIT-PROBE SECTOR ZERO: read through VFIO DMA";

const NO_MATCH_RULE: &str = "# kit-probe test: virtio-blk is left to the probe\n\
[[drivers]]\n\
name = \"virtio-blk\"\n\
class = 1\n\
subclass = 0\n\
vendor = 0xffff\n\
ids = { 0xffff = [0xffff] }\n\
command = [\"virtio-blkd\"]\n";

fn example_binary() -> PathBuf {
    // This test runs from <target>/<triple>/release/deps/; cargo puts
    // examples next to deps.
    let exe = std::env::current_exe().unwrap();
    exe.parent()
        .and_then(|d| d.parent())
        .map(|d| d.join("examples/kit-probe"))
        .unwrap()
}

#[test]
#[ignore = "boots QEMU; run explicitly (see the file's doc)"]
fn kit_probe_in_the_guest() -> lab::Result<()> {
    let probe = std::fs::read(example_binary()).map_err(|e| {
        format!(
            "{}: {e} (build it: cargo build --release -p pcid_interface --example kit-probe)",
            example_binary().display()
        )
    })?;
    let dir = lab::workspace_root().join("target/lab");
    let _ = std::fs::create_dir_all(&dir);
    let disk = dir.join("kit-probe.img");
    let mut image = vec![0u8; 1 << 20];
    image[..SECTOR0.len()].copy_from_slice(SECTOR0);
    std::fs::write(&disk, &image).map_err(|e| e.to_string())?;
    // A second file: QEMU locks an image against a second user.
    let disk2 = dir.join("kit-probe-2.img");
    std::fs::write(&disk2, &image).map_err(|e| e.to_string())?;

    let drive = format!("file={},if=none,id=d0,format=raw", disk.display());
    let drive2 = format!("file={},if=none,id=d1,format=raw", disk2.display());
    let cfg = Config::new("kit-probe")
        .arg(&[
            "-drive",
            &drive,
            // Behind the vIOMMU: the device's DMA is translated.
            "-device",
            "virtio-blk-pci,drive=d0,addr=04.0,disable-legacy=on,iommu_platform=on",
            "-drive",
            &drive2,
            // QEMU's default: the device bypasses the vIOMMU.
            "-device",
            "virtio-blk-pci,drive=d1,addr=05.0",
        ])
        .file("/bin/kit-probe", &probe, 0o755)
        // The probe binds the functions itself: an image with pcid must not
        // claim them first. Same rule file, format and name as the
        // image's, matching no device.
        .file(
            "/etc/pcid.d/virtio-blk.toml",
            NO_MATCH_RULE.as_bytes(),
            0o644,
        );
    let mut vm = Vm::boot(cfg)?;
    // If something already drives the functions, say so up front.
    let claimed = vm.sh("pidof virtio-blkd; ls -l /sys/bus/pci/devices/0000:00:04.0/driver")?;
    eprintln!("before the probe: {}", claimed.stdout_str().trim());

    let out = vm.sh_timeout(
        "/bin/kit-probe 0000:00:04.0 2 2>&1",
        Duration::from_secs(120),
    )?;
    let text = out.stdout_str();
    eprintln!("--- 0000:00:04.0 (iommu_platform=on) ---\n{text}");
    let out2 = vm.sh_timeout(
        "/bin/kit-probe 0000:00:05.0 2 2>&1",
        Duration::from_secs(120),
    )?;
    let text2 = out2.stdout_str();
    eprintln!("--- 0000:00:05.0 (iommu_platform=off) ---\n{text2}");
    // The same probe as a driver runs: after opening the fds it drops to
    // uid 4242 with no capabilities, a 256 KiB RLIMIT_MEMLOCK and the
    // seccomp filter, then does its DMA read of sector 0 again.
    let out3 = vm.sh_timeout(
        "/bin/kit-probe 0000:00:04.0 2 --drop 4242 2>&1",
        Duration::from_secs(120),
    )?;
    let text3 = out3.stdout_str();
    eprintln!("--- 0000:00:04.0 unprivileged + sandboxed ---\n{text3}");
    let _ = vm.poweroff(Duration::from_secs(30));

    assert!(out.success(), "probe failed on 04.0:\n{text}");
    assert!(text.contains("probe: OK"), "{text}");
    for v in 0..2 {
        assert!(
            text.contains(&format!(
                "loopback trigger of vector {v} -> eventfd count 1"
            )),
            "{text}"
        );
    }
    assert!(text.contains("DMA read of sector 0 complete"), "{text}");
    assert!(
        text.contains("KIT-PROBE SECTOR ZERO"),
        "sector data: {text}"
    );
    // The PciFunctionHandle API on the same function.
    for line in [
        "handle: pci-0000-00-04.0 (1af4:1042), 6 capabilities, 5 vendor",
        "handle: msix vector 1 loopback -> 1",
        "handle: intx loopback round 1 -> 1, acked",
    ] {
        assert!(text.contains(line), "missing {line:?}:\n{text}");
    }

    assert!(out3.success(), "unprivileged probe failed:\n{text3}");
    assert!(text3.contains("seccomp on"), "{text3}");
    assert!(
        text3.contains("over the memlock limit fails as it should"),
        "{text3}"
    );
    assert!(text3.contains("DMA read of sector 0 complete"), "{text3}");
    assert!(
        text3.contains("handle: intx loopback round 1 -> 1, acked"),
        "{text3}"
    );

    assert!(out2.success(), "probe failed on 05.0:\n{text2}");
    assert!(text2.contains("lacks VIRTIO_F_ACCESS_PLATFORM"), "{text2}");
    Ok(())
}
