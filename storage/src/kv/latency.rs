//! A backend wrapper that makes every round trip to the store cost a
//! fixed delay and counts them: for tests that pin how many round trips an
//! operation takes, and benchmarks of what they cost at WAN distance.
//!
//! A round trip is one read call (`get`, `get_many`: a batched read counts
//! once, as FoundationDB overlaps its reads), one reply of a range read
//! (FoundationDB sends at most about [`RANGE_REPLY_BYTES`] per reply; the
//! range reads of one `get_ranges` batch run side by side, so the batch
//! costs as many as its longest read), or one commit of a transaction that
//! wrote something.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::{KeyValue, KvBackend, KvTransaction, RangeRead};
use crate::StorageError;

/// Bytes of one range-read reply, as FoundationDB caps them (about 80 kB).
pub const RANGE_REPLY_BYTES: usize = 80_000;

/// `inner`, with `delay` per round trip, counted.
pub struct LatencyKv {
    inner: Arc<dyn KvBackend>,
    delay: Duration,
    round_trips: Arc<AtomicU64>,
    sequential: bool,
}

impl LatencyKv {
    /// Wraps `inner`; every round trip sleeps `delay` (zero: only count).
    pub fn new(inner: Arc<dyn KvBackend>, delay: Duration) -> LatencyKv {
        LatencyKv {
            inner,
            delay,
            round_trips: Arc::default(),
            sequential: false,
        }
    }

    /// A store that cannot overlap reads: a batched read costs one round
    /// trip per key (a baseline for what batching saves).
    pub fn sequential(mut self) -> LatencyKv {
        self.sequential = true;
        self
    }

    /// Round trips so far, over every transaction.
    pub fn round_trips(&self) -> u64 {
        self.round_trips.load(Ordering::Relaxed)
    }

    /// A handle on the counter (it outlives moving the wrapper into a
    /// store).
    pub fn counter(&self) -> Arc<AtomicU64> {
        self.round_trips.clone()
    }
}

impl KvBackend for LatencyKv {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn key_prefix_len(&self) -> usize {
        self.inner.key_prefix_len()
    }

    fn begin(&self, write: bool) -> Result<Box<dyn KvTransaction>, StorageError> {
        Ok(Box::new(LatencyTx {
            inner: self.inner.begin(write)?,
            delay: self.delay,
            round_trips: self.round_trips.clone(),
            wrote: false,
            sequential: self.sequential,
        }))
    }
}

struct LatencyTx {
    inner: Box<dyn KvTransaction>,
    delay: Duration,
    round_trips: Arc<AtomicU64>,
    wrote: bool,
    sequential: bool,
}

impl LatencyTx {
    fn trip(&self) {
        self.trips(1);
    }

    fn trips(&self, n: u64) {
        self.round_trips.fetch_add(n, Ordering::Relaxed);
        if !self.delay.is_zero() {
            std::thread::sleep(self.delay * n as u32);
        }
    }
}

/// Replies FoundationDB needs to send `kvs` (one at least).
fn replies(kvs: &[KeyValue]) -> u64 {
    let bytes: usize = kvs.iter().map(|(k, v)| k.len() + v.len()).sum();
    bytes.div_ceil(RANGE_REPLY_BYTES).max(1) as u64
}

impl KvTransaction for LatencyTx {
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        self.trip();
        self.inner.get(key)
    }

    fn get_many(&mut self, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>, StorageError> {
        self.trips(if self.sequential {
            keys.len() as u64
        } else {
            1
        });
        self.inner.get_many(keys)
    }

    fn get_range(
        &mut self,
        begin: &[u8],
        end: &[u8],
        limit: Option<usize>,
        reverse: bool,
    ) -> Result<Vec<KeyValue>, StorageError> {
        let kvs = self.inner.get_range(begin, end, limit, reverse)?;
        self.trips(replies(&kvs));
        Ok(kvs)
    }

    fn get_ranges(&mut self, ranges: &[RangeRead]) -> Result<Vec<Vec<KeyValue>>, StorageError> {
        let out = self.inner.get_ranges(ranges)?;
        let each = out.iter().map(|kvs| replies(kvs));
        self.trips(if self.sequential {
            each.sum()
        } else {
            each.max().unwrap_or(0)
        });
        Ok(out)
    }

    fn set(&mut self, key: &[u8], value: &[u8]) -> Result<(), StorageError> {
        self.wrote = true;
        self.inner.set(key, value)
    }

    fn clear(&mut self, key: &[u8]) -> Result<(), StorageError> {
        self.wrote = true;
        self.inner.clear(key)
    }

    fn clear_range(&mut self, begin: &[u8], end: &[u8]) -> Result<(), StorageError> {
        self.wrote = true;
        self.inner.clear_range(begin, end)
    }

    fn commit(&mut self) -> Result<(), StorageError> {
        if self.wrote {
            self.trip();
        }
        self.inner.commit()
    }

    fn on_error(&mut self, error: &StorageError) -> Result<bool, StorageError> {
        let reset = self.inner.on_error(error)?;
        if reset {
            self.wrote = false;
        }
        Ok(reset)
    }
}
