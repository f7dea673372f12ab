//! Test double: an in-memory NIC ([`LoopbackNic`]) with a bounded TX ring.
//!
//! `transmit` puts a frame into the TX ring (`EAGAIN` when it holds
//! `tx_slots` frames). Nothing leaves the ring until an interrupt is
//! handled: `handle_interrupt` moves the ring's frames onto the "wire"
//! (`NicCtl::take_wire`), and with `loopback` also into the receive queue,
//! as a NIC in loopback mode would. The test injects received frames with
//! [`NicCtl::inject`], which, like a device, raises an interrupt: one byte
//! on the socket given to [`NicCtl::set_irq`], so a mounted scheme's loop
//! (`TestMount::with_irq`) calls `on_irq`.

use std::collections::VecDeque;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex, MutexGuard};

use syscall::error::{Error, EAGAIN};

use crate::{DeviceErrors, NetworkDevice};

/// Everything the device and the test share.
#[derive(Debug)]
pub struct NicState {
    pub mac: [u8; 6],
    pub link_up: bool,
    /// Frames the TX ring holds.
    pub tx_slots: usize,
    /// Frames taken by `transmit`, not yet sent (until the next interrupt).
    pub tx_ring: Vec<Vec<u8>>,
    /// Frames sent, in order (what went out on the wire).
    pub wire: Vec<Vec<u8>>,
    /// Frames received, waiting for `receive`.
    pub rx: VecDeque<Vec<u8>>,
    /// Sent frames also come back in (at the interrupt that sends them).
    pub loopback: bool,
    /// `transmit` raises an interrupt (a TX-done interrupt); without it the
    /// test fires interrupts itself.
    pub tx_interrupts: bool,
    /// `transmit` fails with this errno (a dead device).
    pub fail_tx: Option<i32>,
    pub errors: DeviceErrors,
    /// `handle_interrupt` calls.
    pub interrupts: usize,
    /// `transmit` calls refused with `EAGAIN`.
    pub tx_refused: usize,
    irq: Option<UnixStream>,
}

impl NicState {
    fn lock(state: &Mutex<NicState>) -> MutexGuard<'_, NicState> {
        // A test that panicked while holding the lock already failed.
        state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn raise(&mut self) {
        if let Some(s) = &mut self.irq {
            // Non-blocking: a full socket already holds a pending interrupt.
            let _ = s.write(&[1]);
        }
    }
}

/// The device half, handed to `NetworkScheme::new`.
#[derive(Debug)]
pub struct LoopbackNic {
    state: Arc<Mutex<NicState>>,
}

/// The test's half: inject frames, look at the wire, fire interrupts.
#[derive(Debug, Clone)]
pub struct NicCtl {
    state: Arc<Mutex<NicState>>,
}

/// A NIC with MAC `mac` and a TX ring of `tx_slots` frames; link up, no
/// loopback, no TX interrupts.
pub fn loopback_nic(mac: [u8; 6], tx_slots: usize) -> (LoopbackNic, NicCtl) {
    let state = Arc::new(Mutex::new(NicState {
        mac,
        link_up: true,
        tx_slots,
        tx_ring: Vec::new(),
        wire: Vec::new(),
        rx: VecDeque::new(),
        loopback: false,
        tx_interrupts: false,
        fail_tx: None,
        errors: DeviceErrors::default(),
        interrupts: 0,
        tx_refused: 0,
        irq: None,
    }));
    (
        LoopbackNic {
            state: state.clone(),
        },
        NicCtl { state },
    )
}

impl NicCtl {
    pub fn state(&self) -> MutexGuard<'_, NicState> {
        NicState::lock(&self.state)
    }

    /// Where interrupts go: one byte per interrupt (made non-blocking).
    pub fn set_irq(&self, s: UnixStream) {
        let _ = s.set_nonblocking(true);
        self.state().irq = Some(s);
    }

    /// Raises an interrupt.
    pub fn fire(&self) {
        self.state().raise();
    }

    /// Frames arrive from the wire; one interrupt.
    pub fn inject<I: IntoIterator<Item = Vec<u8>>>(&self, frames: I) {
        let mut st = self.state();
        st.rx.extend(frames);
        st.raise();
    }

    /// The frames sent so far (and forgets them).
    pub fn take_wire(&self) -> Vec<Vec<u8>> {
        std::mem::take(&mut self.state().wire)
    }

    /// Changes the link state; one interrupt.
    pub fn set_link(&self, up: bool) {
        let mut st = self.state();
        st.link_up = up;
        st.raise();
    }
}

impl NetworkDevice for LoopbackNic {
    fn mac_address(&self) -> [u8; 6] {
        NicState::lock(&self.state).mac
    }

    fn link_up(&self) -> bool {
        NicState::lock(&self.state).link_up
    }

    fn handle_interrupt(&mut self) {
        let mut st = NicState::lock(&self.state);
        st.interrupts += 1;
        let sent = std::mem::take(&mut st.tx_ring);
        if st.loopback {
            st.rx.extend(sent.iter().cloned());
        }
        st.wire.extend(sent);
    }

    fn transmit(&mut self, frame: &[u8]) -> syscall::Result<()> {
        let mut st = NicState::lock(&self.state);
        if let Some(errno) = st.fail_tx {
            return Err(Error::new(errno));
        }
        if st.tx_ring.len() >= st.tx_slots {
            st.tx_refused += 1;
            return Err(Error::new(EAGAIN));
        }
        st.tx_ring.push(frame.to_vec());
        if st.tx_interrupts {
            st.raise();
        }
        Ok(())
    }

    fn receive(&mut self) -> Option<Vec<u8>> {
        NicState::lock(&self.state).rx.pop_front()
    }

    fn errors(&self) -> DeviceErrors {
        NicState::lock(&self.state).errors
    }
}

/// xorshift64*: a small deterministic generator for test data.
pub fn next_random(x: u64) -> u64 {
    let mut x = x.max(1);
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    x.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

/// A test frame: broadcast destination, `src` as source, EtherType 0x88b5,
/// then `len - 14` bytes derived from `seed`.
pub fn test_frame(src: [u8; 6], len: usize, seed: u64) -> Vec<u8> {
    let mut f = Vec::with_capacity(len);
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&src);
    f.extend_from_slice(&[0x88, 0xb5]);
    let mut r = seed;
    while f.len() < len {
        r = next_random(r);
        f.push((r >> 56) as u8);
    }
    f.truncate(len.max(14));
    f
}
