//! The POP node: actor types, the activation table, mailboxes and turns.
//!
//! Each active actor has one tokio task that owns its instance and takes
//! messages from a bounded mailbox, so it runs one turn at a time. A turn
//! runs under `block_in_place` (wasm is synchronous; a nested `call` import
//! blocks on the callee's reply). After a turn the task folds the changed
//! pages into the baseline; in `turn` durability it commits them through the
//! group committer before the reply is released. A trap drops the instance:
//! the next turn re-instantiates from the baseline (the state before the
//! failed turn). An actor idle for `idle_ms` is persisted, released and
//! removed.
//!
//! Routing (with a directory): a call for an actor not active here is looked
//! up (cached, invalidated by the directory's watch stream); if a live POP
//! holds it the call is forwarded there once; a forwarded call that finds no
//! activation answers "not here" and the sender looks up again. Otherwise
//! this POP claims the actor (epoch + 1) and rehydrates it. An owner that sees
//! a forwarded call its placement policy says should move the actor persists,
//! releases and answers "moved"; the sender then claims it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use tern_directory::{Directory, DirectoryError};
use tern_storage::{CommitRequest, SnapshotMeta, Store, TypeRecord};
use tokio::sync::{mpsc, oneshot, watch};

use crate::cluster::{ClaimOutcome, DirectoryLink, Owner};
use crate::committer::Committer;
use crate::config::{Durability, Limits, Placement, TypeConfig};
use crate::engine::{ENGINE_VERSION, TernEngine};
use crate::error::{Result, RuntimeError};
use crate::idem::{IDEMPOTENCY_KEY_BYTES_MAX, IdemTable, Outcome};
use crate::instance::{
    ActorCaller, ActorInstance, InstanceParams, NestedCall, Prepared, guest_error,
};
use crate::snapshot::Baseline;

/// Longest actor type or id, in bytes.
pub const ACTOR_NAME_BYTES_MAX: usize = 256;

/// Longest method name, in bytes.
pub const METHOD_NAME_BYTES_MAX: usize = 256;

/// Deepest chain of nested actor-to-actor calls.
pub const CALL_DEPTH_MAX: usize = 16;

/// Times a call is re-routed (stale caches, moves) before it fails with
/// UNAVAILABLE.
pub const ROUTE_ATTEMPTS_MAX: usize = 6;

/// A call to an actor.
#[derive(Debug, Clone)]
pub struct CallRequest {
    /// Actor type.
    pub actor_type: String,
    /// Actor id.
    pub id: String,
    /// Method.
    pub method: String,
    /// Payload (JSON by convention).
    pub payload: Vec<u8>,
    /// A retried call with the same key is applied at most once.
    pub idempotency_key: Option<String>,
}

impl CallRequest {
    /// A call without an idempotency key.
    pub fn new(actor_type: &str, id: &str, method: &str, payload: Vec<u8>) -> CallRequest {
        CallRequest {
            actor_type: actor_type.into(),
            id: id.into(),
            method: method.into(),
            payload,
            idempotency_key: None,
        }
    }
}

/// How a call reached this POP.
#[derive(Debug, Clone, Default)]
pub struct Route {
    /// Actors whose turns wait on this call (outermost first).
    pub chain: Vec<String>,
    /// The POP that forwarded it, if it was forwarded.
    pub via: Option<String>,
}

/// A successful call's result.
#[derive(Debug, Clone)]
pub struct CallOutput {
    /// The reply payload.
    pub payload: Vec<u8>,
    /// The activation epoch that ran the turn.
    pub epoch: u64,
    /// The POP that ran the turn.
    pub pop: String,
}

/// How to deploy a type.
#[derive(Debug, Clone, Copy, Default)]
pub struct DeployOptions {
    /// When turns reach the store.
    pub durability: Durability,
    /// Limits (zero fields take defaults).
    pub limits: Limits,
    /// Placement policy.
    pub placement: Placement,
    /// Allow restoring actors persisted by the type's previous code.
    pub upgrade: bool,
}

/// What `deploy` reports.
#[derive(Debug, Clone)]
pub struct DeployInfo {
    /// sha256 of the component.
    pub digest: String,
    /// Its size in bytes.
    pub component_bytes: u64,
}

/// A deployed actor type, compiled.
pub struct ActorType {
    /// Its name.
    pub name: String,
    /// Its configuration.
    pub config: TypeConfig,
    /// The compiled component.
    pub prep: Arc<Prepared>,
}

/// Counters shown by `status`.
#[derive(Debug, Default)]
pub struct NodeCounters {
    /// Turns run.
    pub turns: AtomicU64,
    /// Snapshot commits.
    pub commits: AtomicU64,
}

/// A snapshot of a node's state for `status`.
#[derive(Debug, Clone)]
pub struct NodeStatus {
    /// POP name.
    pub pop: String,
    /// Active actors (`type/id`).
    pub actors: Vec<String>,
    /// Deployed types.
    pub types: Vec<(String, String, TypeConfig)>,
    /// Turns run.
    pub turns: u64,
    /// Commits.
    pub commits: u64,
    /// Bytes written to the store by this process.
    pub store_bytes_written: u64,
    /// POPs, activations and migrations from the directory, if any.
    pub cluster: Option<ClusterView>,
}

/// The directory's view: POPs, activations, recent migrations.
pub type ClusterView = (
    Vec<tern_proto::directory::Pop>,
    Vec<tern_proto::directory::Activation>,
    Vec<tern_proto::directory::Migration>,
);

/// The directory a node uses.
#[derive(Clone)]
enum Dir {
    /// In-process, over the store: a single POP.
    Local(Directory),
    /// The DirectoryService: several POPs.
    Remote(Arc<DirectoryLink>),
}

enum Msg {
    Call {
        method: String,
        payload: Vec<u8>,
        idem: Option<String>,
        route: Route,
        reply: oneshot::Sender<Result<CallOutput>>,
    },
    Evict,
    /// Drop without persisting or releasing (the lease was lost).
    Abandon,
    Images {
        reply: oneshot::Sender<Vec<Vec<u8>>>,
    },
}

struct ActivationHandle {
    tx: mpsc::Sender<Msg>,
    done: watch::Receiver<bool>,
}

struct NodeInner {
    name: String,
    store: Store,
    dir: Dir,
    peers: DashMap<
        String,
        tern_proto::actor::actor_service_client::ActorServiceClient<tonic::transport::Channel>,
    >,
    engine: TernEngine,
    committer: Committer,
    types: DashMap<String, Arc<ActorType>>,
    actors: DashMap<String, Arc<ActivationHandle>>,
    shutting_down: AtomicBool,
    counters: NodeCounters,
    rt: tokio::runtime::Handle,
}

/// A POP node. Cheap to clone.
#[derive(Clone)]
pub struct Node {
    inner: Arc<NodeInner>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn check_name(what: &str, s: &str, max: usize) -> Result<()> {
    if s.is_empty() {
        return Err(RuntimeError::InvalidArgument(format!("{what} is empty")));
    }
    if s.len() > max {
        return Err(RuntimeError::InvalidArgument(format!(
            "{what} is {} bytes, over the limit of {max} bytes",
            s.len()
        )));
    }
    if s.contains('/') && what != "actor id" {
        return Err(RuntimeError::InvalidArgument(format!(
            "{what} `{s}` must not contain '/'"
        )));
    }
    if s.chars().any(|c| c.is_control()) {
        return Err(RuntimeError::InvalidArgument(format!(
            "{what} must not contain control characters"
        )));
    }
    Ok(())
}

impl Node {
    /// Starts a node named `name` over `store`. Must be called inside a
    /// multi-threaded tokio runtime.
    pub fn new(name: impl Into<String>, store: Store, engine: TernEngine) -> Node {
        let name = name.into();
        let dir = Dir::Local(Directory::new(store.clone(), name.clone()));
        Node::build(name, store, engine, dir)
    }

    /// Starts a node that is one POP of a cluster run by the directory
    /// behind `link`; it heartbeats and follows the directory's changes.
    pub fn with_directory(
        name: impl Into<String>,
        store: Store,
        engine: TernEngine,
        link: Arc<DirectoryLink>,
    ) -> Node {
        let node = Node::build(name.into(), store, engine, Dir::Remote(link.clone()));
        link.spawn_watch();
        node.spawn_heartbeat(link);
        node
    }

    fn build(name: String, store: Store, engine: TernEngine, dir: Dir) -> Node {
        Node {
            inner: Arc::new(NodeInner {
                dir,
                peers: DashMap::new(),
                committer: Committer::start(store.clone()),
                name,
                store,
                engine,
                types: DashMap::new(),
                actors: DashMap::new(),
                shutting_down: AtomicBool::new(false),
                counters: NodeCounters::default(),
                rt: tokio::runtime::Handle::current(),
            }),
        }
    }

    /// The POP name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// Validates, stores and compiles a component as actor type `name`.
    /// With `upgrade`, actors persisted by the previous code of the type
    /// may be restored into the new code.
    pub fn deploy(&self, name: &str, component: &[u8], opts: DeployOptions) -> Result<DeployInfo> {
        let DeployOptions {
            durability,
            limits,
            placement,
            upgrade,
        } = opts;
        check_name("actor type", name, ACTOR_NAME_BYTES_MAX)?;
        let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(component));
        // Validate and compile before anything is stored.
        let prep = self.inner.engine.prepare(&digest, component)?;
        let mut restores_from = Vec::new();
        if upgrade && let Some(old) = self.inner.store.get_type(name)? {
            let old_cfg: TypeConfig = serde_json::from_str(&old.config_json).unwrap_or_default();
            restores_from = old_cfg.restores_from;
            if old.digest != digest {
                restores_from.push(old.digest);
            }
        }
        let config = TypeConfig {
            durability,
            limits: limits.or_defaults(),
            restores_from,
            placement,
        };
        self.inner.store.put_component(component)?;
        self.inner.store.put_type(
            name,
            &TypeRecord {
                digest: digest.clone(),
                config_json: serde_json::to_string(&config)
                    .map_err(|e| RuntimeError::Engine(e.to_string()))?,
                deployed_at_ms: now_ms(),
            },
        )?;
        self.inner.types.insert(
            name.to_string(),
            Arc::new(ActorType {
                name: name.to_string(),
                config,
                prep,
            }),
        );
        tracing::info!(actor_type = name, %digest, ?durability, "deployed");
        Ok(DeployInfo {
            digest,
            component_bytes: component.len() as u64,
        })
    }

    /// The current definition of a type, from the store (compiled on first
    /// use and cached by digest).
    fn load_type(&self, name: &str) -> Result<Arc<ActorType>> {
        let rec = self
            .inner
            .store
            .get_type(name)?
            .ok_or_else(|| RuntimeError::UnknownType(name.to_string()))?;
        if let Some(t) = self.inner.types.get(name)
            && t.prep.digest() == rec.digest
        {
            return Ok(t.clone());
        }
        let bytes = self
            .inner
            .store
            .get_component(&rec.digest)?
            .ok_or_else(|| {
                RuntimeError::Engine(format!(
                    "type `{name}` refers to component {} which is missing from the store",
                    rec.digest
                ))
            })?;
        let prep = self.inner.engine.prepare(&rec.digest, &bytes)?;
        let config: TypeConfig = serde_json::from_str(&rec.config_json).map_err(|e| {
            RuntimeError::Engine(format!("type `{name}` has an unreadable config: {e}"))
        })?;
        let t = Arc::new(ActorType {
            name: name.to_string(),
            config,
            prep,
        });
        self.inner.types.insert(name.to_string(), t.clone());
        Ok(t)
    }

    /// Calls an actor, wherever it is active; activates it here if it is
    /// active nowhere.
    pub async fn call(&self, req: CallRequest) -> Result<CallOutput> {
        self.route(req, Route::default()).await
    }

    /// Routes a call that arrived with `route` (from a client, a peer POP,
    /// or a running turn's `call` import).
    pub async fn route(&self, req: CallRequest, route: Route) -> Result<CallOutput> {
        check_name("actor type", &req.actor_type, ACTOR_NAME_BYTES_MAX)?;
        check_name("actor id", &req.id, ACTOR_NAME_BYTES_MAX)?;
        check_name("method", &req.method, METHOD_NAME_BYTES_MAX)?;
        if let Some(k) = &req.idempotency_key
            && k.len() > IDEMPOTENCY_KEY_BYTES_MAX
        {
            return Err(RuntimeError::InvalidArgument(format!(
                "idempotency key is {} bytes, over the limit of {IDEMPOTENCY_KEY_BYTES_MAX} bytes",
                k.len()
            )));
        }
        if self.inner.shutting_down.load(Ordering::Acquire) {
            return Err(RuntimeError::ShuttingDown);
        }
        let key = format!("{}/{}", req.actor_type, req.id);
        if route.chain.contains(&key) {
            let mut names = route.chain.clone();
            names.push(key);
            return Err(RuntimeError::CallCycle(names.join(" -> ")));
        }
        let ty = match self.inner.types.get(&req.actor_type) {
            Some(t) => t.clone(),
            None => tokio::task::block_in_place(|| self.load_type(&req.actor_type))?,
        };
        let limit = ty.config.limits.payload_bytes_max;
        if req.payload.len() as u64 > limit {
            return Err(RuntimeError::PayloadTooLarge {
                what: "request payload",
                size: req.payload.len(),
                limit,
            });
        }
        let started = Instant::now();
        let mut moved_from: Option<String> = None;
        for _ in 0..ROUTE_ATTEMPTS_MAX {
            // Not active here: ask where it is (unless this call was already
            // forwarded to us: then we answer, we never forward again).
            if !self.inner.actors.contains_key(&key)
                && let Dir::Remote(link) = &self.inner.dir
            {
                let owner = link.lookup(&key, route.via.is_some()).await?;
                match owner {
                    Some(o) if o.pop != self.inner.name => {
                        if route.via.is_some() {
                            return Err(RuntimeError::NotHere {
                                actor: key,
                                moved_to: None,
                            });
                        }
                        match self.forward(&o, &req, &route).await {
                            Err(RuntimeError::NotHere { moved_to, .. }) => {
                                link.invalidate(&key);
                                if moved_to.is_some() {
                                    moved_from = Some(o.pop.clone());
                                }
                                continue;
                            }
                            Err(RuntimeError::Transport(e)) => {
                                // The owner is unreachable: maybe dead. Look
                                // it up afresh next time; the caller retries.
                                link.invalidate(&key);
                                return Err(RuntimeError::Transport(e));
                            }
                            other => return other,
                        }
                    }
                    Some(_) => {}
                    None if route.via.is_some() => {
                        return Err(RuntimeError::NotHere {
                            actor: key,
                            moved_to: None,
                        });
                    }
                    None => {}
                }
            }
            match self.call_local(&key, &req, &ty, &route).await {
                Err(RuntimeError::HeldElsewhere { .. }) if route.via.is_some() => {
                    return Err(RuntimeError::NotHere {
                        actor: key,
                        moved_to: None,
                    });
                }
                Err(RuntimeError::HeldElsewhere { .. }) => continue,
                Ok(out) => {
                    if let (Some(from), Dir::Remote(link)) = (moved_from, &self.inner.dir) {
                        self.record_migration(link, &key, &from, started).await;
                    }
                    return Ok(out);
                }
                Err(e) => return Err(e),
            }
        }
        Err(RuntimeError::Transport(format!(
            "routing {key} did not settle after ROUTE_ATTEMPTS_MAX = {ROUTE_ATTEMPTS_MAX} attempts (the actor is moving); retry"
        )))
    }

    async fn record_migration(
        &self,
        link: &Arc<DirectoryLink>,
        actor: &str,
        from: &str,
        started: Instant,
    ) {
        let ms = started.elapsed().as_millis() as u64;
        metrics::counter!("tern_migrations_total").increment(1);
        metrics::histogram!("tern_migration_seconds").record(ms as f64 / 1e3);
        tracing::info!(actor, from, to = %self.inner.name, ms, "actor moved to its caller's POP");
        let m = tern_proto::directory::Migration {
            actor: actor.to_string(),
            from_pop: from.to_string(),
            to_pop: self.inner.name.clone(),
            at_ms: now_ms(),
            duration_ms: ms,
            reason: "follows its callers".into(),
        };
        if let Err(e) = link.record_migration(m).await {
            tracing::warn!(actor, error = %e, "cannot record migration");
        }
    }

    /// Forwards a call to the POP that owns the actor.
    async fn forward(&self, owner: &Owner, req: &CallRequest, route: &Route) -> Result<CallOutput> {
        let mut client = match self.inner.peers.get(&owner.endpoint) {
            Some(c) => c.clone(),
            None => {
                let ch = tonic::transport::Channel::from_shared(owner.endpoint.clone())
                    .map_err(|e| RuntimeError::Transport(format!("bad peer endpoint: {e}")))?
                    .connect_timeout(Duration::from_millis(1_000))
                    .connect_lazy();
                let c = tern_proto::actor::actor_service_client::ActorServiceClient::new(ch)
                    .max_decoding_message_size(crate::server::GRPC_MESSAGE_BYTES_MAX)
                    .max_encoding_message_size(crate::server::GRPC_MESSAGE_BYTES_MAX);
                self.inner.peers.insert(owner.endpoint.clone(), c.clone());
                c
            }
        };
        metrics::counter!("tern_calls_forwarded_total").increment(1);
        let reply = client
            .call(tern_proto::actor::CallRequest {
                r#type: req.actor_type.clone(),
                id: req.id.clone(),
                method: req.method.clone(),
                payload: req.payload.clone(),
                idempotency_key: req.idempotency_key.clone().unwrap_or_default(),
                chain: route.chain.clone(),
                via_pop: self.inner.name.clone(),
            })
            .await
            .map_err(|s| {
                let actor = format!("{}/{}", req.actor_type, req.id);
                if std::error::Error::source(&s).is_some() {
                    RuntimeError::Transport(format!(
                        "POP {} unreachable: {}",
                        owner.pop,
                        s.message()
                    ))
                } else {
                    RuntimeError::from_peer(&actor, s)
                }
            })?
            .into_inner();
        Ok(CallOutput {
            payload: reply.payload,
            epoch: reply.epoch,
            pop: reply.pop,
        })
    }

    /// Runs a call on the local activation, creating it if needed.
    async fn call_local(
        &self,
        key: &str,
        req: &CallRequest,
        ty: &Arc<ActorType>,
        route: &Route,
    ) -> Result<CallOutput> {
        let (reply_tx, reply_rx) = oneshot::channel();
        let msg = Msg::Call {
            method: req.method.clone(),
            payload: req.payload.clone(),
            idem: req.idempotency_key.clone(),
            route: route.clone(),
            reply: reply_tx,
        };
        self.deliver(key, &req.actor_type, &req.id, ty, msg).await?;
        reply_rx.await.map_err(|_| RuntimeError::Superseded {
            actor: key.to_string(),
            epoch: 0,
        })?
    }

    /// Queues `msg` on the actor's mailbox, activating it here if needed.
    /// An activation that is being evicted is waited out (it persists and
    /// releases, and leaves the table itself) and a new one is started.
    async fn deliver(
        &self,
        key: &str,
        actor_type: &str,
        id: &str,
        ty: &Arc<ActorType>,
        mut msg: Msg,
    ) -> Result<()> {
        loop {
            let handle = self.activation(key, actor_type, id, ty);
            match handle.tx.try_send(msg) {
                Ok(()) => return Ok(()),
                Err(mpsc::error::TrySendError::Full(_)) => {
                    return Err(RuntimeError::MailboxFull {
                        actor: key.to_string(),
                        limit: ty.config.limits.mailbox_depth_max,
                    });
                }
                Err(mpsc::error::TrySendError::Closed(m)) => {
                    msg = m;
                    let mut done = handle.done.clone();
                    let _ = done.wait_for(|d| *d).await;
                }
            }
        }
    }

    fn activation(
        &self,
        key: &str,
        actor_type: &str,
        id: &str,
        ty: &Arc<ActorType>,
    ) -> Arc<ActivationHandle> {
        if let Some(h) = self.inner.actors.get(key) {
            return h.clone();
        }
        let entry = self.inner.actors.entry(key.to_string());
        entry
            .or_insert_with(|| {
                let (tx, rx) = mpsc::channel(ty.config.limits.mailbox_depth_max as usize);
                let (done_tx, done_rx) = watch::channel(false);
                let node = self.clone();
                let (actor_type, id) = (actor_type.to_string(), id.to_string());
                let handle = Arc::new(ActivationHandle { tx, done: done_rx });
                let weak = Arc::downgrade(&handle);
                tokio::spawn(async move {
                    let key = format!("{actor_type}/{id}");
                    node.run_activation(actor_type, id, rx).await;
                    // Leave the table before anyone waits on `done`, so a
                    // waiter's retry creates a fresh activation.
                    if let Some(h) = weak.upgrade() {
                        node.inner.actors.remove_if(&key, |_, x| Arc::ptr_eq(x, &h));
                    }
                    let _ = done_tx.send(true);
                });
                handle
            })
            .clone()
    }

    /// Claims `key` through the directory.
    async fn claim(&self, key: &str) -> Result<ClaimOutcome> {
        match &self.inner.dir {
            Dir::Local(d) => {
                let d = d.clone();
                let key = key.to_string();
                tokio::task::block_in_place(|| d.claim(&key, now_ms()))
                    .map(|c| ClaimOutcome::Granted {
                        epoch: c.epoch,
                        head_seq: c.head_seq,
                    })
                    .map_err(|e| match e {
                        DirectoryError::Storage(s) => RuntimeError::Storage(s),
                        other => RuntimeError::Transport(other.to_string()),
                    })
            }
            Dir::Remote(link) => link.claim(key).await,
        }
    }

    async fn release(&self, key: &str, epoch: u64) -> Result<()> {
        match &self.inner.dir {
            Dir::Local(d) => {
                tokio::task::block_in_place(|| d.release(key, epoch)).map_err(|e| match e {
                    DirectoryError::Storage(s) => RuntimeError::Storage(s),
                    other => RuntimeError::Transport(other.to_string()),
                })
            }
            Dir::Remote(link) => link.release(key, epoch).await,
        }
    }

    /// Whether this POP may run turns (its lease is current).
    fn lease_ok(&self) -> bool {
        match &self.inner.dir {
            Dir::Local(_) => true,
            Dir::Remote(link) => link.lease_ok(),
        }
    }

    fn fail_queued(rx: &mut mpsc::Receiver<Msg>, mut first: Option<RuntimeError>, key: &str) {
        rx.close();
        while let Ok(m) = rx.try_recv() {
            if let Msg::Call { reply, .. } = m {
                let err = first.take().unwrap_or_else(|| RuntimeError::NotHere {
                    actor: key.to_string(),
                    moved_to: None,
                });
                let _ = reply.send(Err(err));
            }
        }
    }

    async fn run_activation(&self, actor_type: String, id: String, mut rx: mpsc::Receiver<Msg>) {
        let key = format!("{actor_type}/{id}");
        let started = Instant::now();
        let claim = match self.claim(&key).await {
            Ok(ClaimOutcome::Granted { epoch, head_seq }) => (epoch, head_seq),
            Ok(ClaimOutcome::Held(o)) => {
                // Every queued caller re-routes to the holder.
                rx.close();
                while let Ok(m) = rx.try_recv() {
                    if let Msg::Call { reply, .. } = m {
                        let _ = reply.send(Err(RuntimeError::HeldElsewhere {
                            actor: key.clone(),
                            pop: o.pop.clone(),
                            endpoint: o.endpoint.clone(),
                            epoch: o.epoch,
                        }));
                    }
                }
                return;
            }
            Err(e) => {
                tracing::warn!(actor = %key, error = %e, "claim failed");
                Self::fail_queued(&mut rx, Some(e), &key);
                return;
            }
        };
        let act = tokio::task::block_in_place(|| self.activate(&actor_type, &id, claim));
        let mut act = match act {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(actor = %key, error = %e, "activation failed");
                let _ = self.release(&key, claim.0).await;
                Self::fail_queued(&mut rx, Some(e), &key);
                return;
            }
        };
        metrics::histogram!("tern_activation_seconds").record(started.elapsed().as_secs_f64());
        tracing::debug!(actor = %key, epoch = act.epoch, "activated");
        let idle = Duration::from_millis(act.ty.config.limits.idle_ms);
        let mut closing = false;
        let mut moved: Option<(oneshot::Sender<Result<CallOutput>>, String)> = None;
        // One idle timer per activation, re-armed only when it fires early
        // (no timer work per message).
        let idle_timer = tokio::time::sleep(idle);
        tokio::pin!(idle_timer);
        loop {
            let msg = if closing {
                rx.try_recv().ok()
            } else {
                tokio::select! {
                    m = rx.recv() => m,
                    () = &mut idle_timer => {
                        let deadline = act.last_turn + idle;
                        if deadline > Instant::now() {
                            idle_timer.as_mut().reset(deadline.into());
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
            match msg {
                Msg::Evict => {
                    closing = true;
                    rx.close();
                }
                Msg::Abandon => {
                    tracing::warn!(actor = %key, "activation abandoned: lease lost");
                    Self::fail_queued(
                        &mut rx,
                        Some(RuntimeError::LeaseLost("abandoned".into())),
                        &key,
                    );
                    return;
                }
                Msg::Images { reply } => {
                    let _ = reply.send(act.baseline.images().to_vec());
                }
                Msg::Call {
                    method,
                    payload,
                    idem,
                    mut route,
                    reply,
                } => {
                    if !self.lease_ok() {
                        let _ = reply.send(Err(RuntimeError::LeaseLost(
                            "lease expired by the POP's own clock".into(),
                        )));
                        Self::fail_queued(&mut rx, None, &key);
                        return;
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
                        moved = Some((reply, caller_pop));
                        continue;
                    }
                    route.chain.push(key.clone());
                    let res = act.turn(self, route.chain, &method, &payload, idem).await;
                    let fatal = matches!(
                        &res,
                        Err(RuntimeError::Superseded { .. } | RuntimeError::Storage(_))
                    );
                    let _ = reply.send(res);
                    if fatal {
                        // The store no longer matches our memory (fenced or
                        // a failed commit): drop this activation; the next
                        // call restores from the store.
                        tracing::warn!(actor = %key, "activation dropped after a commit failure");
                        Self::fail_queued(&mut rx, None, &key);
                        let _ = self.release(&key, act.epoch).await;
                        return;
                    }
                }
            }
        }
        if let Err(e) = act.persist(self).await {
            tracing::error!(actor = %key, error = %e, "persist on eviction failed");
        }
        let epoch = act.epoch;
        drop(act);
        if let Err(e) = self.release(&key, epoch).await {
            tracing::warn!(actor = %key, error = %e, "release failed");
        }
        // Off the call path: drop pages no manifest needs and stages an
        // earlier owner left behind when it crashed mid-commit (GC only
        // removes stages of epochs older than the current one).
        let store = self.inner.store.clone();
        let k = key.clone();
        tokio::task::spawn_blocking(move || {
            let collected = match store.needs_gc(&k) {
                Ok(false) => return,
                Ok(true) => store.gc_snapshots(&k).map(|_| ()),
                Err(e) => Err(e),
            };
            if let Err(e) = collected {
                tracing::warn!(actor = %k, error = %e, "snapshot GC failed");
            }
        });
        if let Some((reply, to)) = moved {
            let _ = reply.send(Err(RuntimeError::NotHere {
                actor: key.clone(),
                moved_to: Some(to),
            }));
        }
        tracing::debug!(actor = %key, "evicted");
    }

    /// Loads and instantiates an actor this POP has claimed.
    fn activate(&self, actor_type: &str, id: &str, claim: (u64, u64)) -> Result<Activation> {
        let key = format!("{actor_type}/{id}");
        let ty = self.load_type(actor_type)?;
        let snap = self.inner.store.load_snapshot(&key)?;
        let params = InstanceParams {
            actor_type: actor_type.to_string(),
            actor_id: id.to_string(),
            limits: ty.config.limits,
            pop: self.inner.name.clone(),
            epoch: claim.0,
            caller: Arc::new(self.clone()),
        };
        let (epoch, claimed_head) = claim;
        let (instance, baseline, head_seq, idem) = match snap {
            Some(snap) => {
                let digest = ty.prep.digest();
                if snap.meta.component_digest != digest
                    && !ty
                        .config
                        .restores_from
                        .contains(&snap.meta.component_digest)
                {
                    return Err(RuntimeError::CodeMismatch {
                        actor: key,
                        ty: actor_type.to_string(),
                        snapshot_digest: snap.meta.component_digest,
                        snapshot_engine: snap.meta.engine_version,
                        current_digest: digest.to_string(),
                    });
                }
                let lens: Vec<usize> = snap.memories.iter().map(Vec::len).collect();
                let mut inst =
                    ActorInstance::new(self.inner.engine.engine(), &ty.prep, &params, &lens)?;
                inst.write_memories(&snap.memories)?;
                let idem = IdemTable::restore(&snap.extra);
                (
                    Some(inst),
                    Baseline::restored(snap.memories),
                    snap.seq,
                    idem,
                )
            }
            None => {
                let inst = ActorInstance::new(self.inner.engine.engine(), &ty.prep, &params, &[])?;
                let mut b = Baseline::default();
                // SAFETY: the instance runs no guest code right now.
                unsafe { b.absorb(inst.memories()) };
                b.mark_all_dirty();
                (Some(inst), b, claimed_head, IdemTable::default())
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
            recent_pops: Vec::new(),
            last_turn: Instant::now(),
        })
    }

    /// Renews the lease every heartbeat interval. When the directory says
    /// the lease lapsed, or it cannot be renewed before it ends, every
    /// activation is abandoned at once (a newer epoch may exist elsewhere);
    /// then the POP registers again as a new incarnation.
    fn spawn_heartbeat(&self, link: Arc<DirectoryLink>) {
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(link.heartbeat_interval());
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                let node = Node { inner };
                if node.inner.shutting_down.load(Ordering::Acquire) {
                    return;
                }
                match link.heartbeat().await {
                    Ok(true) => continue,
                    Ok(false) => {
                        tracing::warn!(pop = %node.inner.name, "directory says our lease lapsed: dropping every activation and registering again");
                    }
                    Err(e) if link.lease_ok() => {
                        tracing::warn!(error = %e, "heartbeat failed; lease still current");
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "heartbeat failed and the lease ended: dropping every activation");
                    }
                }
                node.abandon_all().await;
                if let Err(e) = link.register().await {
                    tracing::warn!(error = %e, "cannot register again yet");
                }
            }
        });
    }

    /// Sends `msg()` to every activation and waits until each has ended.
    async fn end_all(&self, msg: fn() -> Msg) {
        let handles: Vec<_> = self
            .inner
            .actors
            .iter()
            .map(|e| e.value().clone())
            .collect();
        for h in &handles {
            let _ = h.tx.send(msg()).await;
        }
        for h in handles {
            let mut done = h.done.clone();
            let _ = done.wait_for(|d| *d).await;
        }
    }

    /// Drops every activation without persisting or releasing them.
    async fn abandon_all(&self) {
        metrics::counter!("tern_lease_losses_total").increment(1);
        self.end_all(|| Msg::Abandon).await;
    }

    /// Evicts every actor (persisting them) and refuses new calls.
    pub async fn shutdown(&self) {
        self.inner.shutting_down.store(true, Ordering::Release);
        self.end_all(|| Msg::Evict).await;
    }

    /// Evicts one actor now (persisting it). Returns whether it was active.
    pub async fn evict(&self, actor_type: &str, id: &str) -> bool {
        let key = format!("{actor_type}/{id}");
        let Some(h) = self.inner.actors.get(&key).map(|h| h.clone()) else {
            return false;
        };
        let _ = h.tx.send(Msg::Evict).await;
        let mut done = h.done.clone();
        let _ = done.wait_for(|d| *d).await;
        true
    }

    /// The node's state, with the cluster's as the directory sees it.
    pub async fn status(&self) -> NodeStatus {
        let mut actors: Vec<String> = self.inner.actors.iter().map(|e| e.key().clone()).collect();
        actors.sort();
        let listed = tokio::task::block_in_place(|| self.inner.store.list_types());
        let mut types: Vec<_> = match listed {
            Ok(list) => list
                .into_iter()
                .map(|(n, r)| {
                    let cfg = serde_json::from_str(&r.config_json).unwrap_or_default();
                    (n, r.digest, cfg)
                })
                .collect(),
            Err(_) => Vec::new(),
        };
        types.sort_by(|a, b| a.0.cmp(&b.0));
        let cluster = match &self.inner.dir {
            Dir::Remote(link) => match link.cluster_view().await {
                Ok(v) => Some(v),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the cluster view");
                    None
                }
            },
            Dir::Local(_) => None,
        };
        NodeStatus {
            pop: self.inner.name.clone(),
            actors,
            types,
            turns: self.inner.counters.turns.load(Ordering::Relaxed),
            commits: self.inner.counters.commits.load(Ordering::Relaxed),
            store_bytes_written: self.inner.store.stats().bytes_written,
            cluster,
        }
    }

    /// The memory images of an actor as of its last successful turn,
    /// activating it if needed. Tests use it to prove faithful restore.
    pub async fn memory_images(&self, actor_type: &str, id: &str) -> Result<Vec<Vec<u8>>> {
        let key = format!("{actor_type}/{id}");
        let ty = tokio::task::block_in_place(|| self.load_type(actor_type))?;
        let (tx, rx) = oneshot::channel();
        self.deliver(&key, actor_type, id, &ty, Msg::Images { reply: tx })
            .await?;
        rx.await.map_err(|_| RuntimeError::Superseded {
            actor: key,
            epoch: 0,
        })
    }
}

impl ActorCaller for Node {
    fn call_blocking(&self, call: NestedCall<'_>) -> Result<Vec<u8>> {
        let target = format!("{}/{}", call.ty, call.id);
        if call.chain.contains(&target) {
            let mut names = call.chain.to_vec();
            names.push(target);
            return Err(RuntimeError::CallCycle(names.join(" -> ")));
        }
        if call.chain.len() >= CALL_DEPTH_MAX {
            return Err(RuntimeError::CallCycle(format!(
                "call chain deeper than CALL_DEPTH_MAX = {CALL_DEPTH_MAX}: {} -> {target}",
                call.chain.join(" -> ")
            )));
        }
        let mut req = CallRequest::new(call.ty, call.id, call.method, call.payload);
        req.idempotency_key = call.idempotency_key;
        let node = self.clone();
        let route = Route {
            chain: call.chain.to_vec(),
            via: None,
        };
        let rt = self.inner.rt.clone();
        tokio::task::block_in_place(move || {
            rt.block_on(async move { node.route(req, route).await })
        })
        .map(|o| o.payload)
    }
}

/// One active actor, owned by its task.
struct Activation {
    key: String,
    ty: Arc<ActorType>,
    params: InstanceParams,
    epoch: u64,
    head_seq: u64,
    /// `None` after a trap: rebuilt from the baseline on the next turn.
    instance: Option<ActorInstance>,
    baseline: Baseline,
    idem: IdemTable,
    /// POPs the most recent calls came through, oldest first.
    recent_pops: Vec<String>,
    last_turn: Instant,
}

impl Activation {
    /// Runs one turn and, in `turn` durability, commits it (with its
    /// idempotency record) before returning. A call whose idempotency key
    /// was already applied gets the recorded outcome without running.
    async fn turn(
        &mut self,
        node: &Node,
        chain: Vec<String>,
        method: &str,
        payload: &[u8],
        idem: Option<String>,
    ) -> Result<CallOutput> {
        let output = |payload: Vec<u8>, epoch: u64| CallOutput {
            payload,
            epoch,
            pop: node.inner.name.clone(),
        };
        if let Some(k) = &idem
            && let Some(applied) = self.idem.get(k)
        {
            metrics::counter!("tern_calls_deduplicated_total").increment(1);
            return match &applied.outcome {
                Outcome::Reply(b) => Ok(CallOutput {
                    payload: b.clone(),
                    epoch: applied.epoch,
                    pop: applied.pop.clone(),
                }),
                Outcome::Error(code, message) => Err(RuntimeError::Guest {
                    code: tonic::Code::from_i32(*code),
                    message: message.clone(),
                }),
                Outcome::AppliedReplyDropped => Err(RuntimeError::Guest {
                    code: tonic::Code::FailedPrecondition,
                    message: format!(
                        "the call with idempotency key `{k}` was already applied; its reply was too large to keep"
                    ),
                }),
            };
        }
        let started = Instant::now();
        let limits = self.ty.config.limits;
        // The guest runs inline on this worker: turns are short (bounded by
        // turn_cpu_ms_max), and the only import that blocks, `call`, moves
        // itself off the worker with `block_in_place`.
        let out = self.run_guest(node, chain, method, payload, idem.as_deref());
        node.inner.counters.turns.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("tern_turns_total").increment(1);
        self.last_turn = Instant::now();
        let result = match out? {
            Ok(p) if p.len() as u64 > limits.payload_bytes_max => {
                Err(RuntimeError::PayloadTooLarge {
                    what: "reply payload",
                    size: p.len(),
                    limit: limits.payload_bytes_max,
                })
            }
            Ok(p) => Ok(p),
            Err(e) => Err(guest_error(e)),
        };
        if let Some(k) = &idem {
            let outcome = match &result {
                Ok(p) => Outcome::Reply(p.clone()),
                Err(e) => Outcome::Error(e.code() as i32, e.to_string()),
            };
            self.idem.record(k, outcome, &node.inner.name, self.epoch);
        }
        if self.ty.config.durability == Durability::Turn
            && (self.baseline.is_dirty() || self.idem.is_dirty())
        {
            self.persist(node).await?;
        }
        metrics::histogram!("tern_turn_seconds").record(started.elapsed().as_secs_f64());
        result.map(|p| output(p, self.epoch))
    }

    /// Runs the guest (blocking). On a trap, drops the instance so the
    /// actor rolls back to the baseline.
    fn run_guest(
        &mut self,
        node: &Node,
        chain: Vec<String>,
        method: &str,
        payload: &[u8],
        idem: Option<&str>,
    ) -> Result<crate::instance::TurnOutput> {
        if self.instance.is_none() {
            let lens = self.baseline.lens();
            let mut inst = ActorInstance::new(
                node.inner.engine.engine(),
                &self.ty.prep,
                &self.params,
                &lens,
            )?;
            inst.write_memories(self.baseline.images())?;
            self.instance = Some(inst);
        }
        let inst = self.instance.as_mut().expect("instance present");
        match inst.call(chain, method, payload, &self.ty.config.limits, idem) {
            Ok(out) => {
                if let Err(e) = inst.check_snapshottable() {
                    self.instance = None;
                    return Err(e);
                }
                // SAFETY: the turn is over; no guest code runs.
                unsafe { self.baseline.absorb(inst.memories()) };
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

    /// Commits the dirty pages, fenced by this activation's epoch.
    async fn persist(&mut self, node: &Node) -> Result<()> {
        if !self.baseline.is_dirty() && !self.idem.is_dirty() {
            return Ok(());
        }
        let req = CommitRequest {
            actor: self.key.clone(),
            epoch: self.epoch,
            expected_head_seq: self.head_seq,
            meta: SnapshotMeta {
                component_digest: self.ty.prep.digest().to_string(),
                engine_version: ENGINE_VERSION.to_string(),
                globals: Vec::new(),
            },
            memories: self.baseline.delta(),
            extra: self.idem.pending(),
        };
        match node.inner.committer.commit(req).await {
            Ok(seq) => {
                node.inner.counters.commits.fetch_add(1, Ordering::Relaxed);
                self.head_seq = seq;
                self.baseline.committed();
                self.idem.committed();
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
