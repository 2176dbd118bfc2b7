//! Write tracking for actor memories: which OS pages a turn wrote, without
//! comparing the whole memory with its baseline (issue 14).
//!
//! Linux userfaultfd write-protection in asynchronous mode
//! (`UFFD_FEATURE_WP_ASYNC`, Linux 6.7): a write to a protected page is
//! resolved by the kernel itself, which lifts that page's protection; no
//! handler thread runs and nothing ever blocks. `PAGEMAP_SCAN` on
//! `/proc/self/pagemap` then lists the pages written since they were
//! protected and protects them again, in one call. Pages never touched are
//! covered too (`UFFD_FEATURE_WP_UNPOPULATED`).
//!
//! Every write counts, whoever makes it: guest code, the host copying a
//! reply into guest memory, or the kernel. Tracking only narrows which
//! pages are compared with the baseline; [`crate::snapshot::Baseline`]
//! still compares those bytes, and every [`FULL_CHECK_EVERY`]th time
//! compares everything and checks that tracking missed nothing.
//!
//! Where any step is unavailable (an older kernel, a seccomp filter, or
//! `TERN_WRITE_TRACKING=off`), [`tracker`] is `None` and memories are
//! compared whole, as before.

use std::fs::File;
use std::ops::Range;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

/// A tracked absorb compares the whole memory anyway once in this many
/// times, and checks that no page changed unreported. Debug builds (every
/// test) check every time.
pub const FULL_CHECK_EVERY: u32 = if cfg!(debug_assertions) { 1 } else { 256 };

/// Memories smaller than this are compared whole: below it a full
/// comparison costs less than the write faults tracking adds (about 1.2 µs
/// for each page a turn first writes; measured in BENCHMARKS.md).
pub const TRACKED_BYTES_MIN: usize = 1 << 20;

/// Regions of written pages read per `PAGEMAP_SCAN` call.
const SCAN_REGIONS: usize = 256;

const UFFD_API: u64 = 0xAA;
const UFFD_FEATURE_WP_UNPOPULATED: u64 = 1 << 13;
const UFFD_FEATURE_WP_ASYNC: u64 = 1 << 15;
const UFFDIO_REGISTER_MODE_WP: u64 = 1 << 1;
const UFFDIO_WRITEPROTECT_MODE_WP: u64 = 1 << 0;
// _IOWR(0xAA, nr, size) and _IOWR('f', 16, size), as <linux/userfaultfd.h>
// and <linux/fs.h> define them.
const UFFDIO_API: libc::c_ulong = 0xc018_aa3f;
const UFFDIO_REGISTER: libc::c_ulong = 0xc020_aa00;
const UFFDIO_WRITEPROTECT: libc::c_ulong = 0xc018_aa06;
const PAGEMAP_SCAN: libc::c_ulong = 0xc060_6610;
const PM_SCAN_WP_MATCHING: u64 = 1 << 0;
const PM_SCAN_CHECK_WPASYNC: u64 = 1 << 1;
const PAGE_IS_WRITTEN: u64 = 1 << 1;

#[repr(C)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

#[repr(C)]
struct UffdioRange {
    start: u64,
    len: u64,
}

#[repr(C)]
struct UffdioRegister {
    range: UffdioRange,
    mode: u64,
    ioctls: u64,
}

#[repr(C)]
struct UffdioWriteprotect {
    range: UffdioRange,
    mode: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct PageRegion {
    start: u64,
    end: u64,
    categories: u64,
}

#[repr(C)]
struct PmScanArg {
    size: u64,
    flags: u64,
    start: u64,
    end: u64,
    walk_end: u64,
    vec: u64,
    vec_len: u64,
    max_pages: u64,
    category_inverted: u64,
    category_mask: u64,
    category_anyof_mask: u64,
    return_mask: u64,
}

// The layouts the kernel reads: a wrong one would be a silent misread.
const _: () = assert!(std::mem::size_of::<UffdioApi>() == 24);
const _: () = assert!(std::mem::size_of::<UffdioRegister>() == 32);
const _: () = assert!(std::mem::size_of::<UffdioWriteprotect>() == 24);
const _: () = assert!(std::mem::size_of::<PageRegion>() == 24);
const _: () = assert!(std::mem::size_of::<PmScanArg>() == 96);

/// The process's write tracker: one userfaultfd for every memory, and the
/// pagemap file.
pub struct Tracker {
    uffd: OwnedFd,
    pagemap: File,
}

static TRACKER: OnceLock<Option<Tracker>> = OnceLock::new();
/// Set when a full check found a change tracking had not reported: from
/// then on every memory is compared whole.
static DISTRUSTED: AtomicBool = AtomicBool::new(false);

/// The tracker, opened on first use; `None` where tracking is unavailable
/// or was turned off.
pub fn tracker() -> Option<&'static Tracker> {
    if DISTRUSTED.load(Ordering::Acquire) {
        return None;
    }
    TRACKER
        .get_or_init(|| match Tracker::open() {
            Ok(t) => {
                tracing::info!("write tracking on: userfaultfd write-protection, asynchronous");
                Some(t)
            }
            Err(e) => {
                tracing::info!(reason = %e, "write tracking off: memories are compared whole after each turn");
                None
            }
        })
        .as_ref()
}

/// Stops all tracking in this process (a full check found a change that
/// tracking missed). Loud: it means the kernel feature misbehaves here.
pub fn distrust(why: &str) {
    debug_assert!(false, "write tracking missed a change: {why}");
    metrics::counter!("tern_write_tracking_missed_total").increment(1);
    tracing::error!(
        why,
        "write tracking missed a change; every memory is compared whole from now on"
    );
    DISTRUSTED.store(true, Ordering::Release);
}

fn os_err(what: &str) -> String {
    format!("{what}: {}", std::io::Error::last_os_error())
}

impl Tracker {
    fn open() -> Result<Tracker, String> {
        if std::env::var("TERN_WRITE_TRACKING").is_ok_and(|v| v == "off") {
            return Err("TERN_WRITE_TRACKING=off".into());
        }
        // SAFETY: userfaultfd(2) takes only flags and returns a new
        // descriptor or -1; it touches no memory of ours.
        let fd =
            unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC | libc::O_NONBLOCK) };
        if fd < 0 {
            return Err(os_err("userfaultfd"));
        }
        // SAFETY: `fd` is a descriptor the kernel just created for us; no
        // one else owns it.
        let uffd = unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) };
        let mut api = UffdioApi {
            api: UFFD_API,
            features: UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED,
            ioctls: 0,
        };
        // SAFETY: UFFDIO_API reads and writes one `struct uffdio_api`, whose
        // layout `UffdioApi` has (size checked above); `api` lives across
        // the call.
        if unsafe { libc::ioctl(uffd.as_raw_fd(), UFFDIO_API, &mut api) } != 0 {
            return Err(os_err("UFFDIO_API with asynchronous write-protection"));
        }
        let pagemap =
            File::open("/proc/self/pagemap").map_err(|e| format!("/proc/self/pagemap: {e}"))?;
        Ok(Tracker { uffd, pagemap })
    }

    /// Registers `[base, base + len)` for write-protection. It never
    /// changes the bytes or what may be accessed: a protected page is
    /// written as before, only recorded.
    pub fn register(&self, base: usize, len: usize) -> Result<(), String> {
        let mut reg = UffdioRegister {
            range: UffdioRange {
                start: base as u64,
                len: len as u64,
            },
            mode: UFFDIO_REGISTER_MODE_WP,
            ioctls: 0,
        };
        // SAFETY: UFFDIO_REGISTER reads and writes one `struct
        // uffdio_register` (layout checked above), alive across the call.
        // In asynchronous mode registration never blocks an access.
        if unsafe { libc::ioctl(self.uffd.as_raw_fd(), UFFDIO_REGISTER, &mut reg) } != 0 {
            return Err(os_err("UFFDIO_REGISTER"));
        }
        Ok(())
    }

    /// Write-protects `[base, base + len)` (registered before): its pages
    /// count as unwritten from now on.
    pub fn protect(&self, base: usize, len: usize) -> Result<(), String> {
        self.write_protect(base, len, UFFDIO_WRITEPROTECT_MODE_WP)
    }

    /// Lifts the protection of `[base, base + len)`, so that writing all
    /// of it (zeroing a released memory) takes no fault per page.
    pub fn unprotect(&self, base: usize, len: usize) -> Result<(), String> {
        self.write_protect(base, len, 0)
    }

    fn write_protect(&self, base: usize, len: usize, mode: u64) -> Result<(), String> {
        let mut wp = UffdioWriteprotect {
            range: UffdioRange {
                start: base as u64,
                len: len as u64,
            },
            mode,
        };
        // SAFETY: UFFDIO_WRITEPROTECT reads one `struct
        // uffdio_writeprotect` (layout checked above), alive across the
        // call; protection only records later writes.
        if unsafe { libc::ioctl(self.uffd.as_raw_fd(), UFFDIO_WRITEPROTECT, &mut wp) } != 0 {
            return Err(os_err("UFFDIO_WRITEPROTECT"));
        }
        Ok(())
    }

    /// The pages of `[base, base + len)` written since they were last
    /// protected, as byte ranges relative to `base`, merged; they are
    /// protected again in the same call.
    pub fn take_written(&self, base: usize, len: usize) -> Result<Vec<Range<usize>>, String> {
        let mut out: Vec<Range<usize>> = Vec::new();
        let mut regions = [PageRegion::default(); SCAN_REGIONS];
        let end = (base + len) as u64;
        let mut start = base as u64;
        while start < end {
            let mut arg = PmScanArg {
                size: std::mem::size_of::<PmScanArg>() as u64,
                flags: PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC,
                start,
                end,
                walk_end: 0,
                vec: regions.as_mut_ptr() as u64,
                vec_len: SCAN_REGIONS as u64,
                max_pages: 0,
                category_inverted: 0,
                category_mask: PAGE_IS_WRITTEN,
                category_anyof_mask: 0,
                return_mask: PAGE_IS_WRITTEN,
            };
            // SAFETY: PAGEMAP_SCAN reads `arg` (layout checked above) and
            // writes at most `vec_len` `struct page_region`s to `vec`, which
            // is `regions`, that long and alive across the call; it only
            // reads page tables of `[start, end)` and write-protects the
            // pages it reports.
            let n = unsafe { libc::ioctl(self.pagemap.as_raw_fd(), PAGEMAP_SCAN, &mut arg) };
            if n < 0 {
                return Err(os_err("PAGEMAP_SCAN"));
            }
            let n = n as usize;
            assert!(
                n <= SCAN_REGIONS,
                "PAGEMAP_SCAN filled at most vec_len regions"
            );
            for r in &regions[..n] {
                assert!(
                    r.start >= start && r.start < r.end && r.end <= end,
                    "PAGEMAP_SCAN reported a region inside the range scanned"
                );
                let range = (r.start - base as u64) as usize..(r.end - base as u64) as usize;
                assert!(
                    out.last().is_none_or(|l| l.end <= range.start),
                    "PAGEMAP_SCAN reports regions in address order"
                );
                match out.last_mut() {
                    Some(last) if last.end == range.start => last.end = range.end,
                    _ => out.push(range),
                }
            }
            if arg.walk_end <= start {
                return Err("PAGEMAP_SCAN made no progress".into());
            }
            start = arg.walk_end;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A private anonymous mapping for the tests, unmapped on drop.
    struct Map(*mut u8, usize);
    impl Map {
        fn new(len: usize) -> Map {
            // SAFETY: a fresh anonymous mapping at an address the kernel
            // chooses aliases nothing.
            let p = unsafe {
                rustix::mm::mmap_anonymous(
                    std::ptr::null_mut(),
                    len,
                    rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE,
                    rustix::mm::MapFlags::PRIVATE,
                )
            }
            .unwrap();
            Map(p.cast(), len)
        }
        fn write(&self, at: usize, v: u8) {
            assert!(at < self.1);
            // SAFETY: `at` is inside the mapping (checked), which only this
            // test uses.
            unsafe { self.0.add(at).write_volatile(v) }
        }
    }
    impl Drop for Map {
        fn drop(&mut self) {
            // SAFETY: the mapping is ours and no reference to it survives.
            let _ = unsafe { rustix::mm::munmap(self.0.cast(), self.1) };
        }
    }

    /// This kernel (Linux 6.7 or later, the machines tern runs and is
    /// tested on) must offer tracking; elsewhere the runtime falls back to
    /// whole comparisons, and this test says so loudly rather than pass.
    #[test]
    fn written_pages_are_reported_exactly_once() {
        let t = tracker().expect(
            "write tracking is unavailable on this machine (needs Linux 6.7+ userfaultfd WP_ASYNC and PAGEMAP_SCAN)",
        );
        let len = 4 << 20;
        let m = Map::new(len);
        m.write(0, 1); // populated before protection, untouched pages not
        t.register(m.0 as usize, len).unwrap();
        t.protect(m.0 as usize, len).unwrap();
        assert!(t.take_written(m.0 as usize, len).unwrap().is_empty());
        m.write(3 * 4096 + 7, 1);
        m.write(4 * 4096, 1);
        m.write(len - 1, 1); // a page never populated
        m.write(0, 2);
        let w = t.take_written(m.0 as usize, len).unwrap();
        assert_eq!(w, vec![0..4096, 3 * 4096..5 * 4096, len - 4096..len]);
        // Protected again by the scan: nothing new.
        assert!(t.take_written(m.0 as usize, len).unwrap().is_empty());
        m.write(100 * 4096, 9);
        assert_eq!(
            t.take_written(m.0 as usize, len).unwrap(),
            vec![100 * 4096..101 * 4096]
        );
        // Unprotected pages count as written (nothing vouches for them).
        t.unprotect(m.0 as usize + 8 * 4096, 2 * 4096).unwrap();
        assert_eq!(
            t.take_written(m.0 as usize, len).unwrap(),
            vec![8 * 4096..10 * 4096]
        );
    }

    /// More written regions than one scan call returns are all reported.
    #[test]
    fn many_written_regions_span_several_scans() {
        let t = tracker().expect("write tracking is available here");
        let pages = SCAN_REGIONS * 3;
        let len = pages * 2 * 4096;
        let m = Map::new(len);
        t.register(m.0 as usize, len).unwrap();
        t.protect(m.0 as usize, len).unwrap();
        for p in 0..pages {
            m.write(p * 2 * 4096, 1); // every other page: separate regions
        }
        let w = t.take_written(m.0 as usize, len).unwrap();
        assert_eq!(w.len(), pages);
        assert!(
            w.iter()
                .enumerate()
                .all(|(i, r)| *r == (i * 8192..i * 8192 + 4096))
        );
    }
}
