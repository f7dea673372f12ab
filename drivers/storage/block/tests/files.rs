//! A driver's extra read-only files beside the disks
//! (`DiskScheme::add_file`): rendered at open, read at any offset, never
//! written, and a failing source fails only its open.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use block::testing::{mem_disk, Order};
use block::DiskScheme;
use scheme::{CallerCtx, Scheme, Stat};
use syscall::error::{EACCES, EBADF, EIO, ENOENT, ENOTTY};
use syscall::flag::{MODE_FILE, O_RDONLY, O_RDWR, O_STAT, O_WRONLY};

fn ctx(uid: u32) -> CallerCtx {
    CallerCtx {
        uid,
        gid: uid,
        pid: 1,
        request: 7,
    }
}

#[test]
fn extra_files_are_rendered_at_open_and_read_only() {
    let (d, c) = mem_disk(vec![0; 64 * 512], 4096, 4);
    let mut s = DiskScheme::new(vec![d], &mut |_| {
        c.fire(Order::Submitted);
        Ok(())
    });
    let renders = Arc::new(AtomicU32::new(0));
    let r = renders.clone();
    s.add_file(
        "health",
        Box::new(move || {
            let n = r.fetch_add(1, Ordering::Relaxed) + 1;
            Ok(format!("render {n}\n").into_bytes())
        }),
    )
    .unwrap();
    s.add_file(
        "broken",
        Box::new(|| Err(std::io::Error::other("device says no"))),
    )
    .unwrap();
    // Names taken by a disk or another file are refused.
    assert!(s.add_file("0", Box::new(|| Ok(Vec::new()))).is_err());
    assert!(s.add_file("health", Box::new(|| Ok(Vec::new()))).is_err());
    assert!(s.add_file("a/b", Box::new(|| Ok(Vec::new()))).is_err());

    // A stat-only open renders nothing until asked for the size, which
    // the kernel bounds reads by.
    let st_id = s.openat("health", O_STAT, &ctx(1000)).unwrap().id;
    assert_eq!(renders.load(Ordering::Relaxed), 0);
    let mut st = Stat::default();
    s.fstat(st_id, &mut st, &ctx(1000)).unwrap();
    assert_eq!(st.st_mode, MODE_FILE | 0o444);
    assert_eq!(st.st_size, 9);
    assert_eq!(renders.load(Ordering::Relaxed), 1);
    renders.store(0, Ordering::Relaxed);

    // Anyone may read; each open is a fresh snapshot, read at any offset.
    let a = s.openat("health", O_RDONLY, &ctx(1000)).unwrap().id;
    let b = s.openat("health", O_RDONLY, &ctx(1000)).unwrap().id;
    assert_eq!(renders.load(Ordering::Relaxed), 2);
    let mut buf = [0u8; 64];
    let n = s.read(a, &mut buf, 0, 0, &ctx(1000)).unwrap();
    assert_eq!(&buf[..n], b"render 1\n");
    let n = s.read(b, &mut buf, 7, 0, &ctx(1000)).unwrap();
    assert_eq!(&buf[..n], b"2\n");
    assert_eq!(s.read(b, &mut buf, 1 << 40, 0, &ctx(1000)).unwrap(), 0);
    s.fstat(a, &mut st, &ctx(1000)).unwrap();
    assert_eq!(st.st_size, 9);

    // Never written, no ioctls; a failing source fails its open only.
    for flags in [O_WRONLY, O_RDWR] {
        assert_eq!(
            s.openat("health", flags, &ctx(0)).unwrap_err().errno,
            EACCES
        );
    }
    assert_eq!(s.write(a, b"x", 0, 0, &ctx(0)).unwrap_err().errno, EBADF);
    let mut payload = [0u8; 8];
    assert_eq!(
        s.call(a, &mut payload, &[0x8008_1272], &ctx(0))
            .unwrap_err()
            .errno,
        ENOTTY
    );
    assert_eq!(
        s.openat("broken", O_RDONLY, &ctx(0)).unwrap_err().errno,
        EIO
    );
    assert_eq!(
        s.openat("healthy", O_RDONLY, &ctx(0)).unwrap_err().errno,
        ENOENT
    );
    // The disk beside them is unaffected.
    assert!(s.openat("0", O_RDONLY, &ctx(0)).is_ok());
}
