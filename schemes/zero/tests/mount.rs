//! zerod's scheme on a real FUSE mount (needs root and /dev/fuse).

use std::fs::OpenOptions;
use std::io::{Read, Write};

use nulld::SinkScheme;
use scheme::testing::TestMount;
use scheme::RootKind;

#[test]
fn one_64_mib_read_is_all_zeros() {
    let m = TestMount::new(RootKind::File, SinkScheme::zero()).expect("mount");
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.path())
        .expect("open");
    let mut buf = vec![0xa5u8; 64 << 20];
    // One read(2) call: the kernel splits it into max_pages-sized requests.
    let n = f.read(&mut buf).expect("read");
    assert_eq!(n, 64 << 20);
    assert!(buf.iter().all(|&b| b == 0));
    f.write_all(&buf[..1 << 20]).expect("write");
}
