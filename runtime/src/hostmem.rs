//! Host-owned linear memories (DESIGN.md, snapshot technique (a)).
//!
//! Wasmtime does not expose a component's inner core memories. We give the
//! engine a [`MemoryCreator`], so every linear memory of every actor instance
//! is a mapping the runtime owns. While an instance is being created, the
//! creator records each new memory in a thread-local capture list; the
//! activation keeps those handles and reads or writes the bytes between
//! turns, when no guest code runs.
//!
//! Layout of one mapping: `reserved + guard` bytes of address space, mapped
//! `PROT_NONE`; the first `size` bytes are read-write. Growth only changes
//! protections, so the base never moves. Released mappings go back to a small
//! pool so the next activation reuses resident pages instead of faulting in
//! fresh ones (the same effect as the pooling allocator's
//! `linear_memory_keep_resident`).

use std::cell::RefCell;
use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::Mutex;
use rustix::mm::{MapFlags, MprotectFlags, ProtFlags};
use wasmtime::{LinearMemory, MemoryCreator, MemoryType};

const OS_PAGE: usize = 4096;

/// Bytes of a released mapping that are zeroed by hand (and so stay resident)
/// when it goes back to the pool; beyond this the pages are returned to the
/// kernel instead.
const RESIDENT_RECYCLE_BYTES_MAX: usize = 16 << 20;

/// Number of released mappings the pool keeps.
const POOL_MAPPINGS_MAX: usize = 256;

/// One reserved region of address space.
struct Region {
    base: NonNull<u8>,
    /// Readable and writable bytes from `base`.
    accessible: usize,
    /// Bytes reserved (excluding the guard).
    reserved: usize,
    /// Guard bytes after `reserved`, never accessible.
    guard: usize,
    /// Whether `[0, reserved)` is registered for write tracking
    /// ([`crate::writetrack`]).
    registered: bool,
}

// SAFETY: a `Region` is plain address space; all access to its bytes goes
// through `HostMemory`/`MemoryHandle`, whose users uphold the no-concurrent
// -access rule documented on them.
unsafe impl Send for Region {}
// SAFETY: as above; `Region` itself has no interior mutability.
unsafe impl Sync for Region {}

impl Region {
    fn reserve(reserved: usize, guard: usize) -> Result<Region, String> {
        let total = reserved
            .checked_add(guard)
            .ok_or_else(|| "memory reservation overflows".to_string())?;
        // SAFETY: a fresh anonymous PROT_NONE mapping at an address the
        // kernel chooses aliases no Rust object.
        let ptr = unsafe {
            rustix::mm::mmap_anonymous(
                std::ptr::null_mut(),
                total,
                ProtFlags::empty(),
                MapFlags::PRIVATE | MapFlags::NORESERVE,
            )
        }
        .map_err(|e| format!("cannot reserve {total} bytes of address space: {e}"))?;
        let registered = crate::writetrack::tracker().is_some_and(|t| {
            t.register(ptr as usize, reserved)
                .map_err(|e| tracing::warn!(error = %e, "a memory is compared whole: it could not be registered for write tracking"))
                .is_ok()
        });
        Ok(Region {
            base: NonNull::new(ptr.cast()).ok_or("mmap returned null")?,
            accessible: 0,
            reserved,
            guard,
            registered,
        })
    }

    /// Makes `[0, len)` accessible (len is rounded up to the OS page size).
    fn make_accessible(&mut self, len: usize) -> Result<(), String> {
        let len = len.next_multiple_of(OS_PAGE);
        if len > self.reserved {
            return Err(format!(
                "memory of {len} bytes exceeds its reservation of {} bytes",
                self.reserved
            ));
        }
        if len > self.accessible {
            // SAFETY: `[accessible, len)` lies inside our own reservation
            // (checked above); changing its protection affects no other
            // mapping.
            unsafe {
                rustix::mm::mprotect(
                    self.base.as_ptr().add(self.accessible).cast(),
                    len - self.accessible,
                    MprotectFlags::READ | MprotectFlags::WRITE,
                )
            }
            .map_err(|e| format!("cannot commit memory: {e}"))?;
            self.accessible = len;
        }
        Ok(())
    }

    /// Returns the region to a zero-filled, inaccessible state. Up to
    /// [`RESIDENT_RECYCLE_BYTES_MAX`] bytes are zeroed by hand and stay
    /// resident (merely protected); the rest go back to the kernel.
    /// Everything past the size of the next memory must be inaccessible,
    /// because compiled code relies on faults there instead of bounds checks.
    fn reset(&mut self) -> Result<(), String> {
        let keep = self.accessible.min(RESIDENT_RECYCLE_BYTES_MAX);
        if self.registered
            && keep > 0
            && let Some(t) = crate::writetrack::tracker()
        {
            // Zeroing protected pages would take a write fault per page.
            // Failing only costs those faults.
            let _ = t.unprotect(self.base.as_ptr() as usize, keep);
        }
        // SAFETY: `[0, keep)` is accessible and no guest or host reference to
        // it survives: the memory that used it has been dropped.
        unsafe { std::ptr::write_bytes(self.base.as_ptr(), 0, keep) };
        if self.accessible > keep {
            // SAFETY: `[keep, accessible)` is inside our mapping; DONTNEED on
            // a private anonymous mapping makes it read back as zeros.
            unsafe {
                rustix::mm::madvise(
                    self.base.as_ptr().add(keep).cast(),
                    self.accessible - keep,
                    rustix::mm::Advice::LinuxDontNeed,
                )
            }
            .map_err(|e| format!("madvise failed: {e}"))?;
        }
        if self.accessible > 0 {
            // SAFETY: `[0, accessible)` is inside our own reservation.
            unsafe {
                rustix::mm::mprotect(
                    self.base.as_ptr().cast(),
                    self.accessible,
                    MprotectFlags::empty(),
                )
            }
            .map_err(|e| format!("mprotect failed: {e}"))?;
        }
        self.accessible = 0;
        Ok(())
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: we own the whole mapping and nothing references it anymore.
        let _ =
            unsafe { rustix::mm::munmap(self.base.as_ptr().cast(), self.reserved + self.guard) };
    }
}

/// Shared state of one linear memory: the region and its current byte size.
struct Shared {
    region: Mutex<Option<Region>>,
    base: NonNull<u8>,
    size: AtomicUsize,
    pool: Arc<Pool>,
    /// Whether the region is registered for write tracking.
    registered: bool,
    /// Who tracks this memory's writes, and at what size.
    armed: Mutex<Armed>,
}

/// The baseline (by its token) whose bytes the memory held when tracking
/// was armed, and the memory's size then; token 0 is nobody.
#[derive(Default)]
struct Armed {
    token: u64,
    len: usize,
}

impl Armed {
    /// Whether writes are tracked for `token` at the size `len`.
    fn holds(&self, token: u64, len: usize) -> bool {
        token != 0 && self.token == token && self.len == len
    }
}

// SAFETY: the raw base pointer is only dereferenced under the rules of
// `MemoryHandle`'s accessors; the rest is Sync.
unsafe impl Send for Shared {}
// SAFETY: as above.
unsafe impl Sync for Shared {}

impl Drop for Shared {
    fn drop(&mut self) {
        if let Some(region) = self.region.get_mut().take() {
            self.pool.put(region);
        }
    }
}

/// Released regions, kept for reuse.
#[derive(Default)]
struct Pool {
    free: Mutex<Vec<Region>>,
}

impl Pool {
    fn take(&self, reserved: usize, guard: usize) -> Option<Region> {
        let mut free = self.free.lock();
        let i = free
            .iter()
            .position(|r| r.reserved == reserved && r.guard == guard)?;
        Some(free.swap_remove(i))
    }

    fn put(&self, mut region: Region) {
        if region.reset().is_err() {
            return; // dropped: unmapped
        }
        let mut free = self.free.lock();
        if free.len() < POOL_MAPPINGS_MAX {
            free.push(region);
        }
    }
}

/// The runtime's view of one actor memory. Valid while the instance lives.
#[derive(Clone)]
pub struct MemoryHandle(Arc<Shared>);

impl MemoryHandle {
    /// Current size in bytes.
    pub fn len(&self) -> usize {
        self.0.size.load(Ordering::Acquire)
    }

    /// Whether the memory has zero bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The memory's bytes.
    ///
    /// # Safety
    /// No guest code of the owning store may run while the slice lives, and
    /// no `bytes_mut` slice may exist at the same time. The runtime calls it
    /// only between turns, on the thread that owns the store.
    pub unsafe fn bytes(&self) -> &[u8] {
        // SAFETY: `[0, len)` is accessible (grow_to made it so before
        // publishing `len`); the caller guarantees no concurrent writer.
        unsafe { std::slice::from_raw_parts(self.0.base.as_ptr(), self.len()) }
    }

    /// The memory's bytes, writable.
    ///
    /// # Safety
    /// Same contract as [`MemoryHandle::bytes`], and no other slice of this
    /// memory may exist while this one lives.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn bytes_mut(&self) -> &mut [u8] {
        // SAFETY: as in `bytes`, plus exclusivity guaranteed by the caller.
        unsafe { std::slice::from_raw_parts_mut(self.0.base.as_ptr(), self.len()) }
    }

    /// Starts tracking writes for the baseline `token` (non-zero), which
    /// must hold exactly this memory's bytes now. Returns whether tracking
    /// is on: it is off for memories under
    /// [`crate::writetrack::TRACKED_BYTES_MIN`], and where the kernel does
    /// not offer it. Arming again (any token) ends the previous tracking.
    pub fn arm(&self, token: u64) -> bool {
        assert_ne!(token, 0, "token 0 means no baseline");
        let len = self.len();
        let mut armed = self.0.armed.lock();
        *armed = Armed::default();
        if len < crate::writetrack::TRACKED_BYTES_MIN || !self.0.registered {
            return false;
        }
        let Some(t) = crate::writetrack::tracker() else {
            return false;
        };
        match t.protect(self.0.base.as_ptr() as usize, len) {
            Ok(()) => {
                *armed = Armed { token, len };
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "write tracking could not be armed; this memory is compared whole");
                false
            }
        }
    }

    /// Whether writes are tracked for the baseline `token` at the memory's
    /// current size.
    pub fn is_armed_for(&self, token: u64) -> bool {
        self.0.armed.lock().holds(token, self.len())
    }

    /// The byte ranges (OS-page aligned) written since [`MemoryHandle::arm`]
    /// with `token` or the previous call, which start being tracked afresh;
    /// `None` if the memory is not tracked for `token` at its current size
    /// (it grew, another baseline armed it, or tracking is off): compare it
    /// whole then, and arm it again.
    pub fn take_written(&self, token: u64) -> Option<Vec<std::ops::Range<usize>>> {
        let len = self.len();
        let mut armed = self.0.armed.lock();
        if !armed.holds(token, len) {
            return None;
        }
        let t = crate::writetrack::tracker()?;
        match t.take_written(self.0.base.as_ptr() as usize, len) {
            Ok(w) => Some(w),
            Err(e) => {
                // Part of the range may be protected again already: what
                // was written there is lost to tracking, so start over.
                *armed = Armed::default();
                tracing::warn!(error = %e, "write tracking failed; this memory is compared whole");
                None
            }
        }
    }
}

/// The bytes of a memory whose instance is gone, kept mapped for a later
/// instance of the same actor ([`capture_adopting`]): the pages stay
/// resident and keep their write-tracking state, so handing them over
/// costs no copy, no fault and no re-protection. Dropped, the region goes
/// back to the pool.
pub struct Parked {
    region: Option<Region>,
    /// Byte size of the memory when it was parked.
    len: usize,
    /// Whose baseline its writes were tracked for when it was parked.
    armed: Armed,
    pool: Arc<Pool>,
}

impl Parked {
    /// Byte size of the parked memory.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The parked bytes.
    #[cfg(test)]
    fn bytes(&self) -> &[u8] {
        let r = self.region.as_ref().expect("a parked region until dropped");
        // SAFETY: `[0, len)` is accessible (it was the memory's size when
        // parked, and parking does not change protections); the region is
        // owned by `self`, no instance references it, and the borrow of
        // `self` keeps it from being adopted (which takes `self` by value)
        // while the slice lives.
        unsafe { std::slice::from_raw_parts(r.base.as_ptr(), self.len) }
    }

    /// Its region, if a memory of `size` bytes in a reservation of
    /// `reserved` + `guard` bytes can take it over.
    fn fit(mut self, size: usize, reserved: usize, guard: usize) -> Option<(Region, Armed)> {
        let r = self.region.as_ref()?;
        if self.len != size
            || r.reserved != reserved
            || r.guard != guard
            || r.accessible != size.next_multiple_of(OS_PAGE)
        {
            return None; // dropped: back to the pool
        }
        let armed = std::mem::take(&mut self.armed);
        Some((self.region.take()?, armed))
    }
}

impl Drop for Parked {
    fn drop(&mut self) {
        if let Some(r) = self.region.take() {
            self.pool.put(r);
        }
    }
}

impl MemoryHandle {
    /// The memory's region, kept with its bytes and its write-tracking
    /// state, once the instance that used it is gone: `None` while
    /// anything else (the engine's memory, or another handle) still refers
    /// to it.
    pub fn park(self) -> Option<Parked> {
        let mut shared = Arc::try_unwrap(self.0).ok()?;
        let len = shared.size.load(Ordering::Acquire);
        let armed = std::mem::take(shared.armed.get_mut());
        let region = shared.region.get_mut().take()?;
        Some(Parked {
            region: Some(region),
            len,
            armed,
            pool: shared.pool.clone(),
        })
    }
}

/// The `LinearMemory` wasmtime holds.
struct HostMemory {
    shared: Arc<Shared>,
    maximum: Option<usize>,
}

// SAFETY: the memory is page aligned (mmap), a multiple of the OS page size,
// followed by `guard` inaccessible bytes as wasmtime requested, and never
// moves. It starts zero-filled (fresh or reset mappings), except an adopted
// one (`capture_adopting`), which starts with bytes the same actor's
// previous instance left; wasmtime's own safety does not depend on what a
// linear memory holds (guest bytes are never trusted), and the runtime
// replaces them with the restored image before any turn.
unsafe impl LinearMemory for HostMemory {
    fn byte_size(&self) -> usize {
        self.shared.size.load(Ordering::Acquire)
    }

    fn byte_capacity(&self) -> usize {
        self.shared
            .region
            .lock()
            .as_ref()
            .map(|r| r.reserved)
            .unwrap_or(0)
    }

    fn grow_to(&mut self, new_size: usize) -> wasmtime::Result<()> {
        if let Some(max) = self.maximum
            && new_size > max
        {
            wasmtime::bail!("memory cannot grow past its declared maximum of {max} bytes");
        }
        let mut region = self.shared.region.lock();
        let region = region
            .as_mut()
            .ok_or_else(|| wasmtime::format_err!("memory already released"))?;
        region
            .make_accessible(new_size)
            .map_err(|e| wasmtime::format_err!(e))?;
        self.shared.size.store(new_size, Ordering::Release);
        Ok(())
    }

    fn as_ptr(&self) -> *mut u8 {
        self.shared.base.as_ptr()
    }
}

thread_local! {
    /// Memories created on this thread since `capture` began, and the sizes
    /// the next memories should start at (for restores).
    static CAPTURE: RefCell<Option<Capture>> = const { RefCell::new(None) };
}

struct Capture {
    created: Vec<MemoryHandle>,
    presize: std::collections::VecDeque<usize>,
    /// Parked regions the next memories take over, in order.
    adopt: std::collections::VecDeque<Parked>,
}

/// Runs `f` (an instantiation) and returns the memories it created, in
/// creation order. `presize[i]` is the byte size the i-th memory starts at
/// instead of its declared minimum (used to restore a grown memory).
pub fn capture<R>(presize: &[usize], f: impl FnOnce() -> R) -> (R, Vec<MemoryHandle>) {
    capture_adopting(presize, Vec::new(), f)
}

/// [`capture`], where the i-th memory created takes over the region of
/// `adopt[i]` (of `presize[i]` bytes), with its bytes and its write
/// tracking, instead of a zeroed one. So that memory does not start
/// zero-filled: it starts with the bytes an earlier instance of the same
/// actor left, and whatever the instantiation writes over them (data
/// segments, start code) must be undone before any turn runs (the
/// written pages are reported by [`MemoryHandle::take_written`] for the
/// token it was armed for, or copy the whole image). A parked region that
/// does not fit is dropped and a zeroed region used.
pub fn capture_adopting<R>(
    presize: &[usize],
    adopt: Vec<Parked>,
    f: impl FnOnce() -> R,
) -> (R, Vec<MemoryHandle>) {
    CAPTURE.with(|c| {
        *c.borrow_mut() = Some(Capture {
            created: Vec::new(),
            presize: presize.iter().copied().collect(),
            adopt: adopt.into(),
        })
    });
    let r = f();
    let cap = CAPTURE.with(|c| c.borrow_mut().take());
    // Parked regions no memory took (dropped after the borrow: their drop
    // zeroes them).
    let (created, _unused) = cap.map(|c| (c.created, c.adopt)).unwrap_or_default();
    (r, created)
}

/// The engine-wide memory creator.
#[derive(Default)]
pub struct HostMemoryCreator {
    pool: Arc<Pool>,
}

// SAFETY: every memory returned is a `HostMemory`, which upholds the
// `LinearMemory` contract above; the creator keeps no reference to the bytes
// other than the capture handles, which the runtime only dereferences
// between turns.
unsafe impl MemoryCreator for HostMemoryCreator {
    fn new_memory(
        &self,
        ty: MemoryType,
        minimum: usize,
        maximum: Option<usize>,
        reserved_size_in_bytes: Option<usize>,
        guard_size_in_bytes: usize,
    ) -> Result<Box<dyn LinearMemory>, String> {
        if ty.is_shared() {
            return Err("shared memories cannot be snapshotted".into());
        }
        let reserved = reserved_size_in_bytes.ok_or(
            "tern needs a fixed memory reservation (Config::memory_reservation) so memories never move",
        )?;
        let (presize, parked) = CAPTURE.with(|c| match c.borrow_mut().as_mut() {
            Some(c) => (c.presize.pop_front(), c.adopt.pop_front()),
            None => (None, None),
        });
        let size = presize.unwrap_or(minimum).max(minimum);
        let adopted = parked.and_then(|p| p.fit(size, reserved, guard_size_in_bytes));
        let (mut region, armed) = match adopted {
            Some(ra) => ra,
            None => match self.pool.take(reserved, guard_size_in_bytes) {
                Some(r) => (r, Armed::default()),
                None => (
                    Region::reserve(reserved, guard_size_in_bytes)?,
                    Armed::default(),
                ),
            },
        };
        region.make_accessible(size)?;
        let shared = Arc::new(Shared {
            base: region.base,
            registered: region.registered,
            armed: Mutex::new(armed),
            region: Mutex::new(Some(region)),
            size: AtomicUsize::new(size),
            pool: self.pool.clone(),
        });
        CAPTURE.with(|c| {
            if let Some(c) = c.borrow_mut().as_mut() {
                c.created.push(MemoryHandle(shared.clone()));
            }
        });
        Ok(Box::new(HostMemory { shared, maximum }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WASM_PAGE: usize = 1 << 16;

    /// A memory of `pages` wasm pages from `creator` (taking over
    /// `adopt`, if any), and its handle.
    fn memory(
        creator: &HostMemoryCreator,
        pages: usize,
        adopt: Vec<Parked>,
    ) -> (Box<dyn LinearMemory>, MemoryHandle) {
        let (mem, mut handles) = capture_adopting(&[], adopt, || {
            creator.new_memory(
                MemoryType::new(pages as u32, None),
                pages * WASM_PAGE,
                None,
                Some(64 << 20),
                0,
            )
        });
        (mem.unwrap(), handles.remove(0))
    }

    /// Issue 14: an evicted actor's memory is taken over by its next
    /// instance with its bytes and its write tracking: no copy, no new
    /// protection, and writes made over it since (the instantiation's)
    /// are reported for the token it was armed for.
    #[test]
    fn parked_memory_is_adopted_with_its_bytes_and_tracking() {
        let creator = HostMemoryCreator::default();
        let (old, h) = memory(&creator, 32, vec![]);
        // SAFETY: no guest code runs on this memory; the slice ends with
        // the statement.
        unsafe { h.bytes_mut() }
            .iter_mut()
            .enumerate()
            .for_each(|(i, b)| *b = (i % 251) as u8);
        // SAFETY: as above.
        let expected = unsafe { h.bytes() }.to_vec();
        let tracked = h.arm(9);
        let h2 = h.clone();
        assert!(h2.park().is_none(), "another handle still refers to it");
        drop(old);
        let parked = h.park().expect("nothing else refers to it");
        assert_eq!(parked.len(), expected.len());
        assert!(parked.bytes() == &expected[..]);

        // A memory of another size does not take it: it starts zeroed.
        let (_small, small) = memory(&creator, 31, vec![parked]);
        // SAFETY: as above.
        assert!(unsafe { small.bytes() }.iter().all(|&b| b == 0));
        assert!(!small.is_armed_for(9));

        // Park it again and adopt it at the same size.
        let (old, h) = memory(&creator, 32, vec![]);
        // SAFETY: as above.
        unsafe { h.bytes_mut() }.copy_from_slice(&expected);
        assert_eq!(h.arm(9), tracked);
        drop(old);
        let parked = h.park().unwrap();
        let (_new, adopted) = memory(&creator, 32, vec![parked]);
        // SAFETY: as above.
        let same = unsafe { adopted.bytes() } == &expected[..];
        assert!(same, "every byte is there");
        assert_eq!(adopted.is_armed_for(9), tracked, "tracking carries over");
        if tracked {
            // SAFETY: as above.
            unsafe { adopted.bytes_mut()[3 * 4096 + 5] ^= 1 };
            let written = adopted.take_written(9).expect("tracked");
            assert_eq!(written, vec![3 * 4096..4 * 4096], "the write is seen");
        }
    }
}
