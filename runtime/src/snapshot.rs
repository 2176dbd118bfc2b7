//! Dirty-page tracking between turns.
//!
//! The runtime keeps, per actor, the memory images as of the last
//! successful turn (the baseline). After a turn it compares the live
//! memories with the baseline page by page (64 KiB pages, `memcmp`), copies
//! the changed pages into the baseline and marks them dirty. A commit writes
//! only the dirty pages (invariant 7). After a trap, the baseline is what the
//! actor is rolled back to (invariant 3).

use std::collections::BTreeSet;

use tern_storage::{MemoryDelta, PAGE_SIZE};

use crate::hostmem::MemoryHandle;

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
}

impl Baseline {
    /// A baseline from restored images and globals; nothing is dirty.
    pub fn restored(images: Vec<Vec<u8>>, globals: Vec<u64>) -> Baseline {
        let dirty = vec![BTreeSet::new(); images.len()];
        Baseline {
            images,
            dirty,
            grown: false,
            globals,
            globals_dirty: false,
        }
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
        self.grown || self.globals_dirty || self.dirty.iter().any(|d| !d.is_empty())
    }

    /// Folds the live memories into the baseline; returns how many pages
    /// changed.
    ///
    /// # Safety
    /// No guest code of the instance owning `mems` may run during the call.
    pub unsafe fn absorb(&mut self, mems: &[MemoryHandle]) -> usize {
        if self.images.len() < mems.len() {
            self.images.resize_with(mems.len(), Vec::new);
            self.dirty.resize_with(mems.len(), BTreeSet::new);
            self.grown = true;
        }
        let mut changed = 0;
        for (i, mem) in mems.iter().enumerate() {
            // SAFETY: forwarded from the caller: no guest code runs.
            let live = unsafe { mem.bytes() };
            let img = &mut self.images[i];
            if img.len() != live.len() {
                img.resize(live.len(), 0);
                self.grown = true;
            }
            for (p, (l, b)) in live
                .chunks(PAGE_SIZE)
                .zip(img.chunks_mut(PAGE_SIZE))
                .enumerate()
            {
                if l != b {
                    b.copy_from_slice(l);
                    self.dirty[i].insert(p as u32);
                    changed += 1;
                }
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
    /// page written by other code survives in the new code's image.
    pub fn mark_every_page_dirty(&mut self) {
        self.grown = true;
        for (img, dirty) in self.images.iter().zip(self.dirty.iter_mut()) {
            for p in 0..img.len().div_ceil(PAGE_SIZE) {
                dirty.insert(p as u32);
            }
        }
    }

    /// The dirty pages as deltas for a commit. They stay dirty until
    /// [`Baseline::committed`] is called.
    pub fn delta(&self) -> Vec<MemoryDelta> {
        self.images
            .iter()
            .zip(&self.dirty)
            .map(|(img, dirty)| MemoryDelta {
                len_bytes: img.len() as u64,
                changed_pages: dirty
                    .iter()
                    .map(|&p| {
                        let start = p as usize * PAGE_SIZE;
                        (p, img[start..start + PAGE_SIZE].to_vec())
                    })
                    .collect(),
            })
            .collect()
    }

    /// Records that the last [`Baseline::delta`] was committed.
    pub fn committed(&mut self) {
        self.grown = false;
        self.globals_dirty = false;
        for d in &mut self.dirty {
            d.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upgrade_marks_zero_pages_dirty_so_no_old_page_survives() {
        let mut image = vec![0u8; 3 * PAGE_SIZE];
        image[PAGE_SIZE] = 1;
        let mut b = Baseline::restored(vec![image.clone()], Vec::new());
        b.mark_all_dirty();
        let pages = |b: &Baseline| -> Vec<u32> {
            b.delta()[0].changed_pages.iter().map(|(p, _)| *p).collect()
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
}
