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
//! - Two front ends over the same store: the in-process [`Directory`] used
//!   by a single-POP runtime, and the gRPC `DirectoryService` in
//!   [`server`] (`tern directory`), with a watch stream of activation
//!   changes so POPs can drop cached lookups.
//!
//! ## What it must not know
//! No database: all state lives in `tern-storage`'s record layer ([`Store`]),
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
//! 5. Only a registered, alive incarnation may claim (service only).
//! 6. A release with a stale epoch changes nothing.

pub mod server;

use tern_storage::{ActivationRecord, StorageError, Store};

pub use server::{DirectoryConfig, serve, service};

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
    /// The holder of an actor kept changing while a claim was decided.
    #[error("actor {actor}: its holder changed {attempts} times during the claim; retry")]
    Contended {
        /// The actor.
        actor: String,
        /// Attempts made.
        attempts: u32,
    },
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
            DirectoryError::Storage(e) => {
                e.is_retryable() || matches!(e, StorageError::RetriesExhausted { .. })
            }
            DirectoryError::Contended { .. } => true,
            _ => false,
        }
    }
}

/// A granted claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    /// The new epoch; every snapshot commit must carry it.
    pub epoch: u64,
    /// The actor's snapshot head at the time of the claim.
    pub head_seq: u64,
}

/// The directory as seen by one POP.
#[derive(Clone)]
pub struct Directory {
    store: Store,
    pop: String,
}

impl Directory {
    /// A directory over `store`, acting for POP `pop`.
    pub fn new(store: Store, pop: impl Into<String>) -> Directory {
        Directory {
            store,
            pop: pop.into(),
        }
    }

    /// The POP this directory acts for.
    pub fn pop(&self) -> &str {
        &self.pop
    }

    /// Claims `actor` for this POP with a new epoch.
    pub fn claim(&self, actor: &str, now_ms: u64) -> Result<Claim, DirectoryError> {
        let me = self.pop.clone();
        let rec = self
            .store
            .claim(actor, &self.pop, now_ms, &|held: &ActivationRecord| {
                // An earlier incarnation of this very POP (say, before a
                // crash) holds it: that incarnation is gone.
                held.pop == me
            });
        match rec {
            Ok(rec) => Ok(Claim {
                epoch: rec.epoch,
                head_seq: rec.head_seq,
            }),
            Err(StorageError::HeldElsewhere { pop, epoch, .. }) => {
                Err(DirectoryError::HeldElsewhere {
                    actor: actor.to_string(),
                    pop,
                    epoch,
                })
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Releases `actor` if `epoch` is still current.
    pub fn release(&self, actor: &str, epoch: u64) -> Result<(), DirectoryError> {
        Ok(self.store.release(actor, epoch)?)
    }

    /// Where `actor` is active, if anywhere.
    pub fn lookup(&self, actor: &str) -> Result<Option<ActivationRecord>, DirectoryError> {
        Ok(self.store.get_activation(actor)?.filter(|r| r.active))
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
                last: Box::new(StorageError::NotCommitted),
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
            code(DirectoryError::Contended {
                actor: "a".into(),
                attempts: 4
            }),
            Code::Unavailable
        );
    }

    #[test]
    fn endpoints_must_look_like_http_host_port() {
        for ok in [
            "http://127.0.0.1:7000",
            "https://pop.example:443",
            "http://[::1]:7000",
        ] {
            server::check_endpoint(ok).unwrap();
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
            assert!(server::check_endpoint(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn local_directory_claims_and_releases() {
        let d = Directory::new(Store::memory(), "solo");
        let c = d.claim("a", 1).unwrap();
        assert_eq!(c.epoch, 1);
        assert_eq!(d.lookup("a").unwrap().unwrap().pop, "solo");
        assert!(d.release("a", 0).is_err());
        d.release("a", 1).unwrap();
        assert!(d.lookup("a").unwrap().is_none());
    }
}
