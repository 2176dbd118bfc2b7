//! FoundationDB backend (cargo feature `fdb`): `Store::open("fdb:CLUSTER_FILE")`.
//!
//! - **One network per process.** The FoundationDB client runs one network
//!   thread per process, started by [`foundationdb::api::NetworkBuilder::boot`],
//!   which may run only once. [`boot_network`] guards it with a `OnceLock` and
//!   keeps the handle for the life of the process (see the safety comment
//!   there). A failed boot is remembered and reported by every later open.
//! - **Retries through `on_error`.** [`crate::Kv::transact`] retries a
//!   failed attempt by handing FoundationDB's error back to the same
//!   transaction's `on_error`, so FoundationDB's own backoff applies (10 ms
//!   doubling to 1 s, and its longer waits when the cluster throttles:
//!   1213, 1037, 1041/1042, 1038). A retry keeps going for the crate's time
//!   budget, not a count. FoundationDB's errors are mapped to the crate's
//!   (see [`map_error`]).
//! - **A hang guard, not the age limit.** Each database handle sets a
//!   transaction timeout of [`TRANSACTION_TIMEOUT_MS`] (15 s), three times
//!   FoundationDB's 5 s transaction age limit, so a transaction that lives
//!   too long gets `transaction_too_old` (1007, retried) from the cluster
//!   first. The timeout fires only when the cluster does not answer at all.
//!   It runs from the transaction's creation and is not reset by
//!   `on_error` (API 610 and later), so it also bounds one transaction's
//!   chain of retries. A read that times out is
//!   [`StorageError::Unavailable`]; a commit that times out is
//!   [`StorageError::CommitTimedOut`] (its outcome is unknown), retried
//!   once in a new transaction.
//! - **`open` probes the cluster**: it asks for a read version within
//!   [`OPEN_PROBE_TIMEOUT_MS`] and fails with a message naming the cluster
//!   file when nobody answers.
//! - **Client buggify for tests.** With `TERN_FDB_CLIENT_BUGGIFY=1` in the
//!   environment at first use, the client network is started with
//!   FoundationDB's client buggify on, which injects failures such as
//!   `commit_unknown_result` (the conformance case
//!   `unknown_result_is_idempotent` is meant to run so).
//! - **No tenants.** Keys are stored as the record layer builds them, under
//!   the same short tuple prefix `("tern", 1)` as every other backend
//!   ([`crate::keys::PREFIX`]). [`FdbBackend::open_with_prefix`] adds an
//!   extra, private prefix in front (tests use it so runs against a shared
//!   cluster never collide); it is invisible to the record layer.
//! - **Sync over async.** [`KvBackend`] is synchronous (the runtime calls
//!   storage from blocking threads). Each FoundationDB future is awaited
//!   with [`futures::executor::block_on`] on the calling thread: the
//!   futures are completed by the FoundationDB network thread, not by an
//!   executor, so blocking is correct and needs no runtime. Do not call this
//!   backend from an async task's own thread (use `spawn_blocking`), exactly
//!   as with sqlite.
//! - **Size limits.** Values over 100 kB, keys over 10 kB and transactions
//!   over 10 MB are refused by [`crate::kv::Transaction`] before they reach
//!   FoundationDB; the record layer splits components, manifests and big
//!   snapshots under them (chunks of [`crate::VALUE_CHUNK_BYTES`], staging
//!   transactions of about [`crate::STAGE_TXN_BYTES_MAX`]).

use std::path::Path;
use std::sync::{Arc, OnceLock};

use foundationdb::api::{FdbApiBuilder, NetworkAutoStop};
use foundationdb::options::{DatabaseOption, NetworkOption, StreamingMode, TransactionOption};
use foundationdb::{Database, FdbError, RangeOption, TransactionCommitError};
use futures::executor::block_on;
use parking_lot::Mutex;

use super::{KeyValue, KvBackend, KvTransaction, RangeRead, TRANSACTION_DURATION_MS_MAX};
use crate::StorageError;

/// Transaction timeout set on every database handle, in milliseconds: a
/// hang guard, three times FoundationDB's 5 s transaction age limit.
pub const TRANSACTION_TIMEOUT_MS: i32 = 3 * TRANSACTION_DURATION_MS_MAX as i32;
/// How long `open` waits for the cluster to give a read version.
pub const OPEN_PROBE_TIMEOUT_MS: i32 = 5_000;
/// The environment variable that turns client buggify on (tests only).
pub const BUGGIFY_ENV: &str = "TERN_FDB_CLIENT_BUGGIFY";

/// FoundationDB `transaction_too_old`.
pub const ERR_TRANSACTION_TOO_OLD: i32 = 1007;
/// FoundationDB `not_committed`.
pub const ERR_NOT_COMMITTED: i32 = 1020;
/// FoundationDB `commit_unknown_result`.
pub const ERR_COMMIT_UNKNOWN_RESULT: i32 = 1021;
/// FoundationDB `transaction_timed_out` (the timeout option fired).
pub const ERR_TRANSACTION_TIMED_OUT: i32 = 1031;
/// FoundationDB `api_version_not_supported`.
const ERR_API_VERSION_NOT_SUPPORTED: i32 = 2203;

/// The network handle, kept for the life of the process; or why the boot
/// failed (it cannot be retried: the API version is selected only once).
static NETWORK: OnceLock<Result<Mutex<Option<NetworkAutoStop>>, String>> = OnceLock::new();

/// Starts the FoundationDB client network, once per process. Every call
/// after the first returns the first call's outcome.
pub fn boot_network() -> Result<(), StorageError> {
    let state = NETWORK.get_or_init(|| {
        let mut builder = FdbApiBuilder::default().build().map_err(|e| {
            if e.code() == ERR_API_VERSION_NOT_SUPPORTED {
                format!(
                    "the installed libfdb_c does not support API version 730 ({e}); install the FoundationDB 7.3.x client package (foundationdb-clients)"
                )
            } else {
                format!("cannot select the FoundationDB API version: {e}")
            }
        })?;
        if std::env::var(BUGGIFY_ENV).is_ok_and(|v| v == "1") {
            tracing::warn!("{BUGGIFY_ENV}=1: FoundationDB client buggify is on (tests only)");
            for option in [
                NetworkOption::ClientBuggifyEnable,
                NetworkOption::ClientBuggifySectionActivatedProbability(100),
                NetworkOption::ClientBuggifySectionFiredProbability(5),
            ] {
                builder = builder
                    .set_option(option)
                    .map_err(|e| format!("cannot turn client buggify on: {e}"))?;
            }
        }
        // SAFETY: `boot` may run only once per process, and its handle must
        // be dropped (stopping the network and joining its thread) before
        // the process exits. Once: `OnceLock::get_or_init` runs this closure
        // at most once per process, even with concurrent callers. Stopped
        // before exit: the handle lives in this static (so it is never
        // dropped early while transactions may still use the network), and
        // `stop_network_at_exit`, registered with `atexit` right below,
        // drops it when the process exits normally (return from `main` or
        // `std::process::exit`). A process that aborts or is killed needs
        // no stop, per `boot`'s contract.
        #[allow(unsafe_code)]
        let network = unsafe { builder.boot() }
            .map_err(|e| format!("cannot start the FoundationDB network thread: {e}"))?;
        register_stop_at_exit();
        Ok(Mutex::new(Some(network)))
    });
    match state {
        Ok(_) => Ok(()),
        Err(message) => Err(StorageError::Backend {
            backend: "fdb",
            message: message.clone(),
        }),
    }
}

#[allow(unsafe_code)]
mod at_exit {
    unsafe extern "C" {
        /// C's `atexit(3)`.
        pub(super) fn atexit(callback: extern "C" fn()) -> std::ffi::c_int;
    }
}

fn register_stop_at_exit() {
    // SAFETY: `atexit` is called with a valid `extern "C" fn()` that lives
    // for the whole program; it only appends to libc's exit-handler list.
    #[allow(unsafe_code)]
    let rc = unsafe { at_exit::atexit(stop_network_at_exit) };
    if rc != 0 {
        tracing::warn!("atexit refused the FoundationDB network stop handler");
    }
}

/// Stops the network and joins its thread, at process exit. Never unwinds
/// (a panic here would cross the C boundary).
extern "C" fn stop_network_at_exit() {
    let _ = std::panic::catch_unwind(|| {
        if let Some(Ok(network)) = NETWORK.get() {
            drop(network.lock().take());
        }
    });
}

/// Maps a FoundationDB error to the crate's errors, so that
/// [`crate::Kv::transact`] retries what FoundationDB would retry.
///
/// `committing` says whether the error came from `commit`: a timeout there
/// may have let the commit through, so it is
/// [`StorageError::CommitTimedOut`].
pub fn map_error(e: FdbError, committing: bool) -> StorageError {
    match e.code() {
        ERR_NOT_COMMITTED => StorageError::NotCommitted,
        ERR_COMMIT_UNKNOWN_RESULT => StorageError::CommitUnknownResult,
        ERR_TRANSACTION_TOO_OLD => StorageError::TransactionTooOld {
            limit_ms: TRANSACTION_DURATION_MS_MAX,
        },
        ERR_TRANSACTION_TIMED_OUT if committing => StorageError::CommitTimedOut {
            timeout_ms: TRANSACTION_TIMEOUT_MS as u64,
        },
        ERR_TRANSACTION_TIMED_OUT => StorageError::Unavailable {
            detail: format!(
                "no answer from the cluster within {TRANSACTION_TIMEOUT_MS} ms (1031); check that the cluster file names a reachable cluster (`fdbcli --exec status`)"
            ),
        },
        _ if e.is_maybe_committed() => StorageError::CommitUnknownResult,
        code if e.is_retryable() => StorageError::Busy {
            detail: format!("FoundationDB error {code}: {e}"),
        },
        code => StorageError::Backend {
            backend: "fdb",
            message: format!("FoundationDB error {code}: {e}"),
        },
    }
}

/// The first key after every key that starts with `prefix` (FoundationDB's
/// `strinc`): the prefix with its trailing 0xFF bytes dropped and its last
/// byte incremented.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while end.last() == Some(&0xFF) {
        end.pop();
    }
    let last = end
        .last_mut()
        .expect("a private prefix has a byte below 0xFF");
    *last += 1;
    end
}

/// Asks the cluster for a read version, within [`OPEN_PROBE_TIMEOUT_MS`]:
/// an unreachable cluster fails `open` at once, not the first request.
fn probe(db: &Database, cluster_file: &str) -> Result<(), StorageError> {
    let unreachable = |e: FdbError| StorageError::Unavailable {
        detail: format!(
            "the FoundationDB cluster named in {cluster_file} gave no read version within {OPEN_PROBE_TIMEOUT_MS} ms ({e}); check that its coordinators are up and reachable from here (`fdbcli -C {cluster_file} --exec status`)"
        ),
    };
    let trx = db.create_trx().map_err(|e| map_error(e, false))?;
    trx.set_option(TransactionOption::Timeout(OPEN_PROBE_TIMEOUT_MS))
        .map_err(|e| map_error(e, false))?;
    block_on(trx.get_read_version()).map_err(unreachable)?;
    Ok(())
}

/// The FoundationDB backend.
pub struct FdbBackend {
    db: Arc<Database>,
    /// Extra private prefix in front of every key (empty in production).
    prefix: Vec<u8>,
}

impl FdbBackend {
    /// Opens the cluster named by `cluster_file` (booting the network on
    /// first use). Keys are stored exactly as the record layer builds them,
    /// under [`crate::keys::PREFIX`].
    pub fn open(cluster_file: &Path) -> Result<FdbBackend, StorageError> {
        FdbBackend::open_with_prefix(cluster_file, Vec::new())
    }

    /// Like [`FdbBackend::open`], with `prefix` put in front of every key
    /// and stripped from every key read, so several stores share a cluster
    /// without seeing each other (the conformance suite uses one per test).
    pub fn open_with_prefix(
        cluster_file: &Path,
        prefix: Vec<u8>,
    ) -> Result<FdbBackend, StorageError> {
        if !cluster_file.is_file() {
            return Err(StorageError::Backend {
                backend: "fdb",
                message: format!(
                    "cluster file {} not found; install the FoundationDB client (foundationdb-clients) or pass the path of an existing fdb.cluster",
                    cluster_file.display()
                ),
            });
        }
        let path = cluster_file.to_str().ok_or_else(|| {
            StorageError::InvalidArgument(format!(
                "cluster file path {} is not valid UTF-8",
                cluster_file.display()
            ))
        })?;
        boot_network()?;
        let db = Database::from_path(path).map_err(|e| StorageError::Backend {
            backend: "fdb",
            message: format!("cannot open the cluster in {path}: {e}"),
        })?;
        db.set_option(DatabaseOption::TransactionTimeout(TRANSACTION_TIMEOUT_MS))
            .map_err(|e| StorageError::Backend {
                backend: "fdb",
                message: format!("cannot set a database option: {e}"),
            })?;
        probe(&db, path)?;
        Ok(FdbBackend {
            db: Arc::new(db),
            prefix,
        })
    }

    /// Removes every key under this backend's private prefix. Refused when
    /// the prefix is empty: that would be the whole tern keyspace.
    pub fn clear_own_prefix(&self) -> Result<(), StorageError> {
        if self.prefix.is_empty() {
            return Err(StorageError::InvalidArgument(
                "clear_own_prefix needs a private prefix (open_with_prefix)".into(),
            ));
        }
        let trx = self.db.create_trx().map_err(|e| map_error(e, false))?;
        // Every key that starts with the prefix, `prefix + \xff\xff`
        // included (a tuple-style end, `prefix + \xff`, would leave it).
        trx.clear_range(&self.prefix, &prefix_end(&self.prefix));
        block_on(trx.commit()).map_err(|e| map_error(*e, true))?;
        Ok(())
    }
}

impl KvBackend for FdbBackend {
    fn name(&self) -> &'static str {
        "fdb"
    }

    fn key_prefix_len(&self) -> usize {
        self.prefix.len()
    }

    fn begin(&self, write: bool) -> Result<Box<dyn KvTransaction>, StorageError> {
        let trx = self.db.create_trx().map_err(|e| map_error(e, false))?;
        Ok(Box::new(FdbTx {
            trx: Some(trx),
            prefix: self.prefix.clone(),
            write,
            failed: None,
        }))
    }
}

/// The error an attempt failed with, kept for `on_error`.
enum Failed {
    /// A read failed; the transaction is still held.
    Op(FdbError),
    /// The commit failed; the error holds the transaction.
    Commit(TransactionCommitError),
}

/// Why a range read failed: FoundationDB's error (kept for `on_error`), or
/// a reply that made no sense.
enum RangeError {
    Fdb(FdbError),
    Other(StorageError),
}

struct FdbTx {
    /// `None` only between a failed commit and `on_error`.
    trx: Option<foundationdb::Transaction>,
    prefix: Vec<u8>,
    write: bool,
    failed: Option<Failed>,
}

impl FdbTx {
    fn trx(&self) -> Result<&foundationdb::Transaction, StorageError> {
        self.trx.as_ref().ok_or_else(|| StorageError::Backend {
            backend: "fdb",
            message: "the transaction was used after a failed commit without on_error".into(),
        })
    }

    /// Maps a read's error, and keeps it for `on_error`.
    fn read_failed(&mut self, e: FdbError) -> StorageError {
        self.failed = Some(Failed::Op(e));
        map_error(e, false)
    }

    fn key(&self, key: &[u8]) -> Vec<u8> {
        let mut k = Vec::with_capacity(self.prefix.len() + key.len());
        k.extend_from_slice(&self.prefix);
        k.extend_from_slice(key);
        k
    }

    fn range_failed(&mut self, e: RangeError) -> StorageError {
        match e {
            RangeError::Fdb(e) => self.read_failed(e),
            RangeError::Other(e) => e,
        }
    }

    /// One range read, paging through FoundationDB's replies.
    async fn range(
        &self,
        begin: &[u8],
        end: &[u8],
        limit: Option<usize>,
        reverse: bool,
    ) -> Result<Vec<KeyValue>, RangeError> {
        let trx = self.trx().map_err(RangeError::Other)?;
        let mut opt = RangeOption {
            limit,
            reverse,
            mode: StreamingMode::WantAll,
            ..RangeOption::from((self.key(begin), self.key(end)))
        };
        let mut out = Vec::new();
        let mut iteration = 1;
        loop {
            let kvs = trx
                .get_range(&opt, iteration, false)
                .await
                .map_err(RangeError::Fdb)?;
            for kv in kvs.iter() {
                let key = kv
                    .key()
                    .strip_prefix(self.prefix.as_slice())
                    .ok_or_else(|| {
                        RangeError::Other(StorageError::corrupt(
                            kv.key(),
                            "range read returned a key outside the range",
                        ))
                    })?;
                out.push((key.to_vec(), kv.value().to_vec()));
            }
            match opt.next_range(&kvs) {
                Some(next) => {
                    opt = next;
                    iteration += 1;
                }
                None => return Ok(out),
            }
        }
    }

    fn writable(&self) -> Result<(), StorageError> {
        if self.write {
            Ok(())
        } else {
            Err(StorageError::ReadOnlyTransaction)
        }
    }
}

impl KvTransaction for FdbTx {
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        let r = block_on(self.trx()?.get(&self.key(key), false));
        let v = r.map_err(|e| self.read_failed(e))?;
        Ok(v.map(|v| v.to_vec()))
    }

    fn get_many(&mut self, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>, StorageError> {
        // Every read is in flight at once: one round trip, not one per key.
        let trx = self.trx()?;
        let reads = keys.iter().map(|k| trx.get(&self.key(k), false));
        let r = block_on(futures::future::try_join_all(reads));
        let values = r.map_err(|e| self.read_failed(e))?;
        Ok(values.into_iter().map(|v| v.map(|v| v.to_vec())).collect())
    }

    fn get_range(
        &mut self,
        begin: &[u8],
        end: &[u8],
        limit: Option<usize>,
        reverse: bool,
    ) -> Result<Vec<KeyValue>, StorageError> {
        let r = block_on(self.range(begin, end, limit, reverse));
        r.map_err(|e| self.range_failed(e))
    }

    fn get_ranges(&mut self, ranges: &[RangeRead]) -> Result<Vec<Vec<KeyValue>>, StorageError> {
        // Every range read is in flight at once; each pages through its
        // own replies.
        let reads = ranges
            .iter()
            .map(|r| self.range(&r.begin, &r.end, r.limit, false));
        let r = block_on(futures::future::try_join_all(reads));
        r.map_err(|e| self.range_failed(e))
    }

    fn set(&mut self, key: &[u8], value: &[u8]) -> Result<(), StorageError> {
        self.writable()?;
        self.trx()?.set(&self.key(key), value);
        Ok(())
    }

    fn clear(&mut self, key: &[u8]) -> Result<(), StorageError> {
        self.writable()?;
        self.trx()?.clear(&self.key(key));
        Ok(())
    }

    fn clear_range(&mut self, begin: &[u8], end: &[u8]) -> Result<(), StorageError> {
        self.writable()?;
        self.trx()?.clear_range(&self.key(begin), &self.key(end));
        Ok(())
    }

    fn commit(&mut self) -> Result<(), StorageError> {
        if !self.write {
            // Nothing to commit; dropping the transaction releases it.
            return Ok(());
        }
        let trx = self.trx.take().ok_or_else(|| StorageError::Backend {
            backend: "fdb",
            message: "commit called twice on one attempt".into(),
        })?;
        match block_on(trx.commit()) {
            Ok(committed) => {
                // Keep a transaction for the (unexpected) case of another
                // use; a committed one is reset to a fresh state.
                self.trx = Some(committed.reset());
                Ok(())
            }
            Err(e) => {
                let mapped = map_error(*e, true);
                self.failed = Some(Failed::Commit(e));
                Err(mapped)
            }
        }
    }

    fn on_error(&mut self, error: &StorageError) -> Result<bool, StorageError> {
        let failed = self.failed.take();
        // A timeout (the hang guard) is not retried by on_error, and would
        // fire again at once on this transaction (its timer is not reset):
        // the caller begins a new one.
        if matches!(error, StorageError::CommitTimedOut { .. }) {
            return Ok(false);
        }
        let reset = match failed {
            Some(Failed::Op(e)) => {
                let trx = self.trx.take().ok_or_else(|| StorageError::Backend {
                    backend: "fdb",
                    message: "a failed read left no transaction".into(),
                })?;
                block_on(trx.on_error(e))
            }
            Some(Failed::Commit(e)) => block_on(e.on_error()),
            // Not FoundationDB's error (a limit, say): start afresh.
            None => return Ok(false),
        };
        // FoundationDB waited out its backoff and reset the transaction, or
        // said the error is final.
        self.trx = Some(reset.map_err(|e| map_error(e, false))?);
        Ok(true)
    }
}
