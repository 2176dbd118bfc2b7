//! The ordered, transactional key-value layer with FoundationDB semantics.
//!
//! A [`Kv`] wraps one backend ([`KvBackend`]) and adds what every backend
//! shares: FoundationDB's size limits, counted as FoundationDB counts them
//! (see [`cost`]), byte counters ([`Stats`]) and the retry loop
//! [`Kv::transact`], which follows FoundationDB's rules on every backend:
//! each retry waits as the backend says (FoundationDB's own `on_error`,
//! with its longer waits when the cluster throttles; elsewhere the same
//! schedule, [`BACKOFF_MS_FIRST`] doubling up to [`BACKOFF_MS_MAX`]), and
//! a transaction is retried for a time budget ([`RETRY_BUDGET_MS_DEFAULT`])
//! rather than a number of times.
//!
//! Semantics every backend provides (checked by the conformance suite):
//! - keys are ordered by memcmp; range reads are `[begin, end)`, with an
//!   optional limit, forward or reverse;
//! - a transaction reads its own writes;
//! - commit is atomic: all of a transaction's writes or none;
//! - serializability: a write transaction that read a key which another
//!   transaction changed after it started fails with
//!   [`StorageError::NotCommitted`] (memory, FoundationDB), or never
//!   overlaps with another writer at all (sqlite serializes writers, so
//!   its conflicts surface as waits, not failures).

pub mod faulty;
#[cfg(feature = "fdb")]
pub mod fdb;
pub mod latency;
mod layer;
pub mod memory;
pub mod sqlite;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::StorageError;

/// FoundationDB's key size limit, in bytes.
pub const KEY_BYTES_MAX: usize = 10_000;
/// FoundationDB's value size limit, in bytes.
pub const VALUE_BYTES_MAX: usize = 100_000;
/// FoundationDB's transaction size limit, in bytes: mutations plus conflict
/// ranges, counted as [`cost`] does.
pub const TRANSACTION_BYTES_MAX: u64 = 10_000_000;
/// FoundationDB's transaction duration limit, in milliseconds.
pub const TRANSACTION_DURATION_MS_MAX: u64 = 5_000;
/// How long [`Kv::transact`] retries a transaction by default, in
/// milliseconds from its first attempt (at least one retry happens).
pub const RETRY_BUDGET_MS_DEFAULT: u64 = 10_000;
/// The first wait before a retry, in milliseconds (FoundationDB's).
pub const BACKOFF_MS_FIRST: u64 = 10;
/// The longest wait before a retry, in milliseconds (FoundationDB's
/// default `max_retry_delay`).
pub const BACKOFF_MS_MAX: u64 = 1_000;

/// Fails with `transaction_too_old` once a transaction that began at
/// `started` has lived longer than [`TRANSACTION_DURATION_MS_MAX`], as
/// FoundationDB does (the local backends apply the same rule).
pub(crate) fn check_age(started: Instant) -> Result<(), StorageError> {
    if started.elapsed().as_millis() as u64 > TRANSACTION_DURATION_MS_MAX {
        return Err(StorageError::TransactionTooOld {
            limit_ms: TRANSACTION_DURATION_MS_MAX,
        });
    }
    Ok(())
}

/// A key and its value, as returned by range reads.
pub type KeyValue = (Vec<u8>, Vec<u8>);

/// One range read of a batch ([`KvTransaction::get_ranges`]): `[begin,
/// end)` ascending, at most `limit` pairs if given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeRead {
    /// First key of the range.
    pub begin: Vec<u8>,
    /// The key after the range.
    pub end: Vec<u8>,
    /// At most this many pairs.
    pub limit: Option<usize>,
}

impl RangeRead {
    /// Every key that extends `prefix` (tuple-style: `prefix..prefix+0xFF`).
    pub fn prefix(prefix: &[u8]) -> RangeRead {
        RangeRead {
            begin: prefix.to_vec(),
            end: crate::tuple::range_end(prefix),
            limit: None,
        }
    }

    /// Exactly `key` (empty or one pair): so that a single-key read can
    /// go out in the same batch as range reads.
    pub fn exact(key: &[u8]) -> RangeRead {
        let mut end = key.to_vec();
        end.push(0);
        RangeRead {
            begin: key.to_vec(),
            end,
            limit: Some(1),
        }
    }
}

/// What a transaction costs against [`TRANSACTION_BYTES_MAX`], as
/// FoundationDB counts it: every mutation's parameters plus every read and
/// write conflict range (both ends). Key lengths here are the stored
/// lengths, the backend's key prefix included.
pub mod cost {
    /// `set(k, v)`: the mutation (k + v) and its write conflict range
    /// `[k, k+\0)`.
    pub fn set(key: usize, value: usize) -> u64 {
        (3 * key + 1 + value) as u64
    }

    /// `clear(k)`: a one-key range clear `[k, k+\0)` and the same write
    /// conflict range: about four times the key.
    pub fn clear(key: usize) -> u64 {
        (4 * key + 2) as u64
    }

    /// `clear_range(b, e)`: the mutation and its write conflict range.
    pub fn clear_range(begin: usize, end: usize) -> u64 {
        (2 * (begin + end)) as u64
    }

    /// A point read in a write transaction: its read conflict range.
    pub fn get(key: usize) -> u64 {
        (2 * key + 1) as u64
    }

    /// A range read in a write transaction: its read conflict range,
    /// `[begin, end)`, or up to just after the last key read when a limit
    /// cut it short (`last` is that key's length).
    pub fn range(begin: usize, end: usize, last: Option<usize>) -> u64 {
        match last {
            Some(last) => (begin + end.max(last + 1)) as u64,
            None => (begin + end) as u64,
        }
    }
}

/// A storage backend: something that starts transactions.
pub trait KvBackend: Send + Sync + 'static {
    /// Short name for messages ("memory", "sqlite").
    fn name(&self) -> &'static str;
    /// Starts a transaction. `write` says whether it may write; a sqlite
    /// write transaction takes the database write lock at once
    /// (`BEGIN IMMEDIATE`).
    fn begin(&self, write: bool) -> Result<Box<dyn KvTransaction>, StorageError>;
    /// Bytes the backend puts in front of every key (a private test
    /// prefix on FoundationDB): they count against the key and transaction
    /// limits.
    fn key_prefix_len(&self) -> usize {
        0
    }
}

/// One backend transaction. Dropping it without `commit` rolls it back.
pub trait KvTransaction: Send {
    /// Reads one key.
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError>;
    /// Reads several keys: the values in the order of `keys`. One round
    /// trip where the backend can overlap reads (FoundationDB); a loop of
    /// local reads elsewhere.
    fn get_many(&mut self, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>, StorageError> {
        keys.iter().map(|k| self.get(k)).collect()
    }
    /// Reads `[begin, end)` in key order (descending if `reverse`), at most
    /// `limit` pairs if given.
    fn get_range(
        &mut self,
        begin: &[u8],
        end: &[u8],
        limit: Option<usize>,
        reverse: bool,
    ) -> Result<Vec<KeyValue>, StorageError>;
    /// Several ascending range reads: the pairs of each, in the order of
    /// `ranges`. All in flight at once where the backend can overlap reads
    /// (FoundationDB); a loop of local reads elsewhere.
    fn get_ranges(&mut self, ranges: &[RangeRead]) -> Result<Vec<Vec<KeyValue>>, StorageError> {
        ranges
            .iter()
            .map(|r| self.get_range(&r.begin, &r.end, r.limit, false))
            .collect()
    }
    /// Writes a key.
    fn set(&mut self, key: &[u8], value: &[u8]) -> Result<(), StorageError>;
    /// Removes a key.
    fn clear(&mut self, key: &[u8]) -> Result<(), StorageError>;
    /// Removes every key in `[begin, end)`.
    fn clear_range(&mut self, begin: &[u8], end: &[u8]) -> Result<(), StorageError>;
    /// Commits atomically. Called at most once per attempt.
    fn commit(&mut self) -> Result<(), StorageError>;
    /// After `error`, a retryable error of this attempt: waits as the
    /// backend's own retry rules say and resets the transaction for
    /// another attempt (`Ok(true)`; FoundationDB's `on_error`), or says the
    /// caller must wait by [`backoff`] and begin a new transaction
    /// (`Ok(false)`, the default). An error means: do not retry.
    fn on_error(&mut self, error: &StorageError) -> Result<bool, StorageError> {
        let _ = error;
        Ok(false)
    }
}

/// Counters shared by every clone of a store.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    bytes_written: AtomicU64,
    keys_written: AtomicU64,
    transactions: AtomicU64,
    retries: AtomicU64,
    transaction_bytes_max: AtomicU64,
    transaction_bytes_last: AtomicU64,
}

/// A snapshot of a store's counters. Only committed transactions count.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Bytes of mutations committed: key + value of each `set`, the key of
    /// each `clear`, both ends of each `clear_range`.
    pub bytes_written: u64,
    /// Number of mutations committed (`set`, `clear`, `clear_range`).
    pub keys_written: u64,
    /// Number of transactions committed that had at least one mutation.
    pub transactions: u64,
    /// Number of retries `transact` made.
    pub retries: u64,
    /// The largest size of any single committed write transaction, as
    /// FoundationDB counts it against [`TRANSACTION_BYTES_MAX`] (mutations
    /// plus conflict ranges, see [`cost`]); monotonic, not affected by
    /// [`Stats::since`].
    pub transaction_bytes_max: u64,
    /// The size (as above) of the most recently committed write
    /// transaction (not affected by [`Stats::since`]).
    pub transaction_bytes_last: u64,
}

impl Stats {
    /// The counters accumulated since `earlier` (the max field is kept).
    pub fn since(&self, earlier: &Stats) -> Stats {
        Stats {
            bytes_written: self.bytes_written - earlier.bytes_written,
            keys_written: self.keys_written - earlier.keys_written,
            transactions: self.transactions - earlier.transactions,
            retries: self.retries - earlier.retries,
            transaction_bytes_max: self.transaction_bytes_max,
            transaction_bytes_last: self.transaction_bytes_last,
        }
    }
}

/// A transaction: the backend's, plus limits and accounting.
///
/// Writes never fail on the spot; a write that breaks a limit (or that the
/// backend refused) makes `commit` fail with that error.
pub struct Transaction {
    inner: Box<dyn KvTransaction>,
    counters: Arc<Counters>,
    write: bool,
    /// Bytes of the backend's key prefix, counted with every key.
    prefix: usize,
    /// Bytes of mutations (keys and values), for [`Stats::bytes_written`].
    bytes: u64,
    /// The size FoundationDB counts: mutations plus conflict ranges.
    size: u64,
    mutations: u64,
    deferred: Option<StorageError>,
}

impl Transaction {
    /// Adds `n` bytes to the size; false (and the commit will fail) once
    /// it is over [`TRANSACTION_BYTES_MAX`].
    fn grow(&mut self, n: u64) -> bool {
        self.size += n;
        if self.size > TRANSACTION_BYTES_MAX {
            self.deferred.get_or_insert(StorageError::LimitExceeded {
                what: "transaction",
                bytes: self.size,
                limit: TRANSACTION_BYTES_MAX,
            });
            return false;
        }
        true
    }

    /// Counts a read's conflict range (write transactions only: a
    /// read-only one sends none).
    fn read_conflict(&mut self, n: u64) {
        if self.write {
            self.grow(n);
        }
    }

    /// Reads one key (seeing this transaction's own writes).
    pub fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        self.read_conflict(cost::get(self.prefix + key.len()));
        self.inner.get(key)
    }

    /// Reads several keys at once (one round trip on FoundationDB): the
    /// values in the order of `keys`.
    pub fn get_many(&mut self, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>, StorageError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let n = keys.iter().map(|k| cost::get(self.prefix + k.len())).sum();
        self.read_conflict(n);
        self.inner.get_many(keys)
    }

    /// Several ascending range reads at once (all in flight together on
    /// FoundationDB): the pairs of each, in the order of `ranges`.
    pub fn get_ranges(&mut self, ranges: &[RangeRead]) -> Result<Vec<Vec<KeyValue>>, StorageError> {
        let asked: Vec<RangeRead> = ranges
            .iter()
            .filter(|r| r.limit != Some(0) && r.begin < r.end)
            .cloned()
            .collect();
        let mut got = if asked.is_empty() {
            Vec::new()
        } else {
            self.inner.get_ranges(&asked)?
        }
        .into_iter();
        let mut out = Vec::with_capacity(ranges.len());
        for r in ranges {
            if r.limit == Some(0) || r.begin >= r.end {
                out.push(Vec::new());
                continue;
            }
            let kvs = got.next().expect("one reply per range asked");
            self.range_conflict(&r.begin, &r.end, r.limit, false, &kvs);
            out.push(kvs);
        }
        Ok(out)
    }

    fn range_conflict(
        &mut self,
        begin: &[u8],
        end: &[u8],
        limit: Option<usize>,
        reverse: bool,
        kvs: &[KeyValue],
    ) {
        let p = self.prefix;
        let cut = limit.is_some_and(|l| kvs.len() >= l);
        let n = match kvs.last() {
            Some((last, _)) if cut && reverse => cost::range(p + last.len(), p + end.len(), None),
            Some((last, _)) if cut => {
                cost::range(p + begin.len(), p + end.len(), Some(p + last.len()))
            }
            _ => cost::range(p + begin.len(), p + end.len(), None),
        };
        self.read_conflict(n);
    }

    /// Reads `[begin, end)`: ascending, or descending if `reverse`; at most
    /// `limit` pairs if given.
    pub fn get_range(
        &mut self,
        begin: &[u8],
        end: &[u8],
        limit: Option<usize>,
        reverse: bool,
    ) -> Result<Vec<KeyValue>, StorageError> {
        if limit == Some(0) || begin >= end {
            return Ok(Vec::new());
        }
        let kvs = self.inner.get_range(begin, end, limit, reverse)?;
        self.range_conflict(begin, end, limit, reverse, &kvs);
        Ok(kvs)
    }

    /// Reads every key that extends `prefix` (tuple-style: `prefix..prefix+0xFF`).
    pub fn get_prefix(&mut self, prefix: &[u8]) -> Result<Vec<KeyValue>, StorageError> {
        let end = crate::tuple::range_end(prefix);
        self.get_range(prefix, &end, None, false)
    }

    /// Counts a mutation: `bytes` of keys and values, `size` as
    /// FoundationDB counts it.
    fn account(&mut self, bytes: usize, size: u64) -> bool {
        if self.deferred.is_some() {
            return false;
        }
        if !self.write {
            self.deferred = Some(StorageError::ReadOnlyTransaction);
            return false;
        }
        self.bytes += bytes as u64;
        self.mutations += 1;
        self.grow(size)
    }

    /// Whether `key`, with the backend's prefix, is within
    /// [`KEY_BYTES_MAX`].
    fn check_key(&mut self, key: &[u8]) -> bool {
        let stored = self.prefix + key.len();
        if stored > KEY_BYTES_MAX {
            self.deferred.get_or_insert(StorageError::LimitExceeded {
                what: "key",
                bytes: stored as u64,
                limit: KEY_BYTES_MAX as u64,
            });
            return false;
        }
        true
    }

    fn defer(&mut self, r: Result<(), StorageError>) {
        if let Err(e) = r {
            self.deferred.get_or_insert(e);
        }
    }

    /// Writes `key = value`.
    pub fn set(&mut self, key: &[u8], value: &[u8]) {
        if value.len() > VALUE_BYTES_MAX {
            self.deferred.get_or_insert(StorageError::LimitExceeded {
                what: "value",
                bytes: value.len() as u64,
                limit: VALUE_BYTES_MAX as u64,
            });
            return;
        }
        let size = cost::set(self.prefix + key.len(), value.len());
        if self.check_key(key) && self.account(key.len() + value.len(), size) {
            let r = self.inner.set(key, value);
            self.defer(r);
        }
    }

    /// Removes `key`.
    pub fn clear(&mut self, key: &[u8]) {
        let size = cost::clear(self.prefix + key.len());
        if self.check_key(key) && self.account(key.len(), size) {
            let r = self.inner.clear(key);
            self.defer(r);
        }
    }

    /// Removes every key in `[begin, end)`.
    pub fn clear_range(&mut self, begin: &[u8], end: &[u8]) {
        if begin >= end {
            return;
        }
        let size = cost::clear_range(self.prefix + begin.len(), self.prefix + end.len());
        if self.check_key(begin)
            && self.check_key(end)
            && self.account(begin.len() + end.len(), size)
        {
            let r = self.inner.clear_range(begin, end);
            self.defer(r);
        }
    }

    /// Removes every key that extends `prefix`.
    pub fn clear_prefix(&mut self, prefix: &[u8]) {
        let end = crate::tuple::range_end(prefix);
        self.clear_range(prefix, &end);
    }

    /// Bytes of mutations so far (keys and values).
    pub fn bytes_written(&self) -> u64 {
        self.bytes
    }

    /// The transaction's size so far as FoundationDB counts it against
    /// [`TRANSACTION_BYTES_MAX`]: mutations plus conflict ranges.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Commits. Counters move only if the commit succeeded.
    pub fn commit(mut self) -> Result<(), StorageError> {
        self.commit_attempt()
    }

    /// Commits this attempt, keeping the backend transaction for
    /// [`KvTransaction::on_error`].
    fn commit_attempt(&mut self) -> Result<(), StorageError> {
        if let Some(e) = self.deferred.clone() {
            return Err(e);
        }
        let (bytes, size, mutations, counters) =
            (self.bytes, self.size, self.mutations, &self.counters);
        let r = self.inner.commit();
        // A commit_unknown_result may have applied; it is counted only when
        // known to be committed, so counters stay an exact lower bound.
        if r.is_ok() && mutations > 0 {
            counters.bytes_written.fetch_add(bytes, Ordering::Relaxed);
            counters
                .keys_written
                .fetch_add(mutations, Ordering::Relaxed);
            counters.transactions.fetch_add(1, Ordering::Relaxed);
            counters
                .transaction_bytes_max
                .fetch_max(size, Ordering::Relaxed);
            counters
                .transaction_bytes_last
                .store(size, Ordering::Relaxed);
        }
        r
    }
}

/// A key-value store: one backend plus counters and the retry policy.
/// Cheap to clone; clones share the backend and the counters.
#[derive(Clone)]
pub struct Kv {
    backend: Arc<dyn KvBackend>,
    counters: Arc<Counters>,
    retry_budget: Duration,
}

impl Kv {
    /// Wraps a backend.
    pub fn new(backend: Arc<dyn KvBackend>) -> Kv {
        Kv {
            backend,
            counters: Arc::default(),
            retry_budget: Duration::from_millis(RETRY_BUDGET_MS_DEFAULT),
        }
    }

    /// Sets how long `transact` retries a transaction, from its first
    /// attempt (at least one retry happens whatever the budget).
    pub fn with_retry_budget(mut self, budget: Duration) -> Kv {
        self.retry_budget = budget;
        self
    }

    /// The retry budget of `transact`.
    pub fn retry_budget(&self) -> Duration {
        self.retry_budget
    }

    /// The backend's name.
    pub fn backend_name(&self) -> &'static str {
        self.backend.name()
    }

    /// The backend.
    pub fn backend(&self) -> Arc<dyn KvBackend> {
        self.backend.clone()
    }

    /// Bytes the backend puts in front of every key (see
    /// [`KvBackend::key_prefix_len`]).
    pub fn key_prefix_len(&self) -> usize {
        self.backend.key_prefix_len()
    }

    /// The counters so far.
    pub fn stats(&self) -> Stats {
        let c = &self.counters;
        Stats {
            bytes_written: c.bytes_written.load(Ordering::Relaxed),
            keys_written: c.keys_written.load(Ordering::Relaxed),
            transactions: c.transactions.load(Ordering::Relaxed),
            retries: c.retries.load(Ordering::Relaxed),
            transaction_bytes_max: c.transaction_bytes_max.load(Ordering::Relaxed),
            transaction_bytes_last: c.transaction_bytes_last.load(Ordering::Relaxed),
        }
    }

    /// Starts a write transaction (no retry loop; see [`Kv::transact`]).
    pub fn begin(&self) -> Result<Transaction, StorageError> {
        self.begin_mode(true)
    }

    /// Starts a read-only transaction; writes in it fail at commit.
    pub fn begin_read(&self) -> Result<Transaction, StorageError> {
        self.begin_mode(false)
    }

    fn begin_mode(&self, write: bool) -> Result<Transaction, StorageError> {
        Ok(self.wrap(self.backend.begin(write)?, write))
    }

    /// A fresh attempt on the backend transaction `inner`.
    fn wrap(&self, inner: Box<dyn KvTransaction>, write: bool) -> Transaction {
        Transaction {
            inner,
            counters: self.counters.clone(),
            write,
            prefix: self.backend.key_prefix_len(),
            bytes: 0,
            size: 0,
            mutations: 0,
            deferred: None,
        }
    }

    /// Runs `f` in a write transaction and commits, retrying on retryable
    /// errors (`not_committed`, `transaction_too_old`,
    /// `commit_unknown_result`, busy, throttling) for the retry budget,
    /// with the backend's waits between attempts. A commit that timed out
    /// is retried once: a second timeout gives up, saying that the commit
    /// may or may not have been applied.
    ///
    /// On `commit_unknown_result` the closure runs again: a closure whose
    /// effect must not be applied twice has to re-read state and detect its
    /// own earlier commit (the record layer stores a commit token for this).
    pub fn transact<T>(
        &self,
        f: impl FnMut(&mut Transaction) -> Result<T, StorageError>,
    ) -> Result<T, StorageError> {
        self.run(true, f)
    }

    /// Like [`Kv::transact`] for a read-only transaction.
    pub fn read<T>(
        &self,
        f: impl FnMut(&mut Transaction) -> Result<T, StorageError>,
    ) -> Result<T, StorageError> {
        self.run(false, f)
    }

    fn run<T>(
        &self,
        write: bool,
        mut f: impl FnMut(&mut Transaction) -> Result<T, StorageError>,
    ) -> Result<T, StorageError> {
        let started = Instant::now();
        let mut attempts: u32 = 0;
        let mut commit_timeouts = 0;
        let mut reset: Option<Box<dyn KvTransaction>> = None;
        loop {
            attempts += 1;
            let inner = match reset.take() {
                Some(inner) => inner,
                None => self.backend.begin(write)?,
            };
            let mut tx = self.wrap(inner, write);
            let e = match f(&mut tx).and_then(|v| tx.commit_attempt().map(|()| v)) {
                Ok(v) => return Ok(v),
                Err(e) if e.is_retryable() => e,
                Err(e) => return Err(e),
            };
            if matches!(e, StorageError::CommitTimedOut { .. }) {
                commit_timeouts += 1;
            }
            let elapsed = started.elapsed();
            if commit_timeouts > 1 || (attempts > 1 && elapsed >= self.retry_budget) {
                return Err(StorageError::RetriesExhausted {
                    attempts,
                    elapsed_ms: elapsed.as_millis() as u64,
                    last: Box::new(e),
                });
            }
            self.counters.retries.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(attempts, error = %e, "retrying transaction");
            let mut inner = tx.inner;
            if inner.on_error(&e)? {
                reset = Some(inner);
            } else {
                drop(inner);
                backoff(attempts);
            }
        }
    }
}

/// Waits before retry number `retry` (from 1), as FoundationDB does:
/// [`BACKOFF_MS_FIRST`] doubling up to [`BACKOFF_MS_MAX`], each wait
/// jittered down by up to half.
pub fn backoff(retry: u32) {
    std::thread::sleep(backoff_delay(retry, crate::random_u64()));
}

/// The wait before retry number `retry`, with `random` choosing the jitter.
pub fn backoff_delay(retry: u32, random: u64) -> Duration {
    let cap_us = (BACKOFF_MS_FIRST * 1000)
        .saturating_mul(1 << retry.saturating_sub(1).min(16))
        .min(BACKOFF_MS_MAX * 1000);
    let jitter = random % (cap_us / 2 + 1);
    Duration::from_micros(cap_us - jitter)
}
