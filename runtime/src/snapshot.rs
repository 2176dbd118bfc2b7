//! Dirty-page tracking between turns.
//!
//! The runtime keeps, per actor, the memory images as of the last
//! successful turn (the baseline). After a turn it compares the live
//! memories with the baseline page by page (64 KiB pages, `memcmp`), copies
//! the changed pages into the baseline and marks them dirty. A commit writes
//! only the dirty pages (invariant 7). After a trap, the baseline is what the
//! actor is rolled back to (invariant 3).
//!
//! **Page patches.** A dirty page whose change is small is committed as a
//! patch against the image the store holds for it (`tern_storage::patch`,
//! at most 8 KiB) in an `extra` side record named `pg/<memory>/<page>`, in
//! the same commit, instead of the whole page. Interpreters change a few
//! bytes on each of many pages per turn, so this keeps their commits
//! small. The baseline keeps the stored image of every patched page (and
//! of every page dirty since the last commit) to patch against; a page
//! written whole drops its patch record. A restore applies the records
//! ([`Baseline::from_snapshot`]).

use std::collections::{BTreeMap, BTreeSet};

use tern_storage::{MemoryDelta, PAGE_SIZE, StorageError};

use crate::hostmem::MemoryHandle;

/// Side-record prefix of page patches.
pub const PATCH_PREFIX: &str = "pg/";
/// Most pages an actor keeps as patches (each costs a 64 KiB copy of its
/// stored image in the baseline); past it, dirty pages are written whole.
pub const PATCHED_PAGES_MAX: usize = 1024;
/// Most bytes of patches one commit carries (the rest of its dirty pages
/// are written whole), well under the store's per-commit budget.
pub const PATCH_BYTES_PER_COMMIT_MAX: usize = 1 << 20;

/// A page: (memory, page index).
type PageId = (u32, u32);

fn patch_name((m, p): PageId) -> String {
    format!("{PATCH_PREFIX}{m}/{p}")
}

fn parse_patch_name(name: &str) -> Option<PageId> {
    let (m, p) = name.strip_prefix(PATCH_PREFIX)?.split_once('/')?;
    Some((m.parse().ok()?, p.parse().ok()?))
}

/// What one commit writes for the memories: whole pages, and patch records
/// (a set, or a clear as an empty value).
pub struct Delta {
    /// Whole pages, per memory.
    pub memories: Vec<MemoryDelta>,
    /// Patch side records to write or clear.
    pub patches: Vec<(String, Vec<u8>)>,
    /// The pages committed as patches.
    patched: BTreeSet<PageId>,
}

/// Memory images and global values after the last successful turn, and
/// what changed since the last commit.
#[derive(Default)]
pub struct Baseline {
    images: Vec<Vec<u8>>,
    dirty: Vec<BTreeSet<u32>>,
    /// Whether the lengths changed since the last commit.
    grown: bool,
    /// The instance's mutable globals (see `globals`), as raw bits.
    globals: Vec<u64>,
    /// Whether a global changed since the last commit.
    globals_dirty: bool,
    /// The image the store holds (page without its patch) of every page
    /// that is patched or dirty since the last commit.
    stored: BTreeMap<PageId, Vec<u8>>,
    /// Pages whose committed state is stored image + patch record.
    patched: BTreeSet<PageId>,
    /// Patch records to clear at the next commit (another version's).
    stale_patches: BTreeSet<PageId>,
    /// This baseline's write-tracking token (0 until the first absorb).
    token: u64,
    /// Absorbs so far: every `FULL_CHECK_EVERY`th compares everything.
    absorbs: u32,
}

/// Write-tracking tokens, one per baseline.
static NEXT_TOKEN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl Baseline {
    /// A baseline from restored images and globals; nothing is dirty.
    pub fn restored(images: Vec<Vec<u8>>, globals: Vec<u64>) -> Baseline {
        let dirty = vec![BTreeSet::new(); images.len()];
        Baseline {
            images,
            dirty,
            globals,
            ..Baseline::default()
        }
    }

    /// A baseline from a loaded snapshot: its images with its page patches
    /// (`pg/` side records of `extra`) applied. A patch for a page the
    /// images do not have, or one that does not apply, is `Corrupt`.
    pub fn from_snapshot(
        actor: &str,
        images: Vec<Vec<u8>>,
        globals: Vec<u64>,
        extra: &[(String, Vec<u8>)],
    ) -> Result<Baseline, StorageError> {
        let mut b = Baseline::restored(images, globals);
        for (name, patch) in extra {
            if !name.starts_with(PATCH_PREFIX) || patch.is_empty() {
                continue;
            }
            let what = format!("{actor} side record {name}");
            let id @ (m, p) = parse_patch_name(name).ok_or_else(|| StorageError::Corrupt {
                key: what.clone(),
                reason: "not a page patch name".into(),
            })?;
            let start = p as usize * PAGE_SIZE;
            let page = b
                .images
                .get_mut(m as usize)
                .and_then(|img| img.get_mut(start..start + PAGE_SIZE))
                .ok_or_else(|| StorageError::Corrupt {
                    key: what.clone(),
                    reason: "a patch for a page the snapshot does not have".into(),
                })?;
            let stored = page.to_vec();
            tern_storage::patch::apply(&what, page, patch)?;
            b.stored.insert(id, stored);
            b.patched.insert(id);
        }
        Ok(b)
    }

    /// The pages committed as patches.
    pub fn patched(&self) -> &BTreeSet<(u32, u32)> {
        &self.patched
    }

    /// Whether the page-patch records among `extra` (a snapshot's side
    /// records) are exactly the pages this baseline has as patched.
    pub fn patches_match(&self, extra: &[(String, Vec<u8>)]) -> bool {
        let mut records = BTreeSet::new();
        for (name, patch) in extra {
            if !name.starts_with(PATCH_PREFIX) || patch.is_empty() {
                continue;
            }
            match parse_patch_name(name) {
                Some(id) => records.insert(id),
                None => return false,
            };
        }
        records == self.patched
    }

    /// Has the next commit clear the patch records of `pages` (those of a
    /// snapshot taken by other code, after an upgrade).
    pub fn clear_patches(&mut self, pages: &BTreeSet<(u32, u32)>) {
        self.stale_patches.extend(pages.iter().copied());
    }

    /// The globals.
    pub fn globals(&self) -> &[u64] {
        &self.globals
    }

    /// Folds the live globals into the baseline; true if any changed.
    pub fn absorb_globals(&mut self, live: Vec<u64>) -> bool {
        if live == self.globals {
            return false;
        }
        self.globals = live;
        self.globals_dirty = true;
        true
    }

    /// The images.
    pub fn images(&self) -> &[Vec<u8>] {
        &self.images
    }

    /// Byte lengths of the images.
    pub fn lens(&self) -> Vec<usize> {
        self.images.iter().map(Vec::len).collect()
    }

    /// Whether anything changed since the last commit.
    pub fn is_dirty(&self) -> bool {
        self.grown
            || self.globals_dirty
            || !self.stale_patches.is_empty()
            || self.dirty.iter().any(|d| !d.is_empty())
    }

    /// Bytes of stored page images kept to patch against.
    pub fn stored_bytes(&self) -> usize {
        self.stored.len() * PAGE_SIZE
    }

    /// Folds the live memories into the baseline; returns how many pages
    /// changed.
    ///
    /// # Safety
    /// No guest code of the instance owning `mems` may run during the call.
    pub unsafe fn absorb(&mut self, mems: &[MemoryHandle]) -> usize {
        let token = self.token();
        if self.images.len() < mems.len() {
            self.images.resize_with(mems.len(), Vec::new);
            self.dirty.resize_with(mems.len(), BTreeSet::new);
            self.grown = true;
        }
        self.absorbs = self.absorbs.wrapping_add(1);
        let check = self
            .absorbs
            .is_multiple_of(crate::writetrack::FULL_CHECK_EVERY);
        let mut changed = 0;
        for (i, mem) in mems.iter().enumerate() {
            // Taken before the bytes are borrowed: which pages were written
            // since this baseline last held the memory's bytes.
            let written = mem.take_written(token);
            // SAFETY: forwarded from the caller: no guest code runs.
            let live = unsafe { mem.bytes() };
            if self.images[i].len() != live.len() {
                self.images[i].resize(live.len(), 0);
                self.grown = true;
            }
            match written {
                Some(ranges) => {
                    changed += self.absorb_parts(i, live, ranges.into_iter());
                    if check && live != &self.images[i][..] {
                        crate::writetrack::distrust("a page changed that was not reported written");
                        changed += self.absorb_parts(i, live, std::iter::once(0..live.len()));
                    }
                }
                None => {
                    changed += self.absorb_parts(i, live, std::iter::once(0..live.len()));
                    // The baseline holds the memory's bytes exactly now.
                    mem.arm(token);
                }
            }
        }
        changed
    }

    /// This baseline's write-tracking token (0: none drawn yet).
    pub fn tracking_token(&self) -> u64 {
        self.token
    }

    /// This baseline's write-tracking token, drawn on first use.
    fn token(&mut self) -> u64 {
        if self.token == 0 {
            self.token = NEXT_TOKEN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        self.token
    }

    /// Starts tracking writes to `mems`, which hold exactly this baseline's
    /// images (an instance just restored from it), so that the next
    /// [`Baseline::absorb`] compares only the pages written.
    ///
    /// # Safety
    /// As for [`Baseline::absorb`].
    pub unsafe fn track(&mut self, mems: &[MemoryHandle]) {
        let token = self.token();
        for (i, mem) in mems.iter().enumerate() {
            if cfg!(debug_assertions) {
                // SAFETY: forwarded from the caller: no guest code runs.
                let live = unsafe { mem.bytes() };
                assert!(
                    self.images.get(i).is_some_and(|img| img[..] == *live),
                    "a memory armed for tracking holds its baseline image"
                );
            }
            // An adopted memory still tracked for this baseline needs no
            // new protection: pages written since are merely reported (and
            // compared) once more.
            if !mem.is_armed_for(token) {
                mem.arm(token);
            }
        }
    }

    /// Folds `parts` (sorted, disjoint byte ranges) of memory `i` from
    /// `live` into its image, page by page; returns how many pages changed.
    /// A part's bytes outside `parts` must already equal the image's.
    fn absorb_parts(
        &mut self,
        i: usize,
        live: &[u8],
        parts: impl Iterator<Item = std::ops::Range<usize>>,
    ) -> usize {
        let len = live.len();
        assert_eq!(
            self.images[i].len(),
            len,
            "the image was sized to the memory"
        );
        let mut changed = 0;
        // The page whose first change in this call was already handled.
        let mut seen: Option<usize> = None;
        let mut last_end = 0;
        for r in parts {
            assert!(r.start >= last_end, "parts are sorted and disjoint");
            last_end = r.end;
            let end = r.end.min(len);
            let mut at = r.start;
            while at < end {
                let p = at / PAGE_SIZE;
                let piece = at..end.min((p + 1) * PAGE_SIZE);
                at = piece.end;
                if live[piece.clone()] == self.images[i][piece.clone()] {
                    continue;
                }
                if seen != Some(p) {
                    seen = Some(p);
                    let id = (i as u32, p as u32);
                    let page = p * PAGE_SIZE..((p + 1) * PAGE_SIZE).min(len);
                    // The stored image, kept to patch against, when the
                    // page was clean until now: what the baseline held (no
                    // piece of this page was copied yet in this call).
                    if page.len() == PAGE_SIZE
                        && !self.dirty[i].contains(&(p as u32))
                        && !self.stored.contains_key(&id)
                        && self.stored.len() < PATCHED_PAGES_MAX
                    {
                        self.stored.insert(id, self.images[i][page].to_vec());
                    }
                    self.dirty[i].insert(p as u32);
                    changed += 1;
                }
                self.images[i][piece.clone()].copy_from_slice(&live[piece]);
            }
        }
        changed
    }

    /// Marks every non-zero page dirty (for an actor's first commit).
    pub fn mark_all_dirty(&mut self) {
        self.grown = true;
        for (img, dirty) in self.images.iter().zip(self.dirty.iter_mut()) {
            for (p, page) in img.chunks(PAGE_SIZE).enumerate() {
                if page.iter().any(|&b| b != 0) {
                    dirty.insert(p as u32);
                }
            }
        }
    }

    /// Marks every page dirty, zero pages too (after an upgrade): the next
    /// commit then replaces every page of the previous snapshot, so no
    /// page written by other code survives in the new code's image. No
    /// page is patched against the old code's images.
    pub fn mark_every_page_dirty(&mut self) {
        self.grown = true;
        self.stored.clear();
        for (img, dirty) in self.images.iter().zip(self.dirty.iter_mut()) {
            for p in 0..img.len().div_ceil(PAGE_SIZE) {
                dirty.insert(p as u32);
            }
        }
    }

    /// What the next commit writes: each dirty page as a patch against its
    /// stored image when that is small (at most `PATCH_BYTES_MAX`), else
    /// whole (clearing its patch record, if any). Everything stays dirty
    /// until [`Baseline::committed`] is called with it.
    pub fn delta(&self) -> Delta {
        let mut patches = Vec::new();
        let mut patched = BTreeSet::new();
        let mut patch_bytes = 0;
        let memories = self
            .images
            .iter()
            .zip(&self.dirty)
            .enumerate()
            .map(|(m, (img, dirty))| {
                let mut changed_pages = Vec::new();
                for &p in dirty {
                    let id = (m as u32, p);
                    let start = p as usize * PAGE_SIZE;
                    let page = &img[start..start + PAGE_SIZE];
                    let patch = self
                        .stored
                        .get(&id)
                        .and_then(|base| tern_storage::patch::encode(base, page))
                        .filter(|patch| patch_bytes + patch.len() <= PATCH_BYTES_PER_COMMIT_MAX);
                    match patch {
                        Some(patch) => {
                            patch_bytes += patch.len();
                            patches.push((patch_name(id), patch));
                            patched.insert(id);
                        }
                        None => {
                            if self.patched.contains(&id) || self.stale_patches.contains(&id) {
                                patches.push((patch_name(id), Vec::new()));
                            }
                            changed_pages.push((p, page.to_vec()));
                        }
                    }
                }
                MemoryDelta {
                    len_bytes: img.len() as u64,
                    changed_pages,
                }
            })
            .collect();
        // A stale patch of a dirty page was handled above (replaced or
        // cleared); the others are cleared here.
        for &(m, p) in &self.stale_patches {
            if !self.dirty.get(m as usize).is_some_and(|d| d.contains(&p)) {
                patches.push((patch_name((m, p)), Vec::new()));
            }
        }
        Delta {
            memories,
            patches,
            patched,
        }
    }

    /// Records that `delta` (the last [`Baseline::delta`]) was committed.
    pub fn committed(&mut self, delta: &Delta) {
        self.grown = false;
        self.globals_dirty = false;
        self.stale_patches.clear();
        for (m, d) in self.dirty.iter_mut().enumerate() {
            for p in std::mem::take(d) {
                let id = (m as u32, p);
                if delta.patched.contains(&id) {
                    self.patched.insert(id);
                } else {
                    // Written whole: the store holds this very image now.
                    self.patched.remove(&id);
                    self.stored.remove(&id);
                }
            }
        }
        assert!(
            self.patched.iter().all(|id| self.stored.contains_key(id)),
            "every patched page keeps the stored image its patch applies to"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restore_applies_page_patches_and_refuses_a_wrong_base() {
        let base = vec![7u8; 2 * PAGE_SIZE];
        let mut page1 = vec![7u8; PAGE_SIZE];
        page1[10] = 99;
        let patch = tern_storage::patch::encode(&base[PAGE_SIZE..], &page1).unwrap();
        let extra = vec![
            (
                "idem2/k".to_string(),
                b"other records are left alone".to_vec(),
            ),
            (patch_name((0, 1)), patch.clone()),
        ];
        let b = Baseline::from_snapshot("a", vec![base.clone()], vec![], &extra).unwrap();
        assert_eq!(&b.images()[0][PAGE_SIZE..], &page1[..]);
        assert_eq!(&b.images()[0][..PAGE_SIZE], &base[..PAGE_SIZE]);
        assert!(b.patched().contains(&(0, 1)));
        assert!(!b.is_dirty());
        // The patch was made for page 1; on page 0 of other bytes it fails.
        let other = vec![vec![1u8; 2 * PAGE_SIZE]];
        let wrong = vec![(patch_name((0, 1)), patch.clone())];
        assert!(matches!(
            Baseline::from_snapshot("a", other, vec![], &wrong),
            Err(StorageError::Corrupt { .. })
        ));
        let beyond = vec![(patch_name((0, 5)), patch)];
        assert!(matches!(
            Baseline::from_snapshot("a", vec![base], vec![], &beyond),
            Err(StorageError::Corrupt { .. })
        ));
    }

    #[test]
    fn a_patched_page_written_whole_drops_its_patch_and_upgrades_clear_them() {
        let base = vec![7u8; PAGE_SIZE];
        let mut page = base.clone();
        page[3] = 1;
        let patch = tern_storage::patch::encode(&base, &page).unwrap();
        let extra = vec![(patch_name((0, 0)), patch)];
        let mut b = Baseline::from_snapshot("a", vec![base], vec![], &extra).unwrap();
        // After an upgrade every page is written whole, and the old
        // code's patch records are cleared.
        let old = b.patched().clone();
        b.mark_every_page_dirty();
        b.clear_patches(&old);
        let d = b.delta();
        assert_eq!(d.memories[0].changed_pages.len(), 1);
        assert_eq!(d.patches, vec![(patch_name((0, 0)), Vec::new())]);
        b.committed(&d);
        assert!(b.patched().is_empty());
        assert!(!b.is_dirty());
        assert_eq!(b.stored_bytes(), 0);
    }

    #[test]
    fn upgrade_marks_zero_pages_dirty_so_no_old_page_survives() {
        let mut image = vec![0u8; 3 * PAGE_SIZE];
        image[PAGE_SIZE] = 1;
        let mut b = Baseline::restored(vec![image.clone()], Vec::new());
        b.mark_all_dirty();
        let pages = |b: &Baseline| -> Vec<u32> {
            b.delta().memories[0]
                .changed_pages
                .iter()
                .map(|(p, _)| *p)
                .collect()
        };
        assert_eq!(pages(&b), [1], "a first commit needs only non-zero pages");
        let mut b = Baseline::restored(vec![image], Vec::new());
        b.mark_every_page_dirty();
        assert_eq!(
            pages(&b),
            [0, 1, 2],
            "after an upgrade every page is replaced, zero ones included"
        );
    }

    /// Tracked absorbs (issue 14) must fold in exactly what a whole
    /// comparison would: the same pages changed, the same image, across
    /// writes anywhere, writes of unchanged bytes, and growth.
    #[test]
    fn tracked_absorb_sees_every_change_a_full_compare_sees() {
        use rand::{Rng, SeedableRng};
        use wasmtime::{MemoryCreator, MemoryType};
        assert!(
            crate::writetrack::tracker().is_some(),
            "write tracking is unavailable on this machine (needs Linux 6.7+)"
        );
        let creator = crate::hostmem::HostMemoryCreator::default();
        let wasm_page = 1usize << 16;
        let (mem, handles) = crate::hostmem::capture(&[], || {
            creator.new_memory(
                MemoryType::new(32, None),
                32 * wasm_page,
                None,
                Some(64 << 20),
                0,
            )
        });
        let mut mem = mem.unwrap();
        let h = handles[0].clone();
        assert!(h.len() >= crate::writetrack::TRACKED_BYTES_MIN);
        let mut b = Baseline::default();
        let mut shadow: Vec<u8> = Vec::new();
        let mut rng = rand::rngs::StdRng::seed_from_u64(14);
        for round in 0..60 {
            if round % 9 == 4 {
                mem.grow_to(h.len() + 3 * wasm_page).unwrap();
            }
            let len = h.len();
            for _ in 0..rng.random_range(0..40) {
                let at = rng.random_range(0..len);
                let v = if rng.random_bool(0.2) {
                    shadow.get(at).copied().unwrap_or(0) // written, unchanged
                } else {
                    rng.random()
                };
                // SAFETY: no guest code runs on this memory; the slice
                // ends with the statement.
                unsafe { h.bytes_mut()[at] = v };
            }
            // SAFETY: as above.
            let live = unsafe { h.bytes() }.to_vec();
            shadow.resize(len, 0);
            let expected = live
                .chunks(PAGE_SIZE)
                .zip(shadow.chunks(PAGE_SIZE))
                .filter(|(l, s)| l != s)
                .count();
            // SAFETY: no guest code runs on this memory.
            let changed = unsafe { b.absorb(std::slice::from_ref(&h)) };
            assert_eq!(changed, expected, "pages changed in round {round}");
            assert!(
                b.images()[0] == live,
                "the image is the memory in round {round}"
            );
            assert!(
                h.is_armed_for(b.token),
                "round {round}: the next absorb is tracked"
            );
            shadow = live;
        }
    }
}
