//! The runtime's one error type, and its mapping to gRPC status codes.

use std::path::PathBuf;
use std::process::ExitStatus;

use tern_storage::StorageError;

use crate::build::GUEST_TARGET;

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
    /// A forwarded call reached a POP where the actor is not active (a
    /// stale cache, or the actor just moved); the sender looks it up again.
    #[error("{actor} is not active at this POP{}; look it up again", moved_to.as_ref().map(|p| format!(" (it moved to {p})")).unwrap_or_default())]
    NotHere {
        /// The actor.
        actor: String,
        /// The POP it moved to, when it moved because of this call.
        moved_to: Option<String>,
    },
    /// Another live POP holds the actor (routing; callers forward).
    #[error("{actor} is active at POP {pop} ({endpoint}); forward the call there")]
    HeldElsewhere {
        /// The actor.
        actor: String,
        /// The POP.
        pop: String,
        /// Its endpoint.
        endpoint: String,
        /// Its epoch.
        epoch: u64,
    },
    /// An error from another POP, passed through with its code.
    #[error("{message}")]
    Remote {
        /// The remote gRPC code.
        code: tonic::Code,
        /// The remote message.
        message: String,
    },
    /// This POP's directory lease lapsed; it serves no actors until it
    /// registers again.
    #[error(
        "this POP lost its directory lease ({0}); retry the call, another POP will take the actor"
    )]
    LeaseLost(String),
    /// The node is shutting down.
    #[error("this POP is shutting down; retry at another POP")]
    ShuttingDown,
    /// A storage failure.
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    /// `cargo` (or `rustc`) could not be started.
    #[error("could not run `{program}`: {source}")]
    BuildSpawn {
        /// The program.
        program: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// `crate_dir` has no `Cargo.toml`.
    #[error("{0} is not a cargo crate (no Cargo.toml)")]
    NotACrate(PathBuf),
    /// `cargo metadata` failed or said something unexpected.
    #[error("`cargo metadata` for {dir} failed: {message}")]
    CargoMetadata {
        /// The crate directory.
        dir: PathBuf,
        /// What went wrong (cargo's stderr or a parse error).
        message: String,
    },
    /// The crate has no `cdylib` library target.
    #[error(
        "crate `{package}` is not a cdylib, so it cannot be built into a component: \
         add `[lib] crate-type = [\"cdylib\", \"rlib\"]` to {manifest}"
    )]
    NotCdylib {
        /// The package name.
        package: String,
        /// Its Cargo.toml.
        manifest: PathBuf,
    },
    /// The `wasm32-wasip2` standard library is not installed.
    #[error(
        "the `{GUEST_TARGET}` target is not installed for this toolchain: \
         run `rustup target add {GUEST_TARGET}`"
    )]
    TargetMissing,
    /// cargo reported a failed build (its diagnostics went to stderr).
    #[error(
        "`cargo build --target {GUEST_TARGET}` of `{package}` failed ({status}); see cargo's output above"
    )]
    CargoFailed {
        /// The package name.
        package: String,
        /// cargo's exit status.
        status: ExitStatus,
    },
    /// cargo succeeded but reported no `.wasm` file for the cdylib.
    #[error("`cargo build` of `{package}` succeeded but reported no .wasm artifact for its cdylib")]
    NoArtifact {
        /// The package name.
        package: String,
    },
    /// Reading cargo's output failed.
    #[error("reading cargo's output: {0}")]
    BuildIo(#[from] std::io::Error),
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
            RuntimeError::Remote { code, .. } => *code,
            RuntimeError::Superseded { .. }
            | RuntimeError::NotHere { .. }
            | RuntimeError::HeldElsewhere { .. }
            | RuntimeError::LeaseLost(_)
            | RuntimeError::ShuttingDown
            | RuntimeError::Transport(_) => Code::Unavailable,
            RuntimeError::Storage(e) if e.is_retryable() => Code::Unavailable,
            RuntimeError::Storage(StorageError::Fenced { .. }) => Code::Unavailable,
            RuntimeError::Storage(StorageError::Corrupt { .. }) => Code::DataLoss,
            RuntimeError::NotACrate(_) | RuntimeError::NotCdylib { .. } => Code::InvalidArgument,
            RuntimeError::TargetMissing
            | RuntimeError::CargoFailed { .. }
            | RuntimeError::CargoMetadata { .. }
            | RuntimeError::NoArtifact { .. } => Code::FailedPrecondition,
            RuntimeError::Storage(_)
            | RuntimeError::Engine(_)
            | RuntimeError::BuildSpawn { .. }
            | RuntimeError::BuildIo(_) => Code::Internal,
        }
    }
}

/// gRPC metadata key marking a "not here" answer to a forwarded call.
pub const NOT_HERE_METADATA: &str = "x-tern-not-here";

impl From<RuntimeError> for tonic::Status {
    fn from(e: RuntimeError) -> Self {
        let mut status = tonic::Status::new(e.code(), e.to_string());
        if let RuntimeError::NotHere { moved_to, .. } = &e {
            let v = moved_to.clone().unwrap_or_default();
            if let Ok(v) = v.parse() {
                status.metadata_mut().insert(NOT_HERE_METADATA, v);
            }
        }
        status
    }
}

impl RuntimeError {
    /// The error a forwarding POP reconstructs from a peer's status.
    pub fn from_peer(actor: &str, s: tonic::Status) -> RuntimeError {
        if let Some(v) = s.metadata().get(NOT_HERE_METADATA) {
            let to = v.to_str().unwrap_or_default().to_string();
            return RuntimeError::NotHere {
                actor: actor.to_string(),
                moved_to: (!to.is_empty()).then_some(to),
            };
        }
        match s.code() {
            tonic::Code::Unknown | tonic::Code::Cancelled | tonic::Code::DeadlineExceeded => {
                RuntimeError::Transport(format!("{actor}: {}", s.message()))
            }
            code => RuntimeError::Remote {
                code,
                message: s.message().to_string(),
            },
        }
    }
}

/// Result alias.
pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;
