//! Images of evicted actors, kept on the POP that evicted them (issue 14).
//!
//! When an idle actor is evicted after its last commit, the POP keeps its
//! memories mapped (their pages stay resident, see
//! [`crate::hostmem::Parked`]) together with its baseline. If the actor
//! comes back to this POP while the store's head is still the snapshot
//! those bytes are, the next activation moves the pages into the new
//! instance instead of reading every page from the store and copying it:
//! it reads only the head's manifest and side records.
//!
//! Kept images are a cache of the store, never a source of truth:
//! - an entry is used only after this POP's claim is granted (so no other
//!   POP can commit any more), and only if the store's head is the very
//!   snapshot the entry holds: same sequence number, component, globals,
//!   memory sizes and page-patch records. A snapshot's sequence number
//!   names one immutable content (commits are fenced by epoch and by the
//!   expected head), so an actor that ran elsewhere since is read from the
//!   store;
//! - an entry is taken out when it is looked up, used or not, so it serves
//!   at most one activation;
//! - the cache holds at most [`NodeConfig::hibernated_bytes_max`] bytes
//!   (least recently kept entries go first) and no entry longer than
//!   [`NodeConfig::hibernated_ms`]; 0 bytes turns it off.
//!
//! [`NodeConfig::hibernated_bytes_max`]: crate::node::NodeConfig::hibernated_bytes_max
//! [`NodeConfig::hibernated_ms`]: crate::node::NodeConfig::hibernated_ms

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tern_storage::SnapshotHead;

use crate::hostmem::Parked;
use crate::snapshot::Baseline;

/// An evicted actor's memories and baseline, as of its head snapshot.
pub(crate) struct Hibernated {
    /// The head snapshot the bytes are.
    pub seq: u64,
    /// The epoch of the activation that kept them.
    pub epoch: u64,
    /// The digest of the component they belong to.
    pub digest: String,
    pub baseline: Baseline,
    pub memories: Vec<Parked>,
}

impl Hibernated {
    /// Bytes it keeps resident: the parked memories, the baseline's images
    /// and its stored page images.
    fn bytes(&self) -> u64 {
        let parked: usize = self.memories.iter().map(Parked::len).sum();
        let images: usize = self.baseline.lens().iter().sum();
        (parked + images + self.baseline.stored_bytes()) as u64
    }

    /// Whether it holds exactly `head`, the store's head snapshot read
    /// after this POP's claim at `epoch` was granted, for the component
    /// `digest` the actor's type runs now.
    pub fn holds(&self, head: &SnapshotHead, digest: &str, epoch: u64) -> bool {
        let lens: Vec<u64> = self.baseline.lens().iter().map(|&l| l as u64).collect();
        head.seq == self.seq
            && self.epoch < epoch
            && self.digest == digest
            && head.meta.component_digest == self.digest
            && head.meta.globals == self.baseline.globals()
            && head.memory_lens == lens
            && self.memories.len() == lens.len()
            && self
                .memories
                .iter()
                .zip(&lens)
                .all(|(m, &l)| m.len() as u64 == l)
            && self.baseline.patches_match(&head.extra)
    }
}

/// The POP's kept images, bounded in bytes and age.
pub(crate) struct Hibernation {
    bytes_max: u64,
    keep: Duration,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    entries: HashMap<String, (u64, Instant, Hibernated)>,
    /// Entries by when they were kept: (order number) -> actor.
    order: BTreeMap<u64, String>,
    next: u64,
    bytes: u64,
}

impl State {
    fn remove(&mut self, key: &str) -> Option<Hibernated> {
        let (n, _, h) = self.entries.remove(key)?;
        self.order.remove(&n);
        self.bytes -= h.bytes();
        Some(h)
    }

    /// Takes out the oldest entries while over `bytes_max` or older than
    /// `keep`.
    fn shed(&mut self, bytes_max: u64, keep: Duration, now: Instant, out: &mut Vec<Hibernated>) {
        while let Some((_, key)) = self.order.first_key_value() {
            let key = key.clone();
            let (_, at, _) = &self.entries[&key];
            if self.bytes <= bytes_max && now.saturating_duration_since(*at) < keep {
                break;
            }
            out.extend(self.remove(&key));
        }
        assert_eq!(
            self.order.len(),
            self.entries.len(),
            "every kept image is in the order once"
        );
    }

    fn publish(&self) {
        metrics::gauge!("tern_hibernated_bytes").set(self.bytes as f64);
        metrics::gauge!("tern_hibernated_actors").set(self.entries.len() as f64);
    }
}

impl Hibernation {
    pub fn new(bytes_max: u64, keep_ms: u64) -> Hibernation {
        Hibernation {
            bytes_max,
            keep: Duration::from_millis(keep_ms),
            state: Mutex::new(State::default()),
        }
    }

    /// Whether images are kept at all.
    pub fn enabled(&self) -> bool {
        self.bytes_max > 0 && !self.keep.is_zero()
    }

    /// Runs `f` on the state with the entries over budget or older than
    /// the keep time (as of `now`) taken out before and after; returns
    /// them with `f`'s result, to be dropped outside the lock (returning
    /// memories to the pool zeroes them).
    fn locked<R>(&self, now: Instant, f: impl FnOnce(&mut State) -> R) -> (R, Vec<Hibernated>) {
        let mut out = vec![];
        let mut s = self.state.lock();
        s.shed(self.bytes_max, self.keep, now, &mut out);
        let r = f(&mut s);
        s.shed(self.bytes_max, self.keep, now, &mut out);
        s.publish();
        (r, out)
    }

    /// Keeps `h` for `key`, replacing what was kept for it; the oldest
    /// entries make room. An entry larger than the whole budget is not
    /// kept.
    pub fn put(&self, key: String, h: Hibernated) {
        if h.bytes() > self.bytes_max || !self.enabled() {
            return;
        }
        let now = Instant::now();
        let (replaced, dropped) = self.locked(now, |s| {
            let replaced = s.remove(&key);
            let n = s.next;
            s.next += 1;
            s.bytes += h.bytes();
            s.order.insert(n, key.clone());
            s.entries.insert(key, (n, now, h));
            replaced
        });
        drop((replaced, dropped));
    }

    /// Takes out what is kept for `key`, if it is not too old.
    pub fn take(&self, key: &str) -> Option<Hibernated> {
        let (h, dropped) = self.locked(Instant::now(), |s| s.remove(key));
        drop(dropped);
        h
    }

    /// Takes out the entries older than the keep time as of `now` (called
    /// periodically). Dropping them zeroes their memories: the caller
    /// chooses the thread.
    #[must_use = "dropping the entries releases their memory"]
    pub(crate) fn sweep(&self, now: Instant) -> Vec<Hibernated> {
        self.locked(now, |_| ()).1
    }

    /// Bytes kept now.
    pub fn bytes(&self) -> u64 {
        self.state.lock().bytes
    }

    /// Actors kept now.
    pub fn len(&self) -> usize {
        self.state.lock().entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: u64, image_bytes: usize) -> Hibernated {
        Hibernated {
            seq,
            epoch: 1,
            digest: "d".into(),
            baseline: Baseline::restored(vec![vec![0; image_bytes]], vec![]),
            memories: vec![],
        }
    }

    #[test]
    fn kept_images_stay_within_their_byte_budget_oldest_out_first() {
        let h = Hibernation::new(10_000, 60_000);
        h.put("a".into(), entry(1, 4_000));
        h.put("b".into(), entry(1, 4_000));
        assert_eq!((h.len(), h.bytes()), (2, 8_000));
        h.put("c".into(), entry(1, 4_000));
        assert_eq!((h.len(), h.bytes()), (2, 8_000), "the oldest made room");
        assert!(h.take("a").is_none(), "a was the oldest");
        // Replacing an entry does not count it twice.
        h.put("b".into(), entry(2, 4_000));
        assert_eq!(h.bytes(), 8_000);
        assert_eq!(h.take("b").map(|e| e.seq), Some(2));
        assert!(h.take("b").is_none(), "an entry serves one activation");
        h.put("huge".into(), entry(1, 20_000));
        assert!(h.take("huge").is_none(), "larger than the budget: not kept");
        assert_eq!(h.bytes(), 4_000);
    }

    /// A kept image serves only the very snapshot it is: any difference
    /// from the store's head (another sequence number, component, globals,
    /// size or page patches) or a claim that is not newer refuses it.
    #[test]
    fn kept_image_is_refused_unless_it_is_the_stores_head() {
        let kept = entry(5, 4096);
        let head = SnapshotHead {
            seq: 5,
            epoch: 1,
            meta: tern_storage::SnapshotMeta {
                component_digest: "d".into(),
                engine_version: String::new(),
                globals: vec![],
            },
            memory_lens: vec![4096],
            extra: vec![],
        };
        // `entry` parks no memories: one per image is needed.
        assert!(!kept.holds(&head, "d", 2), "no parked memory");
        let creator = crate::hostmem::HostMemoryCreator::default();
        let (mem, handles) = crate::hostmem::capture(&[], || {
            wasmtime::MemoryCreator::new_memory(
                &creator,
                wasmtime::MemoryType::new(0, None),
                0,
                None,
                Some(1 << 20),
                0,
            )
        });
        let mut mem = mem.unwrap();
        mem.grow_to(4096).unwrap();
        drop(mem);
        let parked = handles.into_iter().next().unwrap().park().unwrap();
        let kept = Hibernated {
            memories: vec![parked],
            ..kept
        };
        assert!(kept.holds(&head, "d", 2));
        let differ = |f: &dyn Fn(&mut SnapshotHead)| {
            let mut h = head.clone();
            f(&mut h);
            h
        };
        for (why, h) in [
            ("a newer head", differ(&|h| h.seq = 6)),
            (
                "other code",
                differ(&|h| h.meta.component_digest = "e".into()),
            ),
            ("other globals", differ(&|h| h.meta.globals = vec![1])),
            ("another size", differ(&|h| h.memory_lens = vec![8192])),
            (
                "a page patch",
                differ(&|h| h.extra = vec![("pg/0/0".into(), vec![1])]),
            ),
        ] {
            assert!(!kept.holds(&h, "d", 2), "{why}");
        }
        assert!(!kept.holds(&head, "e", 2), "the type runs other code now");
        assert!(
            !kept.holds(&head, "d", 1),
            "a claim no newer than the kept one"
        );
    }

    #[test]
    fn kept_images_expire() {
        let h = Hibernation::new(10_000, 0);
        assert!(!h.enabled());
        h.put("a".into(), entry(1, 10));
        assert_eq!(h.len(), 0, "a keep time of 0 keeps nothing");
        let h = Hibernation::new(10_000, 60_000);
        h.put("a".into(), entry(1, 10));
        drop(h.sweep(Instant::now()));
        assert_eq!(h.len(), 1, "younger than the keep time");
        assert_eq!(h.sweep(Instant::now() + Duration::from_secs(61)).len(), 1);
        assert_eq!((h.len(), h.bytes()), (0, 0), "older than the keep time");
    }
}
