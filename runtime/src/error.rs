//! The runtime's one error type, and its mapping to gRPC status codes.

use tern_storage::StorageError;

/// Everything a call, a deploy or an activation can fail with.
///
/// Each variant's message says what happened and what to do about it; the
/// gRPC code (see [`RuntimeError::code`]) says what the caller should do next.
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
    /// The actor answered with an error of its own; `code` follows the
    /// guest's error kind.
    #[error("{message}")]
    Guest {
        /// The gRPC code for the guest's error kind.
        code: tonic::Code,
        /// The guest's message.
        message: String,
    },
    /// A call between actors would form a cycle.
    #[error("call cycle: {0}; actor calls must not re-enter an actor that is waiting on them")]
    CallCycle(String),
    /// A snapshot was taken with different code than the type runs now.
    #[error(
        "{actor} was persisted by component {snapshot_digest} ({snapshot_engine}) but type `{ty}` now runs {current_digest}; redeploy with --upgrade to restore old state into new code"
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
}

impl RuntimeError {
    /// The gRPC code, chosen by what the caller should do next.
    pub fn code(&self) -> tonic::Code {
        use tonic::Code;
        match self {
            RuntimeError::UnknownType(_) => Code::NotFound,
            RuntimeError::InvalidArgument(_) | RuntimeError::ComponentRejected(_) => {
                Code::InvalidArgument
            }
            RuntimeError::PayloadTooLarge { .. }
            | RuntimeError::MailboxFull { .. }
            | RuntimeError::CpuBudget { .. }
            | RuntimeError::MemoryCap { .. } => Code::ResourceExhausted,
            RuntimeError::Trap { .. } => Code::Aborted,
            RuntimeError::Guest { code, .. } => *code,
            RuntimeError::CodeMismatch { .. }
            | RuntimeError::NotSnapshottable(_)
            | RuntimeError::CallCycle(_) => Code::FailedPrecondition,
            RuntimeError::Superseded { .. }
            | RuntimeError::ShuttingDown
            | RuntimeError::Transport(_) => Code::Unavailable,
            RuntimeError::Storage(e) if e.is_retryable() => Code::Unavailable,
            RuntimeError::Storage(StorageError::Fenced { .. }) => Code::Unavailable,
            RuntimeError::Storage(StorageError::Corrupt { .. }) => Code::DataLoss,
            RuntimeError::Storage(_) | RuntimeError::Engine(_) => Code::Internal,
        }
    }
}

impl From<RuntimeError> for tonic::Status {
    fn from(e: RuntimeError) -> Self {
        tonic::Status::new(e.code(), e.to_string())
    }
}

/// Result alias.
pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;
