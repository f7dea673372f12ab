//! nulld's scheme on a real FUSE mount (needs root and /dev/fuse).

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;

use nulld::SinkScheme;
use scheme::testing::TestMount;
use scheme::RootKind;

#[test]
fn reads_eof_and_swallows_writes() {
    let m = TestMount::new(RootKind::File, SinkScheme::null()).expect("mount");
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.path())
        .expect("open");
    f.write_all(&vec![0x55; 3 << 20]).expect("write 3 MiB");
    let mut buf = Vec::new();
    assert_eq!(f.read_to_end(&mut buf).expect("read"), 0);
    let md = f.metadata().expect("fstat");
    assert!(md.file_type().is_file());
    assert_eq!(md.mode() & 0o777, 0o666);
    assert_eq!(md.len(), 0);
    // `echo x > /scheme/null` truncates first.
    let mut t = File::create(m.path()).expect("open O_TRUNC");
    t.write_all(b"x\n").expect("write");
}
