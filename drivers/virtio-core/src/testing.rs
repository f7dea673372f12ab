//! Host-side test helpers (feature `test-util`): heap memory standing in
//! for DMA memory and a simulated device that consumes the avail ring and
//! produces used entries, written from the spec.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::cell::RefCell;
use std::ptr::NonNull;
use std::rc::Rc;

use crate::ring::{RingLayout, RingMemory, SplitRing};
use crate::spec::ring::{AVAIL_F_NO_INTERRUPT, DESC_F_NEXT, DESC_F_WRITE, USED_F_NO_NOTIFY};

/// Page-aligned heap memory standing in for DMA memory; its "IOVA" is a
/// made-up constant so tests can tell addresses apart.
pub struct HostMem {
    ptr: NonNull<u8>,
    layout: Layout,
}

pub const FAKE_IOVA: u64 = 0x7000_0000;

impl HostMem {
    pub fn new(len: usize) -> HostMem {
        let layout = Layout::from_size_align(len, 4096).unwrap();
        // SAFETY: non-zero size (every ring has at least one entry).
        let ptr = NonNull::new(unsafe { alloc_zeroed(layout) }).unwrap();
        HostMem { ptr, layout }
    }
}

impl Drop for HostMem {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

// SAFETY: heap memory, stable across moves of HostMem, referenced by
// no one else.
unsafe impl RingMemory for HostMem {
    fn base(&mut self) -> NonNull<u8> {
        self.ptr
    }
    fn byte_len(&self) -> usize {
        self.layout.size()
    }
    fn iova(&self) -> u64 {
        FAKE_IOVA
    }
}

/// A ring of `size` entries in fresh host memory.
pub fn ring(size: u16) -> SplitRing<HostMem> {
    let layout = RingLayout::new(size).unwrap();
    SplitRing::new(HostMem::new(layout.total), size).unwrap()
}

/// The device's side of the ring, written from the spec, over the same
/// memory: takes chains off the avail ring and puts heads on the used
/// ring in whatever order the test wants.
pub struct SimDevice {
    base: *mut u8,
    layout: RingLayout,
    last_avail: u16,
    used_idx: u16,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Desc {
    pub addr: u64,
    pub len: u32,
    pub writable: bool,
}

impl SimDevice {
    pub fn new<M: RingMemory>(ring: &SplitRing<M>) -> SimDevice {
        SimDevice {
            base: ring.base_ptr(),
            layout: ring.layout(),
            last_avail: 0,
            used_idx: 0,
        }
    }

    fn r16(&self, off: usize) -> u16 {
        // SAFETY: offsets from the layout, inside the ring's memory,
        // which outlives the simulated device in every test.
        unsafe { self.base.add(off).cast::<u16>().read_volatile() }
    }
    fn r32(&self, off: usize) -> u32 {
        // SAFETY: as in r16.
        unsafe { self.base.add(off).cast::<u32>().read_volatile() }
    }
    fn r64(&self, off: usize) -> u64 {
        // SAFETY: as in r16.
        unsafe { self.base.add(off).cast::<u64>().read_volatile() }
    }
    fn w16(&self, off: usize, v: u16) {
        // SAFETY: as in r16.
        unsafe { self.base.add(off).cast::<u16>().write_volatile(v) }
    }
    fn w32(&self, off: usize, v: u32) {
        // SAFETY: as in r16.
        unsafe { self.base.add(off).cast::<u32>().write_volatile(v) }
    }

    /// Whether the driver wants interrupts (`VIRTQ_AVAIL_F_NO_INTERRUPT`
    /// clear).
    pub fn interrupts_wanted(&self) -> bool {
        self.r16(self.layout.avail) & AVAIL_F_NO_INTERRUPT == 0
    }

    pub fn avail_idx(&self) -> u16 {
        self.r16(self.layout.avail + 2)
    }

    /// Every chain made available since the last call, as (head, descs).
    pub fn fetch(&mut self) -> Vec<(u16, Vec<Desc>)> {
        let mut out = Vec::new();
        let size = self.layout.size;
        while self.last_avail != self.avail_idx() {
            let slot = usize::from(self.last_avail % size);
            let head = self.r16(self.layout.avail + 4 + 2 * slot);
            let mut descs = Vec::new();
            let mut i = head;
            loop {
                assert!(i < size, "descriptor index {i} out of range");
                assert!(descs.len() < usize::from(size), "descriptor loop");
                let off = self.layout.desc + 16 * usize::from(i);
                let flags = self.r16(off + 12);
                descs.push(Desc {
                    addr: self.r64(off),
                    len: self.r32(off + 8),
                    writable: flags & DESC_F_WRITE != 0,
                });
                if flags & DESC_F_NEXT == 0 {
                    break;
                }
                i = self.r16(off + 14);
            }
            out.push((head, descs));
            self.last_avail = self.last_avail.wrapping_add(1);
        }
        out
    }

    /// Puts `id` on the used ring with `len` bytes written.
    pub fn complete(&mut self, id: u32, len: u32) {
        let slot = usize::from(self.used_idx % self.layout.size);
        let entry = self.layout.used + 4 + 8 * slot;
        self.w32(entry, id);
        self.w32(entry + 4, len);
        self.used_idx = self.used_idx.wrapping_add(1);
        self.w16(self.layout.used + 2, self.used_idx);
    }

    /// Sets used.idx without writing entries (a misbehaving device).
    pub fn force_used_idx(&mut self, idx: u16) {
        self.used_idx = idx;
        self.w16(self.layout.used + 2, idx);
    }

    pub fn set_no_notify(&self, on: bool) {
        self.w16(self.layout.used, if on { USED_F_NO_NOTIFY } else { 0 });
    }
}

/// A driver buffer in a host test: heap memory at a made-up IOVA.
pub struct TestBuf {
    mem: Vec<u8>,
    iova: u64,
}

impl crate::Buffer for TestBuf {
    fn iova(&self) -> u64 {
        self.iova
    }
    fn bytes(&mut self) -> &mut [u8] {
        &mut self.mem
    }
}

/// The simulated device's view of the buffers a driver allocated: hands
/// out [`TestBuf`]s at distinct IOVAs (a guard page apart) and lets the
/// device read and write them by IOVA, as DMA would.
#[derive(Clone)]
pub struct BufferMap(Rc<RefCell<Buffers>>);

/// One buffer handed out: where the device sees it, where it lives.
struct Region {
    iova: u64,
    host: *mut u8,
    len: usize,
}

struct Buffers {
    regions: Vec<Region>,
    next_iova: u64,
}

impl Default for BufferMap {
    fn default() -> BufferMap {
        BufferMap(Rc::new(RefCell::new(Buffers {
            regions: Vec::new(),
            next_iova: 0x1_0000_0000,
        })))
    }
}

impl BufferMap {
    pub fn new() -> BufferMap {
        BufferMap::default()
    }

    /// A zeroed buffer of `len` bytes, the drivers' allocator in tests.
    pub fn alloc(&self, len: usize) -> std::io::Result<TestBuf> {
        let mut mem = vec![0u8; len];
        let mut b = self.0.borrow_mut();
        let iova = b.next_iova;
        b.next_iova += (len as u64).next_multiple_of(4096) + 4096;
        // The Vec's heap block does not move when the Vec does.
        b.regions.push(Region {
            iova,
            host: mem.as_mut_ptr(),
            len,
        });
        Ok(TestBuf { mem, iova })
    }

    /// The host address of `len` bytes at `iova`; panics (failing the test)
    /// if the device would touch memory no buffer covers.
    pub fn host(&self, iova: u64, len: usize) -> *mut u8 {
        for r in &self.0.borrow().regions {
            if iova >= r.iova && iova + len as u64 <= r.iova + r.len as u64 {
                // SAFETY: inside a live allocation of `r.len` bytes.
                return unsafe { r.host.add((iova - r.iova) as usize) };
            }
        }
        panic!("device access to unmapped IOVA {iova:#x}+{len}");
    }

    /// What the device reads from descriptor `d`.
    pub fn read(&self, d: &Desc) -> Vec<u8> {
        let p = self.host(d.addr, d.len as usize);
        // SAFETY: `host` checked the range lies in a driver buffer, which
        // the driver does not touch while the device holds it.
        unsafe { std::slice::from_raw_parts(p, d.len as usize).to_vec() }
    }

    /// The device writes `data` into descriptor `d`.
    pub fn write(&self, d: &Desc, data: &[u8]) {
        assert!(d.writable, "device wrote a read-only descriptor");
        assert!(data.len() <= d.len as usize);
        let p = self.host(d.addr, data.len());
        // SAFETY: as in `read`.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), p, data.len()) }
    }
}

/// The host tests' [`Port`](crate::Port): the driver's side of real split
/// rings in heap memory (a [`SimDevice`] over each plays the device), with
/// the configuration, status and doorbells a test controls and watches
/// through the [`PortCtl`] it gets with it.
pub struct TestPort<C> {
    rings: Vec<SplitRing<HostMem>>,
    features: u64,
    ctl: PortCtl<C>,
}

/// A test's handle on its [`TestPort`]'s device state.
pub struct PortCtl<C>(Rc<PortState<C>>);

impl<C> Clone for PortCtl<C> {
    fn clone(&self) -> PortCtl<C> {
        PortCtl(self.0.clone())
    }
}

/// What runs when the driver turns a queue's interrupts on.
type OnInterrupts = Box<dyn FnMut()>;

struct PortState<C> {
    config: RefCell<C>,
    fail_config: std::cell::Cell<bool>,
    needs_reset: std::cell::Cell<bool>,
    kicks: RefCell<Vec<usize>>,
    on_interrupts: RefCell<Vec<Option<OnInterrupts>>>,
}

impl<C: Clone> TestPort<C> {
    /// A port over `rings` (queue `i` is `rings[i]`) offering `features`,
    /// whose configuration reads as `config` until the test changes it.
    pub fn new(
        rings: Vec<SplitRing<HostMem>>,
        features: u64,
        config: C,
    ) -> (TestPort<C>, PortCtl<C>) {
        let n = rings.len();
        let ctl = PortCtl(Rc::new(PortState {
            config: RefCell::new(config),
            fail_config: std::cell::Cell::new(false),
            needs_reset: std::cell::Cell::new(false),
            kicks: RefCell::new(vec![0; n]),
            on_interrupts: RefCell::new((0..n).map(|_| None).collect()),
        }));
        let port = TestPort {
            rings,
            features,
            ctl: ctl.clone(),
        };
        (port, ctl)
    }
}

impl<C: Clone> PortCtl<C> {
    pub fn config(&self) -> C {
        self.0.config.borrow().clone()
    }
    pub fn set_config(&self, config: C) {
        *self.0.config.borrow_mut() = config;
    }
    /// Makes every configuration read fail (it "kept changing").
    pub fn set_fail_config(&self, fail: bool) {
        self.0.fail_config.set(fail);
    }
    /// Sets or clears DEVICE_NEEDS_RESET.
    pub fn set_needs_reset(&self, on: bool) {
        self.0.needs_reset.set(on);
    }
    /// Doorbells rung so far, per queue.
    pub fn kicks(&self) -> Vec<usize> {
        self.0.kicks.borrow().clone()
    }
    /// Runs `f` (once) the next time the driver turns `queue`'s
    /// interrupts on: the device acting in the window the driver must close.
    pub fn on_interrupts_enabled(&self, queue: usize, f: impl FnMut() + 'static) {
        if let Some(slot) = self.0.on_interrupts.borrow_mut().get_mut(queue) {
            *slot = Some(Box::new(f));
        }
    }
}

fn no_queue(queue: usize) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidInput,
        format!("the test port has no queue {queue}"),
    )
}

impl<C: Clone> crate::Port for TestPort<C> {
    type Config = C;

    fn add(&mut self, queue: usize, bufs: &[(u64, u32, bool)]) -> std::io::Result<u16> {
        self.rings
            .get_mut(queue)
            .ok_or_else(|| no_queue(queue))?
            .add(bufs)
    }
    fn pop_used(&mut self, queue: usize) -> Option<(u16, u32)> {
        self.rings.get_mut(queue)?.pop_used()
    }
    fn kick(&mut self, queue: usize) {
        if let Some(k) = self.ctl.0.kicks.borrow_mut().get_mut(queue) {
            *k += 1;
        }
    }
    fn queue_size(&self, queue: usize) -> u16 {
        self.rings.get(queue).map_or(0, SplitRing::size)
    }
    fn bad_completions(&self, queue: usize) -> u64 {
        self.rings.get(queue).map_or(0, SplitRing::bad_completions)
    }
    fn set_interrupts(&mut self, queue: usize, on: bool) {
        let Some(ring) = self.rings.get_mut(queue) else {
            return;
        };
        ring.set_interrupts(on);
        if on {
            let hook = self
                .ctl
                .0
                .on_interrupts
                .borrow_mut()
                .get_mut(queue)
                .and_then(Option::take);
            if let Some(mut f) = hook {
                f();
            }
        }
    }
    fn features(&self) -> u64 {
        self.features
    }
    fn read_config(&self) -> std::io::Result<C> {
        if self.ctl.0.fail_config.get() {
            return Err(std::io::Error::other("configuration kept changing"));
        }
        Ok(self.ctl.config())
    }
    fn needs_reset(&self) -> bool {
        self.ctl.0.needs_reset.get()
    }
}
