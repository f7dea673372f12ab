//! The DMA kinds: pages kept at an IOVA as evidence, and device accesses
//! sent where the driver mapped nothing.
//!
//! - `canary` (and `stale` at an even start): at [`dma_space_opened`], one
//!   page of known bytes ([`canary_byte`], not zeros) is mapped at the
//!   first IOVA of the space and kept for the process's life (`fault:
//!   canary page mapped at IOVA X`). With `canary`, the event loop checks
//!   it at most once a second: `fault: canary at IOVA X intact (check N)`,
//!   or `CHANGED at offset K`.
//! - `stale` at an odd start leaves that IOVA unmapped and points the
//!   first descriptor of the first chain at it: a dead predecessor's
//!   canary must be gone from the new domain.
//! - `foreign` leaves the first IOVA unmapped (or takes `addr=`, e.g. the
//!   physical address of another process's page, which the IOMMU must
//!   not let through as an IOVA) and, once the driver serves, sends the
//!   first device-written buffer of one chain there, at most one page of
//!   it, so without the IOMMU the device would overwrite exactly one page
//!   of the victim. The chain is watched: QEMU bounces a blocked one-page
//!   write and completes the request as if it had worked, so when it
//!   comes back the driver ends itself ([`watched_chain_returned`]) rather
//!   than answer with data that never arrived; its successor, on a reset
//!   device, runs the request again. A device that gives up on the chain
//!   instead (DEVICE_NEEDS_RESET) ends the driver the usual way.
//! - `baddma`, drawn at random: the first buffer of a chain moved far past
//!   anything mapped (bit 46 flipped).

use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use super::{injector, lock, plan, start_number, Kind, Target};
use crate::dma::{Dma, DmaSpace};
use crate::PAGE_SIZE;

/// Byte `i` of a canary page: a pattern no device writes by accident.
pub fn canary_byte(i: usize) -> u8 {
    ((i as u8).wrapping_mul(7) ^ 0xa5).wrapping_add((i >> 8) as u8)
}

/// How often a `canary` page is checked, at most.
const CANARY_PERIOD: Duration = Duration::from_secs(1);

struct Canary {
    page: Dma<[u8; PAGE_SIZE]>,
    /// Checked from the event loop (`canary`), not only kept (`stale`).
    watched: bool,
    last: Option<Instant>,
    checks: u64,
}

impl Canary {
    /// The first byte that differs from the pattern, with its value.
    fn first_change(&self) -> Option<(usize, u8)> {
        let base = self.page.as_ptr().cast::<u8>();
        (0..PAGE_SIZE).find_map(|i| {
            // SAFETY: `i` is inside the page, which stays mapped while
            // `self.page` lives; the read is volatile because a device may
            // have written the memory behind the compiler's back.
            let b = unsafe { std::ptr::read_volatile(base.add(i)) };
            (b != canary_byte(i)).then_some((i, b))
        })
    }
}

/// The canary page, for the process's life.
static CANARY: Mutex<Option<Canary>> = Mutex::new(None);

/// The IOVA a `stale` instance programs once, in place of a real one.
static STALE: Mutex<Option<u64>> = Mutex::new(None);

#[derive(Default)]
struct Foreign {
    target: Option<u64>,
    /// The target was chosen for us (`addr=`), not reserved in our space:
    /// it must not be memory we mapped ourselves.
    explicit: bool,
    space: Option<Weak<DmaSpace>>,
    armed: bool,
    fired: bool,
}

static FOREIGN: Mutex<Foreign> = Mutex::new(Foreign {
    target: None,
    explicit: false,
    space: None,
    armed: false,
    fired: false,
});

/// A function's DMA space was just opened, before anything was mapped in
/// it: the canary page, or the IOVA left unmapped on purpose.
pub fn dma_space_opened(space: &Arc<DmaSpace>) {
    let Some(plan) = plan() else {
        return;
    };
    let even = start_number().is_multiple_of(2);
    if plan.has(Kind::Canary) || (plan.has(Kind::Stale) && even) {
        map_canary(space, plan.has(Kind::Canary));
    }
    if plan.has(Kind::Stale) && !even {
        match space.reserve_iova(PAGE_SIZE as u64) {
            Some(iova) => {
                log::warn!("fault: IOVA {iova:#x} left unmapped for the stale access");
                *lock(&STALE) = Some(iova);
            }
            None => log::error!("fault: no IOVA to leave unmapped"),
        }
    }
    if plan.has(Kind::Foreign) {
        let target = match &plan.addr {
            None => {
                let iova = space.reserve_iova(PAGE_SIZE as u64);
                match iova {
                    Some(iova) => {
                        log::warn!("fault: IOVA {iova:#x} left unmapped for the foreign access")
                    }
                    None => log::error!("fault: no IOVA to leave unmapped"),
                }
                iova
            }
            Some(Target::Address(a)) => Some(*a),
            Some(Target::File(path)) => match std::fs::read_to_string(path) {
                Ok(text) => {
                    let a = super::parse_u64(&text);
                    if a.is_none() {
                        log::error!("fault: {path} holds no address ({text:?}); no foreign access");
                    }
                    a
                }
                Err(e) => {
                    log::warn!("fault: no foreign target yet ({path}: {e}); no foreign access");
                    None
                }
            },
        };
        let mut f = lock(&FOREIGN);
        f.target = target;
        f.explicit = plan.addr.is_some();
        f.space = Some(Arc::downgrade(space));
    }
}

fn map_canary(space: &Arc<DmaSpace>, watched: bool) {
    match Dma::<[u8; PAGE_SIZE]>::zeroed(space) {
        Ok(mut page) => {
            for (i, b) in page.iter_mut().enumerate() {
                *b = canary_byte(i);
            }
            log::warn!("fault: canary page mapped at IOVA {:#x}", page.iova());
            // Kept (mapped) until the process dies: that is the point.
            *lock(&CANARY) = Some(Canary {
                page,
                watched,
                last: None,
                checks: 0,
            });
        }
        Err(e) => log::error!("fault: mapping the canary page failed: {e}"),
    }
}

/// From the event loop: the canary's check, and `foreign` armed.
pub(super) fn serving() {
    if let Some(c) = lock(&CANARY).as_mut().filter(|c| c.watched) {
        let due = c.last.is_none_or(|t| t.elapsed() >= CANARY_PERIOD);
        if due {
            c.last = Some(Instant::now());
            c.checks += 1;
            let iova = c.page.iova();
            match c.first_change() {
                None => log::warn!("fault: canary at IOVA {iova:#x} intact (check {})", c.checks),
                Some((at, b)) => log::error!(
                    "fault: canary at IOVA {iova:#x} CHANGED at offset {at} ({b:#04x}, expected {:#04x}; check {})",
                    canary_byte(at),
                    c.checks
                ),
            }
        }
    }
    let mut f = lock(&FOREIGN);
    if let (Some(target), false) = (f.target, f.armed) {
        f.armed = true;
        log::warn!("fault: serving; the next device-written buffer goes to {target:#x}");
    }
}

/// A chain rewritten by a fault before it goes to the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rewrite {
    /// `(address, len, device_writes)`, as the queue takes them.
    pub chain: Vec<(u64, u32, bool)>,
    /// The chain must not complete normally: hand its token back to
    /// [`watched_chain_returned`] if it does.
    pub watch: bool,
}

/// A chain of `(iova, len, device_writes)` about to be queued at `point`:
/// `Some` with the chain to queue instead when a DMA fault fires
/// (`foreign`: the first device-written buffer; `stale`, `baddma`: the
/// first buffer).
pub fn dma_chain(point: &str, chain: &[(u64, u32, bool)]) -> Option<Rewrite> {
    injector()?;
    if let Some(rewrite) = foreign(point, chain) {
        return Some(rewrite);
    }
    let &(iova, len, writes) = chain.first()?;
    let moved = |to: u64| {
        let mut c = chain.to_vec();
        c[0] = (to, len, writes);
        Rewrite {
            chain: c,
            watch: false,
        }
    };
    if let Some(stale) = lock(&STALE).take() {
        log::warn!("fault: injecting Stale at {point}: IOVA {stale:#x}");
        return Some(moved(stale));
    }
    super::draw(|k| k == Kind::BadDma).map(|_| {
        let bad = iova ^ (1 << 46);
        log::warn!("fault: injecting BadDma at {point}: IOVA {bad:#x}");
        moved(bad)
    })
}

fn foreign(point: &str, chain: &[(u64, u32, bool)]) -> Option<Rewrite> {
    let mut f = lock(&FOREIGN);
    let target = f.target.filter(|_| f.armed && !f.fired)?;
    let at = chain.iter().position(|&(_, _, writes)| writes)?;
    f.fired = true;
    let own = f.explicit
        && f.space
            .as_ref()
            .and_then(Weak::upgrade)
            .is_some_and(|s| s.is_allocated(target));
    if own {
        log::error!(
            "fault: {target:#x} is an IOVA this driver mapped itself, so it proves nothing; no foreign access"
        );
        return None;
    }
    let (iova, len, _) = chain[at];
    let moved_len = len.min(PAGE_SIZE as u32);
    log::warn!(
        "fault: injecting Foreign at {point}: a {len}-byte device-written buffer at IOVA {iova:#x} sent to {target:#x} ({moved_len} bytes)"
    );
    let mut c = chain.to_vec();
    c[at] = (target, moved_len, true);
    Some(Rewrite {
        chain: c,
        watch: true,
    })
}

/// The device returned a watched chain as done: the data it wrote went to
/// the foreign address (blocked by the IOMMU), not to the driver, so the
/// driver cannot answer the request. It ends here; the supervisor starts
/// it again on a reset device and the request runs again.
pub fn watched_chain_returned(point: &str) -> ! {
    let target = lock(&FOREIGN).target.unwrap_or(0);
    log::error!(
        "fault: the chain sent to {target:#x} came back done at {point}, but its data never reached this driver; ending so the request runs again on a reset device"
    );
    std::process::abort()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_canary_pattern_is_neither_zeros_nor_a_short_repeat() {
        let page: Vec<u8> = (0..PAGE_SIZE).map(canary_byte).collect();
        assert!(page.iter().filter(|&&b| b == 0).count() < PAGE_SIZE / 64);
        assert_ne!(page[..256], page[256..512], "two 256-byte runs differ");
    }
}
