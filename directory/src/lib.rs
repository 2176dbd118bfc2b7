//! # tern-directory
//!
//! tern's activation directory: who may run which actor, and which POPs are
//! alive.
//!
//! ## What this crate owns
//! - The rules for claims: every claim is one storage transaction that
//!   gives the actor epoch + 1; a claim is refused while a *live* POP holds
//!   the actor; a release with a stale epoch is refused (fenced).
//! - POP membership: registration (each one a new incarnation, which voids
//!   every activation the POP name held), leases renewed by heartbeats, and
//!   liveness (`now <= lease_until_ms` of the current incarnation).
//! - Migration records, for `tern status`.
//! - One decision core, [`Core`] (module [`core`]): every rule above
//!   lives there once. It is synchronous, speaks only storage records, and
//!   reads time only from [`DirectoryConfig::clock`], so a POP can embed it
//!   in-process and a deterministic simulator can drive it.
//! - The gRPC `DirectoryService` in [`server`] (`tern directory`): a thin
//!   tonic edge over `Arc<Core>`, with a watch stream of activation changes
//!   so POPs can drop cached lookups.
//!
//! ## What it must not know
//! No database: all state lives in `tern-storage`'s record layer ([`Store`](tern_storage::Store)),
//! so restarting the directory loses nothing and the same code runs on
//! sqlite or FoundationDB. No wire types outside [`server`]: protobuf
//! messages are converted at the tonic edge. Nothing about wasm or the
//! runtime.
//!
//! ## Invariants
//! 1. Every granted claim returns an epoch one higher than the last one, and
//!    the store refuses snapshot commits with any other epoch (fencing). The
//!    directory decides only liveness; safety is the store's fence.
//! 2. A claim is refused while another POP holds the actor and that POP's
//!    lease is current. A holder that is the claiming POP itself, unknown,
//!    or whose lease lapsed is taken over.
//! 3. A lease never comes back: once `now > lease_until_ms`, heartbeats of
//!    that incarnation answer `alive = false` and renew nothing; the POP must
//!    register again (a new incarnation). This monotonicity is what lets a
//!    claim read the holder's liveness outside the claim transaction.
//! 4. Registering voids every activation held by that POP name (each
//!    released at its current epoch), before the new incarnation can claim.
//! 5. Only a registered, alive incarnation may claim.
//! 6. A release with a stale epoch changes nothing.
//! 7. With mTLS on, a POP acts only as itself: Register, Heartbeat and
//!    Claim only under the name in its certificate, Release only of an
//!    activation that POP holds at that epoch (the `server` edge checks,
//!    [`Core::release_held_by`] decides).
//! 8. Everything has a limit: name, endpoint and reason lengths, listing
//!    sizes, watch subscribers and their buffer, the sweep's memory of
//!    announced lapses, and on the server request and reply sizes, requests
//!    and streams per connection, a per-request deadline and keepalives
//!    (constants in [`core`] and [`server`]).

pub mod audit;
pub mod core;
pub mod server;

use tern_storage::StorageError;

pub use crate::core::{Change, ClaimOutcome, Core, DirectoryConfig, Holder, Registered};
pub use server::{serve, serve_core, service};

/// Errors of the directory. [`server`] maps each one to a gRPC code by
/// what the caller should do next (see [`server::grpc_code`]).
#[derive(Debug, Clone, thiserror::Error)]
pub enum DirectoryError {
    /// Another POP holds the actor.
    #[error("{actor} is active at POP `{pop}` (epoch {epoch}); send the call there")]
    HeldElsewhere {
        /// The actor.
        actor: String,
        /// The POP holding it.
        pop: String,
        /// Its epoch.
        epoch: u64,
    },
    /// The store failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The caller's POP incarnation is not alive: its lease lapsed, or a
    /// newer incarnation registered.
    #[error(
        "POP `{pop}` incarnation {incarnation} is not alive ({why}); drop its activations and register again"
    )]
    LeaseLapsed {
        /// The POP.
        pop: String,
        /// The incarnation the caller presented.
        incarnation: u64,
        /// What the directory saw.
        why: String,
    },
    /// The POP never registered (or its record was removed).
    #[error("POP `{pop}` is not registered; register before claiming")]
    UnknownPop {
        /// The POP.
        pop: String,
    },
    /// A release (or other epoch-checked change) with a stale epoch.
    #[error(
        "actor {actor}: epoch {epoch_given} is fenced (current epoch {epoch_current}); this activation is stale, drop it"
    )]
    Fenced {
        /// The actor.
        actor: String,
        /// The epoch presented.
        epoch_given: u64,
        /// The current epoch (0: never claimed).
        epoch_current: u64,
    },
    /// A malformed request (empty name, bad endpoint...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A bounded resource is full (e.g. open watch streams): retry later,
    /// or elsewhere.
    #[error("directory overloaded: {what} at their maximum of {max}; retry later")]
    Overloaded {
        /// What is full.
        what: &'static str,
        /// Its limit.
        max: usize,
    },
    /// The request did not finish within the directory's per-request
    /// deadline (the work may still complete): retry, then re-read.
    #[error("directory request exceeded its deadline of {ms} ms")]
    Deadline {
        /// The deadline, in ms.
        ms: u64,
    },
    /// The authenticated POP asked for something only another POP may do
    /// (register or renew under another name, claim for another POP,
    /// release another POP's activation).
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// The server could not bind, serve, or run a blocking task.
    #[error("directory server: {0}")]
    Server(String),
}

impl DirectoryError {
    /// Converts a storage error, turning its fence into [`DirectoryError::Fenced`].
    pub fn from_storage(e: StorageError) -> DirectoryError {
        match e {
            StorageError::Fenced {
                actor,
                epoch_given,
                epoch_current,
            } => DirectoryError::Fenced {
                actor,
                epoch_given,
                epoch_current,
            },
            StorageError::HeldElsewhere { actor, pop, epoch } => {
                DirectoryError::HeldElsewhere { actor, pop, epoch }
            }
            StorageError::InvalidArgument(m) => DirectoryError::InvalidArgument(m),
            e => DirectoryError::Storage(e),
        }
    }

    /// Whether the same request may succeed if simply retried later.
    pub fn is_retryable(&self) -> bool {
        match self {
            DirectoryError::Storage(e) => e.is_transient(),
            DirectoryError::Overloaded { .. } | DirectoryError::Deadline { .. } => true,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn errors_map_to_codes_by_what_the_caller_does_next() {
        let code = |e: DirectoryError| server::grpc_code(&e);
        let retry = [
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
                detail: "partitioned".into(),
            },
        ];
        for e in retry {
            assert_eq!(code(DirectoryError::from_storage(e)), Code::Unavailable);
        }
        let fenced = StorageError::Fenced {
            actor: "a".into(),
            epoch_given: 1,
            epoch_current: 2,
        };
        assert_eq!(
            code(DirectoryError::from_storage(fenced.clone())),
            Code::FailedPrecondition
        );
        assert_eq!(
            code(DirectoryError::Storage(fenced)),
            Code::FailedPrecondition
        );
        let lapsed = DirectoryError::LeaseLapsed {
            pop: "p".into(),
            incarnation: 1,
            why: "x".into(),
        };
        assert_eq!(code(lapsed), Code::FailedPrecondition);
        assert_eq!(
            code(DirectoryError::UnknownPop { pop: "p".into() }),
            Code::FailedPrecondition
        );
        assert_eq!(
            code(DirectoryError::from_storage(StorageError::InvalidArgument(
                "x".into()
            ))),
            Code::InvalidArgument
        );
        assert_eq!(
            code(DirectoryError::Storage(StorageError::Corrupt {
                key: "k".into(),
                reason: "r".into()
            })),
            Code::Internal
        );
        assert_eq!(
            code(DirectoryError::Overloaded {
                what: "watch subscribers",
                max: 1
            }),
            Code::ResourceExhausted
        );
        assert_eq!(
            code(DirectoryError::Deadline { ms: 5 }),
            Code::DeadlineExceeded
        );
    }

    #[test]
    fn endpoints_must_look_like_http_host_port() {
        for ok in [
            "http://127.0.0.1:7000",
            "https://pop.example:443",
            "http://[::1]:7000",
        ] {
            crate::core::check_endpoint(ok).unwrap();
        }
        for bad in [
            "",
            "127.0.0.1:7000",
            "http://h",
            "http://:1",
            "http://h:0",
            "http://h:x",
            "http://h:1/p",
        ] {
            assert!(crate::core::check_endpoint(bad).is_err(), "{bad}");
        }
    }
}
