//! The one error type of this crate.

/// Every way a storage operation can fail.
///
/// Each message says what happened and what the caller can do about it.
/// [`StorageError::is_retryable`] tells transient conditions (conflicts,
/// timeouts, unknown commit results) from permanent ones.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StorageError {
    /// FoundationDB `not_committed` (1020): another transaction committed a
    /// write to a key this one read. Nothing was applied.
    #[error(
        "transaction not committed (1020): it conflicted with a concurrent write to a key it read; nothing was applied, retry it"
    )]
    NotCommitted,

    /// FoundationDB `commit_unknown_result` (1021): the commit may or may not
    /// have been applied.
    #[error(
        "commit result unknown (1021): the transaction may or may not have been applied; re-read state before retrying so it is not applied twice"
    )]
    CommitUnknownResult,

    /// FoundationDB `transaction_too_old` (1007): the transaction outlived
    /// the backend's transaction time limit (5 s) or its read version is
    /// no longer available.
    #[error(
        "transaction too old (1007): it ran longer than {limit_ms} ms; retry it and keep transactions short"
    )]
    TransactionTooOld {
        /// The time limit that was exceeded, in milliseconds.
        limit_ms: u64,
    },

    /// The backend could not get its lock in time (sqlite `SQLITE_BUSY`
    /// after the busy timeout): another writer held the database.
    #[error(
        "storage busy: {detail}; another process or thread held the write lock longer than the busy timeout, retry later"
    )]
    Busy {
        /// What the backend reported.
        detail: String,
    },

    /// A commit got no answer within the client's hang guard (FoundationDB
    /// `transaction_timed_out` (1031) while committing): the store is
    /// unreachable or overloaded, and the commit may or may not have been
    /// applied. Retried once by `transact`.
    #[error(
        "the commit got no answer within {timeout_ms} ms (1031): the store is unreachable or overloaded, and the commit may or may not have been applied"
    )]
    CommitTimedOut {
        /// The hang guard, in milliseconds.
        timeout_ms: u64,
    },

    /// The retry loop of `transact` gave up: its time budget ran out, or a
    /// commit timed out twice.
    #[error("gave up after {attempts} attempts in {elapsed_ms} ms; last error: {last}")]
    RetriesExhausted {
        /// How many times the transaction was attempted.
        attempts: u32,
        /// Time from the first attempt to giving up, in milliseconds.
        elapsed_ms: u64,
        /// The last retryable error seen.
        last: Box<StorageError>,
    },

    /// A write violated a FoundationDB limit (key 10 kB, value 100 kB,
    /// transaction 10 MB). The record layer never does this; raw KV users
    /// must split their data.
    #[error("{what} is {bytes} bytes, over the limit of {limit} bytes; split the data")]
    LimitExceeded {
        /// Which limit: "key", "value" or "transaction".
        what: &'static str,
        /// The offending size.
        bytes: u64,
        /// The limit.
        limit: u64,
    },

    /// A write was attempted in a read-only transaction.
    #[error("write attempted in a read-only transaction; use Kv::transact for writes")]
    ReadOnlyTransaction,

    /// The epoch fence refused a commit or release (invariant 1): the
    /// caller's claim is no longer the current one, or the activation is
    /// no longer active.
    #[error(
        "actor {actor:?}: epoch {epoch_given} is fenced (current epoch {epoch_current}, or the activation was released); this activation is stale, drop it and re-claim the actor"
    )]
    Fenced {
        /// The actor.
        actor: String,
        /// The epoch the caller presented.
        epoch_given: u64,
        /// The epoch in the store (0 when the actor has never been claimed).
        epoch_current: u64,
    },

    /// A snapshot commit expected a different head sequence number.
    #[error(
        "actor {actor:?}: snapshot head is {current}, but the commit expected {expected}; the caller's view of the actor is out of date, reload it"
    )]
    HeadMismatch {
        /// The actor.
        actor: String,
        /// The head the commit expected.
        expected: u64,
        /// The head in the store.
        current: u64,
    },

    /// A claim found the actor active at another POP, and the caller did not
    /// allow a takeover.
    #[error(
        "actor {actor:?} is active at POP {pop:?} (epoch {epoch}); forward the call there, or take it over once that POP's lease has lapsed"
    )]
    HeldElsewhere {
        /// The actor.
        actor: String,
        /// The POP that holds it.
        pop: String,
        /// Its current epoch.
        epoch: u64,
    },

    /// Stored bytes failed validation (checksum, rkyv/bytecheck, missing
    /// piece). The data was not used.
    #[error(
        "corrupt data at key {key}: {reason}; the stored value failed validation and was not used (restore from a replica/backup or delete the actor state)"
    )]
    Corrupt {
        /// The key, printable.
        key: String,
        /// What failed.
        reason: String,
    },

    /// A caller passed something malformed.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// Snapshot pages are sealed with a key this process lacks (or with
    /// another key): configuration, not damage.
    #[error("snapshot page encryption: {0}")]
    PageKey(String),

    /// `Store::open` got a URL it does not understand.
    #[error(
        "unsupported storage url {url:?}: accepted forms are \"memory\", \"memory:\", \"sqlite:PATH\" (and \"fdb:CLUSTER_FILE\" when built with the fdb feature)"
    )]
    UnsupportedUrl {
        /// The URL given.
        url: String,
    },

    /// The store could not be reached, or did not answer in time
    /// (FoundationDB `transaction_timed_out` (1031) outside a commit; a
    /// network partition between this process and the store). Nothing was
    /// applied. Not retried inside `transact`: waiting longer there would
    /// only hold the caller; the caller retries later.
    #[error("the store is unavailable: {detail}; nothing was applied, retry later")]
    Unavailable {
        /// What failed.
        detail: String,
    },

    /// The backend failed (I/O error, sqlite error, ...).
    #[error("{backend} backend error: {message}")]
    Backend {
        /// Backend name.
        backend: &'static str,
        /// What it reported.
        message: String,
    },
}

impl StorageError {
    /// Whether running the same transaction again may succeed.
    ///
    /// True for `not_committed`, `commit_unknown_result` and a commit
    /// timeout (the closure must detect its own earlier commit),
    /// `transaction_too_old` and `Busy` (throttling included).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            StorageError::NotCommitted
                | StorageError::CommitUnknownResult
                | StorageError::CommitTimedOut { .. }
                | StorageError::TransactionTooOld { .. }
                | StorageError::Busy { .. }
        )
    }

    /// Whether the same operation may succeed if the *caller* tries again
    /// later: the retryable conditions, a retry loop that gave up on them,
    /// and an unreachable store. Callers answer these as "unavailable,
    /// retry", never as an internal error.
    pub fn is_transient(&self) -> bool {
        self.is_retryable()
            || matches!(
                self,
                StorageError::RetriesExhausted { .. } | StorageError::Unavailable { .. }
            )
    }

    /// The FoundationDB error code this corresponds to, if any.
    pub fn fdb_code(&self) -> Option<i32> {
        match self {
            StorageError::NotCommitted => Some(1020),
            StorageError::CommitUnknownResult => Some(1021),
            StorageError::TransactionTooOld { .. } => Some(1007),
            StorageError::CommitTimedOut { .. } => Some(1031),
            _ => None,
        }
    }

    pub(crate) fn corrupt(key: &[u8], reason: impl Into<String>) -> StorageError {
        StorageError::Corrupt {
            key: crate::tuple::printable(key),
            reason: reason.into(),
        }
    }
}
