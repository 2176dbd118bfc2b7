//! One active actor: its mailbox loop, its turns and their commits.
//!
//! Each activation has one tokio task that takes messages from a bounded
//! mailbox, so it runs one turn at a time. The guest itself never runs on
//! the task: restores and turns are shipped to the [`TurnPool`] with the
//! activation's virtual time (fair scheduling), and come back with the
//! CPU time they used. After a turn the changed pages are folded into the
//! baseline; in `turn` durability they are committed through the group
//! committer before the reply is released. A trap drops the instance: the
//! next turn re-instantiates from the baseline. An actor idle for
//! `idle_ms` is persisted, released and removed.
//!
//! [`TurnPool`]: crate::turnpool::TurnPool

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tern_storage::{CommitRequest, SnapshotMeta};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::config::Durability;
use crate::directory::{ClaimOutcome, MigrationInfo};
use crate::engine::ENGINE_VERSION;
use crate::error::{Result, RuntimeError};
use crate::idem::{
    Applied, CLIENT_PREFIX, FORWARD_KEY_MARK, FORWARD_KEYS_RETENTION, FORWARD_PREFIX,
    IDEM_PENDING_BYTES_MAX, IdemTable, Outcome, Retention, fingerprint,
};
use crate::instance::{ActorInstance, InstanceParams, TurnInput, TurnOutput, guest_error};
use crate::node::{ActorType, CallOutput, CallRequest, Node, Route};
use crate::outbox::{ALARM_METHOD, Outbox, WAKE_METHOD};
use crate::snapshot::{Baseline, Delta};
use crate::table::{Delivered, Handle, Msg};

/// An actor moved to another version (or kept on its own when that failed).
struct Upgraded {
    ty: Arc<ActorType>,
    params: InstanceParams,
    instance: ActorInstance,
    baseline: Baseline,
}

/// One active actor, owned by its task (and lent to a turn thread for
/// each turn).
pub(crate) struct Activation {
    key: String,
    ty: Arc<ActorType>,
    params: InstanceParams,
    epoch: u64,
    head_seq: u64,
    /// `None` after a trap: rebuilt from the baseline on the next turn.
    instance: Option<ActorInstance>,
    baseline: Baseline,
    /// Client idempotency keys.
    idem: IdemTable,
    /// Keys forwarding POPs gave unkeyed calls (kept briefly, apart).
    fwd: IdemTable,
    /// POPs the most recent calls came through, oldest first.
    recent_pops: Vec<String>,
    last_turn: Instant,
    /// CPU time used, ns: this activation's virtual time in the turn pool.
    vtime: u64,
    /// CPU time its turns usually take, ns (a moving average).
    cost: u64,
    /// Its alarms and event numbering (see [`crate::outbox`]).
    outbox: Outbox,
    /// The alarm the current turn delivers, if it is an alarm's turn.
    firing: Option<u64>,
    /// Its last turns, for an inspector (at most `LAST_TURNS_KEPT`).
    last_turns: std::collections::VecDeque<crate::node::TurnInfo>,
}

fn retention(ty: &ActorType) -> Retention {
    Retention {
        ms: ty.config.limits.idempotency_ms,
        keys_max: ty.config.limits.idempotency_keys_max as usize,
    }
}

/// The CPU a turn of an actor not yet seen is assumed to take, ns: its
/// whole budget, so a newcomer never runs ahead of actors known to be light.
/// Each turn halves the distance to what the actor really uses.
fn unknown_cost(limits: &crate::config::Limits) -> u64 {
    limits.turn_cpu_ms_max.saturating_mul(1_000_000)
}

/// An instance restored from `baseline`, its writes tracked from now on
/// (so the first turn's absorb compares only the pages it wrote).
fn instance_from(
    engine: &wasmtime::Engine,
    prep: &crate::instance::Prepared,
    params: &InstanceParams,
    baseline: &mut Baseline,
) -> Result<ActorInstance> {
    let inst =
        ActorInstance::restored(engine, prep, params, baseline.images(), baseline.globals())?;
    // SAFETY: the instance was just created; no guest code runs.
    unsafe { baseline.track(inst.memories()) };
    Ok(inst)
}

/// Where an activation's state comes from.
enum Restore {
    /// The store's head snapshot, read whole.
    Store(tern_storage::LoadedSnapshot),
    /// The memory this POP kept when it evicted the actor, which is the
    /// store's head `SnapshotHead` (read without its pages).
    Kept(
        tern_storage::SnapshotHead,
        Box<crate::hibernate::Hibernated>,
    ),
}

/// A restored actor's idempotency tables (callers' keys, forwarded
/// calls) from its snapshot's side records.
fn idem_tables(extra: &[(String, Vec<u8>)], ty: &ActorType, now_ms: u64) -> (IdemTable, IdemTable) {
    (
        IdemTable::restore(CLIENT_PREFIX, extra, retention(ty), now_ms),
        IdemTable::restore(FORWARD_PREFIX, extra, FORWARD_KEYS_RETENTION, now_ms),
    )
}

fn internal_after_panic(key: &str, what: &str, msg: &str) -> RuntimeError {
    RuntimeError::Internal(format!(
        "the activation of {key} panicked during {what} ({msg}); it was removed and the next call restores the actor from the store"
    ))
}

/// Fails every queued call with `err()`, closing the mailbox. After
/// `close`, `recv` returns every message already sent (including sends
/// racing with the close) and then `None`.
async fn fail_queued(rx: &mut mpsc::Receiver<Msg>, err: impl Fn() -> Delivered) {
    rx.close();
    while let Some(m) = rx.recv().await {
        if let Msg::Call { reply, .. } = m {
            let _ = reply.send(err());
        }
    }
}

/// Fails every queued call with (a copy of) `e`, keeping its kind and
/// message.
async fn fail_queued_with(rx: &mut mpsc::Receiver<Msg>, e: &RuntimeError) {
    let (kind, message) = (e.kind(), e.to_string());
    fail_queued(rx, || {
        Delivered::Reply(Err(RuntimeError::Remote {
            kind,
            message: message.clone(),
        }))
    })
    .await;
}

/// The call that asked an activation to move to its caller's POP. Its
/// answer comes once the actor is persisted and released; on every other
/// way out (the lease lost meanwhile, a crash) it is answered on drop, so
/// that no caller ever waits on a reply nobody will send.
struct PendingMove {
    reply: Option<tokio::sync::oneshot::Sender<Delivered>>,
    to: String,
}

impl PendingMove {
    fn answer(mut self, d: Delivered) {
        if let Some(r) = self.reply.take() {
            let _ = r.send(d);
        }
    }
}

impl Drop for PendingMove {
    fn drop(&mut self) {
        if let Some(r) = self.reply.take() {
            let _ = r.send(Delivered::Reply(Err(RuntimeError::LeaseLost(
                "the activation ended before it could move to the caller's POP; retry the call"
                    .into(),
            ))));
        }
    }
}

/// Persist attempts at eviction before the activation gives up.
const EVICT_PERSIST_ATTEMPTS: u32 = 3;

impl Node {
    pub(crate) async fn run_activation(
        &self,
        actor_type: String,
        id: String,
        handle: Arc<Handle>,
        mut rx: mpsc::Receiver<Msg>,
        origin: tracing::Span,
    ) {
        let key = handle.key.clone();
        let started = Instant::now();
        handle.busy.store(true, Ordering::Release);
        let claim_span = tracing::debug_span!(parent: &origin, "claim", actor = %key);
        let claim =
            match tracing::Instrument::instrument(self.inner.dir.claim(&key), claim_span).await {
                Ok(ClaimOutcome::Granted { epoch, head_seq }) => (epoch, head_seq),
                Ok(ClaimOutcome::Held(o)) => {
                    // Every queued caller re-routes to the holder.
                    self.inner.peers.learn(&o.endpoint);
                    fail_queued(&mut rx, || Delivered::Held(o.clone())).await;
                    return;
                }
                Err(e) => {
                    tracing::warn!(actor = %key, error = %e, "claim failed");
                    fail_queued_with(&mut rx, &e).await;
                    return;
                }
            };
        let node = self.clone();
        let (at, idc) = (actor_type.clone(), id.clone());
        let vclock = self.inner.turns.vclock();
        // A restore is unknown work: scheduled like a turn of a heavy actor.
        let cost = self
            .type_config(&actor_type)
            .map(|c| unknown_cost(&c.limits))
            .unwrap_or(0);
        let restore = tracing::debug_span!(parent: &origin, "restore", actor = %key);
        // The activation outlives the call that made it: holding its span
        // would keep that call's trace open.
        drop(origin);
        let act = self
            .inner
            .turns
            .run(vclock, cost, move || {
                restore.in_scope(|| node.activate(&at, &idc, claim))
            })
            .await;
        let mut act = match act {
            Ok((Ok(a), _)) => Box::new(a),
            Ok((Err(e), _)) => {
                tracing::warn!(actor = %key, error = %e, "activation failed");
                let _ = self.inner.dir.release(&key, claim.0).await;
                fail_queued_with(&mut rx, &e).await;
                return;
            }
            Err(p) => {
                tracing::error!(actor = %key, panic = %p.0, "restore panicked");
                let _ = self.inner.dir.release(&key, claim.0).await;
                fail_queued(&mut rx, || {
                    Delivered::Reply(Err(internal_after_panic(&key, "restore", &p.0)))
                })
                .await;
                return;
            }
        };
        self.inner.table.set_resident(&handle, act.resident_bytes());
        handle
            .version
            .store(act.ty.config.version.max(1), Ordering::Release);
        metrics::histogram!("tern_activation_seconds").record(started.elapsed().as_secs_f64());
        tracing::debug!(actor = %key, epoch = act.epoch, "activated");
        handle.busy.store(false, Ordering::Release);
        let idle = Duration::from_millis(act.ty.config.limits.idle_ms);
        let mut closing = false;
        let mut moved: Option<PendingMove> = None;
        // One idle timer per activation, re-armed only when it fires early.
        let idle_timer = tokio::time::sleep(idle);
        tokio::pin!(idle_timer);
        // The next alarm's timer, re-armed before every wait.
        let alarm_timer = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(alarm_timer);
        // Whether a call ran since the last alarm: a due alarm then goes
        // before the next queued call, so a busy mailbox delays an alarm by
        // at most one turn (and alarms, taking turns with calls, cannot
        // starve them either).
        let mut call_since_alarm = false;
        loop {
            let mut alarm_next = None;
            let mut alarm_due = None;
            if !closing && let Some((at_ms, id)) = act.outbox.next_alarm() {
                let now_ms = self.now_ms();
                let wait = Duration::from_millis(at_ms.saturating_sub(now_ms));
                alarm_timer.as_mut().reset(Instant::now() + wait);
                alarm_next = Some(id);
                if at_ms <= now_ms && call_since_alarm {
                    alarm_due = Some(id);
                }
            }
            let msg = if closing {
                rx.recv().await
            } else if let Some(id) = alarm_due {
                Some(Msg::Alarm(id))
            } else {
                tokio::select! {
                    biased;
                    m = rx.recv() => m,
                    () = &mut alarm_timer, if alarm_next.is_some() => {
                        Some(Msg::Alarm(alarm_next.expect("the branch runs only when armed")))
                    }
                    () = &mut idle_timer => {
                        let deadline = act.last_turn + idle;
                        if deadline > Instant::now() {
                            idle_timer.as_mut().reset(deadline);
                            continue;
                        }
                        None
                    }
                }
            };
            let Some(msg) = msg else {
                if closing {
                    break;
                }
                // Idle (or every sender gone): stop taking calls, then run
                // what is already queued before persisting.
                closing = true;
                rx.close();
                continue;
            };
            handle.busy.store(true, Ordering::Release);
            match msg {
                Msg::Alarm(id) => {
                    call_since_alarm = false;
                    let (back, fatal) = self.fire_alarm(act, id).await;
                    let Some(back) = back else {
                        self.end_after_turn_panic(&mut rx, &key, claim.0).await;
                        return;
                    };
                    act = back;
                    self.inner.table.set_resident(&handle, act.resident_bytes());
                    if fatal {
                        self.end_after_commit_failure(&mut rx, &key, act.epoch)
                            .await;
                        return;
                    }
                }
                Msg::Evict => {
                    closing = true;
                    rx.close();
                }
                Msg::Panic => panic!("fault injected: the activation of {key} panics"),
                Msg::Abandon => {
                    tracing::warn!(actor = %key, "activation abandoned: lease lost");
                    fail_queued(&mut rx, || {
                        Delivered::Reply(Err(RuntimeError::LeaseLost("abandoned".into())))
                    })
                    .await;
                    return;
                }
                Msg::Inspect { reply } => {
                    let _ = reply.send(crate::node::Inspection {
                        epoch: act.epoch,
                        version: act.ty.config.version.max(1),
                        memory_bytes: act.baseline.lens().iter().map(|l| *l as u64).sum(),
                        last_turns: act.last_turns.iter().cloned().collect(),
                    });
                }
                Msg::Images { reply } => {
                    let _ = reply.send((
                        act.baseline.images().to_vec(),
                        act.baseline.globals().to_vec(),
                    ));
                }
                Msg::Call { req, route, reply } => {
                    if !self.lease_ok() {
                        let _ = reply.send(Delivered::Reply(Err(RuntimeError::LeaseLost(
                            "lease expired by the POP's own clock".into(),
                        ))));
                        fail_queued(&mut rx, || {
                            Delivered::Reply(Err(RuntimeError::LeaseLost(
                                "lease expired by the POP's own clock".into(),
                            )))
                        })
                        .await;
                        return;
                    }
                    if route.deadline.is_some_and(|d| d <= Instant::now()) {
                        let _ = reply.send(Delivered::Reply(Err(RuntimeError::DeadlineExceeded(
                            format!(
                                "{key}: the call's deadline passed while it waited in the mailbox"
                            ),
                        ))));
                        handle.busy.store(false, Ordering::Release);
                        continue;
                    }
                    let caller_pop = route.via.clone().unwrap_or_else(|| self.inner.name.clone());
                    let idle_ms = act.last_turn.elapsed().as_millis() as u64;
                    act.recent_pops.push(caller_pop.clone());
                    let window = act.ty.config.placement.window.max(1) as usize;
                    if act.recent_pops.len() > window {
                        act.recent_pops.remove(0);
                    }
                    if !closing
                        && route.via.is_some()
                        && act.ty.config.placement.should_move(
                            &act.recent_pops,
                            idle_ms,
                            &self.inner.name,
                        )
                    {
                        // Move to the caller's POP: persist, release, then
                        // tell the caller to claim it.
                        closing = true;
                        rx.close();
                        moved = Some(PendingMove {
                            reply: Some(reply),
                            to: caller_pop,
                        });
                        continue;
                    }
                    call_since_alarm = true;
                    let (back, res, fatal) = self.turn(act, &req, *route).await;
                    let Some(back) = back else {
                        // The turn panicked on its thread: the activation
                        // is gone.
                        let _ = reply.send(Delivered::Reply(res));
                        self.end_after_turn_panic(&mut rx, &key, claim.0).await;
                        return;
                    };
                    act = back;
                    // Idle again before the caller hears back, so its next
                    // call finds this activation evictable if need be.
                    handle.busy.store(false, Ordering::Release);
                    let _ = reply.send(Delivered::Reply(res));
                    handle
                        .last_used_ms
                        .store(self.since_start_ms(), Ordering::Release);
                    self.inner.table.set_resident(&handle, act.resident_bytes());
                    if fatal {
                        self.end_after_commit_failure(&mut rx, &key, act.epoch)
                            .await;
                        return;
                    }
                    self.shed_if_over(&key);
                }
            }
            handle.busy.store(false, Ordering::Release);
        }
        let epoch = act.epoch;
        let (mut left, mut persisted) = self.persist_off_worker(act).await;
        for attempt in 1..EVICT_PERSIST_ATTEMPTS {
            match (left, &persisted) {
                (Some(act), Err(e))
                    if e.kind() == crate::error::ErrorKind::Unavailable
                        && !matches!(e, RuntimeError::Superseded { .. }) =>
                {
                    tracing::warn!(actor = %key, error = %e, attempt, "persist on eviction failed; retrying");
                    tokio::time::sleep(Duration::from_millis(50 << attempt)).await;
                    (left, persisted) = self.persist_off_worker(act).await;
                }
                (l, _) => {
                    left = l;
                    break;
                }
            }
        }
        if let Err(e) = &persisted {
            tracing::error!(actor = %key, error = %e, "persist on eviction failed; changes since the last commit are lost");
        }
        // An actor that leaves for another POP is not kept; nor is one
        // whose last changes are not in the store.
        if let Some(act) = left
            && persisted.is_ok()
            && moved.is_none()
            && self.inner.hibernation.enabled()
        {
            let vclock = self.inner.turns.vclock();
            let (node, k) = (self.clone(), key.clone());
            // Kept before the release, so that a claim right after it at
            // this POP finds the memory; on a turn thread, where the
            // memories that make room for it are released (zeroed).
            let kept = self
                .inner
                .turns
                .run(vclock, 0, move || {
                    if let Some(kept) = (*act).hibernate() {
                        node.inner.hibernation.put(k, kept);
                    }
                })
                .await;
            if let Err(p) = kept {
                tracing::error!(actor = %key, panic = %p.0, "keeping an evicted actor's memory panicked; it is not kept");
            }
        }
        if let Err(e) = self.inner.dir.release(&key, epoch).await {
            tracing::warn!(actor = %key, error = %e, "release failed");
        }
        // Off the call path: drop pages no manifest needs and stages an
        // earlier owner left behind when it crashed mid-commit.
        let store = self.inner.store.clone();
        let k = key.clone();
        let gc = move || {
            let collected = match store.needs_gc(&k) {
                Ok(false) => return,
                Ok(true) => store.gc_snapshots(&k).map(|_| ()),
                Err(e) => Err(e),
            };
            if let Err(e) = collected {
                tracing::warn!(actor = %k, error = %e, "snapshot GC failed");
            }
        };
        if self.inner.turns.is_lock_step() {
            // One thread at a time: collect now, in order.
            gc();
        } else {
            tokio::task::spawn_blocking(gc);
        }
        if let Some(m) = moved {
            // Tell the caller to claim only if the store has everything.
            let d = match persisted {
                Ok(()) => Delivered::Moved(m.to.clone()),
                Err(e) => Delivered::Reply(Err(e)),
            };
            m.answer(d);
        }
        tracing::debug!(actor = %key, "evicted");
    }

    /// Ends an activation whose turn panicked on its thread: fails what is
    /// queued and releases the claim.
    async fn end_after_turn_panic(&self, rx: &mut mpsc::Receiver<Msg>, key: &str, epoch: u64) {
        let msg = "a turn panicked".to_string();
        fail_queued(rx, || {
            Delivered::Reply(Err(internal_after_panic(key, "a turn", &msg)))
        })
        .await;
        let _ = self.inner.dir.release(key, epoch).await;
    }

    /// Ends an activation whose memory may be ahead of the store (fenced,
    /// or a failed commit): the next call restores from the store.
    async fn end_after_commit_failure(&self, rx: &mut mpsc::Receiver<Msg>, key: &str, epoch: u64) {
        tracing::warn!(actor = %key, "activation dropped after a commit failure");
        fail_queued(rx, || {
            Delivered::Reply(Err(RuntimeError::Superseded {
                actor: key.to_string(),
                epoch,
            }))
        })
        .await;
        let _ = self.inner.dir.release(key, epoch).await;
    }

    /// Delivers alarm `id` as a turn of [`ALARM_METHOD`]. A turn that
    /// stands consumes the alarm, whatever it answered; one that is rolled
    /// back (a trap, a budget, an `unavailable` answer) leaves it, to be
    /// retried with backoff. Returns the activation (`None` if the turn
    /// panicked) and whether it must end.
    async fn fire_alarm(
        &self,
        mut act: Box<Activation>,
        id: u64,
    ) -> (Option<Box<Activation>>, bool) {
        let Some(entry) = act.outbox.alarm(id).cloned() else {
            return (Some(act), false);
        };
        if !self.lease_ok() {
            return (Some(act), true);
        }
        let (ty, aid) = act.key.split_once('/').expect("an actor key is type/id");
        let payload = serde_json::json!({"id": id, "tag": entry.tag, "at_ms": entry.at_ms});
        let req = CallRequest::new(ty, aid, ALARM_METHOD, payload.to_string().into_bytes());
        let route = Route {
            deadline: Some(
                Instant::now() + Duration::from_millis(crate::node::CALL_DEADLINE_MS_DEFAULT),
            ),
            ..Route::default()
        };
        act.firing = Some(id);
        let (back, res, fatal) = self.turn(act, &req, route).await;
        let Some(mut act) = back else {
            return (None, true);
        };
        act.firing = None;
        let now = self.now_ms();
        if act.outbox.alarm(id).is_some() {
            let delay = act.outbox.failed(id, now);
            metrics::counter!("tern_alarm_retries_total").increment(1);
            tracing::warn!(actor = %act.key, alarm = id, error = ?res.err(), retry_in_ms = delay, "the alarm's turn was rolled back; it will be retried");
        } else {
            metrics::counter!("tern_alarms_fired_total").increment(1);
            metrics::histogram!("tern_alarm_lateness_seconds")
                .record(now.saturating_sub(entry.at_ms) as f64 / 1e3);
            if let Err(e) = res {
                tracing::info!(actor = %act.key, alarm = id, error = %e, "the alarm's handler answered an error; the alarm is consumed");
            }
        }
        (Some(act), fatal)
    }

    /// Commits `act` (if dirty) with its delta computed on a turn thread.
    /// The activation comes back unless computing the delta panicked.
    async fn persist_off_worker(
        &self,
        act: Box<Activation>,
    ) -> (Option<Box<Activation>>, Result<()>) {
        if !act.is_dirty() {
            return (Some(act), Ok(()));
        }
        let key = act.key.clone();
        let vclock = self.inner.turns.vclock();
        let prepared = self
            .inner
            .turns
            .run(vclock, 0, move || {
                let delta = act.baseline.delta();
                (act, delta)
            })
            .await;
        match prepared {
            Ok(((mut act, delta), _)) => {
                let r = act.persist(self, delta).await;
                (Some(act), r)
            }
            Err(p) => {
                tracing::error!(actor = %key, panic = %p.0, "preparing a commit panicked");
                (
                    None,
                    Err(internal_after_panic(&key, "preparing a commit", &p.0)),
                )
            }
        }
    }

    /// Runs one call's turn: the idempotency check, the guest (on the turn
    /// pool) and, in `turn` durability, the commit. Returns the activation
    /// (`None` if the turn panicked and took it down), the result, and
    /// whether the activation must end (its memory may be ahead of the
    /// store).
    async fn turn(
        &self,
        mut act: Box<Activation>,
        req: &CallRequest,
        mut route: Route,
    ) -> (Option<Box<Activation>>, Result<CallOutput>, bool) {
        if req.method == WAKE_METHOD {
            // No guest code runs: activating was the point (its due alarms
            // fire from the mailbox loop).
            let out = CallOutput {
                payload: Vec::new(),
                epoch: act.epoch,
                pop: self.inner.name.clone(),
            };
            return (Some(act), Ok(out), false);
        }
        if req.method == crate::node::VERSION_PROBE_METHOD {
            // No guest code runs: the answer is the version this
            // activation runs (a rollout reactivating its actors).
            let out = CallOutput {
                payload: act.ty.config.version.to_string().into_bytes(),
                epoch: act.epoch,
                pop: self.inner.name.clone(),
            };
            return (Some(act), Ok(out), false);
        }
        let now_ms = self.now_ms();
        let fp = fingerprint(&req.method, &req.payload);
        if let Some(k) = &req.idempotency_key
            && !crate::plant::ignore_idempotency()
        {
            match act.keys(k).check(k, &fp, now_ms) {
                Ok(Some(applied)) => {
                    metrics::counter!("tern_calls_deduplicated_total").increment(1);
                    let out = applied.replay(k).map(|payload| CallOutput {
                        payload,
                        epoch: applied.epoch,
                        pop: applied.pop.clone(),
                    });
                    return (Some(act), out, false);
                }
                Ok(None) => {}
                Err(e) => return (Some(act), Err(e), false),
            }
        }
        route.chain.push(act.key.clone());
        let started = std::time::Instant::now();
        let prio = act.vtime.max(self.inner.turns.vclock());
        let cost = act.cost;
        let node = self.clone();
        let method = req.method.clone();
        let payload = req.payload.clone();
        let idem_key = req.idempotency_key.clone();
        let deadline = route.deadline;
        let chain = route.chain;
        // A child of the call's span; the guest's log lines are its events,
        // its nested calls its children.
        let span = tracing::debug_span!(
            parent: route.span.as_ref().and_then(|s| s.id()),
            "turn",
            actor = %act.key,
            method = %req.method,
        );
        let turn_span = span.clone();
        let ran = self
            .inner
            .turns
            .run(prio, cost, move || {
                let _in_turn = span.enter();
                let out = act.run_guest(
                    &node,
                    TurnInput {
                        chain,
                        method: &method,
                        payload: &payload,
                        idempotency_key: idem_key.as_deref(),
                        deadline,
                    },
                );
                // Encoding the dirty pages costs in proportion to the
                // actor's memory: here, never on a tokio worker. (In idle
                // durability most turns commit nothing.)
                let delta =
                    (act.ty.config.durability == Durability::Turn).then(|| act.baseline.delta());
                ((act, out), delta)
            })
            .await;
        let (mut act, out, delta) = match ran {
            Ok((((act, out), delta), used)) => {
                let mut act = act;
                let used = used.as_nanos() as u64;
                act.vtime = prio.saturating_add(used);
                act.cost = act.cost / 2 + used / 2;
                (act, out, delta)
            }
            Err(p) => {
                metrics::counter!("tern_turn_panics_total").increment(1);
                tracing::error!(actor = %format!("{}/{}", req.actor_type, req.id), panic = %p.0, "a turn panicked");
                let key = format!("{}/{}", req.actor_type, req.id);
                return (None, Err(internal_after_panic(&key, "a turn", &p.0)), true);
            }
        };
        self.inner.counters.turns.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("tern_turns_total").increment(1);
        act.last_turn = Instant::now();
        let limits = act.ty.config.limits;
        // A rolled-back turn (trap, CPU or memory limit) applied nothing:
        // a retry with its key runs again.
        let applied = out.is_ok();
        let result = match out {
            Err(e) => Err(e),
            Ok(Ok(p)) if p.len() as u64 > limits.payload_bytes_max => {
                Err(RuntimeError::PayloadTooLarge {
                    what: "reply payload",
                    size: p.len(),
                    limit: limits.payload_bytes_max,
                })
            }
            Ok(Ok(p)) => Ok(p),
            Ok(Err(e)) => Err(guest_error(e)),
        };
        if let Some(k) = &req.idempotency_key
            && applied
        {
            let outcome = match &result {
                Ok(p) => Outcome::Reply(p.clone()),
                Err(e) => Outcome::Error(e.kind(), e.to_string()),
            };
            let applied = Applied {
                outcome,
                epoch: act.epoch,
                pop: self.inner.name.clone(),
                at_ms: now_ms,
                fingerprint: fp,
            };
            act.keys(k).record(k, applied);
        }
        let must_persist = match act.ty.config.durability {
            Durability::Turn => act.is_dirty(),
            // Keep one commit's side records small; release events and
            // make alarms durable with the turn that made them.
            Durability::Idle => {
                act.idem.pending_bytes() + act.fwd.pending_bytes() > IDEM_PENDING_BYTES_MAX
                    || act.outbox.is_dirty()
            }
        };
        // A POP whose lease ended by its own clock commits nothing and
        // answers nothing: a newer activation may exist (or be about to).
        if !self.lease_ok() {
            return (
                Some(act),
                Err(RuntimeError::LeaseLost(
                    "lease expired by the POP's own clock during the turn; the turn is not applied"
                        .into(),
                )),
                true,
            );
        }
        if must_persist {
            let (back, persisted) = match delta {
                Some(delta) => {
                    let r =
                        tracing::Instrument::instrument(act.persist(self, delta), turn_span).await;
                    (Some(act), r)
                }
                None => {
                    tracing::Instrument::instrument(self.persist_off_worker(act), turn_span).await
                }
            };
            let Some(back) = back else {
                let e = persisted.expect_err("only a panic loses the activation");
                return (None, Err(e), true);
            };
            act = back;
            if let Err(e) = persisted {
                // Memory is ahead of the store: the activation must end.
                return (Some(act), Err(e), true);
            }
        } else if act.ty.config.durability == Durability::Turn
            && let Err(e) = self.confirm_epoch(&act)
        {
            // A turn that wrote nothing is fenced by a read: a POP whose
            // clock stood still (a paused machine) must not answer from a
            // superseded activation's memory.
            return (Some(act), Err(e), true);
        }
        metrics::histogram!("tern_turn_seconds").record(started.elapsed().as_secs_f64());
        if result.is_err() {
            self.inner
                .counters
                .turns_failed
                .fetch_add(1, Ordering::Relaxed);
        }
        if act.last_turns.len() >= crate::node::LAST_TURNS_KEPT {
            act.last_turns.pop_front();
        }
        act.last_turns.push_back(crate::node::TurnInfo {
            method: req.method.clone(),
            at_ms: self.now_ms(),
            ok: result.is_ok(),
            micros: started.elapsed().as_micros() as u64,
        });
        let epoch = act.epoch;
        (
            Some(act),
            result.map(|p| CallOutput {
                payload: p,
                epoch,
                pop: self.inner.name.clone(),
            }),
            false,
        )
    }

    /// Loads and instantiates an actor this POP has claimed. Runs on a turn
    /// thread.
    fn activate(&self, actor_type: &str, id: &str, claim: (u64, u64)) -> Result<Activation> {
        let key = format!("{actor_type}/{id}");
        let mut ty = self.load_type(actor_type)?;
        let snap = self.snapshot_for(&key, &ty, claim.0)?;
        let mut params = InstanceParams {
            actor_type: actor_type.to_string(),
            actor_id: id.to_string(),
            limits: ty.config.limits,
            pop: self.inner.name.clone(),
            epoch: claim.0,
            caller: Arc::new(self.clone()),
            world: self.inner.world.clone(),
            meter: self.inner.engine.meter(),
        };
        let (epoch, claimed_head) = claim;
        let now_ms = self.now_ms();
        let cost = unknown_cost(&ty.config.limits);
        let outbox = match &snap {
            Some(Restore::Store(s)) => Outbox::restore(&key, epoch, &s.extra),
            Some(Restore::Kept(head, _)) => Outbox::restore(&key, epoch, &head.extra),
            None => Outbox::new(epoch),
        };
        let (instance, baseline, head_seq, (idem, fwd)) = match snap {
            Some(Restore::Kept(head, kept)) => {
                let kept = *kept;
                let mut baseline = kept.baseline;
                let inst = ActorInstance::adopted(
                    self.inner.engine.engine(),
                    &ty.prep,
                    &params,
                    kept.memories,
                    baseline.tracking_token(),
                    baseline.images(),
                    baseline.globals(),
                )?;
                // SAFETY: the instance was just created; no guest code runs.
                unsafe { baseline.track(inst.memories()) };
                let tables = idem_tables(&head.extra, &ty, now_ms);
                (Some(inst), baseline, head.seq, tables)
            }
            Some(Restore::Store(snap)) => {
                let mut restored = Baseline::from_snapshot(
                    &key,
                    snap.memories,
                    snap.meta.globals.clone(),
                    &snap.extra,
                )?;
                let (inst, baseline) = if snap.meta.component_digest == ty.prep.digest() {
                    let inst = instance_from(
                        self.inner.engine.engine(),
                        &ty.prep,
                        &params,
                        &mut restored,
                    )?;
                    (inst, restored)
                } else {
                    let up = self.upgrade(&key, &ty, &params, restored, &snap.meta)?;
                    ty = up.ty;
                    params = up.params;
                    (up.instance, up.baseline)
                };
                let tables = idem_tables(&snap.extra, &ty, now_ms);
                (Some(inst), baseline, snap.seq, tables)
            }
            None if claimed_head > 0 => {
                return Err(RuntimeError::Storage(tern_storage::StorageError::Corrupt {
                    key,
                    reason: format!(
                        "the activation record says snapshot {claimed_head} is the head, but no snapshot was found"
                    ),
                }));
            }
            None => {
                let mut inst =
                    ActorInstance::new(self.inner.engine.engine(), &ty.prep, &params, &[])?;
                let mut b = Baseline::default();
                // SAFETY: the instance runs no guest code right now.
                unsafe { b.absorb(inst.memories()) };
                b.absorb_globals(inst.read_globals()?);
                b.mark_all_dirty();
                (
                    Some(inst),
                    b,
                    claimed_head,
                    (
                        IdemTable::new(CLIENT_PREFIX, retention(&ty)),
                        IdemTable::new(FORWARD_PREFIX, FORWARD_KEYS_RETENTION),
                    ),
                )
            }
        };
        Ok(Activation {
            key,
            ty,
            params,
            epoch,
            head_seq,
            instance,
            baseline,
            idem,
            fwd,
            recent_pops: Vec::new(),
            last_turn: Instant::now(),
            vtime: self.inner.turns.vclock(),
            cost,
            outbox,
            firing: None,
            last_turns: std::collections::VecDeque::new(),
        })
    }

    /// What to restore `key` from, after this POP's claim at `epoch`: the
    /// memory this POP kept when it evicted the actor, if the store's head
    /// is still the snapshot it holds (only the head's manifest and side
    /// records are read then), else the store's head snapshot.
    fn snapshot_for(&self, key: &str, ty: &ActorType, epoch: u64) -> Result<Option<Restore>> {
        if let Some(kept) = self.inner.hibernation.take(key) {
            let head = self.inner.store.load_snapshot_head(key)?;
            match head {
                Some(head) if kept.holds(&head, ty.prep.digest(), epoch) => {
                    metrics::counter!("tern_hibernated_restores_total", "outcome" => "kept")
                        .increment(1);
                    let c = &self.inner.counters.restores_kept;
                    c.fetch_add(1, Ordering::Relaxed);
                    return Ok(Some(Restore::Kept(head, Box::new(kept))));
                }
                _ => {
                    // The actor ran elsewhere since, or its code changed.
                    metrics::counter!("tern_hibernated_restores_total", "outcome" => "stale")
                        .increment(1);
                    let c = &self.inner.counters.restores_stale;
                    c.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(
                        actor = key,
                        "the memory kept at eviction is not the store's head; restoring from the store"
                    );
                }
            }
        }
        Ok(self.inner.store.load_snapshot(key)?.map(Restore::Store))
    }

    /// Moves an actor persisted by another version of its type to the
    /// type's current version by state transfer: its old code's `save`, on
    /// an instance restored from the snapshot, then the new code's `load`
    /// on a fresh instance. A memory image never runs under other code. If
    /// either step fails (an error, a trap, a budget), the actor stays on
    /// its version with its state untouched, and the store remembers why.
    /// A snapshot by code that is not a version of the type is refused.
    fn upgrade(
        &self,
        key: &str,
        ty: &Arc<ActorType>,
        params: &InstanceParams,
        mut restored: Baseline,
        meta: &SnapshotMeta,
    ) -> Result<Upgraded> {
        let versions = self.inner.store.list_versions(&ty.name)?;
        // The newest version with that code (a rollback and a redeploy can
        // make two).
        let Some((from_n, from)) = versions
            .iter()
            .rev()
            .find(|(_, v)| v.digest == meta.component_digest)
        else {
            return Err(RuntimeError::CodeMismatch {
                actor: key.to_string(),
                ty: ty.name.clone(),
                snapshot_digest: meta.component_digest.clone(),
                snapshot_engine: meta.engine_version.clone(),
                current_digest: ty.prep.digest().to_string(),
            });
        };
        let old_ty = self.version_type(&ty.name, *from_n, from)?;
        let old_params = InstanceParams {
            limits: old_ty.config.limits,
            ..params.clone()
        };
        let engine = self.inner.engine.engine();
        let to_n = ty.config.version;
        // A rollback of this actor's upgrade gives back the state it had
        // before that upgrade; anything else moves the current state.
        let kept = self
            .inner
            .store
            .get_pre_upgrade(&ty.name, key)?
            .filter(|p| p.from_version == to_n && p.to_version == *from_n);
        let rolled_back = kept.is_some();
        let moved = (|| -> Result<(ActorInstance, Vec<u8>)> {
            let saved = match kept {
                Some(p) => p.state,
                None => {
                    let mut old = ActorInstance::restored(
                        engine,
                        &old_ty.prep,
                        &old_params,
                        restored.images(),
                        restored.globals(),
                    )?;
                    old.save(&old_ty.config.limits)?.map_err(guest_error)?
                }
            };
            let mut new = ActorInstance::new(engine, &ty.prep, params, &[])?;
            new.load(&saved, &ty.config.limits)?.map_err(guest_error)?;
            new.check_snapshottable()?;
            Ok((new, saved))
        })();
        match moved {
            Ok((mut new, saved)) => {
                if *from_n < to_n {
                    let p = tern_storage::PreUpgrade {
                        from_version: *from_n,
                        to_version: to_n,
                        state: saved,
                    };
                    if let Err(e) = self.inner.store.put_pre_upgrade(&ty.name, key, &p) {
                        tracing::warn!(actor = key, error = %e, "cannot keep the state before the upgrade; a rollback will move this actor's current state instead");
                    }
                }
                if let Err(e) = self.inner.store.clear_upgrade_failure(&ty.name, key) {
                    tracing::warn!(actor = key, error = %e, "cannot clear an old upgrade failure");
                }
                metrics::counter!("tern_upgrades_total").increment(1);
                tracing::info!(
                    actor = key,
                    from = from_n,
                    to = to_n,
                    rolled_back,
                    "moved to another version by state transfer"
                );
                let mut baseline = Baseline::default();
                // SAFETY: the instance runs no guest code right now.
                unsafe { baseline.absorb(new.memories()) };
                baseline.absorb_globals(new.read_globals()?);
                // The next commit replaces the whole image, zero pages
                // included: no page of the old code's memory may stay in
                // the manifest.
                baseline.mark_every_page_dirty();
                // The old code's page patches go with its pages.
                baseline.clear_patches(restored.patched());
                Ok(Upgraded {
                    ty: ty.clone(),
                    params: params.clone(),
                    instance: new,
                    baseline,
                })
            }
            Err(e) => {
                metrics::counter!("tern_upgrade_failures_total").increment(1);
                tracing::warn!(actor = key, from = from_n, to = to_n, error = %e, "upgrade failed; the actor stays on its version");
                let failure = tern_storage::UpgradeFailure {
                    from_version: *from_n,
                    to_version: to_n,
                    error: e.to_string(),
                    at_ms: self.now_ms(),
                };
                if let Err(se) = self
                    .inner
                    .store
                    .record_upgrade_failure(&ty.name, key, &failure)
                {
                    tracing::warn!(actor = key, error = %se, "cannot record an upgrade failure");
                }
                let inst = instance_from(engine, &old_ty.prep, &old_params, &mut restored)?;
                Ok(Upgraded {
                    ty: old_ty,
                    params: old_params,
                    instance: inst,
                    baseline: restored,
                })
            }
        }
    }

    /// Checks that `act` still holds the actor's current claim (a store
    /// read), for a turn that committed nothing.
    fn confirm_epoch(&self, act: &Activation) -> Result<()> {
        let rec = crate::directory::blocking(|| self.inner.store.get_activation(&act.key))?;
        match rec {
            Some(r) if r.active && r.epoch == act.epoch => Ok(()),
            // The planted bugs `skip-fence` (no fence at all) and
            // `serve-after-lease` (a POP trusts its activation past its
            // lease) switch this check off too.
            _ if tern_storage::plant::skip_fence() || crate::plant::serve_after_lease() => Ok(()),
            _ => Err(RuntimeError::Superseded {
                actor: act.key.clone(),
                epoch: act.epoch,
            }),
        }
    }

    /// Records that `actor` moved here from `from`.
    pub(crate) async fn record_migration(&self, actor: &str, from: &str, started: Instant) {
        let ms = started.elapsed().as_millis() as u64;
        metrics::counter!("tern_migrations_total").increment(1);
        metrics::histogram!("tern_migration_seconds").record(ms as f64 / 1e3);
        tracing::info!(actor, from, to = %self.inner.name, ms, "actor moved to its caller's POP");
        let m = MigrationInfo {
            actor: actor.to_string(),
            from_pop: from.to_string(),
            to_pop: self.inner.name.clone(),
            at_ms: self.now_ms(),
            duration_ms: ms,
            reason: "follows its callers".into(),
        };
        if let Err(e) = self.inner.dir.record_migration(m).await {
            tracing::warn!(actor, error = %e, "cannot record migration");
        }
    }
}

impl Activation {
    /// The key table `key` belongs to.
    fn keys(&mut self, key: &str) -> &mut IdemTable {
        if key.starts_with(FORWARD_KEY_MARK) {
            &mut self.fwd
        } else {
            &mut self.idem
        }
    }

    /// Whether anything waits for a commit.
    fn is_dirty(&self) -> bool {
        self.baseline.is_dirty()
            || self.idem.is_dirty()
            || self.fwd.is_dirty()
            || self.outbox.is_dirty()
    }

    /// Bytes this activation holds: its instance's memories and the
    /// committed baseline.
    fn resident_bytes(&self) -> u64 {
        let mem: u64 = self.baseline.lens().iter().map(|l| *l as u64).sum();
        2 * mem + self.baseline.stored_bytes() as u64
    }

    /// Runs the guest (blocking, on a turn thread). On a trap, drops the
    /// instance so the actor rolls back to the baseline.
    fn run_guest(&mut self, node: &Node, turn: TurnInput<'_>) -> Result<TurnOutput> {
        if self.instance.is_none() {
            let inst = instance_from(
                node.inner.engine.engine(),
                &self.ty.prep,
                &self.params,
                &mut self.baseline,
            )?;
            self.instance = Some(inst);
        }
        let inst = self.instance.as_mut().expect("instance present");
        inst.set_effects(self.outbox.begin(self.firing));
        match inst.call(turn, &self.ty.config.limits) {
            // A guest that answers `unavailable` (typically passing on a
            // nested call's failure) tells its caller to retry; the retry
            // must find the actor as it was, so the turn is rolled back
            // like a trap and not recorded under its idempotency key.
            // Otherwise a transfer whose nested call timed out would keep
            // its half-done effects, and its retry would replay the cached
            // error instead of finishing the work.
            Ok(Err(e)) if matches!(e.kind, crate::instance::GuestErrorKind::Unavailable) => {
                tracing::info!(actor = %self.key, error = %e.message, "turn answered unavailable: rolled back");
                metrics::counter!("tern_turns_rolled_back_total").increment(1);
                self.instance = None;
                Err(crate::instance::guest_error(e))
            }
            Ok(out) => {
                if let Err(e) = inst.check_snapshottable() {
                    self.instance = None;
                    return Err(e);
                }
                let fx = inst.take_effects();
                // Topics this actor never numbered before: continue after
                // what the store holds (a lost topic record must not make
                // numbers repeat).
                let mut starts = std::collections::HashMap::new();
                for (topic, _) in &fx.events {
                    if !starts.contains_key(topic) && !fx.topics.contains(topic) {
                        match node.inner.store.last_event_seq(&self.key, topic) {
                            Ok(s) => {
                                starts.insert(topic.clone(), s);
                            }
                            Err(e) => {
                                self.instance = None;
                                return Err(e.into());
                            }
                        }
                    }
                }
                let globals = match inst.read_globals() {
                    Ok(g) => g,
                    Err(e) => {
                        self.instance = None;
                        return Err(e);
                    }
                };
                // SAFETY: the turn is over; no guest code runs.
                let changed = unsafe { self.baseline.absorb(inst.memories()) } as u64;
                self.baseline.absorb_globals(globals);
                self.outbox
                    .apply(fx, |t| starts.get(t).copied().unwrap_or_default());
                metrics::counter!("tern_pages_changed_total").increment(changed);
                node.inner
                    .counters
                    .pages_changed
                    .fetch_add(changed, Ordering::Relaxed);
                Ok(out)
            }
            Err(e) => {
                tracing::info!(actor = %self.key, error = %e, "turn rolled back");
                metrics::counter!("tern_turns_rolled_back_total").increment(1);
                self.instance = None;
                Err(e)
            }
        }
    }

    /// Ends a persisted activation and keeps its memories and baseline for
    /// its return to this POP (see [`crate::hibernate`]): `None` if there
    /// is no instance or anything is not committed. Runs on a turn thread.
    fn hibernate(mut self) -> Option<crate::hibernate::Hibernated> {
        let inst = self.instance.take()?;
        if self.is_dirty() {
            return None;
        }
        // The memories must hold exactly the baseline, which the store
        // holds: fold them in once more (with write tracking, only pages
        // written since the last turn are compared) and check.
        // SAFETY: no guest code runs: the activation has ended.
        let changed = unsafe { self.baseline.absorb(inst.memories()) };
        if changed > 0 || self.is_dirty() {
            tracing::warn!(actor = %self.key, changed, "memory changed after the last commit; it is not kept");
            return None;
        }
        let memories = inst.park()?;
        Some(crate::hibernate::Hibernated {
            seq: self.head_seq,
            epoch: self.epoch,
            digest: self.ty.prep.digest().to_string(),
            baseline: self.baseline,
            memories,
        })
    }

    /// Commits the dirty pages, fenced by this activation's epoch. `delta`
    /// is the baseline's [`Baseline::delta`] as it stands, computed on a
    /// turn thread: encoding pages costs in proportion to the actor's
    /// memory, which a tokio worker must never pay.
    async fn persist(&mut self, node: &Node, mut delta: Delta) -> Result<()> {
        if !self.is_dirty() {
            return Ok(());
        }
        let mut extra = self.idem.pending();
        extra.extend(self.fwd.pending());
        extra.extend(delta.patches.iter().cloned());
        let outbox = self.outbox.pending();
        extra.extend(outbox.extra);
        let req = CommitRequest {
            actor: self.key.clone(),
            epoch: self.epoch,
            expected_head_seq: self.head_seq,
            meta: SnapshotMeta {
                component_digest: self.ty.prep.digest().to_string(),
                engine_version: ENGINE_VERSION.to_string(),
                globals: self.baseline.globals().to_vec(),
            },
            memories: std::mem::take(&mut delta.memories),
            extra,
            due: outbox.due,
            events: outbox.events,
        };
        let span = tracing::debug_span!("commit", actor = %self.key);
        let sent = Instant::now();
        let committed =
            tracing::Instrument::instrument(node.inner.committer.commit(req), span).await;
        // Queue and group commit: what a durable turn waits for its store.
        metrics::histogram!("tern_commit_seconds").record(sent.elapsed().as_secs_f64());
        match committed {
            Ok(seq) => {
                node.inner.counters.commits.fetch_add(1, Ordering::Relaxed);
                self.head_seq = seq;
                self.baseline.committed(&delta);
                self.idem.committed();
                self.fwd.committed();
                let topics = self.outbox.committed();
                if !topics.is_empty() {
                    node.inner.feeds.poke(&self.key, &topics);
                }
                Ok(())
            }
            Err(RuntimeError::Storage(tern_storage::StorageError::Fenced { .. })) => {
                Err(RuntimeError::Superseded {
                    actor: self.key.clone(),
                    epoch: self.epoch,
                })
            }
            Err(e) => Err(e),
        }
    }
}
