//! nettool through the real `network.*` scheme on a FUSE mount (needs root
//! and /dev/fuse, like the scheme crates' own mount tests): the in-memory
//! NIC in loopback mode is a shared wire, and every open `frames` handle
//! receives every frame, so nettool on one handle and the test peer
//! (tests/common) on another talk through the scheme's non-blocking reads,
//! writes and poll wake-ups.

mod common;

use std::os::unix::net::UnixStream;
use std::time::Duration;

use common::*;
use nettool::fetch::{fetch, FetchOptions};
use nettool::http::Url;
use nettool::phy::FrameDevice;
use nettool::ping::{ping, PingOptions};
use nettool::stack::Stack;
use network::testing::{loopback_nic, LoopbackNic, NicCtl};
use network::NetworkScheme;
use scheme::testing::TestMount;
use scheme::RootKind;

const SCHEME_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x05];

fn mount() -> (TestMount, NicCtl) {
    let (dev, ctl) = loopback_nic(SCHEME_MAC, 64);
    {
        let mut st = ctl.state();
        st.loopback = true;
        st.tx_interrupts = true;
    }
    let (tx, rx) = UnixStream::pair().expect("socketpair");
    ctl.set_irq(tx);
    let m = TestMount::with_irq(
        RootKind::Dir,
        NetworkScheme::new(dev),
        rx.into(),
        |s: &mut NetworkScheme<LoopbackNic>| s.on_irq(),
    )
    .expect("mount the network scheme (root and /dev/fuse needed)");
    (m, ctl)
}

#[test]
fn dhcp_ping_and_fetch_through_the_scheme() {
    let (m, ctl) = mount();
    let dir = m.path().to_string_lossy().into_owned();
    let paths = nettool::scheme_paths(&dir);
    // The peer: a second handle on the same wire.
    let data = pattern(2 << 20);
    let peer = start_peer(
        PeerConfig {
            dhcp: true,
            http: Some(http_ok(&data)),
            keep_open: true,
            ..PeerConfig::default()
        },
        FrameDevice::open(&paths.frames).unwrap(),
    );
    // nettool: the MAC from the scheme's mac file, frames from its own handle.
    let mac = nettool::read_mac(&paths.mac).unwrap();
    assert_eq!(mac.0, SCHEME_MAC);
    let mut stack = Stack::new(FrameDevice::open(&paths.frames).unwrap(), mac).unwrap();

    let lease = nettool::dhcp::acquire(&mut stack, Duration::from_secs(20)).unwrap();
    assert_eq!(lease.address.to_string(), "10.0.2.15/24");
    assert_eq!(lease.server, SERVER);

    let mut out = Vec::new();
    let opts = PingOptions {
        count: 3,
        interval: Duration::from_millis(20),
        ..PingOptions::default()
    };
    let s = ping(&mut stack, SERVER, &opts, &mut out).unwrap();
    assert_eq!(s.received, 3, "{}", String::from_utf8_lossy(&out));

    let mut body = Vec::new();
    let s = fetch(
        &mut stack,
        &Url::parse("http://10.0.2.2/file").unwrap(),
        &FetchOptions {
            connect_timeout: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(20),
        },
        &mut body,
    )
    .unwrap();
    assert_eq!(s.bytes, data.len() as u64);
    assert!(body == data, "body differs");
    eprintln!("fetch through the FUSE scheme: {:.1} MB/s", s.mb_per_s());
    drop(peer);
    drop(stack);
    // Everything nettool sent went through the device.
    assert!(ctl.state().interrupts > 0);
}
