//! The directory's single decision core: every rule about POP membership,
//! leases, claims, lookups, releases, migrations and the lease sweep lives
//! here, once.
//!
//! [`Core`] speaks only `tern-storage` records ([`Store`]) and is
//! synchronous: each method blocks on storage and returns. It starts no
//! threads and needs no tokio runtime (the change stream is a
//! [`tokio::sync::broadcast`] channel, which works without one), and it
//! reads time only from [`DirectoryConfig::clock`]. So the same core runs
//! behind the gRPC edge ([`crate::server`]), in-process inside a POP, and
//! under a deterministic simulator.
//!
//! Nondeterminism that remains outside this module: `Store::claim` and
//! `Store::record_migration` draw random tokens (for
//! `commit_unknown_result` idempotence); they never change a decision.
//!
//! No lock in this process guards a decision: several directory
//! processes may serve over one store at once. Each decision is one store
//! transaction that reads what it depends on:
//! - a registration bumps the POP's incarnation (and lease) in one
//!   transaction;
//! - a claim reads the claimant's POP record, the activation and the
//!   holder's POP record and writes the new epoch in one transaction
//!   ([`Store::claim_as`]), so the claimant's lease, its incarnation and
//!   the holder's liveness are still what the claim saw when it commits;
//! - a lease renewal and a release are each one read-modify-write.
//!
//! An activation record names the incarnation that claimed it, and one
//! whose POP has since registered again counts as void, whoever looks. A
//! registration also voids such records afterwards, one transaction each
//! ([`Store::void_activation`]), only for incarnations below its own: that
//! cleanup may be slow or interrupted (a crash) without undoing a newer
//! claim, and the next registration finishes it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};

use tern_storage::{ActivationRecord, ClaimFacts, MigrationRecord, PopRecord, Store};
use tokio::sync::broadcast;

use crate::DirectoryError;

/// Changes a watch subscriber may fall behind by before its stream ends
/// with `ABORTED` (it then reconnects and drops its cached lookups).
pub const WATCH_BUFFER_CHANGES_MAX: usize = 4096;
/// Change-stream subscribers (open `Watch` streams) at once.
pub const WATCH_SUBSCRIBERS_MAX: usize = 1024;
/// Longest POP or actor name accepted, in bytes.
pub const NAME_BYTES_MAX: usize = 1024;
/// Longest POP endpoint accepted, in bytes.
pub const ENDPOINT_BYTES_MAX: usize = 1024;
/// Longest migration reason accepted, in bytes.
pub const REASON_BYTES_MAX: usize = 1024;
/// Activations one listing returns; the rest are left out (and logged).
pub const ACTIVATIONS_LIST_MAX: usize = 10_000;
/// Lapsed (POP, incarnation) pairs the sweep remembers as announced. Past
/// it, further lapses are still announced, on every sweep, until entries
/// are pruned (their POP registered again or its record went away).
pub const LAPSED_SEEN_MAX: usize = 10_000;

/// Configuration of the directory.
#[derive(Clone)]
pub struct DirectoryConfig {
    /// How long a registration or heartbeat keeps a POP alive, in ms.
    pub lease_ms: u64,
    /// How often POPs should heartbeat, in ms (told to them at register;
    /// also the period of the server's lease sweep).
    pub heartbeat_ms: u64,
    /// The clock: ms since the Unix epoch. The core's only source of time;
    /// injectable for tests and the simulator.
    pub clock: Arc<dyn Fn() -> u64 + Send + Sync>,
}

impl Default for DirectoryConfig {
    fn default() -> Self {
        DirectoryConfig {
            lease_ms: 3000,
            heartbeat_ms: 1000,
            clock: Arc::new(system_now_ms),
        }
    }
}

impl std::fmt::Debug for DirectoryConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectoryConfig")
            .field("lease_ms", &self.lease_ms)
            .field("heartbeat_ms", &self.heartbeat_ms)
            .finish_non_exhaustive()
    }
}

/// Wall-clock ms since the Unix epoch (the default clock).
pub fn system_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A change of where an actor is active (`pop: None`: it became inactive).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The actor.
    pub actor: String,
    /// Where it is active now, if anywhere.
    pub pop: Option<String>,
    /// The epoch of the claim this change is about.
    pub epoch: u64,
}

/// An actor active at a POP, as the directory sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// The actor.
    pub actor: String,
    /// The POP.
    pub pop: String,
    /// The POP's endpoint ("" if the POP is unknown).
    pub endpoint: String,
    /// The claim's epoch.
    pub epoch: u64,
    /// Whether the POP's lease is current.
    pub pop_alive: bool,
}

/// What a claim decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// Claimed: a new epoch and the actor's snapshot head.
    Granted {
        /// The new epoch; every snapshot commit must carry it.
        epoch: u64,
        /// The actor's snapshot head at the time of the claim.
        head_seq: u64,
    },
    /// A live POP holds it: send the call there.
    Held(Holder),
}

/// A registration's result.
#[derive(Debug, Clone, PartialEq)]
pub struct Registered {
    /// The new incarnation.
    pub incarnation: u64,
    /// The lease end.
    pub lease_until_ms: u64,
    /// Activations voided (held by earlier incarnations).
    pub voided: usize,
}

/// The directory's decisions, over storage records only. Every method is
/// synchronous and blocks on storage: from async code, call it on a
/// blocking thread.
pub struct Core {
    store: Store,
    cfg: DirectoryConfig,
    changes: broadcast::Sender<Change>,
    /// Serialises the subscriber-count check with the subscription.
    subscribe_lock: Mutex<()>,
    watchers_max: usize,
    /// (pop, incarnation) lapses already announced by the sweep. Pruned on
    /// every sweep to pairs whose POP record still has that incarnation and
    /// is still lapsed; never more than `lapsed_seen_max`.
    lapsed_seen: Mutex<BTreeSet<(String, u64)>>,
    lapsed_seen_max: usize,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("backend", &self.store.backend_name())
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

fn alive(rec: &PopRecord, now: u64) -> bool {
    now <= rec.lease_until_ms
}

/// How far the clocks of two directory processes may disagree, in ms. A
/// lease end is written by one directory's clock and may be judged by
/// another's: an actor's holder counts as live this long past its lease
/// end, so a directory whose clock runs ahead by up to this much never
/// hands the actor to another POP while its holder (which stops at its
/// lease end by its own, conservative clock) may still serve it. Keep the
/// directories' clocks in sync (NTP) well within it.
pub const CLOCK_SKEW_MS_MAX: u64 = 250;

/// Whether the activation `act` still belongs to a live POP: its POP's
/// lease is current (give or take [`CLOCK_SKEW_MS_MAX`]) and the POP has
/// not registered again since the claim (an activation made without an
/// incarnation, 0, belongs to any).
fn held_by_live_pop(act: &ActivationRecord, pop: Option<&PopRecord>, now: u64) -> bool {
    pop.is_some_and(|p| {
        now <= p.lease_until_ms.saturating_add(CLOCK_SKEW_MS_MAX)
            && (act.incarnation == 0 || act.incarnation == p.incarnation)
    })
}

/// `actor`'s activation `act` as a [`Holder`], given its POP's record.
fn holder_of(actor: &str, act: &ActivationRecord, pop: Option<&PopRecord>, now: u64) -> Holder {
    Holder {
        actor: actor.to_string(),
        pop: act.pop.clone(),
        endpoint: pop.map(|p| p.addr.clone()).unwrap_or_default(),
        epoch: act.epoch,
        pop_alive: held_by_live_pop(act, pop, now),
    }
}

/// Why a claim's transaction wrote nothing.
enum Refusal {
    /// A live POP holds the actor.
    Held(Holder),
    /// The claimant may not claim.
    No(DirectoryError),
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn check_name(what: &str, name: &str) -> Result<(), DirectoryError> {
    if name.is_empty() {
        return Err(DirectoryError::InvalidArgument(format!(
            "{what} must not be empty"
        )));
    }
    check_text(what, name, NAME_BYTES_MAX)
}

fn check_text(what: &str, text: &str, max: usize) -> Result<(), DirectoryError> {
    if text.len() > max || text.chars().any(char::is_control) {
        let shown: String = text.chars().take(64).collect();
        return Err(DirectoryError::InvalidArgument(format!(
            "{what} {shown:?}... ({} bytes) must be at most {max} bytes without control characters",
            text.len()
        )));
    }
    Ok(())
}

/// Checks that `endpoint` looks like `http://host:port` (or `https://`).
pub fn check_endpoint(endpoint: &str) -> Result<(), DirectoryError> {
    let bad = || {
        DirectoryError::InvalidArgument(format!(
            "endpoint {endpoint:?} must look like http://host:port"
        ))
    };
    check_text("endpoint", endpoint, ENDPOINT_BYTES_MAX)?;
    let rest = endpoint
        .strip_prefix("http://")
        .or_else(|| endpoint.strip_prefix("https://"))
        .ok_or_else(bad)?;
    let (host, port) = rest.rsplit_once(':').ok_or_else(bad)?;
    let port_ok = port.parse::<u16>().is_ok_and(|p| p != 0);
    if host.is_empty() || !port_ok || host.contains(['/', ' ', '@']) {
        return Err(bad());
    }
    Ok(())
}

impl Core {
    /// A directory core over `store`. Starts nothing: the caller drives it
    /// (the gRPC server calls [`Core::sweep`] every heartbeat period).
    pub fn new(store: Store, cfg: DirectoryConfig) -> Core {
        let (changes, _) = broadcast::channel(WATCH_BUFFER_CHANGES_MAX);
        Core {
            store,
            cfg,
            changes,
            subscribe_lock: Mutex::new(()),
            watchers_max: WATCH_SUBSCRIBERS_MAX,
            lapsed_seen: Mutex::new(BTreeSet::new()),
            lapsed_seen_max: LAPSED_SEEN_MAX,
        }
    }

    /// Its configuration.
    pub fn config(&self) -> &DirectoryConfig {
        &self.cfg
    }

    /// The store it decides over.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The current time, from the configured clock.
    pub fn now_ms(&self) -> u64 {
        (self.cfg.clock)()
    }

    /// The stream of activation changes (claims, releases, voided and
    /// lapsed activations). A receiver that falls more than
    /// [`WATCH_BUFFER_CHANGES_MAX`] behind gets `Lagged` and must drop its
    /// cached lookups. Not counted against [`WATCH_SUBSCRIBERS_MAX`]; the
    /// gRPC edge uses [`Core::try_subscribe`].
    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }

    /// [`Core::subscribe`], refused with [`DirectoryError::Overloaded`]
    /// while [`WATCH_SUBSCRIBERS_MAX`] receivers are open.
    pub fn try_subscribe(&self) -> Result<broadcast::Receiver<Change>, DirectoryError> {
        let _g = lock(&self.subscribe_lock);
        if self.changes.receiver_count() >= self.watchers_max {
            return Err(DirectoryError::Overloaded {
                what: "watch subscribers",
                max: self.watchers_max,
            });
        }
        Ok(self.changes.subscribe())
    }

    fn publish(&self, c: Change) {
        // No subscribers is fine.
        let _ = self.changes.send(c);
    }

    /// Registers (or re-registers) `pop`: starts incarnation + 1 with a
    /// fresh lease (one transaction), then voids every activation an
    /// earlier incarnation held (one transaction each, see the module
    /// docs).
    pub fn register(
        &self,
        pop: &str,
        endpoint: &str,
        coords: (f64, f64),
    ) -> Result<Registered, DirectoryError> {
        check_name("POP name", pop)?;
        check_endpoint(endpoint)?;
        let (lat, lon) = coords;
        if !(lat.is_finite() && lon.is_finite() && lat.abs() <= 90.0 && lon.abs() <= 180.0) {
            return Err(DirectoryError::InvalidArgument(format!(
                "coordinates ({lat}, {lon}) must be a latitude in [-90, 90] and a longitude in [-180, 180]"
            )));
        }
        let now = self.now_ms();
        let lease_until_ms = now.saturating_add(self.cfg.lease_ms);
        let addr = endpoint.to_string();
        let (incarnation, previous) = self.store.update_pop(pop, |cur| {
            let previous = cur.as_ref().map(|c| c.incarnation);
            let rec = PopRecord {
                addr: addr.clone(),
                coords,
                lease_until_ms,
                incarnation: previous.unwrap_or(0) + 1,
            };
            let inc = rec.incarnation;
            Ok((Some(rec), (inc, previous)))
        })?;
        // From here on no claim of an earlier incarnation can commit (a
        // claim reads the POP record in its transaction); void those that
        // committed before.
        let mut voided = 0;
        for actor in self.store.list_activations_by_pop(pop)? {
            if let Some(epoch) = self.store.void_activation(&actor, pop, incarnation)? {
                voided += 1;
                self.publish(Change {
                    actor,
                    pop: None,
                    epoch,
                });
            }
        }
        metrics::counter!("tern_directory_registrations_total").increment(1);
        tracing::info!(
            pop,
            endpoint,
            incarnation,
            previous_incarnation = ?previous,
            voided,
            lease_until_ms,
            "POP registered"
        );
        Ok(Registered {
            incarnation,
            lease_until_ms,
            voided,
        })
    }

    /// Renews the lease of `pop`'s `incarnation` if it is still current.
    /// Returns (alive, lease_until_ms).
    pub fn heartbeat(&self, pop: &str, incarnation: u64) -> Result<(bool, u64), DirectoryError> {
        check_name("POP name", pop)?;
        let now = self.now_ms();
        let lease_ms = self.cfg.lease_ms;
        let (alive_now, until, seen) = self.store.update_pop(pop, |cur| match cur {
            None => Ok((None, (false, 0, None))),
            Some(mut rec) => {
                let seen = Some((rec.incarnation, rec.lease_until_ms));
                if rec.incarnation == incarnation && alive(&rec, now) {
                    rec.lease_until_ms = now.saturating_add(lease_ms);
                    let until = rec.lease_until_ms;
                    Ok((Some(rec), (true, until, seen)))
                } else {
                    let until = rec.lease_until_ms;
                    Ok((Some(rec), (false, until, seen)))
                }
            }
        })?;
        if !alive_now {
            match seen {
                None => tracing::warn!(pop, incarnation, "heartbeat from an unregistered POP"),
                Some((cur, until)) if cur == incarnation => tracing::warn!(
                    pop,
                    incarnation,
                    late_by_ms = now.saturating_sub(until),
                    "lease lapsed; the POP must register again"
                ),
                Some((cur, _)) => tracing::warn!(
                    pop,
                    incarnation,
                    current_incarnation = cur,
                    "heartbeat from a superseded incarnation"
                ),
            }
        }
        Ok((alive_now, until))
    }

    fn holder(
        &self,
        actor: &str,
        rec: &ActivationRecord,
        now: u64,
    ) -> Result<Holder, DirectoryError> {
        let pop = self.store.get_pop(&rec.pop)?;
        Ok(holder_of(actor, rec, pop.as_ref(), now))
    }

    /// Claims `actor` for `pop`'s `incarnation`, which must be registered
    /// and alive. Granted with epoch + 1 unless another POP whose lease is
    /// current (and that has not registered again since its claim) holds
    /// it; a holder that is `pop` itself (any incarnation) or whose lease
    /// lapsed is taken over. Decided and written in one store transaction.
    pub fn claim(
        &self,
        actor: &str,
        pop: &str,
        incarnation: u64,
    ) -> Result<ClaimOutcome, DirectoryError> {
        self.claim_once(actor, pop, incarnation, 0)
    }

    /// [`Core::claim`] for the logical claim `token` (random per claim, 0:
    /// none): sent again, to this or another directory process, while its
    /// grant still stands, it returns that grant (the same epoch) instead
    /// of granting another. So a POP may send a claim that got no answer
    /// in time to another directory at once.
    pub fn claim_once(
        &self,
        actor: &str,
        pop: &str,
        incarnation: u64,
        token: u64,
    ) -> Result<ClaimOutcome, DirectoryError> {
        check_name("actor", actor)?;
        check_name("POP name", pop)?;
        let now = self.now_ms();
        let judge = |f: &ClaimFacts| -> Result<(), Refusal> {
            let me = f.claimant.ok_or_else(|| {
                Refusal::No(DirectoryError::UnknownPop {
                    pop: pop.to_string(),
                })
            })?;
            if me.incarnation != incarnation {
                return Err(Refusal::No(DirectoryError::LeaseLapsed {
                    pop: pop.to_string(),
                    incarnation,
                    why: format!("the current incarnation is {}", me.incarnation),
                }));
            }
            if !alive(me, now) {
                return Err(Refusal::No(DirectoryError::LeaseLapsed {
                    pop: pop.to_string(),
                    incarnation,
                    why: format!(
                        "its lease lapsed {} ms ago",
                        now.saturating_sub(me.lease_until_ms)
                    ),
                }));
            }
            match f.current {
                Some(c) if c.active && c.pop != pop => {
                    let h = holder_of(actor, c, f.holder, now);
                    if h.pop_alive {
                        Err(Refusal::Held(h))
                    } else {
                        Ok(())
                    }
                }
                _ => Ok(()),
            }
        };
        let previous = std::cell::RefCell::new(None);
        let judge_noting = |f: &ClaimFacts| {
            *previous.borrow_mut() = f.current.filter(|c| c.active && c.pop != pop).cloned();
            judge(f)
        };
        match self
            .store
            .claim_as(actor, pop, incarnation, now, token, &judge_noting)
            .map_err(DirectoryError::from_storage)?
        {
            Ok(rec) => {
                metrics::counter!("tern_directory_claims_total").increment(1);
                if let Some(from) = previous.into_inner() {
                    metrics::counter!("tern_directory_takeovers_total").increment(1);
                    tracing::info!(
                        actor,
                        pop,
                        from = %from.pop,
                        epoch = rec.epoch,
                        "claim took over an actor whose holder's lease lapsed or that registered again"
                    );
                    // A takeover is a move too (the cluster page draws
                    // it): the actor left a POP that died or restarted.
                    let m = MigrationRecord {
                        actor: actor.to_string(),
                        from_pop: from.pop.clone(),
                        to_pop: pop.to_string(),
                        at_ms: now,
                        duration_ms: 0,
                        reason: "failover: its POP's lease lapsed".into(),
                    };
                    if let Err(e) = self.record_migration(m) {
                        tracing::warn!(actor, error = %e, "cannot record the takeover");
                    }
                }
                self.publish(Change {
                    actor: actor.to_string(),
                    pop: Some(pop.to_string()),
                    epoch: rec.epoch,
                });
                Ok(ClaimOutcome::Granted {
                    epoch: rec.epoch,
                    head_seq: rec.head_seq,
                })
            }
            Err(Refusal::Held(h)) => Ok(ClaimOutcome::Held(h)),
            Err(Refusal::No(e)) => {
                if matches!(e, DirectoryError::LeaseLapsed { .. }) {
                    tracing::warn!(pop, incarnation, error = %e, "claim refused");
                }
                Err(e)
            }
        }
    }

    /// Where `actor` is active, if its POP is alive.
    pub fn lookup(&self, actor: &str) -> Result<Option<Holder>, DirectoryError> {
        check_name("actor", actor)?;
        let now = self.now_ms();
        match self.store.get_activation(actor)? {
            Some(r) if r.active => Ok(Some(self.holder(actor, &r, now)?).filter(|h| h.pop_alive)),
            _ => Ok(None),
        }
    }

    /// Releases `actor` if `epoch` is still current (twice is fine); a
    /// stale epoch is [`DirectoryError::Fenced`].
    pub fn release(&self, actor: &str, epoch: u64) -> Result<(), DirectoryError> {
        check_name("actor", actor)?;
        self.store
            .release(actor, epoch)
            .map_err(DirectoryError::from_storage)?;
        self.publish(Change {
            actor: actor.to_string(),
            pop: None,
            epoch,
        });
        Ok(())
    }

    /// Releases `actor` at `epoch` on behalf of POP `pop`, which must be the
    /// POP that claimed that epoch: a POP may release only its own
    /// activations. The epoch names one claim, and a claim's POP never
    /// changes, so reading the record before the fenced release is enough:
    /// if the epoch moved on meanwhile, the release itself is fenced.
    pub fn release_held_by(
        &self,
        actor: &str,
        epoch: u64,
        pop: &str,
    ) -> Result<(), DirectoryError> {
        check_name("actor", actor)?;
        if let Some(r) = self.store.get_activation(actor)?
            && r.epoch == epoch
            && r.pop != pop
        {
            return Err(DirectoryError::PermissionDenied(format!(
                "POP `{pop}` cannot release {actor}: epoch {epoch} belongs to POP `{}`",
                r.pop
            )));
        }
        self.release(actor, epoch)
    }

    /// Active activations (of `pop` only, if given), with whether their
    /// POP is alive, at most [`ACTIVATIONS_LIST_MAX`], sorted by actor.
    /// Activations of dead POPs are listed with `pop_alive = false`: they
    /// are claimable.
    pub fn list_activations(&self, pop: Option<&str>) -> Result<Vec<Holder>, DirectoryError> {
        if let Some(p) = pop {
            check_name("POP name", p)?;
        }
        let now = self.now_ms();
        let pops: BTreeMap<String, PopRecord> = self.store.list_pops()?.into_iter().collect();
        let recs: Vec<(String, ActivationRecord)> = match pop {
            None => self.store.list_activations()?,
            Some(p) => {
                let mut out = Vec::new();
                for a in self.store.list_activations_by_pop(p)? {
                    if out.len() > ACTIVATIONS_LIST_MAX {
                        break;
                    }
                    if let Some(r) = self.store.get_activation(&a)? {
                        out.push((a, r));
                    }
                }
                out
            }
        };
        let mut list: Vec<Holder> = recs
            .into_iter()
            .filter(|(_, r)| r.active && pop.is_none_or(|p| p == r.pop))
            .take(ACTIVATIONS_LIST_MAX + 1)
            .map(|(actor, r)| holder_of(&actor, &r, pops.get(&r.pop), now))
            .collect();
        if list.len() > ACTIVATIONS_LIST_MAX {
            list.truncate(ACTIVATIONS_LIST_MAX);
            tracing::warn!(
                pop,
                max = ACTIVATIONS_LIST_MAX,
                "activation listing truncated"
            );
        }
        Ok(list)
    }

    /// Every registered POP, and the time it was read at.
    pub fn list_pops(&self) -> Result<(Vec<(String, PopRecord)>, u64), DirectoryError> {
        let now = self.now_ms();
        Ok((self.store.list_pops()?, now))
    }

    /// Whether `rec`'s lease is current at `now_ms`.
    pub fn pop_alive(rec: &PopRecord, now_ms: u64) -> bool {
        alive(rec, now_ms)
    }

    /// Records a migration (`at_ms = 0`: now).
    pub fn record_migration(&self, mut m: MigrationRecord) -> Result<(), DirectoryError> {
        check_name("actor", &m.actor)?;
        check_name("to_pop", &m.to_pop)?;
        check_text("from_pop", &m.from_pop, NAME_BYTES_MAX)?;
        check_text("reason", &m.reason, REASON_BYTES_MAX)?;
        if m.at_ms == 0 {
            m.at_ms = self.now_ms();
        }
        self.store
            .record_migration(&m)
            .map_err(DirectoryError::from_storage)
    }

    /// The latest `limit` migrations (at most the store's
    /// `MIGRATIONS_LIST_MAX`), newest first.
    pub fn list_migrations(&self, limit: usize) -> Result<Vec<MigrationRecord>, DirectoryError> {
        Ok(self.store.list_migrations(limit)?)
    }

    /// Announces POPs whose lease lapsed: logs each (POP, incarnation) once
    /// and tells watchers that its actors are no longer reachable there.
    /// Forgets announced pairs whose POP registered again (or vanished), so
    /// what it remembers stays bounded by the lapsed POPs in the store and
    /// by [`LAPSED_SEEN_MAX`].
    pub fn sweep(&self) -> Result<(), DirectoryError> {
        let now = self.now_ms();
        let lapsed: BTreeMap<(String, u64), u64> = self
            .store
            .list_pops()?
            .into_iter()
            .filter(|(_, rec)| !alive(rec, now))
            .map(|(name, rec)| ((name, rec.incarnation), rec.lease_until_ms))
            .collect();
        lock(&self.lapsed_seen).retain(|k| lapsed.contains_key(k));
        for ((name, incarnation), lease_until_ms) in lapsed {
            let key = (name, incarnation);
            if lock(&self.lapsed_seen).contains(&key) {
                continue;
            }
            let name = &key.0;
            let actors = self.store.list_activations_by_pop(name)?;
            tracing::warn!(
                pop = %name,
                incarnation,
                late_by_ms = now.saturating_sub(lease_until_ms),
                actors = actors.len(),
                "POP lease lapsed; its activations are void"
            );
            for actor in actors {
                if let Some(r) = self.store.get_activation(&actor)?
                    && r.active
                    && &r.pop == name
                {
                    self.publish(Change {
                        actor,
                        pop: None,
                        epoch: r.epoch,
                    });
                }
            }
            let mut seen = lock(&self.lapsed_seen);
            if seen.len() < self.lapsed_seen_max {
                seen.insert(key);
            } else {
                tracing::warn!(
                    pop = %key.0,
                    max = self.lapsed_seen_max,
                    "too many lapsed POPs to remember; announcing this one again next sweep"
                );
            }
        }
        // Migration records are kept by count and age.
        let trimmed = self.store.trim_migrations(now)?;
        if trimmed > 0 {
            tracing::debug!(trimmed, "migration records trimmed");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    const LEASE_MS: u64 = 3000;
    const T0: u64 = 1_000_000;

    /// A core over the memory store with a manual clock.
    fn core() -> (Core, Arc<AtomicU64>) {
        let clock = Arc::new(AtomicU64::new(T0));
        let c = clock.clone();
        let cfg = DirectoryConfig {
            lease_ms: LEASE_MS,
            heartbeat_ms: 1000,
            clock: Arc::new(move || c.load(Ordering::SeqCst)),
        };
        (Core::new(Store::memory(), cfg), clock)
    }

    fn reg(core: &Core, pop: &str) -> u64 {
        core.register(pop, "http://127.0.0.1:7000", (0.0, 0.0))
            .unwrap()
            .incarnation
    }

    fn granted(core: &Core, actor: &str, pop: &str, inc: u64) -> u64 {
        match core.claim(actor, pop, inc).unwrap() {
            ClaimOutcome::Granted { epoch, .. } => epoch,
            o => panic!("{actor}: expected a grant to {pop}, got {o:?}"),
        }
    }

    fn drain(rx: &mut broadcast::Receiver<Change>) -> Vec<(String, Option<String>, u64)> {
        let mut out = Vec::new();
        while let Ok(c) = rx.try_recv() {
            out.push((c.actor, c.pop, c.epoch));
        }
        out
    }

    fn ch(actor: &str, pop: Option<&str>, epoch: u64) -> (String, Option<String>, u64) {
        (actor.to_string(), pop.map(str::to_string), epoch)
    }

    /// A plain `#[test]`: no tokio runtime exists, as under the simulator.
    #[test]
    fn core_decides_without_a_runtime() {
        let (core, clock) = core();
        let mut rx = core.subscribe();
        let fra = reg(&core, "fra");
        let iad = reg(&core, "iad");
        assert_eq!(
            core.claim("counter/x", "fra", fra).unwrap(),
            ClaimOutcome::Granted {
                epoch: 1,
                head_seq: 0
            }
        );
        match core.claim("counter/x", "iad", iad).unwrap() {
            ClaimOutcome::Held(h) => {
                assert_eq!((h.pop.as_str(), h.epoch, h.pop_alive), ("fra", 1, true))
            }
            o => panic!("expected held, got {o:?}"),
        }
        clock.fetch_add(2000, Ordering::SeqCst);
        assert!(core.heartbeat("iad", iad).unwrap().0);
        clock.fetch_add(LEASE_MS - 2000 + CLOCK_SKEW_MS_MAX + 1, Ordering::SeqCst);
        assert_eq!(granted(&core, "counter/x", "iad", iad), 2, "takeover");
        assert!(matches!(
            core.release("counter/x", 1),
            Err(DirectoryError::Fenced {
                epoch_current: 2,
                ..
            })
        ));
        assert!(matches!(
            core.claim("counter/y", "fra", fra),
            Err(DirectoryError::LeaseLapsed { .. })
        ));
        core.release("counter/x", 2).unwrap();
        assert!(core.lookup("counter/x").unwrap().is_none());
        assert_eq!(
            drain(&mut rx),
            [
                ch("counter/x", Some("fra"), 1),
                ch("counter/x", Some("iad"), 2),
                ch("counter/x", None, 2),
            ]
        );
    }

    #[test]
    fn lapsed_seen_forgets_pops_that_registered_again() {
        let (core, clock) = core();
        let mut rx = core.subscribe();
        let fra = reg(&core, "fra");
        granted(&core, "counter/x", "fra", fra);
        drain(&mut rx);
        clock.fetch_add(LEASE_MS + 1, Ordering::SeqCst);
        core.sweep().unwrap();
        core.sweep().unwrap();
        assert_eq!(drain(&mut rx), [ch("counter/x", None, 1)], "announced once");
        assert_eq!(lock(&core.lapsed_seen).len(), 1);

        let fra2 = reg(&core, "fra"); // voids counter/x
        core.sweep().unwrap();
        assert!(lock(&core.lapsed_seen).is_empty(), "pruned: fra is alive");
        granted(&core, "counter/y", "fra", fra2);
        drain(&mut rx);
        clock.fetch_add(LEASE_MS + 1, Ordering::SeqCst);
        core.sweep().unwrap();
        assert_eq!(drain(&mut rx), [ch("counter/y", None, 1)]);
        assert_eq!(
            *lock(&core.lapsed_seen),
            BTreeSet::from([("fra".to_string(), fra2)])
        );
    }

    #[test]
    fn lapsed_seen_is_capped() {
        let (mut core, clock) = core();
        core.lapsed_seen_max = 1;
        let mut rx = core.subscribe();
        for pop in ["ams", "fra", "iad"] {
            let inc = reg(&core, pop);
            granted(&core, &format!("counter/{pop}"), pop, inc);
        }
        drain(&mut rx);
        clock.fetch_add(LEASE_MS + 1, Ordering::SeqCst);
        core.sweep().unwrap();
        assert_eq!(drain(&mut rx).len(), 3, "every lapse is announced");
        assert_eq!(lock(&core.lapsed_seen).len(), 1);
        core.sweep().unwrap();
        assert_eq!(
            drain(&mut rx),
            [ch("counter/fra", None, 1), ch("counter/iad", None, 1)],
            "lapses past the cap are announced again, not forgotten"
        );
        assert_eq!(lock(&core.lapsed_seen).len(), 1);
    }

    #[test]
    fn watch_subscribers_are_bounded() {
        let (mut core, _clock) = core();
        core.watchers_max = 2;
        let a = core.try_subscribe().unwrap();
        let _b = core.try_subscribe().unwrap();
        assert!(matches!(
            core.try_subscribe(),
            Err(DirectoryError::Overloaded { max: 2, .. })
        ));
        drop(a);
        core.try_subscribe().unwrap();
    }

    #[test]
    fn oversized_fields_are_invalid_argument() {
        let (core, _clock) = core();
        let long = "x".repeat(NAME_BYTES_MAX + 1);
        let long_endpoint = format!("http://{}:1", "h".repeat(ENDPOINT_BYTES_MAX));
        assert!(matches!(
            core.register(&long, "http://h:1", (0.0, 0.0)),
            Err(DirectoryError::InvalidArgument(_))
        ));
        assert!(matches!(
            core.register("fra", &long_endpoint, (0.0, 0.0)),
            Err(DirectoryError::InvalidArgument(_))
        ));
        let m = MigrationRecord {
            actor: "a".into(),
            from_pop: "fra".into(),
            to_pop: "iad".into(),
            at_ms: 1,
            duration_ms: 1,
            reason: "r".repeat(REASON_BYTES_MAX + 1),
        };
        assert!(matches!(
            core.record_migration(m),
            Err(DirectoryError::InvalidArgument(_))
        ));
        assert!(core.list_migrations(10).unwrap().is_empty());
    }
}
