//! tern's activation directory.
//!
//! It owns the rules for who may run an actor: claims with epochs, lookups
//! and releases. Every decision is one storage transaction, so the store's
//! fencing check (a snapshot commit must carry the current epoch) is the
//! safety net and this crate only decides liveness.
//!
//! It must not know wire types (a gRPC front end lives with the service) nor
//! any database (it talks to `tern-storage`'s record layer).
//!
//! Invariants:
//! - every successful claim returns an epoch one higher than the last one;
//! - a claim is refused while another POP holds the actor, unless the holder
//!   is an earlier incarnation of the claiming POP itself;
//! - a release with a stale epoch changes nothing.

use tern_storage::{ActivationRecord, StorageError, Store};

/// Errors of the directory.
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
