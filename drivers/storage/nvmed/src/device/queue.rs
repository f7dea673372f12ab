//! Queue bookkeeping, apart from register writes (NVMe 1.4 section 4.1):
//! a submission queue's tail and the device's head, a completion queue's
//! head and phase tag, and the PRPs (4.3) of a transfer. Every method
//! returns the doorbell value to write; the caller does `wmb()` and the
//! write.

use common::dma::Buffer;
use zerocopy::{FromBytes, IntoBytes};

use super::spec::{Command, CqEntry, PAGE};

/// Byte offset of a queue's doorbell: SQ `qid` tail is doorbell 2 * qid,
/// its CQ head 2 * qid + 1, each `stride` (4 << CAP.DSTRD) bytes apart.
pub fn doorbell(qid: u16, completion: bool, stride: usize) -> usize {
    super::spec::reg::DOORBELLS + (2 * usize::from(qid) + usize::from(completion)) * stride
}

/// A submission queue of `size` 64-byte entries in `mem`.
pub struct SubQueue<B: Buffer> {
    mem: B,
    size: u16,
    tail: u16,
    /// The controller's head, as its last completion on this queue said.
    head: u16,
}

impl<B: Buffer> SubQueue<B> {
    /// `mem` must hold `size` (at least 2) entries.
    pub fn new(mem: B, size: u16) -> SubQueue<B> {
        SubQueue {
            mem,
            size,
            tail: 0,
            head: 0,
        }
    }

    pub fn iova(&self) -> u64 {
        self.mem.iova()
    }

    /// One slot stays empty: tail + 1 == head means full.
    pub fn is_full(&self) -> bool {
        (self.tail + 1) % self.size == self.head
    }

    /// Writes `cmd` at the tail; the new tail for the doorbell, or `None`
    /// when full.
    pub fn push(&mut self, cmd: &Command) -> Option<u16> {
        if self.is_full() {
            return None;
        }
        let at = usize::from(self.tail) * size_of::<Command>();
        self.mem.bytes()[at..at + size_of::<Command>()].copy_from_slice(cmd.as_bytes());
        self.tail = (self.tail + 1) % self.size;
        Some(self.tail)
    }

    /// The controller's head from a completion (SQ Head Pointer). A value
    /// outside the queue is ignored: the caller logs it.
    pub fn set_head(&mut self, head: u16) -> bool {
        if head >= self.size {
            return false;
        }
        self.head = head;
        true
    }
}

/// A completion queue of `size` 16-byte entries in `mem`. The controller
/// writes each entry with the phase tag inverted on every pass; the queue
/// starts zeroed, so the first pass's tag is 1.
pub struct CompQueue<B: Buffer> {
    mem: B,
    size: u16,
    head: u16,
    phase: bool,
}

impl<B: Buffer> CompQueue<B> {
    /// `mem` must hold `size` entries and be zeroed.
    pub fn new(mem: B, size: u16) -> CompQueue<B> {
        CompQueue {
            mem,
            size,
            head: 0,
            phase: true,
        }
    }

    pub fn iova(&self) -> u64 {
        self.mem.iova()
    }

    /// The next entry if the controller has posted it (its phase tag is the
    /// current pass's), consuming it. The new head for the doorbell is
    /// [`CompQueue::head`].
    pub fn pop(&mut self) -> Option<CqEntry> {
        let at = usize::from(self.head) * size_of::<CqEntry>();
        let bytes = &mut self.mem.bytes()[at..at + size_of::<CqEntry>()];
        // The status word (and with it the phase tag) is the last the
        // controller writes; read it first, volatile, since the device
        // changes this memory behind the compiler's back.
        // SAFETY: bytes 14..16 of an in-bounds entry of the slice.
        let status = unsafe {
            [
                std::ptr::read_volatile(&bytes[14]),
                std::ptr::read_volatile(&bytes[15]),
            ]
        };
        if (status[0] & 1 == 1) != self.phase {
            return None;
        }
        // The rest of the entry only after its tag.
        common::barrier::rmb();
        let mut raw = [0u8; 16];
        for (i, b) in raw.iter_mut().enumerate() {
            // SAFETY: as above, within the 16 bytes of this entry.
            *b = unsafe { std::ptr::read_volatile(&bytes[i]) };
        }
        let entry = CqEntry::read_from_bytes(&raw).ok()?;
        self.head += 1;
        if self.head == self.size {
            self.head = 0;
            self.phase = !self.phase;
        }
        Some(entry)
    }

    pub fn head(&self) -> u16 {
        self.head
    }
}

/// The PRP entries of a transfer (4.3): PRP1 and PRP2, and the list PRP2
/// points at when the transfer touches more than two pages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prps {
    pub prp1: u64,
    pub prp2: u64,
    /// Entries to write at `list_iova` (empty: no list).
    pub list: Vec<u64>,
}

/// PRPs for `len > 0` bytes of IOVA-contiguous memory at `iova` (any
/// dword-aligned offset in its first page). PRP1 is the address itself;
/// every later page is named by its page address: in PRP2 if there is one
/// such page, else in a list at `list_iova` (one page, so at most
/// `PAGE / 8` entries; more is `None`).
pub fn prps(iova: u64, len: usize, list_iova: u64) -> Option<Prps> {
    if len == 0 || !iova.is_multiple_of(4) {
        return None;
    }
    let offset = (iova % PAGE as u64) as usize;
    let first = PAGE - offset;
    let page0 = iova - offset as u64;
    let rest = len.saturating_sub(first).div_ceil(PAGE);
    let page = |i: usize| page0 + (PAGE * (i + 1)) as u64;
    match rest {
        0 => Some(Prps {
            prp1: iova,
            prp2: 0,
            list: Vec::new(),
        }),
        1 => Some(Prps {
            prp1: iova,
            prp2: page(0),
            list: Vec::new(),
        }),
        n if n <= PAGE / 8 => Some(Prps {
            prp1: iova,
            prp2: list_iova,
            list: (0..n).map(page).collect(),
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doorbells_follow_the_stride() {
        assert_eq!(doorbell(0, false, 4), 0x1000);
        assert_eq!(doorbell(0, true, 4), 0x1004);
        assert_eq!(doorbell(3, false, 4), 0x1018);
        assert_eq!(doorbell(3, true, 16), 0x1000 + 7 * 16);
    }

    #[test]
    fn prps_for_one_two_and_many_pages() {
        let base = 0x10_0000;
        let list = 0x20_0000;
        // Inside one page, even when it ends exactly on the boundary.
        assert_eq!(prps(base, 4096, list).unwrap().prp2, 0);
        assert_eq!(prps(base + 512, 3584, list).unwrap().prp2, 0);
        // Two pages: PRP2 is the second page.
        let p = prps(base, 8192, list).unwrap();
        assert_eq!((p.prp1, p.prp2, p.list.len()), (base, base + 4096, 0));
        // Unaligned start: 100 bytes into the first page, 8192 bytes touch
        // three pages; PRP1 keeps the offset, the list names whole pages.
        let p = prps(base + 100, 8192, list).unwrap();
        assert_eq!(p.prp1, base + 100);
        assert_eq!(p.prp2, list);
        assert_eq!(p.list, [base + 4096, base + 8192]);
        // 512 KiB aligned: 127 list entries.
        let p = prps(base, 512 << 10, list).unwrap();
        assert_eq!(p.list.len(), 127);
        assert_eq!(p.list[126], base + 127 * 4096);
        // More than one list page holds, or nonsense, is refused.
        assert!(prps(base, (PAGE / 8 + 2) * PAGE, list).is_none());
        assert!(prps(base, 0, list).is_none());
        assert!(prps(base + 2, 16, list).is_none());
    }
}
