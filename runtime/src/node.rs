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

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use tern_directory::{Directory, DirectoryError};
use tern_storage::{CommitRequest, SnapshotMeta, Store, TypeRecord};
use tokio::sync::{mpsc, oneshot, watch};

use crate::committer::Committer;
use crate::config::{Durability, Limits, TypeConfig};
use crate::engine::{ENGINE_VERSION, TernEngine};
use crate::error::{Result, RuntimeError};
use crate::instance::{ActorCaller, ActorInstance, InstanceParams, Prepared, guest_error};
use crate::snapshot::Baseline;

/// Longest actor type or id, in bytes.
pub const ACTOR_NAME_BYTES_MAX: usize = 256;

/// Longest method name, in bytes.
pub const METHOD_NAME_BYTES_MAX: usize = 256;

/// Deepest chain of nested actor-to-actor calls.
pub const CALL_DEPTH_MAX: usize = 16;

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
}

/// A successful call's result.
#[derive(Debug, Clone)]
pub struct CallOutput {
    /// The reply payload.
    pub payload: Vec<u8>,
    /// The activation epoch that ran the turn.
    pub epoch: u64,
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
}

enum Msg {
    Call {
        method: String,
        payload: Vec<u8>,
        chain: Vec<String>,
        reply: oneshot::Sender<Result<CallOutput>>,
    },
    Evict,
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
    directory: Directory,
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
        Node {
            inner: Arc::new(NodeInner {
                directory: Directory::new(store.clone(), name.clone()),
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
    pub fn deploy(
        &self,
        name: &str,
        component: &[u8],
        durability: Durability,
        limits: Limits,
        upgrade: bool,
    ) -> Result<DeployInfo> {
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

    /// Calls an actor, activating it here if needed.
    pub async fn call(&self, req: CallRequest) -> Result<CallOutput> {
        self.call_chain(req, Vec::new()).await
    }

    async fn call_chain(&self, req: CallRequest, chain: Vec<String>) -> Result<CallOutput> {
        check_name("actor type", &req.actor_type, ACTOR_NAME_BYTES_MAX)?;
        check_name("actor id", &req.id, ACTOR_NAME_BYTES_MAX)?;
        check_name("method", &req.method, METHOD_NAME_BYTES_MAX)?;
        if self.inner.shutting_down.load(Ordering::Acquire) {
            return Err(RuntimeError::ShuttingDown);
        }
        let key = format!("{}/{}", req.actor_type, req.id);
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
        let (reply_tx, reply_rx) = oneshot::channel();
        let mut msg = Msg::Call {
            method: req.method,
            payload: req.payload,
            chain,
            reply: reply_tx,
        };
        loop {
            let handle = self.activation(&key, &req.actor_type, &req.id, &ty);
            match handle.tx.try_send(msg) {
                Ok(()) => break,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    return Err(RuntimeError::MailboxFull {
                        actor: key,
                        limit: ty.config.limits.mailbox_depth_max,
                    });
                }
                Err(mpsc::error::TrySendError::Closed(m)) => {
                    // The activation is being evicted: wait until it has
                    // persisted and released, then start a new one.
                    msg = m;
                    let mut done = handle.done.clone();
                    let _ = done.wait_for(|d| *d).await;
                    self.inner
                        .actors
                        .remove_if(&key, |_, h| Arc::ptr_eq(h, &handle));
                }
            }
        }
        reply_rx.await.map_err(|_| RuntimeError::Superseded {
            actor: key,
            epoch: 0,
        })?
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
                tokio::spawn(async move {
                    node.run_activation(actor_type, id, rx).await;
                    let _ = done_tx.send(true);
                });
                Arc::new(ActivationHandle { tx, done: done_rx })
            })
            .clone()
    }

    async fn run_activation(&self, actor_type: String, id: String, mut rx: mpsc::Receiver<Msg>) {
        let key = format!("{actor_type}/{id}");
        let started = Instant::now();
        let act = tokio::task::block_in_place(|| self.activate(&actor_type, &id));
        let mut act = match act {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(actor = %key, error = %e, "activation failed");
                rx.close();
                let mut first = Some(e);
                while let Ok(m) = rx.try_recv() {
                    if let Msg::Call { reply, .. } = m {
                        let err = match first.take() {
                            Some(e) => e,
                            None => RuntimeError::Transport(format!("activation of {key} failed")),
                        };
                        let _ = reply.send(Err(err));
                    }
                }
                return;
            }
        };
        metrics::histogram!("tern_activation_seconds").record(started.elapsed().as_secs_f64());
        tracing::debug!(actor = %key, epoch = act.epoch, "activated");
        let idle = Duration::from_millis(act.ty.config.limits.idle_ms);
        let mut closing = false;
        loop {
            let msg = if closing {
                rx.try_recv().ok()
            } else {
                tokio::time::timeout(idle, rx.recv()).await.ok().flatten()
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
                Msg::Images { reply } => {
                    let _ = reply.send(act.baseline.images().to_vec());
                }
                Msg::Call {
                    method,
                    payload,
                    mut chain,
                    reply,
                } => {
                    chain.push(key.clone());
                    let res = act.turn(self, chain, &method, &payload).await;
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
                        rx.close();
                        while let Ok(Msg::Call { reply, .. }) = rx.try_recv() {
                            let _ = reply.send(Err(RuntimeError::Superseded {
                                actor: key.clone(),
                                epoch: act.epoch,
                            }));
                        }
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
        if let Err(e) = tokio::task::block_in_place(|| self.inner.directory.release(&key, epoch)) {
            tracing::warn!(actor = %key, error = %e, "release failed");
        }
        tracing::debug!(actor = %key, "evicted");
    }

    /// Claims, loads and instantiates an actor.
    fn activate(&self, actor_type: &str, id: &str) -> Result<Activation> {
        let key = format!("{actor_type}/{id}");
        let ty = self.load_type(actor_type)?;
        let claim = self
            .inner
            .directory
            .claim(&key, now_ms())
            .map_err(|e| match e {
                DirectoryError::HeldElsewhere { .. } => RuntimeError::Transport(e.to_string()),
                DirectoryError::Storage(s) => RuntimeError::Storage(s),
            })?;
        let snap = self.inner.store.load_snapshot(&key)?;
        let params = InstanceParams {
            actor_type: actor_type.to_string(),
            actor_id: id.to_string(),
            limits: ty.config.limits,
            caller: Arc::new(self.clone()),
        };
        let (instance, baseline, head_seq) = match snap {
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
                (Some(inst), Baseline::restored(snap.memories), snap.seq)
            }
            None => {
                let inst = ActorInstance::new(self.inner.engine.engine(), &ty.prep, &params, &[])?;
                let mut b = Baseline::default();
                // SAFETY: the instance runs no guest code right now.
                unsafe { b.absorb(inst.memories()) };
                b.mark_all_dirty();
                (Some(inst), b, claim.head_seq)
            }
        };
        Ok(Activation {
            key,
            ty,
            params,
            epoch: claim.epoch,
            head_seq,
            instance,
            baseline,
        })
    }

    /// Evicts every actor (persisting them) and refuses new calls.
    pub async fn shutdown(&self) {
        self.inner.shutting_down.store(true, Ordering::Release);
        let handles: Vec<_> = self
            .inner
            .actors
            .iter()
            .map(|e| e.value().clone())
            .collect();
        for h in &handles {
            let _ = h.tx.send(Msg::Evict).await;
        }
        for h in handles {
            let mut done = h.done.clone();
            let _ = done.wait_for(|d| *d).await;
        }
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
        self.inner.actors.remove_if(&key, |_, x| Arc::ptr_eq(x, &h));
        true
    }

    /// The node's state.
    pub fn status(&self) -> NodeStatus {
        let mut actors: Vec<String> = self.inner.actors.iter().map(|e| e.key().clone()).collect();
        actors.sort();
        let mut types: Vec<_> = match self.inner.store.list_types() {
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
        NodeStatus {
            pop: self.inner.name.clone(),
            actors,
            types,
            turns: self.inner.counters.turns.load(Ordering::Relaxed),
            commits: self.inner.counters.commits.load(Ordering::Relaxed),
            store_bytes_written: self.inner.store.stats().bytes_written,
        }
    }

    /// The memory images of an actor as of its last successful turn,
    /// activating it if needed. Tests use it to prove faithful restore.
    pub async fn memory_images(&self, actor_type: &str, id: &str) -> Result<Vec<Vec<u8>>> {
        let key = format!("{actor_type}/{id}");
        let ty = tokio::task::block_in_place(|| self.load_type(actor_type))?;
        loop {
            let (tx, rx) = oneshot::channel();
            let handle = self.activation(&key, actor_type, id, &ty);
            match handle.tx.send(Msg::Images { reply: tx }).await {
                Ok(()) => {
                    return rx.await.map_err(|_| RuntimeError::Superseded {
                        actor: key,
                        epoch: 0,
                    });
                }
                Err(_) => {
                    let mut done = handle.done.clone();
                    let _ = done.wait_for(|d| *d).await;
                    self.inner
                        .actors
                        .remove_if(&key, |_, h| Arc::ptr_eq(h, &handle));
                }
            }
        }
    }
}

impl ActorCaller for Node {
    fn call_blocking(
        &self,
        chain: &[String],
        ty: &str,
        id: &str,
        method: &str,
        payload: Vec<u8>,
    ) -> Result<Vec<u8>> {
        let target = format!("{ty}/{id}");
        if chain.contains(&target) {
            let mut names = chain.to_vec();
            names.push(target);
            return Err(RuntimeError::CallCycle(names.join(" -> ")));
        }
        if chain.len() >= CALL_DEPTH_MAX {
            return Err(RuntimeError::CallCycle(format!(
                "call chain deeper than CALL_DEPTH_MAX = {CALL_DEPTH_MAX}: {} -> {target}",
                chain.join(" -> ")
            )));
        }
        let req = CallRequest {
            actor_type: ty.to_string(),
            id: id.to_string(),
            method: method.to_string(),
            payload,
        };
        let node = self.clone();
        let chain = chain.to_vec();
        self.inner
            .rt
            .block_on(async move { node.call_chain(req, chain).await })
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
}

impl Activation {
    /// Runs one turn and, in `turn` durability, commits it before returning.
    async fn turn(
        &mut self,
        node: &Node,
        chain: Vec<String>,
        method: &str,
        payload: &[u8],
    ) -> Result<CallOutput> {
        let started = Instant::now();
        let limits = self.ty.config.limits;
        let out = tokio::task::block_in_place(|| self.run_guest(node, chain, method, payload));
        node.inner.counters.turns.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("tern_turns_total").increment(1);
        let out = out?;
        if self.ty.config.durability == Durability::Turn && self.baseline.is_dirty() {
            self.persist(node).await?;
        }
        metrics::histogram!("tern_turn_seconds").record(started.elapsed().as_secs_f64());
        let payload = out.map_err(guest_error)?;
        if payload.len() as u64 > limits.payload_bytes_max {
            return Err(RuntimeError::PayloadTooLarge {
                what: "reply payload",
                size: payload.len(),
                limit: limits.payload_bytes_max,
            });
        }
        Ok(CallOutput {
            payload,
            epoch: self.epoch,
        })
    }

    /// Runs the guest (blocking). On a trap, drops the instance so the
    /// actor rolls back to the baseline.
    fn run_guest(
        &mut self,
        node: &Node,
        chain: Vec<String>,
        method: &str,
        payload: &[u8],
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
        match inst.call(chain, method, payload, &self.ty.config.limits) {
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
        if !self.baseline.is_dirty() {
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
            extra: Vec::new(),
        };
        match node.inner.committer.commit(req).await {
            Ok(seq) => {
                node.inner.counters.commits.fetch_add(1, Ordering::Relaxed);
                self.head_seq = seq;
                self.baseline.committed();
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
