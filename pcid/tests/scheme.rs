//! `/scheme/pci` on a real FUSE mount (needs root and /dev/fuse), served
//! from a fake sysfs tree holding the captured functions; and the access
//! rules checked directly against the scheme with non-root callers.

mod support;

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;

use pcid::pci_scheme::PciScheme;
use pcid::table::{Owner, Table};
use pcid_interface::ChannelReply;
use scheme::testing::TestMount;
use scheme::{CallerCtx, RootKind, Scheme};
use support::*;
use syscall::error::{EACCES, EBUSY, EISDIR, ENODEV, ENOENT};
use syscall::flag::{O_RDONLY, O_RDWR, O_STAT, O_WRONLY};

fn scheme_from(fake: &FakeSysfs) -> PciScheme {
    let sysfs = fake.sysfs();
    let mut table = Table::new();
    let diff = table.rescan(&sysfs).unwrap();
    assert!(diff.failed.is_empty(), "{:?}", diff.failed);
    PciScheme::new(table, sysfs)
}

fn ask(ch: &mut std::fs::File, request: &[u8]) -> ChannelReply {
    ch.write_all(request).unwrap();
    let mut buf = vec![0u8; 65536];
    let n = ch.read(&mut buf).unwrap();
    serde_json::from_slice(&buf[..n]).unwrap()
}

#[test]
fn listing_config_and_summary_on_a_mount() {
    let fake = FakeSysfs::with_fixtures("mount");
    fake.bind(addr("0000:00:02.0"), "e1000");
    let mount = TestMount::new(RootKind::Dir, scheme_from(&fake)).unwrap();

    let mut names: Vec<String> = std::fs::read_dir(mount.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    let want: Vec<String> = fixture_addresses()
        .into_iter()
        .map(pcid::addr::function_name)
        .collect();
    assert_eq!(names, want);

    let dir = mount.join("pci-0000-01-00.0");
    assert!(std::fs::metadata(&dir).unwrap().is_dir());
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    files.sort();
    assert_eq!(files, ["channel", "config", "summary"]);

    // config: the whole sysfs file, byte for byte.
    for a in [addr("0000:00:01.0"), addr("0000:01:00.0")] {
        let path = mount.join(&format!("{}/config", pcid::addr::function_name(a)));
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes, fixture_config(a));
        let md = std::fs::metadata(&path).unwrap();
        assert_eq!(md.len(), bytes.len() as u64);
        assert_eq!(md.mode() & 0o777, 0o444);
    }
    assert!(OpenOptions::new()
        .write(true)
        .open(mount.join("pci-0000-00-01.0/config"))
        .is_err());

    let summary = std::fs::read_to_string(mount.join("pci-0000-00-02.0/summary")).unwrap();
    assert!(summary.contains("id         8086:100e"), "{summary}");
    assert!(summary.contains("driver     e1000"), "{summary}");
    assert!(summary.contains("owner      none"), "{summary}");

    let missing = std::fs::metadata(mount.join("pci-0000-00-09.0"));
    assert_eq!(missing.unwrap_err().raw_os_error(), Some(ENOENT));
    assert!(std::fs::metadata(mount.join("pci-0000-00-01.0/other")).is_err());
}

#[test]
fn channel_claims_answers_and_releases() {
    let fake = FakeSysfs::with_fixtures("channel");
    let mount = TestMount::new(RootKind::Dir, scheme_from(&fake)).unwrap();
    let path = mount.join("pci-0000-00-01.0/channel");
    let summary = mount.join("pci-0000-00-01.0/summary");

    // stat does not claim
    assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);

    let mut ch = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let busy = OpenOptions::new().read(true).write(true).open(&path);
    assert_eq!(busy.unwrap_err().raw_os_error(), Some(EBUSY));
    // FUSE names the calling thread (its id is the pid of a
    // single-threaded process).
    let tid = rustix::thread::gettid().as_raw_nonzero();
    let s = std::fs::read_to_string(&summary).unwrap();
    assert!(
        s.contains(&format!("owner      channel opened by pid {tid}")),
        "{s}"
    );

    match ask(&mut ch, br#""Info""#) {
        ChannelReply::Info(info) => {
            assert_eq!(info.name, "pci-0000-00-01.0");
            assert_eq!((info.vendor, info.device), (0x1af4, 0x1001));
            assert_eq!(info.bars.len(), 3);
        }
        other => panic!("{other:?}"),
    }
    match ask(&mut ch, br#"{"ConfigRead":{"offset":0,"len":8}}"#) {
        ChannelReply::Config(bytes) => assert_eq!(bytes, fixture_config(addr("0000:00:01.0"))[..8]),
        other => panic!("{other:?}"),
    }
    for bad in [
        &b"not json"[..],
        br#"{"ConfigRead":{"offset":250,"len":8}}"#,
        br#"{"ConfigRead":{"offset":0,"len":70000}}"#,
        br#"{"Nope":1}"#,
        &[0xff, 0xfe, 0x00][..],
    ] {
        match ask(&mut ch, bad) {
            ChannelReply::Error(msg) => assert!(!msg.is_empty()),
            other => panic!("{:?} gave {other:?}", String::from_utf8_lossy(bad)),
        }
    }
    // A reply is read once; then there is nothing (end of file).
    let mut buf = [0u8; 16];
    assert_eq!(ch.read(&mut buf).unwrap(), 0);

    drop(ch);
    // The release happens when the kernel sends RELEASE: wait for it.
    let released = scheme::testing::wait_until(std::time::Duration::from_secs(5), || {
        std::fs::read_to_string(&summary)
            .unwrap()
            .contains("owner      none")
    });
    assert!(released, "closing the channel releases the function");
    let again = OpenOptions::new().read(true).write(true).open(&path);
    assert!(again.is_ok(), "{again:?}");
}

fn ctx(uid: u32, pid: u32) -> CallerCtx {
    CallerCtx {
        uid,
        gid: uid,
        pid,
        ..Default::default()
    }
}

#[test]
fn non_root_may_read_but_not_claim() {
    let fake = FakeSysfs::with_fixtures("access");
    let mut s = scheme_from(&fake);
    let user = ctx(1000, 42);
    let root = s.openat("", O_RDONLY, &user).unwrap();
    s.on_close(root.id);
    for file in ["config", "summary"] {
        let h = s
            .openat(&format!("pci-0000-00-01.0/{file}"), O_RDONLY, &user)
            .unwrap();
        let mut buf = [0u8; 4];
        assert_eq!(s.read(h.id, &mut buf, 0, 0, &user), Ok(4));
        s.on_close(h.id);
        let w = s.openat(&format!("pci-0000-00-01.0/{file}"), O_WRONLY, &user);
        assert_eq!(w.unwrap_err().errno, EACCES, "{file} is read-only");
    }
    let ch = s.openat("pci-0000-00-01.0/channel", O_RDWR, &user);
    assert_eq!(ch.unwrap_err().errno, EACCES);
    // Stat works for anyone and claims nothing.
    let st = s.openat("pci-0000-00-01.0/channel", O_STAT, &user).unwrap();
    s.on_close(st.id);
    assert_eq!(
        s.table().get(addr("0000:00:01.0")).unwrap().owner,
        Owner::None
    );
    assert_eq!(s.open_handles(), 0);

    assert_eq!(
        s.openat("pci-0000-00-01.0", O_WRONLY, &user)
            .unwrap_err()
            .errno,
        EISDIR
    );
    assert_eq!(
        s.openat("pci-0000-00-09.0/config", O_RDONLY, &user)
            .unwrap_err()
            .errno,
        ENOENT
    );
    assert_eq!(
        s.openat("pci-0000-00-01.0/config/x", O_RDONLY, &user)
            .unwrap_err()
            .errno,
        ENOENT
    );
}

#[test]
fn driver_owned_functions_are_busy_and_removal_gives_enodev() {
    let fake = FakeSysfs::with_fixtures("owned");
    let mut s = scheme_from(&fake);
    let root = ctx(0, 7);
    let a = addr("0000:00:01.0");
    s.table_mut().get_mut(a).unwrap().owner = Owner::Driver {
        unit: "virtio-blkd".into(),
        instance: "pci-0000-00-01.0".into(),
        channel: 1,
    };
    assert_eq!(
        s.openat("pci-0000-00-01.0/channel", O_RDWR, &root)
            .unwrap_err()
            .errno,
        EBUSY
    );
    let h = s
        .openat("pci-0000-00-01.0/summary", O_RDONLY, &root)
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(h.id, &mut buf, 0, 0, &root).unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(
        text.contains("owner      driver virtio-blkd@pci-0000-00-01.0"),
        "{text}"
    );
    s.on_close(h.id);

    // A channel whose function goes away fails cleanly.
    let b = addr("0000:00:03.0");
    let ch = s.openat("pci-0000-00-03.0/channel", O_RDWR, &root).unwrap();
    s.table_mut().remove(b);
    assert_eq!(
        s.write(ch.id, b"\"Info\"", 0, 0, &root).unwrap_err().errno,
        ENODEV
    );
    s.on_close(ch.id);
    assert_eq!(s.open_handles(), 0);
}
