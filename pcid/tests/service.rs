//! The pcid loop end to end on the host: a fake sysfs of the captured
//! machine, a real FUSE mount, rules, the ignore list, and a platform that
//! binds through (fake) sysfs but hands out stand-in fds instead of VFIO
//! and records the spawn requests instead of asking init. The test then
//! plays the driver on the channel it was given.

mod support;

use std::collections::BTreeSet;
use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use pci_types::PciAddress;
use pcid::pci_scheme::PciScheme;
use pcid::rules::parse_rules;
use pcid::service::{Pcid, Platform, VfioFds};
use pcid::sysfs::Sysfs;
use pcid::table::Table;
use pcid_interface::ChannelReply;
use rustix::net::{RecvFlags, SendFlags};
use scheme::testing::wait_until;
use scheme::{mount_fuse, unmount, RootKind, Server, Status};
use support::*;

/// One recorded spawn request.
struct Spawned {
    unit: String,
    instance: String,
    args: Vec<String>,
    /// Our copies of what init would have placed at 4, 5, 6.
    fds: Vec<OwnedFd>,
}

#[derive(Clone, Default)]
struct FakePlatform {
    spawned: Arc<Mutex<Vec<Spawned>>>,
    refuse_spawn: Arc<Mutex<BTreeSet<String>>>,
}

impl Platform for FakePlatform {
    fn open_vfio(&self, sysfs: &Sysfs, a: PciAddress) -> io::Result<VfioFds> {
        sysfs.bind_vfio(a)?;
        let null = || -> io::Result<Box<dyn AsFd>> {
            Ok(Box::new(OpenOptions::new().read(true).open("/dev/null")?))
        };
        Ok(VfioFds {
            container: null()?,
            device: null()?,
        })
    }

    fn spawn(
        &self,
        unit: &str,
        instance: &str,
        args: &[&str],
        fds: &[BorrowedFd<'_>],
    ) -> io::Result<()> {
        if self.refuse_spawn.lock().unwrap().contains(instance) {
            return Err(io::Error::other("init said no"));
        }
        self.spawned.lock().unwrap().push(Spawned {
            unit: unit.into(),
            instance: instance.into(),
            args: args.iter().map(|s| s.to_string()).collect(),
            fds: fds
                .iter()
                .map(|f| f.try_clone_to_owned().unwrap())
                .collect(),
        });
        Ok(())
    }
}

const RULES: &str = r#"
[[drivers]]
name = "virtio-blk"
class = 1
subclass = 0
ids = { 1af4 = [0x1001, 0x1042] }
command = ["virtio-blkd", "--verbose"]

[[drivers]]
name = "any virtio-net"
vendor = 0x1af4
class = 2
command = ["virtio-netd"]

[[drivers]]
name = "e1000"
ids = { "0x8086" = [0x100e] }
command = ["e1000d"]

[[drivers]]
name = "ahci"
class = 1
subclass = 6
command = ["ahcid"]
"#;

/// pcid serving a mount on its own thread; stopped by unmounting.
struct Running {
    mount: PathBuf,
    stop: Arc<AtomicBool>,
    done: mpsc::Receiver<io::Result<()>>,
}

impl Running {
    fn start(fake: &FakeSysfs, platform: FakePlatform, ignore: BTreeSet<PciAddress>) -> Running {
        let mount = fake.root.join("scheme-pci");
        std::fs::create_dir_all(&mount).unwrap();
        let fuse = mount_fuse(&mount, RootKind::Dir, 0, 0).unwrap();
        let sysfs = fake.sysfs();
        let rules = parse_rules("test.toml", RULES).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let (scanned_tx, scanned) = mpsc::channel();
        let (done_tx, done) = mpsc::channel();
        let s = stop.clone();
        std::thread::spawn(move || {
            let res = (|| -> io::Result<()> {
                let server = Server::new(fuse, PciScheme::new(Table::new(), sysfs))?;
                let mut pcid = Pcid::new(server, platform, rules, ignore)?;
                pcid.scan()?;
                let _ = scanned_tx.send(());
                while !s.load(Ordering::Relaxed) {
                    if pcid.poll_once(Some(Duration::from_millis(50)))? == Status::Unmounted {
                        break;
                    }
                }
                Ok(())
            })();
            let _ = done_tx.send(res);
        });
        scanned
            .recv_timeout(Duration::from_secs(10))
            .expect("the initial scan finished");
        Running { mount, stop, done }
    }

    fn summary(&self, name: &str) -> String {
        std::fs::read_to_string(self.mount.join(name).join("summary")).unwrap()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = unmount(&self.mount);
        self.stop.store(true, Ordering::Relaxed);
        match self.done.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("pcid loop failed: {e}"),
            Err(_) => eprintln!("pcid loop did not stop"),
        }
    }
}

fn ask(fd: &OwnedFd, request: &[u8]) -> ChannelReply {
    rustix::net::send(fd, request, SendFlags::NOSIGNAL).unwrap();
    let mut buf = vec![0u8; 65536];
    let mut fds = [rustix::event::PollFd::new(fd, rustix::event::PollFlags::IN)];
    let t = rustix::event::Timespec {
        tv_sec: 5,
        tv_nsec: 0,
    };
    assert_eq!(
        rustix::event::poll(&mut fds, Some(&t)).unwrap(),
        1,
        "pcid answers"
    );
    let (n, _) = rustix::net::recv(fd, &mut buf[..], RecvFlags::empty()).unwrap();
    serde_json::from_slice(&buf[..n]).unwrap()
}

#[test]
fn matched_functions_get_drivers_and_are_released_on_hang_up() {
    let fake = FakeSysfs::with_fixtures("service");
    // Already handed to vfio-pci (as after a pcid restart): bind succeeds.
    fake.bind(addr("0000:00:01.0"), "vfio-pci");
    fake.bind(addr("0000:01:00.0"), "vfio-pci");
    fake.bind(addr("0000:00:1f.2"), "vfio-pci");
    // e1000 stays with its kernel driver in the fake tree: the bind check
    // fails, which must only cost that one function.
    fake.bind(addr("0000:00:02.0"), "e1000");
    let platform = FakePlatform::default();
    // AHCI's spawn is refused by "init".
    platform
        .refuse_spawn
        .lock()
        .unwrap()
        .insert("pci-0000-00-1f.2".into());
    let ignore = BTreeSet::from([addr("0000:00:03.0")]);
    let run = Running::start(&fake, platform.clone(), ignore);

    {
        let spawned = platform.spawned.lock().unwrap();
        let got: Vec<(String, String, Vec<String>, usize)> = spawned
            .iter()
            .map(|s| {
                (
                    s.unit.clone(),
                    s.instance.clone(),
                    s.args.clone(),
                    s.fds.len(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                (
                    "virtio-blkd".into(),
                    "pci-0000-00-01.0".into(),
                    vec!["--verbose".into()],
                    3
                ),
                (
                    "virtio-blkd".into(),
                    "pci-0000-01-00.0".into(),
                    vec!["--verbose".into()],
                    3
                ),
            ],
            "virtio-net is ignored, e1000 failed to bind, ahci's spawn was refused"
        );
    }
    assert_eq!(
        std::fs::read_to_string(fake.dir(addr("0000:00:01.0")).join("driver_override")).unwrap(),
        "vfio-pci"
    );
    // The failed bind went as far as unbinding e1000 and probing.
    assert_eq!(fake.read("drivers/e1000/unbind"), "0000:00:02.0");
    assert_eq!(fake.read("drivers_probe"), "0000:00:02.0");

    for (name, owner) in [
        ("pci-0000-00-01.0", "driver virtio-blkd@pci-0000-00-01.0"),
        ("pci-0000-01-00.0", "driver virtio-blkd@pci-0000-01-00.0"),
        ("pci-0000-00-02.0", "none"),
        ("pci-0000-00-03.0", "none"),
        ("pci-0000-00-1f.2", "none"),
    ] {
        let s = run.summary(name);
        assert!(s.contains(&format!("owner      {owner}\n")), "{name}: {s}");
    }
    let busy = OpenOptions::new()
        .read(true)
        .write(true)
        .open(run.mount.join("pci-0000-00-01.0/channel"));
    assert_eq!(
        busy.unwrap_err().raw_os_error(),
        Some(syscall::error::EBUSY)
    );

    // Play the driver of 00:01.0 on its channel (fd "6").
    let channel = {
        let mut spawned = platform.spawned.lock().unwrap();
        let first = spawned.remove(0);
        first.fds.into_iter().nth(2).unwrap()
    };
    match ask(&channel, br#""Info""#) {
        ChannelReply::Info(info) => {
            assert_eq!(info.name, "pci-0000-00-01.0");
            assert_eq!(info.address, "0000:00:01.0");
            assert_eq!((info.vendor, info.device, info.class), (0x1af4, 0x1001, 1));
        }
        other => panic!("{other:?}"),
    }
    match ask(&channel, br#"{"ConfigRead":{"offset":64,"len":16}}"#) {
        ChannelReply::Config(b) => assert_eq!(b, fixture_config(addr("0000:00:01.0"))[64..80]),
        other => panic!("{other:?}"),
    }
    // Garbage, an empty packet and an oversized one: errors, no hang-up.
    for bad in [&b"{{{"[..], &b""[..], &vec![b' '; 5000][..]] {
        match ask(&channel, bad) {
            ChannelReply::Error(_) => {}
            other => panic!("{} bytes gave {other:?}", bad.len()),
        }
    }
    assert!(run
        .summary("pci-0000-00-01.0")
        .contains("owner      driver virtio-blkd@pci-0000-00-01.0"));

    // The driver exits: its end of the channel closes.
    drop(channel);
    let released = wait_until(Duration::from_secs(5), || {
        run.summary("pci-0000-00-01.0")
            .contains("owner      none\n")
    });
    assert!(released, "{}", run.summary("pci-0000-00-01.0"));
    // The other driver still owns its function.
    assert!(run
        .summary("pci-0000-01-00.0")
        .contains("owner      driver virtio-blkd@"));
    // Once released, the channel can be claimed through the scheme.
    let claim = OpenOptions::new()
        .read(true)
        .write(true)
        .open(run.mount.join("pci-0000-00-01.0/channel"));
    assert!(claim.is_ok(), "{claim:?}");
}

#[test]
fn a_function_sharing_its_iommu_group_is_left_alone() {
    let fake = FakeSysfs::with_fixtures("shared-group");
    let ahci = addr("0000:00:1f.2");
    let lpc = addr("0000:00:1f.0");
    // q35's AHCI shares group 9 with the LPC bridge. Bound to vfio-pci
    // already, so without the group check its claim would go through.
    fake.share_group(&[ahci, lpc], 9);
    fake.bind(ahci, "vfio-pci");
    fake.bind(addr("0000:00:01.0"), "vfio-pci");
    let platform = FakePlatform::default();
    let run = Running::start(&fake, platform.clone(), BTreeSet::new());
    let instances: Vec<String> = platform
        .spawned
        .lock()
        .unwrap()
        .iter()
        .map(|s| s.instance.clone())
        .collect();
    assert!(
        !instances.iter().any(|i| i == "pci-0000-00-1f.2"),
        "{instances:?}"
    );
    // Others in ordinary groups still got drivers.
    assert!(
        instances.iter().any(|i| i == "pci-0000-00-01.0"),
        "{instances:?}"
    );
    // Not even bound: its override is untouched and nothing was probed
    // for it.
    assert_eq!(fake.read(fake.dir(ahci).join("driver_override")), "");
    assert_ne!(fake.read("drivers_probe"), "0000:00:1f.2");
    assert!(run
        .summary("pci-0000-00-1f.2")
        .contains("owner      none\n"));
    assert_eq!(fake.read(fake.dir(lpc).join("driver_override")), "");
}

#[test]
fn rescan_adds_and_removes_functions() {
    let fake = FakeSysfs::with_fixtures("rescan");
    let sysfs = fake.sysfs();
    let mut table = Table::new();
    let diff = table.rescan(&sysfs).unwrap();
    assert_eq!(diff.added.len(), 10);
    assert!(diff.removed.is_empty());

    // Nothing changed: nothing reported, owners kept.
    let a = addr("0000:00:01.0");
    table.get_mut(a).unwrap().owner = pcid::table::Owner::Channel { pid: 1, handle: 0 };
    let diff = table.rescan(&sysfs).unwrap();
    assert!(diff.added.is_empty() && diff.removed.is_empty());
    assert!(!table.get(a).unwrap().owner.is_none());

    // Unplug one, plug a copy of e1000 into another slot, and put a
    // different device where the virtio-net was.
    fake.remove(addr("0000:01:00.0"));
    let e1000 = addr("0000:00:02.0");
    fake.add(
        addr("0000:02:00.0"),
        &fixture_config(e1000),
        &fixture_resource_text(e1000),
        42,
    );
    let net = addr("0000:00:03.0");
    fake.add(
        net,
        &fixture_config(e1000),
        &fixture_resource_text(e1000),
        3,
    );
    // A function sysfs lists but whose config cannot be read.
    std::fs::create_dir_all(fake.dir(addr("0000:03:00.0"))).unwrap();
    // Junk in the directory is skipped.
    std::fs::create_dir_all(fake.root.join("devices/not-an-address")).unwrap();

    let diff = table.rescan(&sysfs).unwrap();
    let mut added = diff.added.clone();
    added.sort();
    assert_eq!(added, [net, addr("0000:02:00.0")]);
    let mut removed: Vec<PciAddress> = diff.removed.iter().map(|f| f.address).collect();
    removed.sort();
    assert_eq!(removed, [net, addr("0000:01:00.0")]);
    assert_eq!(diff.failed.len(), 1);
    assert_eq!(diff.failed[0].0, addr("0000:03:00.0"));
    assert_eq!(table.get(net).unwrap().parsed.device, 0x100e);
    assert_eq!(table.len(), 10);
    assert!(
        !table.get(a).unwrap().owner.is_none(),
        "owner kept across scans"
    );
}
