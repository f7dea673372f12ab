//! VirtioNet against a simulated virtio-net device on two real split rings
//! in host memory: the device side takes our receive buffers and transmit
//! chains off the avail rings as the spec says, writes frames into the
//! buffers' memory and completes them, sometimes wrongly.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;

use network::NetworkScheme;
use scheme::{CallerCtx, Scheme};
use syscall::error::{EAGAIN, EINVAL};
use syscall::flag::{O_RDONLY, O_RDWR};
use virtio_core::testing::{ring, BufferMap, Desc, PortCtl, SimDevice, TestBuf, TestPort};

use super::*;

const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x06];

struct Sim {
    rx: SimDevice,
    tx: Rc<RefCell<SimDevice>>,
    bufs: BufferMap,
    /// Receive buffers the device holds, oldest first: (head, descs).
    rx_bufs: VecDeque<(u16, Vec<Desc>)>,
    /// Transmit chains taken but not completed.
    tx_taken: Vec<u16>,
    /// The port's configuration, status and doorbells.
    port: PortCtl<NetConfig>,
    /// A transmit chain the device completes at the moment the driver asks
    /// for transmit interrupts (the race the driver must close).
    complete_on_tx_irq: Rc<Cell<Option<u16>>>,
}

impl Sim {
    /// Takes the receive buffers made available since the last call.
    fn fetch_rx(&mut self) {
        for (head, descs) in self.rx.fetch() {
            assert_eq!(descs.len(), 1, "a receive buffer is one descriptor");
            assert!(descs[0].writable);
            assert_eq!(descs[0].len as usize, BUF_SIZE);
            self.rx_bufs.push_back((head, descs));
        }
    }

    /// Writes `bytes` into the oldest receive buffer and completes it
    /// claiming `len` bytes written.
    fn deliver_raw(&mut self, bytes: &[u8], len: u32) {
        self.fetch_rx();
        let (head, descs) = self.rx_bufs.pop_front().expect("no receive buffer");
        self.bufs.write(&descs[0], bytes);
        self.rx.complete(u32::from(head), len);
    }

    /// Delivers `frame` behind a header as QEMU writes it without
    /// MRG_RXBUF (num_buffers left as it was: 0 here).
    fn deliver(&mut self, frame: &[u8]) {
        let mut bytes = vec![0u8; HDR_LEN];
        bytes.extend_from_slice(frame);
        self.deliver_raw(&bytes, bytes.len() as u32);
    }

    /// Every frame queued for transmission since the last call, header
    /// checked and stripped; their chains are remembered for `complete_tx`.
    fn take_tx(&mut self) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let chains = self.tx.borrow_mut().fetch();
        for (head, descs) in chains {
            assert_eq!(descs.len(), 1, "header and frame in one descriptor");
            assert!(!descs[0].writable);
            let bytes = self.bufs.read(&descs[0]);
            assert!(bytes.len() >= HDR_LEN);
            assert_eq!(&bytes[..HDR_LEN], &[0u8; HDR_LEN], "header not zero");
            out.push(bytes[HDR_LEN..].to_vec());
            self.tx_taken.push(head);
        }
        out
    }

    fn complete_tx(&mut self, n: usize) {
        for head in self.tx_taken.drain(..n) {
            self.tx.borrow_mut().complete(u32::from(head), 0);
        }
    }

    fn set_status(&self, status: u16) {
        self.port.set_config(NetConfig {
            status,
            ..self.port.config()
        });
    }

    /// Has the device complete transmit chain `head` at the moment the
    /// driver next asks for transmit interrupts.
    fn complete_when_tx_irq_asked(&self, head: u16) {
        self.complete_on_tx_irq.set(Some(head));
        let (cell, dev) = (self.complete_on_tx_irq.clone(), self.tx.clone());
        self.port.on_interrupts_enabled(TX, move || {
            if let Some(head) = cell.take() {
                dev.borrow_mut().complete(u32::from(head), 0);
            }
        });
    }
}

type Nic = VirtioNet<TestPort<NetConfig>, TestBuf>;

fn setup_with(features: u64, status: u16, rx_size: u16, tx_size: u16) -> io::Result<(Nic, Sim)> {
    let rx = ring(rx_size);
    let tx = ring(tx_size);
    let sim_rx = SimDevice::new(&rx);
    let sim_tx = Rc::new(RefCell::new(SimDevice::new(&tx)));
    let (port, ctl) = TestPort::new(vec![rx, tx], features, NetConfig { mac: MAC, status });
    let bufs = BufferMap::new();
    let nic = VirtioNet::new(port, |len| bufs.alloc(len))?;
    let sim = Sim {
        rx: sim_rx,
        tx: sim_tx,
        bufs,
        rx_bufs: VecDeque::new(),
        tx_taken: Vec::new(),
        port: ctl,
        complete_on_tx_irq: Rc::new(Cell::new(None)),
    };
    Ok((nic, sim))
}

const ALL: u64 = WANTED;

fn setup(rx_size: u16, tx_size: u16) -> (Nic, Sim) {
    setup_with(ALL, S_LINK_UP, rx_size, tx_size).unwrap()
}

/// A frame of `len` bytes whose content depends on `seed`.
fn frame(seed: u32, len: usize) -> Vec<u8> {
    lab::pattern(u64::from(seed) + 1, len)
}

fn drain(nic: &mut Nic) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while let Some(f) = nic.receive() {
        out.push(f);
    }
    out
}

#[test]
fn receive_ring_is_full_at_start() {
    let (nic, mut sim) = setup(16, 8);
    assert_eq!(nic.mac_address(), MAC);
    assert!(nic.link_up());
    assert_eq!(sim.port.kicks(), [1, 0], "one doorbell for the whole fill");
    sim.fetch_rx();
    assert_eq!(sim.rx_bufs.len(), 16);
    assert_eq!(nic.rx_posted(), 16);
    // Sixteen distinct, non-overlapping 2 KiB buffers in one region.
    let mut addrs: Vec<u64> = sim.rx_bufs.iter().map(|(_, d)| d[0].addr).collect();
    addrs.sort_unstable();
    for w in addrs.windows(2) {
        assert!(w[1] - w[0] >= BUF_SIZE as u64, "{addrs:x?}");
    }
    for a in &addrs {
        sim.bufs.host(*a, BUF_SIZE);
    }
    assert_eq!(nic.errors(), DeviceErrors::default());
}

#[test]
fn frames_arrive_without_header_and_buffers_go_back() {
    let (mut nic, mut sim) = setup(16, 8);
    let frames = [frame(1, MIN_FRAME), frame(2, 60), frame(3, MAX_FRAME)];
    for f in &frames {
        sim.deliver(f);
    }
    sim.fetch_rx();
    assert_eq!(sim.rx_bufs.len(), 13);
    let kicks = sim.port.kicks()[0];
    let got = drain(&mut nic);
    assert_eq!(got, frames);
    // Every buffer went back into the ring and the device was told.
    assert_eq!(nic.rx_posted(), 16);
    assert_eq!(sim.port.kicks()[0], kicks + 1);
    sim.fetch_rx();
    assert_eq!(sim.rx_bufs.len(), 16);
    assert_eq!(nic.errors(), DeviceErrors::default());
    assert_eq!(nic.receive(), None);
}

/// Many times the ring's size, in bursts of random length, with the
/// device filling whatever buffers it has: nothing lost, nothing
/// corrupted, and after every drain the device holds the whole ring.
#[test]
fn a_long_stream_keeps_the_ring_full() {
    let (mut nic, mut sim) = setup(8, 8);
    let mut rng: u32 = 0x9e37_79b9;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 17;
        rng ^= rng << 5;
        rng
    };
    let mut sent = 0u32;
    let mut received = 0u32;
    while sent < 5000 {
        sim.fetch_rx();
        assert_eq!(sim.rx_bufs.len(), 8, "device starved of buffers");
        let burst = 1 + next() as usize % 8;
        for _ in 0..burst {
            let len = MIN_FRAME + next() as usize % (MAX_FRAME - MIN_FRAME + 1);
            sim.deliver(&frame(sent, len));
            sent += 1;
        }
        nic.handle_interrupt();
        for f in drain(&mut nic) {
            assert_eq!(f, frame(received, f.len()), "frame {received}");
            received += 1;
        }
        assert_eq!(received, sent);
    }
    assert_eq!(nic.errors(), DeviceErrors::default());
}

/// In a long burst the device gets buffers back while the burst is being
/// drained, not only when the used ring is empty.
#[test]
fn refills_are_announced_in_batches() {
    let (mut nic, mut sim) = setup(64, 8);
    for i in 0..64 {
        sim.deliver(&frame(i, 100));
    }
    let before = sim.port.kicks()[0];
    for _ in 0..KICK_BATCH {
        assert!(nic.receive().is_some());
    }
    assert_eq!(sim.port.kicks()[0], before + 1);
    sim.fetch_rx();
    assert_eq!(sim.rx_bufs.len(), KICK_BATCH);
    assert_eq!(drain(&mut nic).len(), 64 - KICK_BATCH);
    sim.fetch_rx();
    assert_eq!(sim.rx_bufs.len(), 64);
}

#[test]
fn bad_lengths_and_headers_are_dropped_counted_and_survived() {
    let (mut nic, mut sim) = setup(16, 8);
    let good = frame(7, 200);
    let with_hdr = |flags: u8, gso: u8, len: usize| {
        let mut b = vec![0u8; HDR_LEN + len];
        b[0] = flags;
        b[1] = gso;
        b
    };
    // Longer than the buffer, by a little and absurdly.
    sim.deliver_raw(&with_hdr(0, 0, 100), BUF_SIZE as u32 + 1);
    sim.deliver_raw(&with_hdr(0, 0, 100), u32::MAX);
    // Shorter than a header, and a header with a runt frame.
    sim.deliver_raw(&with_hdr(0, 0, 0), 0);
    sim.deliver_raw(&with_hdr(0, 0, 0), 5);
    sim.deliver_raw(
        &with_hdr(0, 0, MIN_FRAME - 1),
        (HDR_LEN + MIN_FRAME - 1) as u32,
    );
    // Fits the buffer but is longer than the MTU allows.
    sim.deliver_raw(
        &with_hdr(0, 0, MAX_FRAME + 1),
        (HDR_LEN + MAX_FRAME + 1) as u32,
    );
    // Offloads we never negotiated: partial checksum, TSO.
    sim.deliver_raw(&with_hdr(HDR_F_NEEDS_CSUM, 0, 100), (HDR_LEN + 100) as u32);
    sim.deliver_raw(&with_hdr(0, 1, 100), (HDR_LEN + 100) as u32);
    // DATA_VALID alone is harmless.
    let mut valid = with_hdr(2, 0, 0);
    valid.extend_from_slice(&good);
    sim.deliver_raw(&valid, valid.len() as u32);
    sim.deliver(&good);
    assert_eq!(drain(&mut nic), vec![good.clone(), good]);
    assert_eq!(nic.errors().rx_errors, 8);
    assert_eq!(nic.errors().tx_errors, 0);
    // Every buffer, bad ones included, is back in the ring.
    assert_eq!(nic.rx_posted(), 16);
    sim.fetch_rx();
    assert_eq!(sim.rx_bufs.len(), 16);
}

#[test]
fn used_entries_naming_nothing_are_counted() {
    let (mut nic, mut sim) = setup(4, 4);
    sim.fetch_rx();
    // An id out of range on each queue, and a transmit descriptor that is
    // not in flight.
    sim.rx.complete(99, 20);
    sim.tx.borrow_mut().complete(3, 0);
    assert_eq!(nic.receive(), None);
    nic.handle_interrupt();
    assert_eq!(
        nic.errors(),
        DeviceErrors {
            rx_errors: 1,
            tx_errors: 1
        }
    );
    // A used index far beyond what is in flight is not followed.
    sim.rx.force_used_idx(1000);
    assert_eq!(nic.receive(), None);
    assert_eq!(nic.errors().rx_errors, 2);
    assert_eq!(nic.rx_posted(), 4);
    sim.rx.force_used_idx(1);
    // Both queues still work.
    let f = frame(1, 64);
    sim.deliver(&f);
    assert_eq!(nic.receive(), Some(f.clone()));
    nic.transmit(&f).unwrap();
    assert_eq!(sim.take_tx(), vec![f]);
}

#[test]
fn transmit_sends_a_zero_header_and_reclaims_slots() {
    let (mut nic, mut sim) = setup(4, 4);
    let frames: Vec<Vec<u8>> = (0..4).map(|i| frame(i, 60 + 400 * i as usize)).collect();
    for f in &frames {
        nic.transmit(f).unwrap();
    }
    assert_eq!(sim.port.kicks()[1], 4);
    assert_eq!(nic.tx_in_flight(), 4);
    // Ring full: EAGAIN, and nothing reaches the device.
    assert_eq!(
        nic.transmit(&frames[0]).unwrap_err().errno,
        EAGAIN,
        "full ring"
    );
    assert_eq!(sim.take_tx(), frames);
    assert!(sim.take_tx().is_empty());
    // Two finish: the next transmit reclaims them by itself.
    sim.complete_tx(2);
    let more = frame(9, MAX_FRAME);
    nic.transmit(&more).unwrap();
    nic.transmit(&more).unwrap();
    assert_eq!(nic.transmit(&more).unwrap_err().errno, EAGAIN);
    assert_eq!(sim.take_tx(), vec![more.clone(), more]);
    // The interrupt path reclaims too.
    sim.complete_tx(4);
    nic.handle_interrupt();
    assert_eq!(nic.tx_in_flight(), 0);
    assert_eq!(nic.errors(), DeviceErrors::default());
}

#[test]
fn transmit_refuses_bad_sizes() {
    let (mut nic, mut sim) = setup(4, 4);
    for len in [0, MIN_FRAME - 1, MAX_FRAME + 1] {
        assert_eq!(nic.transmit(&vec![0; len]).unwrap_err().errno, EINVAL);
    }
    assert!(sim.take_tx().is_empty());
    assert_eq!(sim.port.kicks()[1], 0);
}

#[test]
fn link_changes_follow_the_status_field() {
    let (mut nic, sim) = setup_with(ALL, 0, 4, 4).unwrap();
    assert!(!nic.link_up());
    assert_eq!(nic.config_changed().unwrap(), None);
    sim.set_status(S_LINK_UP);
    assert_eq!(nic.config_changed().unwrap(), Some(true));
    assert!(nic.link_up());
    assert_eq!(nic.config_changed().unwrap(), None);
    // ANNOUNCE (bit 1) alone does not change the link.
    sim.set_status(S_LINK_UP | 2);
    assert_eq!(nic.config_changed().unwrap(), None);
    sim.set_status(0);
    assert_eq!(nic.config_changed().unwrap(), Some(false));
    assert!(!nic.link_up());
    // An unreadable configuration keeps the link as it was.
    sim.port.set_fail_config(true);
    assert_eq!(nic.config_changed().unwrap(), None);
    assert!(!nic.link_up());
    sim.port.set_fail_config(false);
    // A device that needs a reset is reported, and the link is down.
    sim.set_status(S_LINK_UP);
    sim.port.set_needs_reset(true);
    assert!(nic.config_changed().is_err());
    assert!(!nic.link_up());
}

#[test]
fn without_status_the_link_is_up() {
    let (mut nic, sim) = setup_with(bit(feature::MAC), 0, 4, 4).unwrap();
    assert!(nic.link_up());
    sim.set_status(0);
    assert_eq!(nic.config_changed().unwrap(), None);
    assert!(nic.link_up());
}

#[test]
fn a_device_without_a_mac_is_refused() {
    let e = setup_with(bit(feature::STATUS), S_LINK_UP, 4, 4)
        .err()
        .unwrap();
    assert!(e.to_string().contains("VIRTIO_NET_F_MAC"), "{e}");
}

/// Through the `network` scheme, as the daemon wires it: frames the device
/// delivers reach a reader after `on_irq`, writes reach the device, and
/// device errors show in `/stats`.
#[test]
fn through_the_network_scheme() {
    let (nic, mut sim) = setup(8, 4);
    let mut s = NetworkScheme::new(nic);
    let ctx = CallerCtx {
        uid: 0,
        gid: 0,
        pid: 1,
        request: 0,
    };
    let id = s.openat(network::FRAMES, O_RDWR, &ctx).unwrap().id;
    let frames: Vec<Vec<u8>> = (0..20).map(|i| frame(i, 60 + 70 * i as usize)).collect();
    let mut got = Vec::new();
    for chunk in frames.chunks(5) {
        for f in chunk {
            sim.deliver(f);
        }
        sim.deliver_raw(&[0u8; HDR_LEN], 3);
        s.on_irq();
        let mut buf = vec![0u8; 2048];
        while let Ok(n) = s.read(id, &mut buf, 0, 0, &ctx) {
            got.push(buf[..n].to_vec());
        }
    }
    assert_eq!(got, frames);
    let out = frame(100, 1000);
    assert_eq!(s.write(id, &out, 0, 0, &ctx).unwrap(), out.len());
    assert_eq!(sim.take_tx(), vec![out]);
    let stats = s.openat("stats", O_RDONLY, &ctx).unwrap().id;
    let mut buf = vec![0u8; 512];
    let n = s.read(stats, &mut buf, 0, 0, &ctx).unwrap();
    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(text.contains("rx_frames 20\n"), "{text}");
    assert!(text.contains("tx_frames 1\n"), "{text}");
    assert!(text.contains("rx_errors 4\n"), "{text}");
}

/// The transmit interrupt is only asked for while the ring is full, and
/// dropped again once there is room.
#[test]
fn transmit_interrupts_only_while_full() {
    let (mut nic, mut sim) = setup(4, 2);
    let tx_irq = |sim: &Sim| sim.tx.borrow().interrupts_wanted();
    assert!(!tx_irq(&sim), "suppressed at start");
    assert!(sim.rx.interrupts_wanted(), "receive interrupts stay on");
    let f = frame(1, 100);
    nic.transmit(&f).unwrap();
    nic.transmit(&f).unwrap();
    assert!(!tx_irq(&sim));
    assert_eq!(nic.transmit(&f).unwrap_err().errno, EAGAIN);
    assert!(tx_irq(&sim), "a parked writer needs the interrupt");
    assert_eq!(sim.take_tx().len(), 2);
    sim.complete_tx(1);
    // The interrupt: room again, so no more interrupts.
    nic.handle_interrupt();
    assert!(!tx_irq(&sim));
    nic.transmit(&f).unwrap();
    assert!(!tx_irq(&sim));
    assert!(sim.rx.interrupts_wanted());
}

/// A slot the device finishes just as the driver asks for the interrupt
/// raises none; the driver's second look must find it, or the writer
/// would wait for an interrupt that never comes.
#[test]
fn a_completion_racing_the_interrupt_request_is_not_lost() {
    let (mut nic, mut sim) = setup(4, 2);
    let f = frame(1, 100);
    nic.transmit(&f).unwrap();
    nic.transmit(&f).unwrap();
    sim.take_tx();
    sim.complete_when_tx_irq_asked(sim.tx_taken[0]);
    nic.transmit(&f).unwrap();
    assert_eq!(sim.complete_on_tx_irq.get(), None, "the race was exercised");
    assert!(!sim.tx.borrow().interrupts_wanted());
    assert_eq!(nic.tx_in_flight(), 2);
}
