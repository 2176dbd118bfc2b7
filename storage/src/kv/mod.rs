//! The ordered, transactional key-value layer with FoundationDB semantics.
//!
//! A [`Kv`] wraps one backend ([`KvBackend`]) and adds what every backend
//! shares: FoundationDB's size limits, byte counters ([`Stats`]) and the
//! bounded retry loop [`Kv::transact`].
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

#[cfg(feature = "fdb")]
pub mod fdb;
pub mod latency;
pub mod memory;
pub mod sqlite;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::StorageError;

/// FoundationDB's key size limit, in bytes.
pub const KEY_BYTES_MAX: usize = 10_000;
/// FoundationDB's value size limit, in bytes.
pub const VALUE_BYTES_MAX: usize = 100_000;
/// FoundationDB's transaction size limit (bytes of mutations), in bytes.
pub const TRANSACTION_BYTES_MAX: u64 = 10_000_000;
/// FoundationDB's transaction duration limit, in milliseconds.
pub const TRANSACTION_DURATION_MS_MAX: u64 = 5_000;
/// Default number of retries of [`Kv::transact`] after the first attempt.
pub const RETRIES_MAX_DEFAULT: u32 = 20;
/// Cap of the backoff between retries, in milliseconds.
pub const RETRY_BACKOFF_MS_MAX: u64 = 50;

/// A key and its value, as returned by range reads.
pub type KeyValue = (Vec<u8>, Vec<u8>);

/// A storage backend: something that starts transactions.
pub trait KvBackend: Send + Sync + 'static {
    /// Short name for messages ("memory", "sqlite").
    fn name(&self) -> &'static str;
    /// Starts a transaction. `write` says whether it may write; a sqlite
    /// write transaction takes the database write lock at once
    /// (`BEGIN IMMEDIATE`).
    fn begin(&self, write: bool) -> Result<Box<dyn KvTransaction>, StorageError>;
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
    /// Writes a key.
    fn set(&mut self, key: &[u8], value: &[u8]) -> Result<(), StorageError>;
    /// Removes a key.
    fn clear(&mut self, key: &[u8]) -> Result<(), StorageError>;
    /// Removes every key in `[begin, end)`.
    fn clear_range(&mut self, begin: &[u8], end: &[u8]) -> Result<(), StorageError>;
    /// Commits atomically.
    fn commit(self: Box<Self>) -> Result<(), StorageError>;
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
    /// The largest `bytes_written` of any single committed transaction
    /// (monotonic, not affected by [`Stats::since`]).
    pub transaction_bytes_max: u64,
    /// `bytes_written` of the most recently committed write transaction
    /// (not affected by [`Stats::since`]).
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
    bytes: u64,
    mutations: u64,
    deferred: Option<StorageError>,
}

impl Transaction {
    /// Reads one key (seeing this transaction's own writes).
    pub fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        self.inner.get(key)
    }

    /// Reads several keys at once (one round trip on FoundationDB): the
    /// values in the order of `keys`.
    pub fn get_many(&mut self, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>, StorageError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        self.inner.get_many(keys)
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
        self.inner.get_range(begin, end, limit, reverse)
    }

    /// Reads every key that extends `prefix` (tuple-style: `prefix..prefix+0xFF`).
    pub fn get_prefix(&mut self, prefix: &[u8]) -> Result<Vec<KeyValue>, StorageError> {
        let end = crate::tuple::range_end(prefix);
        self.get_range(prefix, &end, None, false)
    }

    fn account(&mut self, bytes: usize) -> bool {
        if self.deferred.is_some() {
            return false;
        }
        if !self.write {
            self.deferred = Some(StorageError::ReadOnlyTransaction);
            return false;
        }
        self.bytes += bytes as u64;
        self.mutations += 1;
        if self.bytes > TRANSACTION_BYTES_MAX {
            self.deferred = Some(StorageError::LimitExceeded {
                what: "transaction",
                bytes: self.bytes,
                limit: TRANSACTION_BYTES_MAX,
            });
            return false;
        }
        true
    }

    fn check_key(&mut self, key: &[u8]) -> bool {
        if key.len() > KEY_BYTES_MAX {
            self.deferred.get_or_insert(StorageError::LimitExceeded {
                what: "key",
                bytes: key.len() as u64,
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
        if self.check_key(key) && self.account(key.len() + value.len()) {
            let r = self.inner.set(key, value);
            self.defer(r);
        }
    }

    /// Removes `key`.
    pub fn clear(&mut self, key: &[u8]) {
        if self.check_key(key) && self.account(key.len()) {
            let r = self.inner.clear(key);
            self.defer(r);
        }
    }

    /// Removes every key in `[begin, end)`.
    pub fn clear_range(&mut self, begin: &[u8], end: &[u8]) {
        if begin >= end {
            return;
        }
        if self.check_key(begin) && self.check_key(end) && self.account(begin.len() + end.len()) {
            let r = self.inner.clear_range(begin, end);
            self.defer(r);
        }
    }

    /// Removes every key that extends `prefix`.
    pub fn clear_prefix(&mut self, prefix: &[u8]) {
        let end = crate::tuple::range_end(prefix);
        self.clear_range(prefix, &end);
    }

    /// Bytes of mutations so far.
    pub fn bytes_written(&self) -> u64 {
        self.bytes
    }

    /// Commits. Counters move only if the commit succeeded.
    pub fn commit(self) -> Result<(), StorageError> {
        if let Some(e) = self.deferred {
            return Err(e);
        }
        let (bytes, mutations, counters) = (self.bytes, self.mutations, self.counters);
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
                .fetch_max(bytes, Ordering::Relaxed);
            counters
                .transaction_bytes_last
                .store(bytes, Ordering::Relaxed);
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
    retries_max: u32,
}

impl Kv {
    /// Wraps a backend.
    pub fn new(backend: Arc<dyn KvBackend>) -> Kv {
        Kv {
            backend,
            counters: Arc::default(),
            retries_max: RETRIES_MAX_DEFAULT,
        }
    }

    /// Sets how many times `transact` retries after the first attempt.
    pub fn with_retries_max(mut self, retries_max: u32) -> Kv {
        self.retries_max = retries_max;
        self
    }

    /// The retry limit of `transact`.
    pub fn retries_max(&self) -> u32 {
        self.retries_max
    }

    /// The backend's name.
    pub fn backend_name(&self) -> &'static str {
        self.backend.name()
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
        Ok(Transaction {
            inner: self.backend.begin(write)?,
            counters: self.counters.clone(),
            write,
            bytes: 0,
            mutations: 0,
            deferred: None,
        })
    }

    /// Runs `f` in a write transaction and commits, retrying up to
    /// `retries_max` times on retryable errors (`not_committed`,
    /// `transaction_too_old`, `commit_unknown_result`, busy).
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
        let mut attempt: u32 = 0;
        loop {
            let result = self.begin_mode(write).and_then(|mut tx| {
                let v = f(&mut tx)?;
                tx.commit().map(|()| v)
            });
            match result {
                Ok(v) => return Ok(v),
                Err(e) if e.is_retryable() => {
                    if attempt >= self.retries_max {
                        return Err(StorageError::RetriesExhausted {
                            attempts: attempt + 1,
                            last: Box::new(e),
                        });
                    }
                    attempt += 1;
                    self.counters.retries.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(attempt, error = %e, "retrying transaction");
                    backoff(attempt);
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// Exponential backoff with jitter, capped at [`RETRY_BACKOFF_MS_MAX`].
/// The first retry is immediate.
fn backoff(attempt: u32) {
    if attempt <= 1 {
        return;
    }
    let cap_us = (RETRY_BACKOFF_MS_MAX * 1000).min(100u64 << attempt.min(16));
    let jitter = crate::random_u64() % cap_us.max(1);
    std::thread::sleep(std::time::Duration::from_micros(cap_us / 2 + jitter / 2));
}
