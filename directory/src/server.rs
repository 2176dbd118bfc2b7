//! The gRPC `DirectoryService` (`tern directory`): POP membership with
//! leases, claims, lookups, releases, migrations and a watch stream.
//!
//! The decisions live in [`Core`], which speaks only `tern-storage` records
//! and is called on blocking threads (storage calls are synchronous). The
//! [`DirectoryService`] impl below is the tonic edge: it validates and
//! converts wire types and maps [`DirectoryError`] to gRPC codes
//! ([`grpc_code`]).

use std::collections::HashSet;
use std::future::Future;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};

use futures::Stream;
use tern_proto::directory as pb;
use tern_proto::directory::directory_service_server::{DirectoryService, DirectoryServiceServer};
use tern_storage::{ActivationRecord, MigrationRecord, PopRecord, StorageError, Store};
use tokio::sync::{broadcast, watch};
use tonic::{Code, Request, Response, Status};

use crate::DirectoryError;

/// Changes a watch subscriber may fall behind by before its stream ends
/// with `ABORTED` (it then reconnects and drops its cached lookups).
pub const WATCH_BUFFER_CHANGES_MAX: usize = 4096;
/// Migrations `ListMigrations` returns when the request gives no limit.
pub const MIGRATIONS_LIST_DEFAULT: usize = 100;
/// Times a claim re-reads the holder when it changes under it.
pub const CLAIM_ATTEMPTS_MAX: u32 = 4;
/// Longest POP or actor name accepted, in bytes.
pub const NAME_BYTES_MAX: usize = 1024;
/// Lock stripes serialising `Register` and `Claim` of the same POP name.
const POP_LOCK_STRIPES: usize = 64;

/// Configuration of the directory service.
#[derive(Clone)]
pub struct DirectoryConfig {
    /// How long a registration or heartbeat keeps a POP alive, in ms.
    pub lease_ms: u64,
    /// How often POPs should heartbeat, in ms (told to them at register).
    pub heartbeat_ms: u64,
    /// The clock: ms since the Unix epoch. Injectable for tests.
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

/// Wall-clock ms since the Unix epoch.
pub fn system_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The gRPC code of an error, by what the caller should do next.
pub fn grpc_code(e: &DirectoryError) -> Code {
    match e {
        e if e.is_retryable() => Code::Unavailable,
        DirectoryError::LeaseLapsed { .. }
        | DirectoryError::UnknownPop { .. }
        | DirectoryError::Fenced { .. }
        | DirectoryError::HeldElsewhere { .. } => Code::FailedPrecondition,
        DirectoryError::Storage(StorageError::Fenced { .. }) => Code::FailedPrecondition,
        DirectoryError::InvalidArgument(_)
        | DirectoryError::Storage(StorageError::InvalidArgument(_)) => Code::InvalidArgument,
        _ => Code::Internal,
    }
}

impl From<DirectoryError> for Status {
    fn from(e: DirectoryError) -> Status {
        Status::new(grpc_code(&e), e.to_string())
    }
}

/// The directory service over `store`, ready to add to a tonic server.
pub fn service(store: Store, cfg: DirectoryConfig) -> DirectoryServiceServer<GrpcDirectory> {
    DirectoryServiceServer::new(GrpcDirectory::new(store, cfg))
}

/// Serves the directory on `listener` until `shutdown` completes. At
/// shutdown, open watch streams end (subscribers reconnect elsewhere or
/// later) and in-flight requests finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    store: Store,
    cfg: DirectoryConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DirectoryError> {
    let dir = GrpcDirectory::new(store, cfg);
    let core = dir.core.clone();
    let addr = listener.local_addr().ok();
    tracing::info!(?addr, lease_ms = core.cfg.lease_ms, "directory serving");
    let sweeper = tokio::spawn(sweep_loop(core.clone()));
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let res = tonic::transport::Server::builder()
        .add_service(DirectoryServiceServer::new(dir))
        .serve_with_incoming_shutdown(incoming, async {
            shutdown.await;
            core.close();
        })
        .await;
    sweeper.abort();
    core.close();
    tracing::info!(?addr, "directory stopped");
    res.map_err(|e| DirectoryError::Server(format!("serving on {addr:?}: {e}")))
}

/// Every heartbeat period, notices POPs whose lease lapsed, logs them once
/// per incarnation and tells watchers their actors are gone.
async fn sweep_loop(core: Arc<Core>) {
    let period = std::time::Duration::from_millis(core.cfg.heartbeat_ms.max(10));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let c = core.clone();
        match tokio::task::spawn_blocking(move || c.sweep()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "lease sweep failed"),
            Err(e) => tracing::warn!(error = %e, "lease sweep task failed"),
        }
    }
}

// ------------------------------------------------------------------- core

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
        /// The new epoch.
        epoch: u64,
        /// The actor's snapshot head.
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

/// The directory's decisions, over storage records only. Every method
/// blocks on storage: call it from a blocking thread.
pub struct Core {
    store: Store,
    cfg: DirectoryConfig,
    changes: broadcast::Sender<Change>,
    closing: watch::Sender<bool>,
    pop_locks: Vec<Mutex<()>>,
    /// (pop, incarnation) lapses already logged by the sweep.
    lapsed_seen: Mutex<HashSet<(String, u64)>>,
}

fn alive(rec: &PopRecord, now: u64) -> bool {
    now <= rec.lease_until_ms
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
    if name.len() > NAME_BYTES_MAX || name.chars().any(char::is_control) {
        return Err(DirectoryError::InvalidArgument(format!(
            "{what} {name:?} must be at most {NAME_BYTES_MAX} bytes without control characters"
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
    fn new(store: Store, cfg: DirectoryConfig) -> Core {
        let (changes, _) = broadcast::channel(WATCH_BUFFER_CHANGES_MAX);
        let (closing, _) = watch::channel(false);
        Core {
            store,
            cfg,
            changes,
            closing,
            pop_locks: (0..POP_LOCK_STRIPES).map(|_| Mutex::new(())).collect(),
            lapsed_seen: Mutex::new(HashSet::new()),
        }
    }

    fn now(&self) -> u64 {
        (self.cfg.clock)()
    }

    /// Serialises `Register` and `Claim` of one POP name, so a claim of the
    /// new incarnation cannot be voided by its own registration.
    fn pop_lock(&self, pop: &str) -> MutexGuard<'_, ()> {
        let mut h = DefaultHasher::new();
        pop.hash(&mut h);
        lock(&self.pop_locks[(h.finish() as usize) % POP_LOCK_STRIPES])
    }

    fn publish(&self, c: Change) {
        // No subscribers is fine.
        let _ = self.changes.send(c);
    }

    fn close(&self) {
        self.closing.send_replace(true);
    }

    /// Registers (or re-registers) `pop`: voids every activation it held,
    /// then starts incarnation + 1 with a fresh lease.
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
        let _g = self.pop_lock(pop);
        let mut voided = Vec::new();
        for actor in self.store.list_activations_by_pop(pop)? {
            let Some(rec) = self.store.get_activation(&actor)? else {
                continue;
            };
            if !rec.active || rec.pop != pop {
                continue;
            }
            match self.store.release(&actor, rec.epoch) {
                Ok(()) => voided.push((actor, rec.epoch)),
                // Someone took it over meanwhile: not ours to void.
                Err(StorageError::Fenced { .. }) => {}
                Err(e) => return Err(DirectoryError::from_storage(e)),
            }
        }
        let now = self.now();
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
        metrics::counter!("tern_directory_registrations_total").increment(1);
        tracing::info!(
            pop,
            endpoint,
            incarnation,
            previous_incarnation = ?previous,
            voided = voided.len(),
            lease_until_ms,
            "POP registered"
        );
        let n = voided.len();
        for (actor, epoch) in voided {
            self.publish(Change {
                actor,
                pop: None,
                epoch,
            });
        }
        Ok(Registered {
            incarnation,
            lease_until_ms,
            voided: n,
        })
    }

    /// Renews the lease of `pop`'s `incarnation` if it is still current.
    /// Returns (alive, lease_until_ms).
    pub fn heartbeat(&self, pop: &str, incarnation: u64) -> Result<(bool, u64), DirectoryError> {
        check_name("POP name", pop)?;
        let now = self.now();
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
        Ok(Holder {
            actor: actor.to_string(),
            pop: rec.pop.clone(),
            endpoint: pop.as_ref().map(|p| p.addr.clone()).unwrap_or_default(),
            epoch: rec.epoch,
            pop_alive: pop.as_ref().is_some_and(|p| alive(p, now)),
        })
    }

    /// Claims `actor` for `pop`'s `incarnation`, which must be alive.
    pub fn claim(
        &self,
        actor: &str,
        pop: &str,
        incarnation: u64,
    ) -> Result<ClaimOutcome, DirectoryError> {
        check_name("actor", actor)?;
        check_name("POP name", pop)?;
        let _g = self.pop_lock(pop);
        let now = self.now();
        let me = self
            .store
            .get_pop(pop)?
            .ok_or_else(|| DirectoryError::UnknownPop {
                pop: pop.to_string(),
            })?;
        if me.incarnation != incarnation {
            return Err(DirectoryError::LeaseLapsed {
                pop: pop.to_string(),
                incarnation,
                why: format!("the current incarnation is {}", me.incarnation),
            });
        }
        if !alive(&me, now) {
            tracing::warn!(pop, incarnation, "claim from a POP whose lease lapsed");
            return Err(DirectoryError::LeaseLapsed {
                pop: pop.to_string(),
                incarnation,
                why: format!(
                    "its lease lapsed {} ms ago",
                    now.saturating_sub(me.lease_until_ms)
                ),
            });
        }
        for _ in 0..CLAIM_ATTEMPTS_MAX {
            // The holder's liveness, read outside the claim transaction:
            // safe because a lapsed lease never comes back.
            let cur = self.store.get_activation(actor)?;
            let other = match &cur {
                Some(r) if r.active && r.pop != pop => Some(self.holder(actor, r, now)?),
                _ => None,
            };
            let taken_from = other.as_ref().map(|h| h.pop.clone());
            let dead_holder = other
                .as_ref()
                .filter(|h| !h.pop_alive)
                .map(|h| h.pop.clone());
            let may_take_over = |held: &ActivationRecord| {
                held.pop == pop || dead_holder.as_deref() == Some(&held.pop)
            };
            match self.store.claim(actor, pop, now, &may_take_over) {
                Ok(rec) => {
                    metrics::counter!("tern_directory_claims_total").increment(1);
                    if let Some(from) = taken_from {
                        metrics::counter!("tern_directory_takeovers_total").increment(1);
                        tracing::info!(
                            actor,
                            pop,
                            from = %from,
                            epoch = rec.epoch,
                            "claim took over an actor from a POP whose lease lapsed"
                        );
                    }
                    self.publish(Change {
                        actor: actor.to_string(),
                        pop: Some(pop.to_string()),
                        epoch: rec.epoch,
                    });
                    return Ok(ClaimOutcome::Granted {
                        epoch: rec.epoch,
                        head_seq: rec.head_seq,
                    });
                }
                Err(StorageError::HeldElsewhere {
                    pop: holder, epoch, ..
                }) => {
                    if let Some(h) = other.filter(|h| h.pop == holder && h.epoch == epoch) {
                        return Ok(ClaimOutcome::Held(h));
                    }
                    // The holder changed between our read and the claim:
                    // look again.
                }
                Err(e) => return Err(DirectoryError::from_storage(e)),
            }
        }
        Err(DirectoryError::Contended {
            actor: actor.to_string(),
            attempts: CLAIM_ATTEMPTS_MAX,
        })
    }

    /// Where `actor` is active, if its POP is alive.
    pub fn lookup(&self, actor: &str) -> Result<Option<Holder>, DirectoryError> {
        check_name("actor", actor)?;
        let now = self.now();
        match self.store.get_activation(actor)? {
            Some(r) if r.active => Ok(Some(self.holder(actor, &r, now)?).filter(|h| h.pop_alive)),
            _ => Ok(None),
        }
    }

    /// Releases `actor` if `epoch` is still current.
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

    /// Every active activation (of `pop` only, if given), with whether its
    /// POP is alive. Activations of dead POPs are listed with
    /// `pop_alive = false`: they are claimable.
    pub fn list_activations(&self, pop: Option<&str>) -> Result<Vec<Holder>, DirectoryError> {
        let now = self.now();
        let pops: std::collections::HashMap<String, PopRecord> =
            self.store.list_pops()?.into_iter().collect();
        let recs: Vec<(String, ActivationRecord)> = match pop {
            None => self.store.list_activations()?,
            Some(p) => {
                let mut out = Vec::new();
                for a in self.store.list_activations_by_pop(p)? {
                    if let Some(r) = self.store.get_activation(&a)? {
                        out.push((a, r));
                    }
                }
                out
            }
        };
        Ok(recs
            .into_iter()
            .filter(|(_, r)| r.active && pop.is_none_or(|p| p == r.pop))
            .map(|(actor, r)| {
                let p = pops.get(&r.pop);
                Holder {
                    actor,
                    endpoint: p.map(|p| p.addr.clone()).unwrap_or_default(),
                    pop_alive: p.is_some_and(|p| alive(p, now)),
                    pop: r.pop,
                    epoch: r.epoch,
                }
            })
            .collect())
    }

    /// Every registered POP, and the time it was read at.
    pub fn list_pops(&self) -> Result<(Vec<(String, PopRecord)>, u64), DirectoryError> {
        let now = self.now();
        Ok((self.store.list_pops()?, now))
    }

    /// Records a migration (`at_ms = 0`: now).
    pub fn record_migration(&self, mut m: MigrationRecord) -> Result<(), DirectoryError> {
        check_name("actor", &m.actor)?;
        check_name("to_pop", &m.to_pop)?;
        if m.at_ms == 0 {
            m.at_ms = self.now();
        }
        self.store
            .record_migration(&m)
            .map_err(DirectoryError::from_storage)
    }

    /// The latest `limit` migrations, newest first.
    pub fn list_migrations(&self, limit: usize) -> Result<Vec<MigrationRecord>, DirectoryError> {
        Ok(self.store.list_migrations(limit)?)
    }

    /// Logs POPs whose lease lapsed (once per incarnation) and tells
    /// watchers that their actors are no longer reachable there.
    pub fn sweep(&self) -> Result<(), DirectoryError> {
        let now = self.now();
        for (name, rec) in self.store.list_pops()? {
            if alive(&rec, now) {
                continue;
            }
            if !lock(&self.lapsed_seen).insert((name.clone(), rec.incarnation)) {
                continue;
            }
            let actors = self.store.list_activations_by_pop(&name)?;
            tracing::warn!(
                pop = %name,
                incarnation = rec.incarnation,
                late_by_ms = now.saturating_sub(rec.lease_until_ms),
                actors = actors.len(),
                "POP lease lapsed; its activations are void"
            );
            for actor in actors {
                if let Some(r) = self.store.get_activation(&actor)?
                    && r.active
                    && r.pop == name
                {
                    self.publish(Change {
                        actor,
                        pop: None,
                        epoch: r.epoch,
                    });
                }
            }
        }
        Ok(())
    }
}

// -------------------------------------------------------------- tonic edge

/// The tonic implementation of `DirectoryService`.
#[derive(Clone)]
pub struct GrpcDirectory {
    core: Arc<Core>,
}

impl GrpcDirectory {
    /// A service over `store`.
    pub fn new(store: Store, cfg: DirectoryConfig) -> GrpcDirectory {
        GrpcDirectory {
            core: Arc::new(Core::new(store, cfg)),
        }
    }

    /// The decision core (for embedding and tests).
    pub fn core(&self) -> &Arc<Core> {
        &self.core
    }

    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Core) -> Result<T, DirectoryError> + Send + 'static,
    ) -> Result<T, Status> {
        let core = self.core.clone();
        tokio::task::spawn_blocking(move || f(&core))
            .await
            .map_err(|e| DirectoryError::Server(format!("blocking task failed: {e}")))?
            .map_err(Status::from)
    }
}

fn to_pb(h: Holder) -> pb::Activation {
    pb::Activation {
        actor: h.actor,
        pop: h.pop,
        endpoint: h.endpoint,
        epoch: h.epoch,
        pop_alive: h.pop_alive,
    }
}

/// The stream type of `Watch`.
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::ActivationChange, Status>> + Send>>;

#[tonic::async_trait]
impl DirectoryService for GrpcDirectory {
    async fn register(
        &self,
        req: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterReply>, Status> {
        let r = req.into_inner();
        let reg = self
            .run(move |c| c.register(&r.name, &r.endpoint, (r.lat, r.lon)))
            .await?;
        Ok(Response::new(pb::RegisterReply {
            incarnation: reg.incarnation,
            lease_ms: self.core.cfg.lease_ms,
            heartbeat_ms: self.core.cfg.heartbeat_ms,
            lease_until_ms: reg.lease_until_ms,
        }))
    }

    async fn heartbeat(
        &self,
        req: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatReply>, Status> {
        let r = req.into_inner();
        let (alive, lease_until_ms) = self
            .run(move |c| c.heartbeat(&r.name, r.incarnation))
            .await?;
        Ok(Response::new(pb::HeartbeatReply {
            alive,
            lease_until_ms,
        }))
    }

    async fn lookup(
        &self,
        req: Request<pb::LookupRequest>,
    ) -> Result<Response<pb::LookupReply>, Status> {
        let r = req.into_inner();
        let h = self.run(move |c| c.lookup(&r.actor)).await?;
        Ok(Response::new(pb::LookupReply {
            active: h.map(to_pb),
        }))
    }

    async fn claim(
        &self,
        req: Request<pb::ClaimRequest>,
    ) -> Result<Response<pb::ClaimReply>, Status> {
        use pb::claim_reply::Outcome;
        let r = req.into_inner();
        let out = self
            .run(move |c| c.claim(&r.actor, &r.pop, r.incarnation))
            .await?;
        let outcome = match out {
            ClaimOutcome::Granted { epoch, head_seq } => {
                Outcome::Granted(pb::Granted { epoch, head_seq })
            }
            ClaimOutcome::Held(h) => Outcome::Held(to_pb(h)),
        };
        Ok(Response::new(pb::ClaimReply {
            outcome: Some(outcome),
        }))
    }

    async fn release(
        &self,
        req: Request<pb::ReleaseRequest>,
    ) -> Result<Response<pb::ReleaseReply>, Status> {
        let r = req.into_inner();
        self.run(move |c| c.release(&r.actor, r.epoch)).await?;
        Ok(Response::new(pb::ReleaseReply {}))
    }

    async fn list_activations(
        &self,
        req: Request<pb::ListActivationsRequest>,
    ) -> Result<Response<pb::ListActivationsReply>, Status> {
        let r = req.into_inner();
        let list = self
            .run(move |c| c.list_activations(Some(r.pop.as_str()).filter(|p| !p.is_empty())))
            .await?;
        Ok(Response::new(pb::ListActivationsReply {
            activations: list.into_iter().map(to_pb).collect(),
        }))
    }

    async fn list_pops(
        &self,
        _req: Request<pb::ListPopsRequest>,
    ) -> Result<Response<pb::ListPopsReply>, Status> {
        let (pops, now) = self.run(|c| c.list_pops()).await?;
        let lease_ms = self.core.cfg.lease_ms;
        let pops = pops
            .into_iter()
            .map(|(name, p)| pb::Pop {
                name,
                endpoint: p.addr.clone(),
                lat: p.coords.0,
                lon: p.coords.1,
                incarnation: p.incarnation,
                lease_until_ms: p.lease_until_ms,
                alive: alive(&p, now),
                lease_age_ms: now.saturating_sub(p.lease_until_ms.saturating_sub(lease_ms)),
            })
            .collect();
        Ok(Response::new(pb::ListPopsReply { pops, now_ms: now }))
    }

    async fn record_migration(
        &self,
        req: Request<pb::Migration>,
    ) -> Result<Response<pb::RecordMigrationReply>, Status> {
        let m = req.into_inner();
        let rec = MigrationRecord {
            actor: m.actor,
            from_pop: m.from_pop,
            to_pop: m.to_pop,
            at_ms: m.at_ms,
            duration_ms: m.duration_ms,
            reason: m.reason,
        };
        self.run(move |c| c.record_migration(rec)).await?;
        Ok(Response::new(pb::RecordMigrationReply {}))
    }

    async fn list_migrations(
        &self,
        req: Request<pb::ListMigrationsRequest>,
    ) -> Result<Response<pb::ListMigrationsReply>, Status> {
        let limit = match req.into_inner().limit {
            0 => MIGRATIONS_LIST_DEFAULT,
            n => n as usize,
        };
        let list = self.run(move |c| c.list_migrations(limit)).await?;
        Ok(Response::new(pb::ListMigrationsReply {
            migrations: list
                .into_iter()
                .map(|m| pb::Migration {
                    actor: m.actor,
                    from_pop: m.from_pop,
                    to_pop: m.to_pop,
                    at_ms: m.at_ms,
                    duration_ms: m.duration_ms,
                    reason: m.reason,
                })
                .collect(),
        }))
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        _req: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let rx = self.core.changes.subscribe();
        let closing = self.core.closing.subscribe();
        let stream = futures::stream::unfold(Some((rx, closing)), |state| async move {
            let (mut rx, mut closing) = state?;
            if *closing.borrow() {
                return None;
            }
            let next = tokio::select! {
                r = rx.recv() => r,
                _ = closing.wait_for(|c| *c) => return None,
            };
            match next {
                Ok(c) => Some((
                    Ok(pb::ActivationChange {
                        actor: c.actor,
                        pop: c.pop.unwrap_or_default(),
                        epoch: c.epoch,
                    }),
                    Some((rx, closing)),
                )),
                Err(broadcast::error::RecvError::Lagged(n)) => Some((
                    Err(Status::aborted(format!(
                        "watch fell behind by {n} changes (buffer {WATCH_BUFFER_CHANGES_MAX}); reconnect and drop cached lookups"
                    ))),
                    None,
                )),
                Err(broadcast::error::RecvError::Closed) => None,
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }
}
