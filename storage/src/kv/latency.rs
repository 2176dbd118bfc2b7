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

use super::layer::{Layered, Read, TxHooks};
use super::{KeyValue, KvBackend, KvTransaction};
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
        Ok(Layered::boxed(
            self.inner.begin(write)?,
            Trips {
                delay: self.delay,
                round_trips: self.round_trips.clone(),
                sequential: self.sequential,
            },
        ))
    }
}

/// A transaction's hooks: each round trip counted and slept.
struct Trips {
    delay: Duration,
    round_trips: Arc<AtomicU64>,
    sequential: bool,
}

impl Trips {
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

impl TxHooks for Trips {
    fn read(&mut self, read: Read<'_>) {
        let n = match read {
            Read::Get => 1,
            Read::GetMany(keys) if self.sequential => keys as u64,
            Read::GetMany(_) => 1,
            Read::Range(kvs) => replies(kvs),
            Read::Ranges(out) => {
                let each = out.iter().map(|kvs| replies(kvs));
                if self.sequential {
                    each.sum()
                } else {
                    each.max().unwrap_or(0)
                }
            }
        };
        self.trips(n);
    }

    fn commit(&mut self, wrote: bool, inner: &mut dyn KvTransaction) -> Result<(), StorageError> {
        if wrote {
            self.trips(1);
        }
        inner.commit()
    }
}
