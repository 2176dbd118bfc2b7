//! The POP node: its parts, the actor-type registry, and the node-wide
//! operations (deploy, status, shutdown).
//!
//! The node splits along its data path:
//! - [`crate::route`]: where a call runs (here, forward to a POP, moved,
//!   not here), with deadlines and failover past a frozen owner;
//! - [`crate::table`]: the activation table, admission against the POP's
//!   budgets, and least-recently-used eviction;
//! - [`crate::activation`]: one actor's mailbox loop, its turns (run on the
//!   [`TurnPool`]) and their commits;
//! - the seams it talks to the world through: a [`Directory`], [`Peers`],
//!   a [`World`] (clock and randomness), and the storage [`Store`].

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use tern_directory::{Core, DirectoryConfig};
use tern_storage::Store;
use tokio::sync::oneshot;

use crate::clock::World;
use crate::committer::Committer;
use crate::config::{Durability, Limits, Placement, Rollout, TypeConfig};
use crate::directory::{ClusterView, Directory, LOCAL_ENDPOINT, LocalDirectory, blocking};
use crate::engine::TernEngine;
use crate::error::{Result, RuntimeError};
use crate::idem::IDEMPOTENCY_KEY_BYTES_MAX;
use crate::instance::{ActorCaller, NestedCall, Prepared};
use crate::peers::{NoPeers, Peers};
use crate::table::{Msg, Table};
use crate::turnpool::{TurnPool, default_slots};

/// Longest actor type or id, in bytes.
pub const ACTOR_NAME_BYTES_MAX: usize = 256;

/// Longest method name, in bytes.
pub const METHOD_NAME_BYTES_MAX: usize = 256;

/// Deepest chain of nested actor-to-actor calls.
pub const CALL_DEPTH_MAX: usize = 16;

/// Type configurations cached without their compiled component.
const TYPE_CONFIGS_CACHED_MAX: usize = 4_096;

/// A call that carries no deadline gets this one, ms.
pub const CALL_DEADLINE_MS_DEFAULT: u64 = 30_000;

/// The longest deadline a call may ask for, ms.
pub const CALL_DEADLINE_MS_MAX: u64 = 300_000;

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
    /// When the caller stops waiting (default: [`CALL_DEADLINE_MS_DEFAULT`]
    /// from arrival).
    pub deadline: Option<tokio::time::Instant>,
    /// The call's span (set by routing): the turn it runs is its child,
    /// though the turn runs on another task.
    pub span: Option<tracing::Span>,
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
    /// When existing actors move to the new version.
    pub rollout: Rollout,
    /// Validate and plan only: store nothing.
    pub dry_run: bool,
}

/// What `deploy` reports.
#[derive(Debug, Clone)]
pub struct DeployInfo {
    /// sha256 of the component.
    pub digest: String,
    /// Its size in bytes.
    pub component_bytes: u64,
    /// The version this deploy made (or refreshed, for the same code).
    pub version: u64,
    /// What happens to existing actors, in words.
    pub plan: String,
}

/// The method a rollout calls to reactivate an actor: answered by the
/// runtime with the version the activation runs (no guest code runs).
pub const VERSION_PROBE_METHOD: &str = "~version";

/// What a rollout did at one POP.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RolloutOutcome {
    /// Active actors that were reactivated.
    pub moved: u64,
    /// Of those, the ones still on another version (their upgrade failed;
    /// `tern versions TYPE` says why).
    pub failed: u64,
}

/// How often a POP reads the alarm due index, ms.
pub const ALARM_SWEEP_MS: u64 = 100;
/// An alarm is left to the POP running its actor for this long after it is
/// due before the sweeper considers it missed, ms.
pub const ALARM_SWEEP_GRACE_MS: u64 = 150;
/// Due alarms read per sweep.
pub const ALARM_SWEEP_BATCH: usize = 256;
/// An actor woken for an alarm is not woken again for this long, ms.
pub const ALARM_WAKE_AGAIN_MS: u64 = 500;
/// Overdue this long, an alarm is woken by any POP, not only the chosen
/// one (a directory view that disagrees must not strand it), ms.
pub const ALARM_ANY_POP_MS: u64 = 10_000;
/// How long the sweeper trusts its list of live POPs, ms.
pub const ALARM_POPS_REFRESH_MS: u64 = 1_000;
/// Wakes one POP keeps in flight (and remembers) at most.
pub const ALARM_WAKES_MAX: usize = 1_024;

/// The POP of `pops` that wakes `actor`: highest hash of (POP, actor).
fn rendezvous<'a>(pops: &'a [String], actor: &str) -> Option<&'a str> {
    use std::hash::{Hash, Hasher};
    pops.iter()
        .max_by_key(|p| {
            let mut h = std::hash::DefaultHasher::new();
            (p.as_str(), actor).hash(&mut h);
            h.finish()
        })
        .map(String::as_str)
}

/// Actors `Node::versions` reads at most.
pub const VERSION_ACTORS_COUNTED_MAX: usize = 10_000;

/// One version of a type, as `Node::versions` sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionView {
    /// Its number.
    pub version: u64,
    /// Whether new actors start on it.
    pub current: bool,
    /// Its component.
    pub digest: String,
    /// When it was deployed.
    pub deployed_at_ms: u64,
    /// Actors whose latest snapshot it wrote.
    pub actors: u64,
}

/// A type's versions and failed upgrades.
#[derive(Debug, Clone)]
pub struct VersionsView {
    /// Oldest first.
    pub versions: Vec<VersionView>,
    /// Actors whose upgrade failed, and why.
    pub failures: Vec<(String, tern_storage::UpgradeFailure)>,
    /// Actors counted.
    pub counted: u64,
    /// Whether there were more than [`VERSION_ACTORS_COUNTED_MAX`].
    pub truncated: bool,
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

/// The POP's own budgets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeConfig {
    /// Most activations at once. Past it, idle ones are evicted (least
    /// recently used first); when none is idle, new activations get
    /// RESOURCE_EXHAUSTED.
    pub activations_max: usize,
    /// Budget of resident actor memory (each actor's linear memory plus
    /// its committed baseline), bytes; enforced the same way.
    pub resident_bytes_max: u64,
    /// Guest turns that run at once (the turn pool's slots).
    pub turn_slots: usize,
    /// How long a forwarding POP waits for an owner's answer before it
    /// starts checking whether the owner's lease lapsed, ms.
    pub forward_patience_ms: u64,
    /// Largest component `deploy` accepts, bytes (at most
    /// `GRPC_MESSAGE_BYTES_MAX - DEPLOY_OVERHEAD_BYTES_MAX`).
    pub component_bytes_max: usize,
    /// Budget of memory kept for evicted actors, bytes: an idle actor's
    /// memory and baseline stay mapped after eviction, so that its return
    /// to this POP skips reading and copying its pages (see
    /// `hibernate`). 0 keeps nothing.
    pub hibernated_bytes_max: u64,
    /// How long an evicted actor's memory is kept, ms.
    pub hibernated_ms: u64,
}

/// Most memory kept for evicted actors by default, bytes.
pub const HIBERNATED_BYTES_DEFAULT_MAX: u64 = 1 << 30;

/// The default budget of memory kept for evicted actors, for a resident
/// budget of `resident_bytes_max`: a quarter of it, at most
/// [`HIBERNATED_BYTES_DEFAULT_MAX`].
pub fn hibernated_bytes_default(resident_bytes_max: u64) -> u64 {
    (resident_bytes_max / 4).min(HIBERNATED_BYTES_DEFAULT_MAX)
}

/// The smallest resident footprint an activation is assumed to have when
/// sizing `activations_max` from memory (a 128 KiB actor, twice).
const ACTIVATION_BYTES_TYPICAL: u64 = 256 << 10;

/// The machine's memory, bytes (Linux: /proc/meminfo; 4 GiB if unknown).
pub fn machine_memory_bytes() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(4 << 30)
}

impl Default for NodeConfig {
    /// Sized from the machine: half its memory for resident actors, as
    /// many activations as that holds of small actors, one turn slot per
    /// core; a quarter of the resident budget (at most 1 GiB) for evicted
    /// actors' memories, kept 5 minutes.
    fn default() -> Self {
        let resident_bytes_max = machine_memory_bytes() / 2;
        NodeConfig {
            activations_max: (resident_bytes_max / ACTIVATION_BYTES_TYPICAL).clamp(64, 1 << 20)
                as usize,
            resident_bytes_max,
            turn_slots: default_slots(),
            forward_patience_ms: 1_000,
            component_bytes_max: tern_proto::COMPONENT_BYTES_MAX_DEFAULT,
            hibernated_bytes_max: hibernated_bytes_default(resident_bytes_max),
            hibernated_ms: 300_000,
        }
    }
}

/// Counters shown by `status`.
#[derive(Debug, Default)]
pub struct NodeCounters {
    /// Turns run.
    pub turns: AtomicU64,
    /// Snapshot commits.
    pub commits: AtomicU64,
    /// 64 KiB memory pages that successful turns changed.
    pub pages_changed: AtomicU64,
    /// Turns that failed (trapped, refused, or answered an error).
    pub turns_failed: AtomicU64,
    /// Activations restored from memory kept at eviction.
    pub restores_kept: AtomicU64,
    /// Kept memories found stale (not the store's head) and dropped.
    pub restores_stale: AtomicU64,
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
    /// Turns that failed.
    pub turns_failed: u64,
    /// Commits.
    pub commits: u64,
    /// 64 KiB memory pages that successful turns changed.
    pub pages_changed: u64,
    /// Bytes written to the store by this process.
    pub store_bytes_written: u64,
    /// Resident actor memory, bytes.
    pub resident_bytes: u64,
    /// Evicted actors whose memory is kept, and its bytes.
    pub hibernated: (usize, u64),
    /// Activations restored from kept memory, and kept memories dropped
    /// as stale.
    pub restores_kept: (u64, u64),
    /// This POP's budgets.
    pub config: NodeConfig,
    /// Whether the POP's lease is current.
    pub lease_ok: bool,
    /// POPs, activations and migrations from the directory.
    pub cluster: Option<ClusterView>,
}

pub(crate) struct NodeInner {
    pub(crate) name: String,
    pub(crate) store: Store,
    pub(crate) dir: Arc<dyn Directory>,
    pub(crate) peers: Arc<dyn Peers>,
    pub(crate) engine: TernEngine,
    pub(crate) committer: Committer,
    pub(crate) types: DashMap<String, Arc<ActorType>>,
    /// Configurations of types this POP forwards calls for but has not
    /// compiled.
    pub(crate) configs: DashMap<String, TypeConfig>,
    pub(crate) table: Table,
    pub(crate) shutting_down: AtomicBool,
    pub(crate) counters: NodeCounters,
    pub(crate) rt: tokio::runtime::Handle,
    pub(crate) turns: TurnPool,
    pub(crate) world: World,
    pub(crate) cfg: NodeConfig,
    /// When the node started (the zero of `Handle::last_used_ms`).
    pub(crate) started: tokio::time::Instant,
    /// The same, by the wall clock.
    pub(crate) started_wall_ms: u64,
    /// Subscribers of actors' events held here.
    pub(crate) feeds: Arc<crate::feeds::Feeds>,
    /// Recent guest log lines of the actors that ran here.
    pub(crate) guest_logs: crate::guestlog::GuestLogs,
    /// Images of evicted actors, kept for their return.
    pub(crate) hibernation: crate::hibernate::Hibernation,
}

/// A POP node. Cheap to clone.
#[derive(Clone)]
pub struct Node {
    pub(crate) inner: Arc<NodeInner>,
}

/// Builds a [`Node`].
pub struct NodeBuilder {
    name: String,
    store: Store,
    engine: TernEngine,
    dir: Option<Arc<dyn Directory>>,
    peers: Option<Arc<dyn Peers>>,
    world: World,
    cfg: NodeConfig,
    lock_step: bool,
    store_link: Option<Arc<dyn crate::committer::StoreLink>>,
}

impl NodeBuilder {
    /// Runs everything on the caller's (single) runtime thread, one thread
    /// at a time: turns in lock step, commits inline. For a deterministic
    /// simulator, with a [`crate::engine::CpuMeter::Fuel`] engine.
    pub fn lock_step(mut self) -> Self {
        self.lock_step = true;
        self
    }

    /// Sends lock-step commits through `link` (a simulated way to the
    /// store: latency, pauses, partitions). Only with
    /// [`NodeBuilder::lock_step`]; `start` refuses it otherwise.
    pub fn store_link(mut self, link: Arc<dyn crate::committer::StoreLink>) -> Self {
        self.store_link = Some(link);
        self
    }

    /// Uses `dir` (default: the directory's decision core in process).
    pub fn directory(mut self, dir: Arc<dyn Directory>) -> Self {
        self.dir = Some(dir);
        self
    }

    /// Uses `peers` to reach other POPs (default: none).
    pub fn peers(mut self, peers: Arc<dyn Peers>) -> Self {
        self.peers = Some(peers);
        self
    }

    /// Uses `world` for time and randomness.
    pub fn world(mut self, world: World) -> Self {
        self.world = world;
        self
    }

    /// Uses the POP budgets in `cfg`.
    pub fn config(mut self, cfg: NodeConfig) -> Self {
        self.cfg = cfg;
        self
    }

    /// Starts the node: registers with the directory (an in-process one
    /// if none was given) and keeps its lease. Must be called inside a
    /// tokio runtime.
    pub fn start(self) -> Result<Node> {
        if self.store_link.is_some() && !self.lock_step {
            return Err(RuntimeError::Internal(
                "a store link is only for lock-step nodes (a simulator); a threaded committer talks to the store directly".into(),
            ));
        }
        let dir: Arc<dyn Directory> = match self.dir {
            Some(d) => d,
            None => {
                let clock = self.world.clock.clone();
                let core = Arc::new(Core::new(
                    self.store.clone(),
                    DirectoryConfig {
                        clock: Arc::new(move || clock.wall_ms()),
                        ..DirectoryConfig::default()
                    },
                ));
                let d = LocalDirectory::new(core, &self.name, LOCAL_ENDPOINT, (0.0, 0.0))
                    .with_clock(self.world.clock.clone());
                d.register_now()?;
                Arc::new(d)
            }
        };
        let started_wall_ms = self.world.clock.wall_ms();
        let node = Node {
            inner: Arc::new(NodeInner {
                committer: if self.lock_step {
                    Committer::inline(self.store.clone(), self.store_link.clone())
                } else {
                    Committer::start(self.store.clone())
                },
                name: self.name,
                store: self.store,
                dir: dir.clone(),
                peers: self.peers.unwrap_or_else(|| Arc::new(NoPeers)),
                engine: self.engine,
                types: DashMap::new(),
                configs: DashMap::new(),
                table: Table::default(),
                shutting_down: AtomicBool::new(false),
                counters: NodeCounters::default(),
                rt: tokio::runtime::Handle::current(),
                turns: if self.lock_step {
                    TurnPool::lock_step()
                } else {
                    TurnPool::new(self.cfg.turn_slots)
                },
                world: self.world,
                cfg: self.cfg,
                started: tokio::time::Instant::now(),
                started_wall_ms,
                feeds: Arc::default(),
                guest_logs: crate::guestlog::GuestLogs::default(),
                hibernation: crate::hibernate::Hibernation::new(
                    self.cfg.hibernated_bytes_max,
                    self.cfg.hibernated_ms,
                ),
            }),
        };
        node.spawn_heartbeat();
        node.spawn_learn_peers();
        if !node.inner.turns.is_lock_step() {
            // A simulator drives time itself; it has no alarm sweeper.
            node.spawn_alarm_sweeper();
        }
        Ok(node)
    }
}

pub(crate) fn check_name(what: &str, s: &str, max: usize) -> Result<()> {
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

/// Checks a call's names, key and payload size against `ty`.
pub(crate) fn check_call(req: &CallRequest) -> Result<()> {
    check_name("actor type", &req.actor_type, ACTOR_NAME_BYTES_MAX)?;
    check_name("actor id", &req.id, ACTOR_NAME_BYTES_MAX)?;
    check_name("method", &req.method, METHOD_NAME_BYTES_MAX)?;
    if req.method.starts_with('~')
        && req.method != VERSION_PROBE_METHOD
        && req.method != crate::outbox::WAKE_METHOD
    {
        // `~alarm` turns come only from the actor's own alarms.
        return Err(RuntimeError::InvalidArgument(format!(
            "method `{}`: names starting with `~` are reserved for the runtime",
            req.method
        )));
    }
    if let Some(k) = &req.idempotency_key
        && (k.is_empty() || k.len() > IDEMPOTENCY_KEY_BYTES_MAX)
    {
        return Err(RuntimeError::InvalidArgument(format!(
            "idempotency key is {} bytes; it must be 1 to {IDEMPOTENCY_KEY_BYTES_MAX} bytes",
            k.len()
        )));
    }
    Ok(())
}

impl Node {
    /// Starts a single POP named `name` over `store`, with the directory's
    /// decision core in process. Must be called inside a multi-threaded
    /// tokio runtime.
    pub fn new(name: impl Into<String>, store: Store, engine: TernEngine) -> Node {
        Node::builder(name, store, engine)
            .start()
            .expect("an in-process directory registers its POP")
    }

    /// A builder for a node with its own seams and budgets.
    pub fn builder(name: impl Into<String>, store: Store, engine: TernEngine) -> NodeBuilder {
        NodeBuilder {
            name: name.into(),
            store,
            engine,
            dir: None,
            peers: None,
            world: World::default(),
            cfg: NodeConfig::default(),
            lock_step: false,
            store_link: None,
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

    /// The POP's budgets.
    pub fn config(&self) -> NodeConfig {
        self.inner.cfg
    }

    /// Wall-clock ms, from the node's clock.
    pub(crate) fn now_ms(&self) -> u64 {
        self.inner.world.clock.wall_ms()
    }

    /// Validates, stores and compiles a component as actor type `name`: a
    /// new version of the type (the same code again only updates its
    /// configuration). Actors persisted by an older version move to it by
    /// state transfer (`save` in the old code, `load` in the new) at their
    /// next activation; see [`Node::rollout_now`] to hurry them.
    pub fn deploy(&self, name: &str, component: &[u8], opts: DeployOptions) -> Result<DeployInfo> {
        let DeployOptions {
            durability,
            limits,
            placement,
            rollout,
            dry_run,
        } = opts;
        check_name("actor type", name, ACTOR_NAME_BYTES_MAX)?;
        if component.len() > self.inner.cfg.component_bytes_max {
            return Err(RuntimeError::ComponentTooLarge {
                size: component.len(),
                limit: self.inner.cfg.component_bytes_max,
            });
        }
        let limits = limits.or_defaults();
        limits.validate().map_err(RuntimeError::InvalidArgument)?;
        placement
            .validate()
            .map_err(RuntimeError::InvalidArgument)?;
        let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(component));
        // Validate and compile before anything is stored.
        let prep = self
            .inner
            .engine
            .prepare_cached(&digest, component, &self.inner.store)?;
        let mut before = self.inner.store.list_versions(name)?;
        if before.is_empty()
            && let Some(t) = self.inner.store.get_type(name)?
        {
            // Deployed before versions existed: the store makes it version 1.
            before.push((
                1,
                tern_storage::VersionRecord {
                    digest: t.digest,
                    config_json: t.config_json,
                    deployed_at_ms: t.deployed_at_ms,
                },
            ));
        }
        let current = self.inner.store.get_type(name)?;
        let same_code = current.as_ref().is_some_and(|t| t.digest == digest);
        let same_version = before
            .iter()
            .rev()
            .find(|(_, v)| v.digest == digest)
            .map(|(n, _)| *n);
        let newest = before.last().map_or(0, |(n, _)| *n);
        let next = match same_version {
            Some(n) if same_code => n,
            _ => newest + 1,
        };
        let plan = match &current {
            None => format!("type `{name}` is new: version 1"),
            Some(_) if same_code => {
                format!(
                    "the same code as the current version {next}: its configuration is updated, no actor moves"
                )
            }
            Some(_) => format!(
                "version {next} replaces the current code: actors persisted by another version move to it by state transfer (save, then load) {}; an actor whose load fails stays on its version",
                match rollout {
                    Rollout::Lazy => "at their next activation",
                    Rollout::Now => "now (active ones, at every live POP, finish their turn first)",
                }
            ),
        };
        if dry_run {
            return Ok(DeployInfo {
                digest,
                component_bytes: component.len() as u64,
                version: next,
                plan,
            });
        }
        let mut config = TypeConfig {
            durability,
            limits,
            version: 0,
            placement,
        };
        self.inner.store.put_component(component)?;
        let base = config.clone();
        let version = self
            .inner
            .store
            .deploy_version(name, &digest, self.now_ms(), &|n| {
                let mut c = base.clone();
                c.version = n;
                // Plain data always encodes as JSON.
                serde_json::to_string(&c).expect("a type config encodes as JSON")
            })?;
        config.version = version;
        self.inner.types.insert(
            name.to_string(),
            Arc::new(ActorType {
                name: name.to_string(),
                config,
                prep,
            }),
        );
        self.inner.configs.remove(name);
        tracing::info!(actor_type = name, %digest, version, ?durability, "deployed: {plan}");
        Ok(DeployInfo {
            digest,
            component_bytes: component.len() as u64,
            version,
            plan,
        })
    }

    /// The configuration of a type: from memory, else from the store
    /// (without compiling its component).
    pub(crate) fn type_config(&self, name: &str) -> Result<TypeConfig> {
        if let Some(t) = self.inner.types.get(name) {
            return Ok(t.config.clone());
        }
        if let Some(c) = self.inner.configs.get(name) {
            return Ok(c.clone());
        }
        let rec = blocking(|| self.inner.store.get_type(name))?
            .ok_or_else(|| RuntimeError::UnknownType(name.to_string()))?;
        let config: TypeConfig = serde_json::from_str(&rec.config_json).map_err(|e| {
            RuntimeError::Engine(format!("type `{name}` has an unreadable config: {e}"))
        })?;
        if self.inner.configs.len() >= TYPE_CONFIGS_CACHED_MAX {
            self.inner.configs.clear();
        }
        self.inner.configs.insert(name.to_string(), config.clone());
        Ok(config)
    }

    /// The current definition of a type, from the store (compiled on first
    /// use and cached by digest).
    pub(crate) fn load_type(&self, name: &str) -> Result<Arc<ActorType>> {
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
        let prep = self
            .inner
            .engine
            .prepare_cached(&rec.digest, &bytes, &self.inner.store)?;
        let config: TypeConfig = serde_json::from_str(&rec.config_json).map_err(|e| {
            RuntimeError::Engine(format!("type `{name}` has an unreadable config: {e}"))
        })?;
        let t = Arc::new(ActorType {
            name: name.to_string(),
            config,
            prep,
        });
        self.inner.types.insert(name.to_string(), t.clone());
        self.inner.configs.remove(name);
        Ok(t)
    }

    /// Version `n` of type `name` (record `v`), compiled (the engine caches
    /// compiled code by digest).
    pub(crate) fn version_type(
        &self,
        name: &str,
        n: u64,
        v: &tern_storage::VersionRecord,
    ) -> Result<Arc<ActorType>> {
        let prep = match self.inner.engine.compiled(&v.digest) {
            Some(p) => p,
            None => {
                let bytes = self.inner.store.get_component(&v.digest)?.ok_or_else(|| {
                    RuntimeError::Engine(format!(
                        "version {n} of type `{name}` refers to component {} which is missing from the store",
                        v.digest
                    ))
                })?;
                self.inner
                    .engine
                    .prepare_cached(&v.digest, &bytes, &self.inner.store)?
            }
        };
        let mut config: TypeConfig = serde_json::from_str(&v.config_json).map_err(|e| {
            RuntimeError::Engine(format!(
                "version {n} of type `{name}` has an unreadable config: {e}"
            ))
        })?;
        config.version = n;
        Ok(Arc::new(ActorType {
            name: name.to_string(),
            config,
            prep,
        }))
    }

    /// Whether this POP may run turns (its lease is current).
    pub fn lease_ok(&self) -> bool {
        self.inner.dir.lease_ok() || crate::plant::serve_after_lease()
    }

    /// Renews the lease every heartbeat interval. When the directory says
    /// the lease lapsed, or it cannot be renewed before it ends, every
    /// activation is abandoned at once (a newer epoch may exist elsewhere);
    /// then the POP registers again as a new incarnation. This task runs on
    /// the tokio workers, which guest turns never occupy.
    /// Subscribes to `topic` of actor `actor_type/id`, from the event after
    /// `resume_after` (0: from the oldest kept). The actor need not be
    /// active anywhere; its type must exist.
    pub fn subscribe(
        &self,
        actor_type: &str,
        id: &str,
        topic: &str,
        resume_after: u64,
    ) -> Result<crate::feeds::Subscription> {
        check_name("actor type", actor_type, ACTOR_NAME_BYTES_MAX)?;
        check_name("actor id", id, ACTOR_NAME_BYTES_MAX)?;
        if topic.is_empty()
            || topic.len() > tern_storage::TOPIC_BYTES_MAX
            || topic.chars().any(char::is_control)
        {
            return Err(RuntimeError::InvalidArgument(format!(
                "topic must be 1 to {} bytes without control characters (has {} bytes)",
                tern_storage::TOPIC_BYTES_MAX,
                topic.len()
            )));
        }
        self.type_config(actor_type)?;
        self.inner.feeds.subscribe(
            &self.inner.store,
            &format!("{actor_type}/{id}"),
            topic,
            resume_after,
        )
    }

    /// Ends every subscription held here and refuses new ones (before a
    /// server drains its streams on shutdown).
    pub fn close_subscriptions(&self) {
        self.inner.feeds.close();
    }

    /// The newest `limit` guest log lines `actor_type/id` logged at this
    /// POP (oldest first).
    pub fn guest_logs(
        &self,
        actor_type: &str,
        id: &str,
        limit: usize,
    ) -> Result<Vec<crate::guestlog::LogLine>> {
        check_name("actor type", actor_type, ACTOR_NAME_BYTES_MAX)?;
        check_name("actor id", id, ACTOR_NAME_BYTES_MAX)?;
        Ok(self
            .inner
            .guest_logs
            .recent(&format!("{actor_type}/{id}"), limit))
    }

    /// Subscribers held at this POP.
    pub fn subscribers(&self) -> usize {
        self.inner.feeds.subscribers()
    }

    /// Wakes actors whose alarms are due but that no POP runs: every
    /// [`ALARM_SWEEP_MS`], reads the store's due index; an actor active
    /// here fires its own alarms, and each other one is woken (activated
    /// through the normal route, which fires its due alarms) by one POP,
    /// chosen among the directory's live POPs by rendezvous hashing, or by
    /// any POP once the alarm is [`ALARM_ANY_POP_MS`] overdue.
    fn spawn_alarm_sweeper(&self) {
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(ALARM_SWEEP_MS));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut woken: HashMap<String, tokio::time::Instant> = HashMap::new();
            let mut live: (Vec<String>, Option<tokio::time::Instant>) = (Vec::new(), None);
            loop {
                tick.tick().await;
                let Some(node) = Node::running(&weak) else {
                    return;
                };
                if !node.lease_ok() {
                    continue;
                }
                let now = node.now_ms();
                let store = node.inner.store.clone();
                let until = now.saturating_sub(ALARM_SWEEP_GRACE_MS);
                let due = match tokio::task::spawn_blocking(move || {
                    store.list_due(until, ALARM_SWEEP_BATCH)
                })
                .await
                {
                    Ok(Ok(d)) => d,
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "cannot read the alarm due index");
                        continue;
                    }
                    Err(_) => continue,
                };
                if due.is_empty() {
                    continue;
                }
                woken.retain(|_, t| t.elapsed() < Duration::from_millis(ALARM_WAKE_AGAIN_MS));
                if live
                    .1
                    .is_none_or(|t| t.elapsed() > Duration::from_millis(ALARM_POPS_REFRESH_MS))
                {
                    match node.inner.dir.live_pops().await {
                        Ok(p) => live = (p, Some(tokio::time::Instant::now())),
                        Err(e) => {
                            tracing::debug!(error = %e, "cannot list live POPs; waking only long-overdue alarms")
                        }
                    }
                }
                for d in due {
                    if woken.len() >= ALARM_WAKES_MAX {
                        break;
                    }
                    if node.inner.table.contains(&d.actor) || woken.contains_key(&d.actor) {
                        continue;
                    }
                    let overdue = now.saturating_sub(d.at_ms);
                    if overdue < ALARM_ANY_POP_MS
                        && rendezvous(&live.0, &d.actor) != Some(node.name())
                    {
                        continue;
                    }
                    woken.insert(d.actor.clone(), tokio::time::Instant::now());
                    let n = node.clone();
                    tokio::spawn(async move { n.wake(d).await });
                }
            }
        });
    }

    /// Activates the actor of a due alarm (see [`Node::spawn_alarm_sweeper`]).
    async fn wake(&self, d: tern_storage::DueAlarm) {
        let Some((ty, id)) = d.actor.split_once('/') else {
            tracing::warn!(actor = %d.actor, "a due alarm names no type/id; removing it");
            let _ = blocking(|| self.inner.store.clear_due(&d));
            return;
        };
        let req = CallRequest::new(ty, id, crate::outbox::WAKE_METHOD, Vec::new());
        match self.call(req).await {
            Ok(_) => metrics::counter!("tern_alarm_wakes_total").increment(1),
            Err(RuntimeError::UnknownType(t)) => {
                tracing::warn!(actor = %d.actor, ty = %t, "an alarm is due for an actor whose type is gone; removing it");
                let _ = blocking(|| self.inner.store.clear_due(&d));
            }
            Err(e) => {
                tracing::debug!(actor = %d.actor, error = %e, "cannot wake an actor with a due alarm yet");
            }
        }
    }

    /// The node behind a background task's weak handle, unless it is gone
    /// or shutting down (the task's cue to stop).
    fn running(weak: &std::sync::Weak<NodeInner>) -> Option<Node> {
        let node = Node {
            inner: weak.upgrade()?,
        };
        (!node.inner.shutting_down.load(Ordering::Acquire)).then_some(node)
    }

    fn spawn_heartbeat(&self) {
        let weak = Arc::downgrade(&self.inner);
        let dir = self.inner.dir.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(dir.heartbeat_interval());
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(node) = Node::running(&weak) else {
                    return;
                };
                let expired = node.inner.hibernation.sweep(std::time::Instant::now());
                if !expired.is_empty() {
                    // Released memories are zeroed: not on this worker.
                    tokio::task::spawn_blocking(move || drop(expired));
                }
                match dir.heartbeat().await {
                    Ok(true) => continue,
                    Ok(false) => {
                        tracing::warn!(pop = %node.inner.name, "directory says our lease lapsed: dropping every activation and registering again");
                    }
                    // (`node.lease_ok`: the planted bug `serve-after-lease`
                    // keeps serving here too.)
                    Err(e) if node.lease_ok() => {
                        tracing::warn!(error = %e, "heartbeat failed; lease still current");
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "heartbeat failed and the lease ended: dropping every activation");
                    }
                }
                node.abandon_all().await;
                if let Err(e) = dir.register().await {
                    tracing::warn!(error = %e, "cannot register again yet");
                }
            }
        });
    }

    /// Opens connections to every POP the directory knows, in the
    /// background (retrying a few times while the directory is not ready).
    fn spawn_learn_peers(&self) {
        let weak = Arc::downgrade(&self.inner);
        let period = self.inner.dir.heartbeat_interval();
        tokio::spawn(async move {
            for _ in 0..LEARN_PEERS_ATTEMPTS {
                let Some(inner) = weak.upgrade() else { return };
                if (Node { inner }).learn_peers().await {
                    return;
                }
                tokio::time::sleep(period).await;
            }
        });
    }

    /// Opens connections to every POP the directory knows. Returns whether
    /// the directory answered.
    async fn learn_peers(&self) -> bool {
        match self.inner.dir.cluster_view().await {
            Ok(v) => {
                for p in v.pops.iter().filter(|p| p.name != self.inner.name) {
                    self.inner.peers.learn(&p.endpoint);
                }
                true
            }
            Err(e) => {
                tracing::debug!(error = %e, "cannot list POPs yet");
                false
            }
        }
    }

    /// Drops every activation without persisting or releasing them.
    async fn abandon_all(&self) {
        metrics::counter!("tern_lease_losses_total").increment(1);
        self.inner.table.end_all(|| Msg::Abandon).await;
    }

    /// Fault injection (a simulator's crash): stops at once, dropping every
    /// activation without persisting or releasing it and renewing no lease,
    /// as if the process died.
    pub async fn crash(&self) {
        self.inner.shutting_down.store(true, Ordering::Release);
        self.inner.table.end_all(|| Msg::Abandon).await;
    }

    /// Evicts every actor (persisting them) and refuses new calls.
    pub async fn shutdown(&self) {
        self.inner.shutting_down.store(true, Ordering::Release);
        self.close_subscriptions();
        self.inner.table.end_all(|| Msg::Evict).await;
    }

    /// How many actors of `actor_type` active here run each version.
    pub fn active_versions(&self, actor_type: &str) -> std::collections::BTreeMap<u64, u64> {
        self.inner.table.versions_of_type(actor_type)
    }

    /// How many actors of `actor_type` failed to upgrade (bounded by
    /// `UPGRADE_FAILURES_MAX`).
    pub fn upgrade_failures(&self, actor_type: &str) -> Result<u64> {
        Ok(self.inner.store.list_upgrade_failures(actor_type)?.len() as u64)
    }

    /// Makes the version before the current one of `actor_type` current
    /// again. Its actors move back at their next activation (see
    /// [`Node::rollout_now`] to hurry them): an actor upgraded to the
    /// current version gets the state it had before that upgrade (changes
    /// made since are dropped); one created on the current version moves
    /// back by state transfer. Returns (the version now current, a plan).
    pub fn rollback(&self, actor_type: &str) -> Result<(u64, String)> {
        let current = self.load_type(actor_type)?;
        let cur_n = current.config.version;
        let versions = self.inner.store.list_versions(actor_type)?;
        let Some((prev_n, prev)) = versions.iter().rev().find(|(n, _)| *n < cur_n) else {
            return Err(RuntimeError::Guest {
                kind: crate::error::ErrorKind::FailedPrecondition,
                message: format!(
                    "type `{actor_type}` is on version {cur_n}, which has no earlier version to roll back to"
                ),
            });
        };
        let mut config: TypeConfig = serde_json::from_str(&prev.config_json).map_err(|e| {
            RuntimeError::Engine(format!(
                "version {prev_n} of type `{actor_type}` has an unreadable config: {e}"
            ))
        })?;
        config.version = *prev_n;
        let json = serde_json::to_string(&config).expect("a type config encodes as JSON");
        self.inner
            .store
            .set_current_version(actor_type, *prev_n, &json, self.now_ms())?;
        self.inner.types.remove(actor_type);
        self.inner.configs.remove(actor_type);
        let plan = format!(
            "version {prev_n} of `{actor_type}` is current again (was {cur_n}): actors upgraded to {cur_n} get back the state they had before, and lose what changed since; actors created on {cur_n} move back by state transfer"
        );
        tracing::warn!(actor_type, from = cur_n, to = prev_n, "rolled back");
        Ok((*prev_n, plan))
    }

    /// The versions of `actor_type`, how many of its actors (up to
    /// [`VERSION_ACTORS_COUNTED_MAX`]) each one's latest snapshot belongs
    /// to, and its actors' upgrade failures. Reads one head manifest per
    /// actor: an administrative request, not a hot path.
    pub fn versions(&self, actor_type: &str) -> Result<VersionsView> {
        let store = &self.inner.store;
        let current = store
            .get_type(actor_type)?
            .ok_or_else(|| RuntimeError::UnknownType(actor_type.to_string()))?;
        let current_n = serde_json::from_str::<TypeConfig>(&current.config_json)
            .map(|c| c.version)
            .unwrap_or(0);
        let versions = store.list_versions(actor_type)?;
        let actors = store.list_actors_of_type(actor_type, VERSION_ACTORS_COUNTED_MAX + 1)?;
        let truncated = actors.len() > VERSION_ACTORS_COUNTED_MAX;
        let mut counts = vec![0u64; versions.len()];
        let mut counted = 0;
        for a in actors.iter().take(VERSION_ACTORS_COUNTED_MAX) {
            let Some(d) = store.snapshot_digest(a)? else {
                continue;
            };
            counted += 1;
            if let Some(i) = versions.iter().rposition(|(_, v)| v.digest == d) {
                counts[i] += 1;
            }
        }
        Ok(VersionsView {
            versions: versions
                .into_iter()
                .zip(counts)
                .map(|((n, v), actors)| VersionView {
                    version: n,
                    current: n == current_n,
                    digest: v.digest,
                    deployed_at_ms: v.deployed_at_ms,
                    actors,
                })
                .collect(),
            failures: store.list_upgrade_failures(actor_type)?,
            counted,
            truncated,
        })
    }

    /// [`Node::rollout_now`] here and at every other live POP of the
    /// cluster, concurrently. A POP that cannot be reached is logged and
    /// skipped: its actors move at their next activation. Returns how many
    /// actors moved in all.
    pub async fn rollout_cluster(&self, actor_type: &str) -> Result<RolloutOutcome> {
        let mut total = self.rollout_now(actor_type, |_, _| {}).await?;
        let view = self.inner.dir.cluster_view().await?;
        let me = self.name().to_string();
        let asks = view
            .pops
            .iter()
            .filter(|p| p.alive && p.name != me && p.endpoint != crate::directory::LOCAL_ENDPOINT)
            .map(|p| {
                let peers = self.inner.peers.clone();
                let (name, endpoint) = (p.name.clone(), p.endpoint.clone());
                async move { (name, peers.rollout(&endpoint, actor_type).await) }
            });
        for (pop, r) in futures::future::join_all(asks).await {
            match r {
                Ok(o) => {
                    total.moved += o.moved;
                    total.failed += o.failed;
                }
                Err(e) => {
                    tracing::warn!(%pop, actor_type, error = %e, "a POP did not roll out now; its actors move at their next activation")
                }
            }
        }
        Ok(total)
    }

    /// Moves every active actor of `actor_type` here to the type's
    /// current version now: each finishes its turn, persists, and is
    /// reactivated (its upgrade, or rollback, runs then). `progress(done,
    /// total)` is called after each. An actor whose upgrade fails stays on
    /// its version and is counted in `failed`.
    pub async fn rollout_now(
        &self,
        actor_type: &str,
        progress: impl Fn(usize, usize),
    ) -> Result<RolloutOutcome> {
        let current = self.load_type(actor_type)?.config.version;
        let keys = self.inner.table.keys_of_type(actor_type);
        let mut out = RolloutOutcome::default();
        for (i, key) in keys.iter().enumerate() {
            self.inner.table.end_one(key).await;
            let id = key.split_once('/').map_or("", |(_, id)| id);
            let probe = CallRequest::new(actor_type, id, VERSION_PROBE_METHOD, Vec::new());
            match self.route(probe, Route::default()).await {
                Ok(r) => {
                    out.moved += 1;
                    if String::from_utf8_lossy(&r.payload) != current.to_string() {
                        out.failed += 1;
                    }
                }
                // Not reactivated now (it moved, or the POP is busy): it
                // moves at its next call.
                Err(e) => {
                    tracing::debug!(actor = %key, error = %e, "not reactivated by the rollout")
                }
            }
            progress(i + 1, keys.len());
        }
        Ok(out)
    }

    /// Evicts one actor now (persisting it). Returns whether it was active.
    pub async fn evict(&self, actor_type: &str, id: &str) -> bool {
        self.inner
            .table
            .end_one(&format!("{actor_type}/{id}"))
            .await
    }

    /// Fault injection for tests and the simulator: the actor's task
    /// panics when it reaches this message in its mailbox. Returns whether
    /// the actor was active.
    pub fn inject_panic(&self, actor_type: &str, id: &str) -> bool {
        self.inner
            .table
            .send_now(&format!("{actor_type}/{id}"), Msg::Panic)
    }

    /// Active actors here.
    pub fn active_actors(&self) -> usize {
        self.inner.table.len()
    }

    /// Resident actor memory here, bytes.
    pub fn resident_bytes(&self) -> u64 {
        self.inner.table.resident_bytes()
    }

    /// The node's state, with the cluster's as the directory sees it.
    pub async fn status(&self) -> NodeStatus {
        let actors = self.inner.table.keys();
        let listed = blocking(|| self.inner.store.list_types());
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
        let cluster = match self.inner.dir.cluster_view().await {
            Ok(v) => Some(v),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the cluster view");
                None
            }
        };
        NodeStatus {
            pop: self.inner.name.clone(),
            actors,
            types,
            turns: self.inner.counters.turns.load(Ordering::Relaxed),
            turns_failed: self.inner.counters.turns_failed.load(Ordering::Relaxed),
            commits: self.inner.counters.commits.load(Ordering::Relaxed),
            pages_changed: self.inner.counters.pages_changed.load(Ordering::Relaxed),
            store_bytes_written: self.inner.store.stats().bytes_written,
            resident_bytes: self.resident_bytes(),
            hibernated: (self.inner.hibernation.len(), self.inner.hibernation.bytes()),
            restores_kept: (
                self.inner.counters.restores_kept.load(Ordering::Relaxed),
                self.inner.counters.restores_stale.load(Ordering::Relaxed),
            ),
            config: self.inner.cfg,
            lease_ok: self.lease_ok(),
            cluster,
        }
    }

    /// The memory images of an actor as of its last successful turn,
    /// activating it if needed. Tests use it to prove faithful restore.
    pub async fn memory_images(&self, actor_type: &str, id: &str) -> Result<Vec<Vec<u8>>> {
        Ok(self.instance_state(actor_type, id).await?.0)
    }

    /// The memory images and mutable globals (raw bits, in the order of
    /// `globals`) of an actor as of its last successful turn, activating
    /// it if needed. Tests use it to prove faithful restore.
    pub async fn instance_state(
        &self,
        actor_type: &str,
        id: &str,
    ) -> Result<(Vec<Vec<u8>>, Vec<u64>)> {
        let key = format!("{actor_type}/{id}");
        let ty = self.type_config(actor_type)?;
        let (tx, rx) = oneshot::channel();
        self.deliver(&key, actor_type, id, &ty, Msg::Images { reply: tx })
            .await?;
        rx.await.map_err(|_| RuntimeError::Superseded {
            actor: key,
            epoch: 0,
        })
    }
}

/// Turns an activation remembers for [`Node::inspect`].
pub const LAST_TURNS_KEPT: usize = 10;

/// One recent turn, for an inspector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TurnInfo {
    /// Its method.
    pub method: String,
    /// When it ended, ms since the Unix epoch.
    pub at_ms: u64,
    /// Whether it succeeded.
    pub ok: bool,
    /// How long it took, µs.
    pub micros: u64,
}

/// Where an active actor stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inspection {
    /// Its activation's epoch.
    pub epoch: u64,
    /// The version of its type it runs.
    pub version: u64,
    /// Its linear memory, bytes.
    pub memory_bytes: u64,
    /// Its last turns, newest last.
    pub last_turns: Vec<TurnInfo>,
}

impl Node {
    /// Where `actor_type/id` stands if it is active here (`None` if not;
    /// never activates it).
    pub async fn inspect(&self, actor_type: &str, id: &str) -> Result<Option<Inspection>> {
        check_name("actor type", actor_type, ACTOR_NAME_BYTES_MAX)?;
        check_name("actor id", id, ACTOR_NAME_BYTES_MAX)?;
        let (tx, rx) = oneshot::channel();
        if !self
            .inner
            .table
            .send_now(&format!("{actor_type}/{id}"), Msg::Inspect { reply: tx })
        {
            return Ok(None);
        }
        match tokio::time::timeout(Duration::from_millis(INSPECT_WAIT_MS), rx).await {
            Ok(Ok(i)) => Ok(Some(i)),
            // It ended meanwhile.
            Ok(Err(_)) => Ok(None),
            Err(_) => Err(RuntimeError::DeadlineExceeded(format!(
                "{actor_type}/{id} did not answer the inspector within {INSPECT_WAIT_MS} ms (a long turn?)"
            ))),
        }
    }
}

/// Longest an inspection waits for the actor's mailbox to reach it, ms.
pub const INSPECT_WAIT_MS: u64 = 2_000;

/// Times a starting POP asks the directory for its peers.
const LEARN_PEERS_ATTEMPTS: u32 = 10;

/// Longest a nested call's thread waits past its deadline for the route
/// future to notice (the route itself is bounded by the deadline).
const NESTED_CALL_SLACK: Duration = Duration::from_millis(100);

impl ActorCaller for Node {
    fn guest_log(&self, actor: &str, level: crate::instance::Level, message: &str) {
        use crate::instance::Level as L;
        let level = match level {
            L::Trace => "trace",
            L::Debug => "debug",
            L::Info => "info",
            L::Warn => "warn",
            L::Error => "error",
        };
        self.inner
            .guest_logs
            .push(actor, level, message, self.now_ms());
    }

    fn call_blocking(&self, call: NestedCall<'_>) -> Result<Vec<u8>> {
        let target = format!("{}/{}", call.ty, call.id);
        if call.chain.contains(&target) {
            let mut names = call.chain.to_vec();
            names.push(target);
            return Err(RuntimeError::CallCycle(names.join(" -> ")));
        }
        if call.chain.len() >= CALL_DEPTH_MAX {
            return Err(RuntimeError::CallTooDeep(format!(
                "{} -> {target} would be {} calls deep, over the limit of CALL_DEPTH_MAX = {CALL_DEPTH_MAX}; make fewer nested calls",
                call.chain.join(" -> "),
                call.chain.len() + 1
            )));
        }
        let mut req = CallRequest::new(call.ty, call.id, call.method, call.payload);
        req.idempotency_key = call.idempotency_key;
        let node = self.clone();
        let route = Route {
            chain: call.chain.to_vec(),
            via: None,
            deadline: call.deadline,
            span: None,
        };
        // A child of the turn's span, which is current on this thread.
        let span = tracing::debug_span!("nested call", to = %target, method = %call.method);
        let rt = self.inner.rt.clone();
        let deadline = call.deadline;
        if !self.inner.turns.may_block() {
            return Err(RuntimeError::PopBudget(format!(
                "too many turns on this POP wait on nested calls (TURN_THREADS_MAX = {}); retry later",
                crate::turnpool::TURN_THREADS_MAX
            )));
        }
        // The turn gives its run slot back while it waits.
        self.inner
            .turns
            .block_on(&rt, async move {
                let fut = tracing::Instrument::instrument(node.route(req, route), span);
                match deadline {
                    Some(d) => tokio::time::timeout_at(d + NESTED_CALL_SLACK, fut)
                        .await
                        .unwrap_or_else(|_| {
                            Err(RuntimeError::DeadlineExceeded(
                                "a nested call ran past its caller's deadline".into(),
                            ))
                        }),
                    None => fut.await,
                }
            })
            .map(|o| o.payload)
    }
}
