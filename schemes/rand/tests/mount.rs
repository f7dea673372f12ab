//! randd's scheme on a real FUSE mount (needs root and /dev/fuse).

use std::fs::{File, OpenOptions};
use std::io::Read;

use randd::RandScheme;
use scheme::testing::TestMount;
use scheme::RootKind;

#[test]
fn reads_random_and_refuses_writes() {
    let m = TestMount::new(RootKind::File, RandScheme::new()).expect("mount");
    let mut f = File::open(m.path()).expect("open");
    let (mut a, mut b) = ([0u8; 4096], [0u8; 4096]);
    f.read_exact(&mut a).expect("read");
    f.read_exact(&mut b).expect("read");
    assert_ne!(a, b);
    assert!(a.iter().any(|&x| x != 0));
    let err = OpenOptions::new()
        .write(true)
        .open(m.path())
        .expect_err("write open must fail");
    assert_eq!(err.raw_os_error(), Some(libc_eacces()));
    // Writing through a read-only descriptor fails too (in the kernel).
    use std::io::Write;
    assert!(f.write(b"x").is_err());
}

fn libc_eacces() -> i32 {
    13
}
