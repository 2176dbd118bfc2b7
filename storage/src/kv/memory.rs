//! In-process backend: a multi-version `BTreeMap` with optimistic
//! concurrency control (faults are injected by [`super::faulty`], over
//! this backend or any other).
//!
//! Each transaction reads at the version current when it began (snapshot
//! isolation) and records the ranges it read. At commit, if any transaction
//! committed after that version wrote into one of those ranges, the commit
//! fails with `not_committed`, as FoundationDB's resolver does. Read-only
//! transactions always commit. Transactions older than
//! [`super::TRANSACTION_DURATION_MS_MAX`] fail with `transaction_too_old`.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;

use super::{KeyValue, KvBackend, KvTransaction};
use crate::StorageError;

/// How often (in commits) old versions are swept.
const SWEEP_EVERY_COMMITS: u64 = 256;

type Value = Arc<Vec<u8>>;
/// A key range `[begin, end)`.
type Range = (Vec<u8>, Vec<u8>);

#[derive(Default)]
struct State {
    /// key -> versions ascending: (commit version, value or tombstone).
    data: BTreeMap<Vec<u8>, Vec<(u64, Option<Value>)>>,
    version: u64,
    /// Recent commits: (version, write ranges), for conflict checks.
    log: VecDeque<(u64, Vec<Range>)>,
    /// Read versions of live transactions -> count.
    live: BTreeMap<u64, usize>,
    commits: u64,
    /// Keys given a version since they were last swept: the only ones a
    /// sweep can trim (a key with one live version has nothing to drop),
    /// so a sweep costs what was written, not the size of the database.
    touched: Vec<Vec<u8>>,
}

impl State {
    fn floor(&self) -> u64 {
        self.live.keys().next().copied().unwrap_or(self.version)
    }

    fn sweep(&mut self) {
        let floor = self.floor();
        while self.log.front().is_some_and(|(v, _)| *v <= floor) {
            self.log.pop_front();
        }
        if self.commits.is_multiple_of(SWEEP_EVERY_COMMITS) {
            let mut keys = std::mem::take(&mut self.touched);
            keys.sort_unstable();
            keys.dedup();
            for key in keys {
                let Some(versions) = self.data.get_mut(&key) else {
                    continue;
                };
                // Keep the newest version <= floor and everything newer.
                let keep_from = versions.iter().rposition(|(v, _)| *v <= floor).unwrap_or(0);
                versions.drain(..keep_from);
                let only_tombstone = versions.len() == 1 && versions[0].1.is_none();
                if versions.is_empty() || (only_tombstone && versions[0].0 <= floor) {
                    self.data.remove(&key);
                } else if versions.len() > 1 || only_tombstone {
                    // Versions newer than the floor: trimmed by a later
                    // sweep.
                    self.touched.push(key);
                }
            }
        }
    }
}

fn at(versions: &[(u64, Option<Value>)], rv: u64) -> Option<&Value> {
    versions
        .iter()
        .rev()
        .find(|(v, _)| *v <= rv)
        .and_then(|(_, val)| val.as_ref())
}

/// The in-process backend. Every `MemoryBackend` is a separate database.
#[derive(Default)]
pub struct MemoryBackend {
    state: Arc<Mutex<State>>,
}

impl MemoryBackend {
    /// Number of stored versions (including tombstones) across all keys;
    /// shows whether old versions are swept.
    pub fn stored_versions(&self) -> usize {
        self.state.lock().data.values().map(Vec::len).sum()
    }

    /// A new, empty database.
    pub fn new() -> MemoryBackend {
        MemoryBackend::default()
    }
}

impl KvBackend for MemoryBackend {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn begin(&self, write: bool) -> Result<Box<dyn KvTransaction>, StorageError> {
        let mut st = self.state.lock();
        let rv = st.version;
        *st.live.entry(rv).or_default() += 1;
        drop(st);
        Ok(Box::new(MemTx {
            state: self.state.clone(),
            rv,
            started: Instant::now(),
            write,
            writes: BTreeMap::new(),
            cleared: Vec::new(),
            write_ranges: Vec::new(),
            read_ranges: Vec::new(),
        }))
    }
}

struct MemTx {
    state: Arc<Mutex<State>>,
    rv: u64,
    started: Instant,
    write: bool,
    /// Own writes: key -> value or tombstone.
    writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// Own cleared ranges (keys in `writes` override them).
    cleared: Vec<Range>,
    write_ranges: Vec<Range>,
    read_ranges: Vec<Range>,
}

fn key_after(k: &[u8]) -> Vec<u8> {
    let mut v = k.to_vec();
    v.push(0);
    v
}

fn overlaps(a: &Range, b: &Range) -> bool {
    a.0 < b.1 && b.0 < a.1
}

impl MemTx {
    fn check_age(&self) -> Result<(), StorageError> {
        super::check_age(self.started)
    }

    fn in_cleared(&self, key: &[u8]) -> bool {
        self.cleared
            .iter()
            .any(|(b, e)| b.as_slice() <= key && key < e.as_slice())
    }
}

impl Drop for MemTx {
    fn drop(&mut self) {
        let mut st = self.state.lock();
        if let Some(n) = st.live.get_mut(&self.rv) {
            *n -= 1;
            if *n == 0 {
                st.live.remove(&self.rv);
            }
        }
    }
}

impl KvTransaction for MemTx {
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        self.check_age()?;
        if let Some(v) = self.writes.get(key) {
            return Ok(v.clone());
        }
        if self.in_cleared(key) {
            return Ok(None);
        }
        self.read_ranges.push((key.to_vec(), key_after(key)));
        let st = self.state.lock();
        Ok(st
            .data
            .get(key)
            .and_then(|vs| at(vs, self.rv))
            .map(|v| v.as_ref().clone()))
    }

    fn get_range(
        &mut self,
        begin: &[u8],
        end: &[u8],
        limit: Option<usize>,
        reverse: bool,
    ) -> Result<Vec<KeyValue>, StorageError> {
        self.check_age()?;
        let limit = limit.unwrap_or(usize::MAX);
        let bounds = (Bound::Included(begin), Bound::Excluded(end));
        // Own writes in the range, in the requested direction.
        let mut own: Vec<(&Vec<u8>, &Option<Vec<u8>>)> =
            self.writes.range::<[u8], _>(bounds).collect();
        if reverse {
            own.reverse();
        }
        let st = self.state.lock();
        let snap = st.data.range::<[u8], _>(bounds).filter_map(|(k, vs)| {
            if self.writes.contains_key(k) || self.in_cleared(k) {
                return None;
            }
            at(vs, self.rv).map(|v| (k, v))
        });
        let mut snap: Box<dyn Iterator<Item = (&Vec<u8>, &Value)>> = if reverse {
            Box::new(snap.rev())
        } else {
            Box::new(snap)
        };
        let mut own = own
            .into_iter()
            .filter_map(|(k, v)| v.as_ref().map(|v| (k, v)));
        let mut out: Vec<KeyValue> = Vec::new();
        let mut a = snap.next();
        let mut b = own.next();
        while out.len() < limit {
            let take_snap = match (&a, &b) {
                (None, None) => break,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (Some((ka, _)), Some((kb, _))) => (ka < kb) != reverse,
            };
            if take_snap {
                let (k, v) = a.take().expect("checked above");
                out.push((k.clone(), v.as_ref().clone()));
                a = snap.next();
            } else {
                let (k, v) = b.take().expect("checked above");
                out.push((k.clone(), v.clone()));
                b = own.next();
            }
        }
        drop(snap);
        drop(st);
        // Conflict range: only what the read depended on.
        let range = match out.last() {
            Some((k, _)) if out.len() == limit => {
                if reverse {
                    (k.clone(), end.to_vec())
                } else {
                    (begin.to_vec(), key_after(k))
                }
            }
            _ => (begin.to_vec(), end.to_vec()),
        };
        self.read_ranges.push(range);
        Ok(out)
    }

    fn set(&mut self, key: &[u8], value: &[u8]) -> Result<(), StorageError> {
        if !self.write {
            return Err(StorageError::ReadOnlyTransaction);
        }
        self.writes.insert(key.to_vec(), Some(value.to_vec()));
        self.write_ranges.push((key.to_vec(), key_after(key)));
        Ok(())
    }

    fn clear(&mut self, key: &[u8]) -> Result<(), StorageError> {
        if !self.write {
            return Err(StorageError::ReadOnlyTransaction);
        }
        self.writes.insert(key.to_vec(), None);
        self.write_ranges.push((key.to_vec(), key_after(key)));
        Ok(())
    }

    fn clear_range(&mut self, begin: &[u8], end: &[u8]) -> Result<(), StorageError> {
        if !self.write {
            return Err(StorageError::ReadOnlyTransaction);
        }
        let doomed: Vec<Vec<u8>> = self
            .writes
            .range::<[u8], _>((Bound::Included(begin), Bound::Excluded(end)))
            .map(|(k, _)| k.clone())
            .collect();
        for k in doomed {
            self.writes.remove(&k);
        }
        self.cleared.push((begin.to_vec(), end.to_vec()));
        self.write_ranges.push((begin.to_vec(), end.to_vec()));
        Ok(())
    }

    fn commit(&mut self) -> Result<(), StorageError> {
        if self.write_ranges.is_empty() {
            return Ok(());
        }
        self.check_age()?;
        let mut st = self.state.lock();
        for (v, ranges) in st.log.iter() {
            if *v <= self.rv {
                continue;
            }
            if ranges
                .iter()
                .any(|w| self.read_ranges.iter().any(|r| overlaps(w, r)))
            {
                return Err(StorageError::NotCommitted);
            }
        }
        st.version += 1;
        let cv = st.version;
        let mut touched = Vec::new();
        for (b, e) in std::mem::take(&mut self.cleared) {
            for (k, versions) in st.data.range_mut::<[u8], _>((
                Bound::Included(b.as_slice()),
                Bound::Excluded(e.as_slice()),
            )) {
                if versions.last().is_some_and(|(_, v)| v.is_some()) {
                    versions.push((cv, None));
                    touched.push(k.clone());
                }
            }
        }
        for (k, v) in std::mem::take(&mut self.writes) {
            match v {
                Some(v) => {
                    let versions = st.data.entry(k.clone()).or_default();
                    versions.push((cv, Some(Arc::new(v))));
                    if versions.len() > 1 {
                        touched.push(k);
                    }
                }
                None => {
                    if let Some(versions) = st.data.get_mut(&k)
                        && versions.last().is_some_and(|(_, v)| v.is_some())
                    {
                        versions.push((cv, None));
                        touched.push(k);
                    }
                }
            }
        }
        st.touched.append(&mut touched);
        let ranges = std::mem::take(&mut self.write_ranges);
        st.log.push_back((cv, ranges));
        st.commits += 1;
        st.sweep();
        drop(st);
        Ok(())
    }
}
