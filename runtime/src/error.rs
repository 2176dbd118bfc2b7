//! The runtime's one error type, and its mapping to gRPC status codes.

use tern_storage::StorageError;

/// What the caller should do next, independent of any wire protocol.
/// The gRPC edge maps each kind to a status code one to one; idempotency
/// records store it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The named thing does not exist (type, method): fix the call.
    NotFound,
    /// The request is malformed: fix it, do not retry as is.
    InvalidArgument,
    /// A limit was hit: retry later or with less.
    ResourceExhausted,
    /// The turn trapped and was rolled back.
    Aborted,
    /// The actor or system is not in a state to run this call.
    FailedPrecondition,
    /// Transient: retry (with the same idempotency key).
    Unavailable,
    /// The deadline passed; the outcome is unknown.
    DeadlineExceeded,
    /// Stored data is damaged.
    DataLoss,
    /// A bug or an unexpected failure.
    Internal,
    /// The request carries no valid credentials: get a token.
    Unauthenticated,
    /// The credentials are valid but do not allow this: get a token with
    /// the scope the message names.
    PermissionDenied,
}

impl ErrorKind {
    /// Every kind, for exhaustive tests and decoding.
    pub const ALL: [ErrorKind; 11] = [
        ErrorKind::NotFound,
        ErrorKind::InvalidArgument,
        ErrorKind::ResourceExhausted,
        ErrorKind::Aborted,
        ErrorKind::FailedPrecondition,
        ErrorKind::Unavailable,
        ErrorKind::DeadlineExceeded,
        ErrorKind::DataLoss,
        ErrorKind::Internal,
        ErrorKind::Unauthenticated,
        ErrorKind::PermissionDenied,
    ];

    /// A stable one-byte encoding (idempotency records).
    pub fn to_u8(self) -> u8 {
        ErrorKind::ALL
            .iter()
            .position(|k| *k == self)
            .expect("listed") as u8
    }

    /// Decodes [`ErrorKind::to_u8`]; unknown bytes are `Internal`.
    pub fn from_u8(b: u8) -> ErrorKind {
        ErrorKind::ALL
            .get(b as usize)
            .copied()
            .unwrap_or(ErrorKind::Internal)
    }
}

/// Everything a call, a deploy or an activation can fail with.
///
/// Each variant's message says what happened and what to do about it; the
/// kind (see [`RuntimeError::kind`]) says what the caller should do next.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// No actor type of that name has been deployed.
    #[error("unknown actor type `{0}`: deploy it first with `tern deploy {0} FILE.wasm`")]
    UnknownType(String),
    /// The request is malformed (bad id, bad JSON, bad component...).
    #[error("{0}")]
    InvalidArgument(String),
    /// The component cannot be run or snapshotted by tern.
    #[error("component rejected: {0}")]
    ComponentRejected(String),
    /// A component is larger than the POP's `component_bytes_max`.
    #[error(
        "the component is {size} bytes, over this POP's component_bytes_max = {limit} bytes; shrink it (a release build without debug info) or start the POP with a larger --component-bytes-max"
    )]
    ComponentTooLarge {
        /// Its size in bytes.
        size: usize,
        /// The limit in bytes.
        limit: usize,
    },
    /// A payload is larger than the type's `payload_bytes_max`.
    #[error("{what} is {size} bytes, over the limit payload_bytes_max = {limit} bytes")]
    PayloadTooLarge {
        /// Which payload ("request payload", "reply payload").
        what: &'static str,
        /// Its size in bytes.
        size: usize,
        /// The limit in bytes.
        limit: u64,
    },
    /// The actor's mailbox is full.
    #[error("mailbox of {actor} is full (mailbox_depth_max = {limit}); retry later")]
    MailboxFull {
        /// The actor.
        actor: String,
        /// The limit.
        limit: u64,
    },
    /// The turn ran past its CPU budget and was rolled back.
    #[error(
        "{actor}.{method} ran past its CPU budget of turn_cpu_ms_max = {limit_ms} ms; the turn was rolled back and the actor keeps its previous state"
    )]
    CpuBudget {
        /// The actor.
        actor: String,
        /// The method.
        method: String,
        /// The budget in ms.
        limit_ms: u64,
    },
    /// The turn tried to grow memory past the cap and was rolled back.
    #[error(
        "{actor}.{method} tried to grow its memory past memory_bytes_max = {limit} bytes; the turn was rolled back and the actor keeps its previous state"
    )]
    MemoryCap {
        /// The actor.
        actor: String,
        /// The method.
        method: String,
        /// The cap in bytes.
        limit: u64,
    },
    /// The guest trapped (panicked); the turn was rolled back.
    #[error(
        "{actor}.{method} trapped: {reason}; the turn was rolled back and the actor keeps its previous state"
    )]
    Trap {
        /// The actor.
        actor: String,
        /// The method.
        method: String,
        /// The trap message (with the guest's panic message when known).
        reason: String,
    },
    /// The actor answered with an error of its own; `kind` follows the
    /// guest's error kind.
    #[error("{message}")]
    Guest {
        /// The guest's error kind.
        kind: ErrorKind,
        /// The guest's message.
        message: String,
    },
    /// A call between actors would form a cycle.
    #[error("call cycle: {0}; actor calls must not re-enter an actor that is waiting on them")]
    CallCycle(String),
    /// A chain of calls between actors is deeper than `CALL_DEPTH_MAX`.
    #[error("call chain too deep: {0}")]
    CallTooDeep(String),
    /// A snapshot was taken with different code than the type runs now.
    #[error(
        "{actor} was persisted by component {snapshot_digest} ({snapshot_engine}), which is not a version of type `{ty}` (now {current_digest}); its memory is never restored into other code. Deploy that component as a version of `{ty}` again to let the actor move by state transfer"
    )]
    CodeMismatch {
        /// The actor.
        actor: String,
        /// The type.
        ty: String,
        /// The digest in the snapshot.
        snapshot_digest: String,
        /// The engine that wrote the snapshot.
        snapshot_engine: String,
        /// The digest the type runs now.
        current_digest: String,
    },
    /// This activation lost its claim (a newer epoch exists); retry.
    #[error("activation of {actor} at epoch {epoch} was superseded; retry the call")]
    Superseded {
        /// The actor.
        actor: String,
        /// The stale epoch.
        epoch: u64,
    },
    /// The actor cannot be snapshotted after this turn.
    #[error("{0}")]
    NotSnapshottable(String),
    /// A forwarded call reached a POP where the actor is not active (a
    /// stale cache, or the actor just moved); the sender looks it up again.
    #[error("{actor} is not active at this POP{}; look it up again", moved_to.as_ref().map(|p| format!(" (it moved to {p})")).unwrap_or_default())]
    NotHere {
        /// The actor.
        actor: String,
        /// The POP it moved to, when it moved because of this call.
        moved_to: Option<String>,
    },
    /// An error from another POP, passed through with its kind.
    #[error("{message}")]
    Remote {
        /// The remote error's kind.
        kind: ErrorKind,
        /// The remote message.
        message: String,
    },
    /// This POP's directory lease lapsed; it serves no actors until it
    /// registers again.
    #[error(
        "this POP lost its directory lease ({0}); retry the call, another POP will take the actor"
    )]
    LeaseLost(String),
    /// A POP-wide budget (activations, resident actor memory) is used up
    /// and nothing could be evicted to make room.
    #[error("{0}")]
    PopBudget(String),
    /// The call's deadline passed before it finished.
    #[error("{0}")]
    DeadlineExceeded(String),
    /// A bug: a panic in an activation's task or turn. The activation was
    /// removed; the next call reactivates the actor from the store.
    #[error("internal error: {0}")]
    Internal(String),
    /// The node is shutting down.
    #[error("this POP is shutting down; retry at another POP")]
    ShuttingDown,
    /// A storage failure.
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    /// A wasmtime failure outside a turn (compile, instantiate).
    #[error("engine: {0}")]
    Engine(String),
    /// Calling another POP failed.
    #[error("transport: {0}")]
    Transport(String),
    /// The request carries no token, or one this cluster does not know.
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// The token is valid but lacks what the request needs.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// A subscriber could not keep up (or stopped reading) and was
    /// dropped; it may subscribe again from its last seq.
    #[error("{0}")]
    SubscriberDropped(String),
    /// Events a subscriber asked for are no longer kept.
    #[error("{0}")]
    EventsTrimmed(String),
    /// A subscription ended for a passing reason; subscribe again.
    #[error("{0}")]
    Resubscribe(String),
}

impl RuntimeError {
    /// The kind, chosen by what the caller should do next.
    pub fn kind(&self) -> ErrorKind {
        use ErrorKind as K;
        match self {
            RuntimeError::UnknownType(_) => K::NotFound,
            RuntimeError::InvalidArgument(_) | RuntimeError::ComponentRejected(_) => {
                K::InvalidArgument
            }
            RuntimeError::PayloadTooLarge { .. }
            | RuntimeError::ComponentTooLarge { .. }
            | RuntimeError::MailboxFull { .. }
            | RuntimeError::CpuBudget { .. }
            | RuntimeError::MemoryCap { .. }
            | RuntimeError::PopBudget(_)
            | RuntimeError::SubscriberDropped(_) => K::ResourceExhausted,
            RuntimeError::Trap { .. } => K::Aborted,
            RuntimeError::Guest { kind, .. } | RuntimeError::Remote { kind, .. } => *kind,
            RuntimeError::CodeMismatch { .. }
            | RuntimeError::NotSnapshottable(_)
            | RuntimeError::CallCycle(_)
            | RuntimeError::CallTooDeep(_)
            | RuntimeError::EventsTrimmed(_) => K::FailedPrecondition,
            RuntimeError::Superseded { .. }
            | RuntimeError::NotHere { .. }
            | RuntimeError::LeaseLost(_)
            | RuntimeError::ShuttingDown
            | RuntimeError::Resubscribe(_)
            | RuntimeError::Transport(_) => K::Unavailable,
            RuntimeError::DeadlineExceeded(_) => K::DeadlineExceeded,
            RuntimeError::Unauthenticated(_) => K::Unauthenticated,
            RuntimeError::PermissionDenied(_) => K::PermissionDenied,
            RuntimeError::Storage(e) if e.is_transient() => K::Unavailable,
            RuntimeError::Storage(StorageError::Fenced { .. }) => K::Unavailable,
            RuntimeError::Storage(StorageError::Corrupt { .. }) => K::DataLoss,
            RuntimeError::Storage(StorageError::PageKey(_)) => K::FailedPrecondition,
            RuntimeError::Storage(_) | RuntimeError::Engine(_) | RuntimeError::Internal(_) => {
                K::Internal
            }
        }
    }
}

/// Result alias.
pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_storage_errors_tell_the_caller_to_retry() {
        let transient = [
            StorageError::NotCommitted,
            StorageError::CommitUnknownResult,
            StorageError::Busy { detail: "x".into() },
            StorageError::RetriesExhausted {
                attempts: 3,
                elapsed_ms: 10_000,
                last: Box::new(StorageError::NotCommitted),
            },
            StorageError::CommitTimedOut { timeout_ms: 15_000 },
            StorageError::Unavailable {
                detail: "partitioned from the store".into(),
            },
        ];
        for e in transient {
            assert_eq!(
                RuntimeError::Storage(e.clone()).kind(),
                ErrorKind::Unavailable,
                "{e}"
            );
        }
        let corrupt = StorageError::Corrupt {
            key: "k".into(),
            reason: "crc".into(),
        };
        assert_eq!(RuntimeError::Storage(corrupt).kind(), ErrorKind::DataLoss);
        let backend = StorageError::Backend {
            backend: "sqlite",
            message: "disk I/O error".into(),
        };
        assert_eq!(RuntimeError::Storage(backend).kind(), ErrorKind::Internal);
    }
}
