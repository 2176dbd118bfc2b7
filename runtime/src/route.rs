//! Routing: where a call runs, decided explicitly.
//!
//! For a call to actor A at POP P:
//! 1. A active at P: run here.
//! 2. Otherwise ask the directory (cached): A active at POP Q: forward to
//!    Q; active nowhere: claim it here and run.
//! 3. A forwarded call is never forwarded again: if A is not active at the
//!    receiver, it answers "not here" and the sender looks up afresh.
//! 4. An owner that decides to move A to the caller persists, releases
//!    and answers "moved"; the sender then claims A.
//!
//! Every call has a deadline (its `grpc-timeout`, else
//! [`CALL_DEADLINE_MS_DEFAULT`]) and routing never waits past it. A
//! forwarding POP waits for the owner's answer; if none comes within
//! `forward_patience_ms` it asks the directory whether the owner still
//! holds A. Once the owner's lease has lapsed, the owner can never run the
//! call (it runs no turn and commits nothing past its lease, and a new
//! claim fences it), so the call is routed to A's new activation. Calls
//! that arrive without an idempotency key get one before their first hop,
//! so even a call the owner ran just before it froze is applied once.

use std::time::Duration;

use tokio::time::Instant;

use crate::directory::Owner;
use crate::error::{ErrorKind, Result, RuntimeError};
use crate::idem::FORWARD_KEY_MARK;
use crate::node::{
    CALL_DEADLINE_MS_DEFAULT, CALL_DEADLINE_MS_MAX, CallOutput, CallRequest, Node, Route,
    check_call,
};
use crate::peers::Forwarded;
use crate::table::{Delivered, Msg};

/// Hops (forwards, moves, stale lookups) a call may take before it fails
/// with UNAVAILABLE.
pub const ROUTE_ATTEMPTS_MAX: usize = 8;

/// How often a forwarding POP asks whether a silent owner still holds the
/// actor, ms.
pub const OWNER_POLL_MS: u64 = 250;

/// How long a forwarding POP waits for an unreachable (or refusing) owner
/// to lose the actor before it tries the owner again, ms: a lease (3 s)
/// and a second.
pub const UNREACHABLE_WAIT_MS: u64 = 4_000;

/// Where routing sent a call.
#[derive(Debug, Clone)]
pub enum Routed {
    /// It ran (here or at the owner).
    Done(CallOutput),
    /// A forwarded call found the actor not active here (`moved_to`: it
    /// moved to the forwarding POP because of this call). Never the
    /// outcome of a call that was not forwarded: a client is never told to
    /// look an actor up again.
    NotHere {
        /// The POP the actor moved to.
        moved_to: Option<String>,
    },
}

/// Where a call should go next.
enum Decision {
    RunHere,
    Forward(Owner),
    NotHere,
}

/// How one hop to an owner ended.
enum Hop {
    Reply(CallOutput),
    NotHere { moved_to: Option<String> },
    OwnerGone,
    Unreachable(RuntimeError),
}

impl Node {
    /// Calls an actor, wherever it is active; activates it here if it is
    /// active nowhere.
    pub async fn call(&self, req: CallRequest) -> Result<CallOutput> {
        self.route(req, Route::default()).await
    }

    /// Routes a call that arrived with `route` (from a client, or a
    /// running turn's `call` import). A forwarded call that finds no
    /// activation fails with [`RuntimeError::NotHere`].
    pub async fn route(&self, req: CallRequest, route: Route) -> Result<CallOutput> {
        let actor = format!("{}/{}", req.actor_type, req.id);
        match self.dispatch(req, route).await? {
            Routed::Done(out) => Ok(out),
            Routed::NotHere { moved_to } => Err(RuntimeError::NotHere { actor, moved_to }),
        }
    }

    /// Routes a call, returning where it went.
    pub async fn dispatch(&self, req: CallRequest, mut route: Route) -> Result<Routed> {
        let span = tracing::debug_span!(
            "route",
            actor = %format!("{}/{}", req.actor_type, req.id),
            method = %req.method,
            pop = %self.inner.name,
        );
        route.span = Some(span.clone());
        tracing::Instrument::instrument(self.dispatch_in_span(req, route), span).await
    }

    async fn dispatch_in_span(&self, mut req: CallRequest, mut route: Route) -> Result<Routed> {
        check_call(&req)?;
        if self
            .inner
            .shutting_down
            .load(std::sync::atomic::Ordering::Acquire)
        {
            return Err(RuntimeError::ShuttingDown);
        }
        let now = Instant::now();
        let deadline = route
            .deadline
            .unwrap_or(now + Duration::from_millis(CALL_DEADLINE_MS_DEFAULT))
            .min(now + Duration::from_millis(CALL_DEADLINE_MS_MAX));
        route.deadline = Some(deadline);
        let key = format!("{}/{}", req.actor_type, req.id);
        if route.chain.contains(&key) {
            let mut names = route.chain.clone();
            names.push(key);
            return Err(RuntimeError::CallCycle(names.join(" -> ")));
        }
        // The type's configuration only: this POP compiles the component
        // when (and if) it activates the actor, not to forward a call.
        let ty = self.type_config(&req.actor_type)?;
        let limit = ty.limits.payload_bytes_max;
        if req.payload.len() as u64 > limit {
            return Err(RuntimeError::PayloadTooLarge {
                what: "request payload",
                size: req.payload.len(),
                limit,
            });
        }
        let forwarded = route.via.is_some();
        let started = Instant::now();
        let mut moved_from: Option<String> = None;
        let mut last_err: Option<RuntimeError> = None;
        for _ in 0..ROUTE_ATTEMPTS_MAX {
            if Instant::now() >= deadline {
                return Err(RuntimeError::DeadlineExceeded(format!(
                    "{key}: the call's deadline passed while routing it{}",
                    last_err
                        .map(|e| format!(" (last: {e})"))
                        .unwrap_or_default()
                )));
            }
            match self.decide(&key, forwarded).await? {
                Decision::NotHere => return Ok(Routed::NotHere { moved_to: None }),
                Decision::RunHere => {
                    match self.run_here(&key, &req, &ty, &route, deadline).await? {
                        Delivered::Reply(r) => {
                            let out = r?;
                            if let Some(from) = moved_from {
                                self.record_migration(&key, &from, started).await;
                            }
                            return Ok(Routed::Done(out));
                        }
                        Delivered::Held(owner) => {
                            if forwarded {
                                return Ok(Routed::NotHere { moved_to: None });
                            }
                            tracing::debug!(actor = %key, owner = %owner.pop, "held elsewhere; forwarding");
                        }
                        Delivered::Moved(to) => {
                            // Only a forwarding POP is told to look again
                            // (an activation moves only for a forwarded
                            // call); a client's call is routed anew.
                            if forwarded {
                                return Ok(Routed::NotHere { moved_to: Some(to) });
                            }
                            self.inner.dir.invalidate(&key);
                        }
                    }
                }
                Decision::Forward(owner) => {
                    if req.idempotency_key.is_none() {
                        req.idempotency_key = Some(self.forward_key());
                    }
                    let hop = self.hop(&key, &owner, &req, &route, deadline);
                    let span = tracing::debug_span!("forward", to = %owner.pop);
                    match tracing::Instrument::instrument(hop, span).await? {
                        Hop::Reply(out) => return Ok(Routed::Done(out)),
                        Hop::NotHere { moved_to } => {
                            self.inner.dir.invalidate(&key);
                            if moved_to.is_some() {
                                moved_from = Some(owner.pop.clone());
                            }
                        }
                        Hop::OwnerGone => {
                            metrics::counter!("tern_calls_rerouted_total").increment(1);
                            tracing::warn!(actor = %key, owner = %owner.pop, "the owner stopped answering and lost its lease; routing the call to the actor's new activation");
                            self.inner.dir.invalidate(&key);
                        }
                        Hop::Unreachable(e) => {
                            // Dead, restarting or refusing: wait (bounded)
                            // for its lease to lapse, then route again. The
                            // call's key makes a second hop safe.
                            tracing::debug!(actor = %key, owner = %owner.pop, error = %e, "owner unreachable; waiting for it to lose the actor");
                            last_err = Some(e);
                            let wait = (Instant::now()
                                + Duration::from_millis(UNREACHABLE_WAIT_MS))
                            .min(deadline);
                            let _ = self.owner_lost(&key, &owner, wait, Duration::ZERO).await;
                            self.inner.dir.invalidate(&key);
                        }
                    }
                }
            }
        }
        Err(last_err.unwrap_or_else(|| {
            RuntimeError::Transport(format!(
                "routing {key} did not settle after ROUTE_ATTEMPTS_MAX = {ROUTE_ATTEMPTS_MAX} attempts (the actor is moving); retry"
            ))
        }))
    }

    /// A fresh idempotency key for a call that came without one, so its
    /// hops can be retried safely: this POP's name (hashed), when this
    /// node started (a restarted POP never repeats an earlier life's keys,
    /// even with seeded randomness), and 128 random bits.
    pub(crate) fn forward_key(&self) -> String {
        let e = &self.inner.world.entropy;
        let pop = <sha2::Sha256 as sha2::Digest>::digest(self.inner.name.as_bytes());
        format!(
            "{FORWARD_KEY_MARK}{}/{:x}/{:016x}{:016x}",
            hex::encode(&pop[..4]),
            self.inner.started_wall_ms,
            e.next_u64(),
            e.next_u64()
        )
    }

    async fn decide(&self, key: &str, forwarded: bool) -> Result<Decision> {
        if self.inner.table.contains(key) {
            return Ok(Decision::RunHere);
        }
        let owner = self.inner.dir.lookup(key, forwarded).await?;
        Ok(match owner {
            Some(o) if o.pop != self.inner.name => {
                if forwarded {
                    Decision::NotHere
                } else {
                    self.inner.peers.learn(&o.endpoint);
                    Decision::Forward(o)
                }
            }
            Some(_) => Decision::RunHere,
            None if forwarded => Decision::NotHere,
            None => Decision::RunHere,
        })
    }

    /// Runs a call on the local activation, creating it if needed.
    async fn run_here(
        &self,
        key: &str,
        req: &CallRequest,
        ty: &crate::config::TypeConfig,
        route: &Route,
        deadline: Instant,
    ) -> Result<Delivered> {
        let run = async {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let msg = Msg::Call {
                req: req.clone(),
                route: Box::new(route.clone()),
                reply: tx,
            };
            self.deliver(key, &req.actor_type, &req.id, ty, msg).await?;
            // Every path of an activation answers its queued calls; a
            // dropped reply means its task panicked, or that this POP is
            // going down (a crash or shutdown ends activations mid-call:
            // that is no internal error, the caller retries elsewhere).
            rx.await.map_err(|_| {
                if self.inner.shutting_down.load(std::sync::atomic::Ordering::Acquire) {
                    RuntimeError::ShuttingDown
                } else {
                    RuntimeError::Internal(format!(
                        "the activation of {key} ended without answering (its task panicked); it was removed and the next call restores the actor from the store"
                    ))
                }
            })
        };
        tokio::time::timeout_at(deadline, run).await.unwrap_or_else(|_| {
            Err(RuntimeError::DeadlineExceeded(format!(
                "{key}: the call's deadline passed before its turn finished; its outcome is unknown, retry with the same idempotency key"
            )))
        })
    }

    /// One hop to `owner`: waits for its answer, and stops waiting once
    /// the owner has lost the actor (its lease lapsed) or the deadline
    /// passes.
    async fn hop(
        &self,
        key: &str,
        owner: &Owner,
        req: &CallRequest,
        route: &Route,
        deadline: Instant,
    ) -> Result<Hop> {
        let rpc = self.inner.peers.forward(owner, req, route);
        let patience = Duration::from_millis(self.inner.cfg.forward_patience_ms);
        let lapse = self.owner_lost(key, owner, deadline, patience);
        tokio::select! {
            biased;
            r = rpc => match r {
                Ok(Forwarded::Reply(out)) => Ok(Hop::Reply(out)),
                Ok(Forwarded::NotHere { moved_to }) => Ok(Hop::NotHere { moved_to }),
                Err(e @ RuntimeError::Transport(_)) => Ok(Hop::Unreachable(e)),
                // The owner is shutting down or lost its lease.
                Err(e @ RuntimeError::Remote { kind: ErrorKind::Unavailable, .. }) => {
                    Ok(Hop::Unreachable(e))
                }
                Err(e) => Err(e),
            },
            r = lapse => r.map(|()| Hop::OwnerGone),
        }
    }

    /// Resolves once the directory no longer lists `owner` as holding
    /// `key` (checked after `patience`, then every [`OWNER_POLL_MS`]);
    /// fails at `deadline`.
    async fn owner_lost(
        &self,
        key: &str,
        owner: &Owner,
        deadline: Instant,
        patience: Duration,
    ) -> Result<()> {
        tokio::time::sleep_until((Instant::now() + patience).min(deadline)).await;
        loop {
            if Instant::now() >= deadline {
                return Err(RuntimeError::DeadlineExceeded(format!(
                    "{key}: POP {} holds the actor but did not answer within the call's deadline",
                    owner.pop
                )));
            }
            match self.inner.dir.lookup(key, true).await {
                Ok(Some(o)) if o == *owner => {}
                Ok(_) => return Ok(()),
                Err(e) => {
                    tracing::debug!(actor = key, error = %e, "lookup while waiting on a silent owner failed")
                }
            }
            let next = Instant::now() + Duration::from_millis(OWNER_POLL_MS);
            tokio::time::sleep_until(next.min(deadline)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::clock::{Clock, World};
    use crate::{Node, TernEngine};

    struct At(u64);
    impl Clock for At {
        fn wall_ms(&self) -> u64 {
            self.0
        }
    }

    /// Found by the simulator (seed 23): a restarted POP with seeded
    /// randomness repeated its earlier life's forwarding keys, and an owner
    /// replayed an old reply to a new call.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn forward_keys_differ_across_restarts_with_the_same_seed() {
        let engine = TernEngine::new().unwrap();
        let node_at = |ms: u64| {
            Node::builder("p", tern_storage::Store::memory(), engine.clone())
                .world(World::seeded(Arc::new(At(ms)), 7))
                .start()
                .unwrap()
        };
        let first = node_at(1_000).forward_key();
        let again = node_at(1_000).forward_key();
        let restarted = node_at(5_000).forward_key();
        assert_eq!(first, again, "the same seed and start give the same key");
        assert_ne!(first, restarted, "a later life never repeats a key");
        assert!(first.len() <= crate::idem::IDEMPOTENCY_KEY_BYTES_MAX);
    }
}
