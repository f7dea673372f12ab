//! The 8254x legacy descriptor rings (SDM 3.2 receive, 3.3 transmit) as
//! pure bookkeeping: which descriptors the device owns, which we own, what
//! to write to the tail register. The rings never touch a register; the
//! caller writes `RDT`/`TDT` with the values they return, after a `wmb()`.
//!
//! Generic over the memory ([`DescMem`], [`Buffer`]) so the index logic runs
//! on the host, with the test playing the device exactly as the SDM says it
//! behaves (write the buffer, then the descriptor's length/status with DD).
//!
//! Receive: every descriptor but one is posted. The device owns
//! `RDH..RDT-1`; we keep `tail == next - 1` (mod size), the one spare that
//! tells a full ring from an empty one. Each consumed descriptor is cleared
//! at once and handed back with the next tail update, where it is checked
//! again: a descriptor the device wrote while it was ours is a device fault.
//!
//! Transmit: `clean..tail` are in flight; at most `size - 1`. A descriptor is
//! reclaimed when the device has set DD on it (we always ask with RS).

use common::barrier::rmb;
use zerocopy::little_endian::{U16, U64};
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout};

/// Bytes per buffer, RCTL.BSIZE = 00 (2048) without BSEX. A 1514-byte
/// frame (1518 with an FCS we ask the device to strip) fits in one.
pub const BUF_SIZE: usize = 2048;
/// The shortest frame the wire carries without its FCS; shorter frames are
/// padded with zeros before they are sent.
pub const MIN_WIRE_FRAME: usize = 60;
/// An Ethernet header: anything shorter the device reports is not a frame.
pub const ETH_HEADER: usize = 14;

/// Receive descriptor status bits (SDM table 3-2).
pub mod rx_status {
    pub const DD: u8 = 1 << 0;
    pub const EOP: u8 = 1 << 1;
}

/// Receive descriptor error bits (SDM table 3-3) that make a frame bad:
/// CRC/alignment (CE), symbol (SE), sequence (SEQ), carrier extension
/// (CXE), RX data error (RXE). TCPE/IPE are checksum-offload results the
/// frame itself does not depend on (and we do not enable the offload).
pub mod rx_error {
    pub const CE: u8 = 1 << 0;
    pub const SE: u8 = 1 << 1;
    pub const SEQ: u8 = 1 << 2;
    pub const CXE: u8 = 1 << 4;
    pub const RXE: u8 = 1 << 7;
    pub const FRAME: u8 = CE | SE | SEQ | CXE | RXE;
}

/// Transmit descriptor command bits (SDM table 3-10).
pub mod tx_cmd {
    /// End of packet: this descriptor ends the frame.
    pub const EOP: u8 = 1 << 0;
    /// Insert FCS.
    pub const IFCS: u8 = 1 << 1;
    /// Report status: the device writes DD back when done.
    pub const RS: u8 = 1 << 3;
}

/// Transmit descriptor status bits (SDM table 3-11).
pub mod tx_status {
    pub const DD: u8 = 1 << 0;
    /// Excess collisions, late collision, underrun: the frame failed.
    pub const EC: u8 = 1 << 1;
    pub const LC: u8 = 1 << 2;
    pub const TU: u8 = 1 << 3;
    pub const FAILED: u8 = EC | LC | TU;
}

/// Legacy receive descriptor (SDM 3.2.3), 16 bytes, little-endian.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct RxDesc {
    pub addr: U64,
    pub length: U16,
    pub checksum: U16,
    pub status: u8,
    pub errors: u8,
    pub special: U16,
}

/// Legacy transmit descriptor (SDM 3.3.3), 16 bytes, little-endian.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct TxDesc {
    pub addr: U64,
    pub length: U16,
    pub cso: u8,
    pub cmd: u8,
    pub status: u8,
    pub css: u8,
    pub special: U16,
}

/// Descriptor memory the device also writes: every access is volatile.
pub trait DescMem<T> {
    fn count(&self) -> usize;
    /// Where the device finds the ring.
    fn iova(&self) -> u64;
    /// Descriptor `i` (all zeros if out of range: never for our indices).
    fn load(&self, i: usize) -> T;
    /// The status byte alone, so a DD poll does not read the whole
    /// descriptor before the barrier.
    fn status(&self, i: usize) -> u8;
    fn store(&mut self, i: usize, d: T);
}

pub use common::dma::Buffer;

impl<T: Copy + FromZeros + HasStatus> DescMem<T> for common::dma::Dma<[T]> {
    fn count(&self) -> usize {
        self.len()
    }
    fn iova(&self) -> u64 {
        common::dma::Dma::iova(self)
    }
    fn load(&self, i: usize) -> T {
        if i >= self.len() {
            return T::new_zeroed();
        }
        // SAFETY: `i` is in bounds of the live DMA slice, which is aligned
        // for T (page-aligned mapping); every bit pattern is a valid T.
        unsafe { self.as_ptr().cast::<T>().add(i).read_volatile() }
    }
    fn status(&self, i: usize) -> u8 {
        if i >= self.len() {
            return 0;
        }
        // SAFETY: in bounds as above; the status byte lies inside element
        // `i` at T::STATUS_OFFSET (checked against the layout in tests).
        unsafe {
            self.as_ptr()
                .cast::<T>()
                .add(i)
                .cast::<u8>()
                .add(T::STATUS_OFFSET)
                .read_volatile()
        }
    }
    fn store(&mut self, i: usize, d: T) {
        if i >= self.len() {
            return;
        }
        // SAFETY: in bounds and aligned as above; `&mut self` is exclusive
        // on the CPU side.
        unsafe { self.as_mut_ptr().cast::<T>().add(i).write_volatile(d) }
    }
}

/// Where a descriptor type keeps its status byte.
pub trait HasStatus {
    const STATUS_OFFSET: usize;
}
impl HasStatus for RxDesc {
    const STATUS_OFFSET: usize = 12;
}
impl HasStatus for TxDesc {
    const STATUS_OFFSET: usize = 12;
}

/// Is `x` in the cyclic interval `[from, to]` of a ring of `size`?
fn within(size: usize, from: usize, to: usize, x: usize) -> bool {
    x < size && (x + size - from) % size <= (to + size - from) % size
}

/// Checks a ring's geometry: the device wants a length that is a multiple
/// of 128 bytes (8 descriptors), and the buffers must cover every slot.
fn check_geometry(count: usize, buf_len: usize) -> Result<(), String> {
    if count < 8 || !count.is_multiple_of(8) || count > 65_528 {
        return Err(format!(
            "a ring of {count} descriptors (need a multiple of 8, 8..=65528)"
        ));
    }
    if buf_len < count * BUF_SIZE {
        return Err(format!(
            "{buf_len} bytes of buffers for {count} descriptors of {BUF_SIZE}"
        ));
    }
    Ok(())
}

/// Why a received descriptor produced no frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RxDrop {
    /// The device flagged the frame bad (the error byte).
    Errors(u8),
    /// A length we cannot believe: shorter than a header, or longer than
    /// the buffer the device was given.
    BadLength(u16),
    /// The frame did not fit one buffer (no EOP); its pieces are skipped.
    Spanning,
}

/// What [`RxRing::poll`] found at the next descriptor.
#[derive(Debug, PartialEq, Eq)]
pub enum RxPoll {
    /// Nothing completed.
    Empty,
    Frame(Vec<u8>),
    /// A completed descriptor that is not a good frame: count it.
    Dropped(RxDrop),
    /// The rest of a frame already counted as dropped: not counted again.
    Skipped,
}

/// A receive ring: descriptors and one `BUF_SIZE` buffer per descriptor.
pub struct RxRing<D, B> {
    desc: D,
    bufs: B,
    size: usize,
    /// The next descriptor the device completes.
    next: usize,
    /// The tail we want the device to have (always `next - 1`).
    tail: usize,
    /// The tail the device has.
    published: usize,
    /// Inside a frame that spans descriptors: skip up to its EOP.
    spanning: bool,
    /// Descriptors the device wrote while we owned them.
    strays: u64,
}

impl<D: DescMem<RxDesc>, B: Buffer> RxRing<D, B> {
    /// Posts every descriptor's buffer. The caller programs RDBAL/RDBAH/
    /// RDLEN, RDH = 0 and RDT = [`RxRing::published_tail`].
    pub fn new(mut desc: D, mut bufs: B) -> Result<Self, String> {
        let size = desc.count();
        check_geometry(size, bufs.bytes().len())?;
        for i in 0..size {
            desc.store(i, Self::armed(&bufs, i));
        }
        Ok(RxRing {
            desc,
            bufs,
            size,
            next: 0,
            tail: size - 1,
            published: size - 1,
            spanning: false,
            strays: 0,
        })
    }

    fn armed(bufs: &B, i: usize) -> RxDesc {
        RxDesc {
            addr: U64::new(bufs.iova() + (i * BUF_SIZE) as u64),
            ..RxDesc::default()
        }
    }

    pub fn size(&self) -> usize {
        self.size
    }

    pub fn desc_iova(&self) -> u64 {
        self.desc.iova()
    }

    /// The RDT value the device has (or gets at start).
    pub fn published_tail(&self) -> u32 {
        self.published as u32
    }

    /// Descriptors consumed but not yet handed back.
    pub fn pending_refill(&self) -> usize {
        (self.tail + self.size - self.published) % self.size
    }

    /// Descriptors the device wrote while they were ours, so far.
    pub fn strays(&self) -> u64 {
        self.strays
    }

    /// Could the device's RDH be `head`? It lies between the next
    /// descriptor we wait for and the tail it was given.
    pub fn head_plausible(&self, head: u32) -> bool {
        within(self.size, self.next, self.published, head as usize)
    }

    /// Looks at the next descriptor; consumes it if the device is done.
    pub fn poll(&mut self) -> RxPoll {
        let i = self.next;
        if i == self.published {
            // The spare descriptor at the tail is never the device's: DD
            // there is a stray write, not a frame (`refill` counts it when
            // it hands the spare over). Taking it would hand the tail back
            // to ourselves and leave the device no buffer at all.
            return RxPoll::Empty;
        }
        if self.desc.status(i) & rx_status::DD == 0 {
            return RxPoll::Empty;
        }
        // DD is set: the rest of the descriptor and the buffer are
        // written. Read them only now.
        rmb();
        let d = self.desc.load(i);
        let len = d.length.get();
        let eop = d.status & rx_status::EOP != 0;
        let outcome = if self.spanning {
            // The tail of a frame already counted.
            self.spanning = !eop;
            RxPoll::Skipped
        } else if !eop {
            self.spanning = true;
            RxPoll::Dropped(RxDrop::Spanning)
        } else if d.errors & rx_error::FRAME != 0 {
            RxPoll::Dropped(RxDrop::Errors(d.errors))
        } else if usize::from(len) < ETH_HEADER || usize::from(len) > network::MAX_FRAME {
            // Longer than the scheme's 1514 (QEMU lets up to 1522 through
            // with LPE clear): counted, never handed to readers.
            RxPoll::Dropped(RxDrop::BadLength(len))
        } else {
            let start = i * BUF_SIZE;
            let bytes = self.bufs.bytes();
            match bytes.get(start..start + usize::from(len)) {
                Some(frame) => RxPoll::Frame(frame.to_vec()),
                None => RxPoll::Dropped(RxDrop::BadLength(len)),
            }
        };
        // Ours again: clear it now so a later device write is noticed.
        self.desc.store(i, Self::armed(&self.bufs, i));
        self.tail = i;
        self.next = (i + 1) % self.size;
        outcome
    }

    /// Hands the consumed descriptors back. Returns the new RDT value to
    /// write (after a `wmb()`), or `None` if there is nothing to hand back.
    /// Each descriptor handed back is re-armed; one the device wrote while
    /// it was ours is counted in [`RxRing::strays`].
    pub fn refill(&mut self) -> Option<u32> {
        if self.tail == self.published {
            return None;
        }
        let mut i = self.published;
        while i != self.tail {
            if self.desc.status(i) != 0 {
                self.strays += 1;
            }
            self.desc.store(i, Self::armed(&self.bufs, i));
            i = (i + 1) % self.size;
        }
        self.published = self.tail;
        Some(self.published as u32)
    }
}

/// Why a frame could not be queued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxFull {
    /// Every descriptor is in flight.
    Full,
    /// Empty or longer than a buffer (the scheme checks first; defensive).
    BadLength(usize),
}

/// What [`TxRing::reclaim`] freed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reclaimed {
    pub sent: u64,
    pub failed: u64,
}

/// A transmit ring: descriptors and one `BUF_SIZE` buffer per descriptor.
pub struct TxRing<D, B> {
    desc: D,
    bufs: B,
    size: usize,
    /// The next descriptor to fill (the TDT the device has).
    tail: usize,
    /// The oldest descriptor in flight.
    clean: usize,
    strays: u64,
}

impl<D: DescMem<TxDesc>, B: Buffer> TxRing<D, B> {
    /// Empty ring; the caller programs TDBAL/TDBAH/TDLEN and TDH = TDT = 0.
    pub fn new(mut desc: D, mut bufs: B) -> Result<Self, String> {
        let size = desc.count();
        check_geometry(size, bufs.bytes().len())?;
        for i in 0..size {
            desc.store(i, TxDesc::default());
        }
        Ok(TxRing {
            desc,
            bufs,
            size,
            tail: 0,
            clean: 0,
            strays: 0,
        })
    }

    pub fn desc_iova(&self) -> u64 {
        self.desc.iova()
    }

    pub fn in_flight(&self) -> usize {
        (self.tail + self.size - self.clean) % self.size
    }

    pub fn is_full(&self) -> bool {
        self.in_flight() == self.size - 1
    }

    pub fn strays(&self) -> u64 {
        self.strays
    }

    /// Could the device's TDH be `head`? Between the oldest descriptor in
    /// flight and the tail.
    pub fn head_plausible(&self, head: u32) -> bool {
        within(self.size, self.clean, self.tail, head as usize)
    }

    /// Copies `frame` into the next buffer (zero-padded to
    /// [`MIN_WIRE_FRAME`]) and fills its descriptor. Returns the new TDT
    /// value to write after a `wmb()`.
    pub fn push(&mut self, frame: &[u8]) -> Result<u32, TxFull> {
        if frame.is_empty() || frame.len() > BUF_SIZE {
            return Err(TxFull::BadLength(frame.len()));
        }
        if self.is_full() {
            return Err(TxFull::Full);
        }
        let i = self.tail;
        // We zeroed it when it was reclaimed (or at start).
        if self.desc.status(i) != 0 {
            self.strays += 1;
        }
        let len = frame.len().max(MIN_WIRE_FRAME);
        let start = i * BUF_SIZE;
        let Some(buf) = self.bufs.bytes().get_mut(start..start + len) else {
            return Err(TxFull::BadLength(frame.len()));
        };
        buf[..frame.len()].copy_from_slice(frame);
        buf[frame.len()..].fill(0);
        self.desc.store(
            i,
            TxDesc {
                addr: U64::new(self.bufs.iova() + start as u64),
                // len <= BUF_SIZE, fits u16.
                length: U16::new(len as u16),
                cmd: tx_cmd::EOP | tx_cmd::IFCS | tx_cmd::RS,
                ..TxDesc::default()
            },
        );
        self.tail = (i + 1) % self.size;
        Ok(self.tail as u32)
    }

    /// Frees every in-flight descriptor the device marked done, oldest
    /// first, stopping at the first one it has not finished.
    pub fn reclaim(&mut self) -> Reclaimed {
        let mut r = Reclaimed::default();
        while self.clean != self.tail {
            let status = self.desc.status(self.clean);
            if status & tx_status::DD == 0 {
                break;
            }
            rmb();
            if status & tx_status::FAILED != 0 {
                r.failed += 1;
            } else {
                r.sent += 1;
            }
            self.desc.store(self.clean, TxDesc::default());
            self.clean = (self.clean + 1) % self.size;
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Plain memory standing in for DMA memory; the test writes the
    /// device's side of each descriptor as the SDM describes.
    impl<T: Copy + Default> DescMem<T> for Vec<T>
    where
        T: IntoBytes + Immutable,
    {
        fn count(&self) -> usize {
            self.len()
        }
        fn iova(&self) -> u64 {
            0x10_0000
        }
        fn load(&self, i: usize) -> T {
            self.get(i).copied().unwrap_or_default()
        }
        fn status(&self, i: usize) -> u8 {
            self.get(i).map(|d| d.as_bytes()[12]).unwrap_or(0)
        }
        fn store(&mut self, i: usize, d: T) {
            if let Some(slot) = self.get_mut(i) {
                *slot = d;
            }
        }
    }

    struct Mem(Vec<u8>);
    impl Buffer for Mem {
        fn iova(&self) -> u64 {
            0x20_0000
        }
        fn bytes(&mut self) -> &mut [u8] {
            &mut self.0
        }
    }

    fn rx(size: usize) -> RxRing<Vec<RxDesc>, Mem> {
        RxRing::new(vec![RxDesc::default(); size], Mem(vec![0; size * BUF_SIZE])).unwrap()
    }

    fn tx(size: usize) -> TxRing<Vec<TxDesc>, Mem> {
        TxRing::new(vec![TxDesc::default(); size], Mem(vec![0; size * BUF_SIZE])).unwrap()
    }

    /// The device receiving `data` into descriptor `i`: the buffer first,
    /// then length, errors and status with DD.
    fn device_rx(r: &mut RxRing<Vec<RxDesc>, Mem>, i: usize, data: &[u8], status: u8, errors: u8) {
        let addr = r.desc[i].addr.get();
        assert_eq!(addr, 0x20_0000 + (i * BUF_SIZE) as u64, "posted buffer");
        r.bufs.0[i * BUF_SIZE..i * BUF_SIZE + data.len()].copy_from_slice(data);
        r.desc[i].length = U16::new(data.len() as u16);
        r.desc[i].errors = errors;
        r.desc[i].status = status;
    }

    fn frame(n: u8, len: usize) -> Vec<u8> {
        (0..len).map(|k| n.wrapping_add(k as u8)).collect()
    }

    #[test]
    fn layouts_match_the_manual() {
        assert_eq!(size_of::<RxDesc>(), 16);
        assert_eq!(size_of::<TxDesc>(), 16);
        let d = RxDesc {
            status: 0xab,
            ..Default::default()
        };
        assert_eq!(d.as_bytes()[RxDesc::STATUS_OFFSET], 0xab);
        let t = TxDesc {
            status: 0xcd,
            cmd: 0x0b,
            ..Default::default()
        };
        assert_eq!(t.as_bytes()[TxDesc::STATUS_OFFSET], 0xcd);
        assert_eq!(t.as_bytes()[11], 0x0b, "CMD is byte 11");
    }

    #[test]
    fn geometry_is_checked() {
        assert!(RxRing::new(vec![RxDesc::default(); 12], Mem(vec![0; 12 * BUF_SIZE])).is_err());
        assert!(RxRing::new(vec![RxDesc::default(); 8], Mem(vec![0; 7 * BUF_SIZE])).is_err());
        assert!(TxRing::new(Vec::<TxDesc>::new(), Mem(vec![])).is_err());
    }

    #[test]
    fn rx_posts_all_but_one_and_hands_back_in_order() {
        let mut r = rx(8);
        assert_eq!(r.published_tail(), 7, "RDT starts one short of RDH");
        for i in 0..8 {
            assert_eq!(r.desc[i].addr.get(), 0x20_0000 + (i * BUF_SIZE) as u64);
        }
        assert_eq!(r.poll(), RxPoll::Empty);
        assert_eq!(r.refill(), None, "nothing consumed, nothing to hand back");

        // The device fills 0..=6 (all it owns).
        for i in 0..7 {
            device_rx(
                &mut r,
                i,
                &frame(i as u8, 60 + i),
                rx_status::DD | rx_status::EOP,
                0,
            );
        }
        assert!(r.head_plausible(7));
        for i in 0..7 {
            assert_eq!(r.poll(), RxPoll::Frame(frame(i as u8, 60 + i)));
            assert_eq!(r.desc[i].status, 0, "cleared as soon as consumed");
        }
        assert_eq!(r.poll(), RxPoll::Empty, "descriptor 7 was never posted");
        assert_eq!(r.pending_refill(), 7);
        // RDT moves to 6: the device now owns 7, 0..=5.
        assert_eq!(r.refill(), Some(6));
        assert_eq!(r.pending_refill(), 0);
        assert!(r.head_plausible(7));
        assert!(r.head_plausible(6), "a full ring: RDH == RDT");

        // Wrap: the device fills 7, 0, 1.
        for (k, i) in [7usize, 0, 1].into_iter().enumerate() {
            device_rx(
                &mut r,
                i,
                &frame(100 + k as u8, 70),
                rx_status::DD | rx_status::EOP,
                0,
            );
        }
        for k in 0..3 {
            assert_eq!(r.poll(), RxPoll::Frame(frame(100 + k, 70)));
        }
        assert_eq!(r.refill(), Some(1));
        assert_eq!(r.strays(), 0);
    }

    #[test]
    fn rx_bad_descriptors_are_dropped_and_recycled() {
        let mut r = rx(8);
        let good = rx_status::DD | rx_status::EOP;
        device_rx(&mut r, 0, &frame(1, 64), good, rx_error::CE);
        device_rx(&mut r, 1, &frame(2, 10), good, 0);
        // A length beyond the buffer we gave: never believed.
        device_rx(&mut r, 2, &frame(3, 64), good, 0);
        r.desc[2].length = U16::new(9000);
        // A frame over two descriptors, then a good one.
        device_rx(&mut r, 3, &frame(4, 100), rx_status::DD, 0);
        device_rx(&mut r, 4, &frame(5, 100), good, 0);
        device_rx(&mut r, 5, &frame(6, 1514), good, 0);
        // Checksum-offload error bits alone do not make a frame bad.
        device_rx(&mut r, 6, &frame(7, 60), good, 0x60);

        assert_eq!(r.poll(), RxPoll::Dropped(RxDrop::Errors(rx_error::CE)));
        assert_eq!(r.poll(), RxPoll::Dropped(RxDrop::BadLength(10)));
        assert_eq!(r.poll(), RxPoll::Dropped(RxDrop::BadLength(9000)));
        assert_eq!(r.poll(), RxPoll::Dropped(RxDrop::Spanning));
        assert_eq!(r.poll(), RxPoll::Skipped);
        assert_eq!(r.poll(), RxPoll::Frame(frame(6, 1514)));
        assert_eq!(r.poll(), RxPoll::Frame(frame(7, 60)));
        assert_eq!(r.poll(), RxPoll::Empty);
        // Every descriptor, good or bad, goes back to the device.
        assert_eq!(r.refill(), Some(6));
        for i in [7usize, 0, 1, 2, 3, 4, 5] {
            assert_eq!(r.desc[i].status, 0);
            assert_eq!(r.desc[i].addr.get(), 0x20_0000 + (i * BUF_SIZE) as u64);
        }
    }

    #[test]
    fn rx_write_to_a_descriptor_we_own_is_counted_not_delivered() {
        let mut r = rx(8);
        // DD on the spare (7), which was never posted: poll never looks
        // at it.
        r.desc[7].status = rx_status::DD | rx_status::EOP;
        r.desc[7].length = U16::new(64);
        assert_eq!(r.poll(), RxPoll::Empty);
        // Consume 0; RDT moves to 0 and 7 is handed over: its DD was
        // written while it was ours.
        device_rx(&mut r, 0, &frame(1, 64), rx_status::DD | rx_status::EOP, 0);
        assert_eq!(r.poll(), RxPoll::Frame(frame(1, 64)));
        // Now the device scribbles on 0 again while it is ours.
        r.desc[0].status = rx_status::DD;
        assert_eq!(r.refill(), Some(0));
        assert_eq!(r.strays(), 1, "descriptor 7");
        assert_eq!(r.desc[7].status, 0, "re-armed on hand-over");
        // 0 is the spare now; it is handed back (and checked) next time.
        device_rx(&mut r, 1, &frame(2, 64), rx_status::DD | rx_status::EOP, 0);
        assert_eq!(r.poll(), RxPoll::Frame(frame(2, 64)));
        assert_eq!(r.refill(), Some(1));
        assert_eq!(r.strays(), 2, "descriptor 0");
        assert_eq!(r.desc[0].status, 0);
    }

    /// A stray DD on the spare once the device has filled everything it
    /// owns: not a frame, and the ring keeps working afterwards.
    #[test]
    fn rx_stray_on_the_spare_after_a_full_ring_is_not_a_frame() {
        let mut r = rx(8);
        for i in 0..8 {
            device_rx(
                &mut r,
                i,
                &frame(i as u8, 64),
                rx_status::DD | rx_status::EOP,
                0,
            );
        }
        for i in 0..7 {
            assert_eq!(r.poll(), RxPoll::Frame(frame(i as u8, 64)), "{i}");
        }
        assert_eq!(
            r.poll(),
            RxPoll::Empty,
            "descriptor 7 was never the device's"
        );
        assert_eq!(r.poll(), RxPoll::Empty);
        // Everything consumed goes back, the spare included.
        assert_eq!(r.refill(), Some(6));
        assert_eq!(r.strays(), 1, "the spare's DD counted once, at hand-over");
        device_rx(&mut r, 7, &frame(9, 64), rx_status::DD | rx_status::EOP, 0);
        assert_eq!(r.poll(), RxPoll::Frame(frame(9, 64)));
    }

    #[test]
    fn rx_head_plausibility() {
        let mut r = rx(8);
        // Device owns 0..=6, RDT = 7.
        for h in 0..8 {
            assert!(r.head_plausible(h), "{h}");
        }
        assert!(!r.head_plausible(8));
        assert!(!r.head_plausible(u32::MAX));
        for i in 0..3 {
            device_rx(&mut r, i, &frame(0, 60), rx_status::DD | rx_status::EOP, 0);
            assert!(matches!(r.poll(), RxPoll::Frame(_)));
        }
        r.refill();
        // next = 3, RDT = 2: the head is in 3..=7, 0..=2.
        assert!(r.head_plausible(3));
        assert!(r.head_plausible(2));
        assert!(r.head_plausible(0));
        device_rx(&mut r, 3, &frame(0, 60), rx_status::DD | rx_status::EOP, 0);
        assert!(matches!(r.poll(), RxPoll::Frame(_)));
        // next = 4, RDT still 2 (not refilled): 3 is behind us.
        assert!(!r.head_plausible(3));
        assert!(r.head_plausible(4));
    }

    #[test]
    fn tx_fills_to_size_minus_one_and_reclaims_on_dd() {
        let mut t = tx(8);
        for k in 0..7 {
            assert_eq!(t.push(&frame(k, 100)), Ok(u32::from(k) + 1));
        }
        assert!(t.is_full());
        assert_eq!(t.push(&frame(9, 100)), Err(TxFull::Full));
        let d = t.desc[3];
        assert_eq!(d.addr.get(), 0x20_0000 + (3 * BUF_SIZE) as u64);
        assert_eq!(d.length.get(), 100);
        assert_eq!(d.cmd, tx_cmd::EOP | tx_cmd::IFCS | tx_cmd::RS);
        assert_eq!(
            &t.bufs.0[3 * BUF_SIZE..3 * BUF_SIZE + 100],
            &frame(3, 100)[..]
        );

        // Nothing done yet.
        assert_eq!(t.reclaim(), Reclaimed::default());
        // The device finishes 0..=2, one with a late collision; DD on 4 is
        // out of order and must wait for 3.
        for i in 0..3 {
            t.desc[i].status = tx_status::DD;
        }
        t.desc[1].status |= tx_status::LC;
        t.desc[4].status = tx_status::DD;
        assert!(t.head_plausible(3));
        assert_eq!(t.reclaim(), Reclaimed { sent: 2, failed: 1 });
        assert_eq!(t.in_flight(), 4);
        assert_eq!(t.desc[0], TxDesc::default(), "cleared for reuse");
        t.desc[3].status = tx_status::DD;
        assert_eq!(t.reclaim(), Reclaimed { sent: 2, failed: 0 });
        // Wrap around: 5 more fit (2 still in flight).
        for k in 0..5 {
            assert!(t.push(&frame(k, 60)).is_ok());
        }
        assert!(t.is_full());
        assert_eq!(t.tail, 4);
        assert_eq!(t.strays(), 0);
    }

    #[test]
    fn tx_pads_short_frames_with_zeros() {
        let mut t = tx(8);
        // Dirty the buffer as an earlier, longer frame would.
        t.bufs.0[..BUF_SIZE].fill(0xee);
        t.push(&[0xaa; 14]).unwrap();
        assert_eq!(t.desc[0].length.get(), MIN_WIRE_FRAME as u16);
        assert_eq!(&t.bufs.0[..14], &[0xaa; 14]);
        assert!(t.bufs.0[14..MIN_WIRE_FRAME].iter().all(|&b| b == 0));
        t.push(&[0xbb; 1514]).unwrap();
        assert_eq!(t.desc[1].length.get(), 1514);
        assert_eq!(t.push(&[]), Err(TxFull::BadLength(0)));
        assert_eq!(
            t.push(&[0; BUF_SIZE + 1]),
            Err(TxFull::BadLength(BUF_SIZE + 1))
        );
    }

    #[test]
    fn tx_stray_status_and_head_checks() {
        let mut t = tx(8);
        // DD on a descriptor never posted: reclaim does not look at it...
        t.desc[5].status = tx_status::DD;
        assert_eq!(t.reclaim(), Reclaimed::default());
        assert!(t.head_plausible(0));
        assert!(!t.head_plausible(1), "nothing posted: TDH must equal TDT");
        for _ in 0..5 {
            t.push(&[1; 60]).unwrap();
        }
        assert_eq!(t.strays(), 0);
        // ...and filling it later notices the device wrote it.
        t.push(&[1; 60]).unwrap();
        assert_eq!(t.strays(), 1);
        assert!(t.head_plausible(6));
        assert!(!t.head_plausible(7));
        assert!(!t.head_plausible(9));
    }
}
