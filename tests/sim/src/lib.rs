//! # tern-sim
//!
//! A deterministic simulator of a whole tern cluster. One process, one
//! thread, simulated time:
//! - N real POP cores (`tern_runtime::Node`, real wasmtime, the real
//!   example components: `counter`, `bank`, doom-lobby), built in lock step (`NodeBuilder::lock_step`:
//!   turns run one thread at a time, commits inline) with a fuel-metered
//!   engine, so CPU budgets are counted in instructions, not wall time;
//! - [`DIRECTORIES`] directory processes, each the directory's decision
//!   core (`tern_directory::Core`) over the one store, reached through
//!   [`SimDirectory`] (the runtime's `Directory` seam), which fails over
//!   between them as the gRPC link does; faults kill one or all of them;
//! - the memory store with fault injection, reached by each POP through
//!   its own partitionable handle ([`CutKv`]) and, for commits, a delaying
//!   link ([`SimStoreLink`], the runtime's `StoreLink` seam);
//! - a simulated network ([`SimPeers`], the runtime's `Peers` seam, and
//!   the clients' links) that delays, drops, duplicates and partitions.
//!
//! Workloads (`counter`, `bank`, `doom`) live in their own modules; each
//! drives simulated clients through [`Caller`] (which retries as
//! `TernClient` does) and checks its own invariants after the faults heal.
//! The cluster-wide checks (no panics, no data loss, no commit from a
//! superseded epoch) are here.
//!
//! Time is tokio's paused clock: it jumps to the next timer whenever every
//! task waits. Everything else nondeterministic comes from the seed: the
//! POPs' clocks and randomness (`World`), the network, the faults and the
//! workload. The same seed gives the same event log; its hash is printed.
//!
//! A checker runs on every seed (see [`check`]). Planted bugs
//! (`--plant`) prove it can fail.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tern_directory::{Core, DirectoryConfig};
use tern_runtime::clock::{Clock, World};
use tern_runtime::committer::StoreLink;
use tern_runtime::directory::{
    ClaimOutcome, ClusterView, Directory, LocalDirectory, MigrationInfo, Owner,
};
use tern_runtime::flag::Flag;
use tern_runtime::peers::{Forwarded, Peers};
use tern_runtime::route::Routed;
use tern_runtime::{
    CallOutput, CallRequest, ErrorKind, Node, NodeConfig, Route, RuntimeError, TernEngine,
};

mod bank;
mod counter;
mod doom;
pub mod placement;
pub mod wan;
use tern_storage::kv::{KvBackend, KvTransaction};
use tern_storage::{FaultInjector, Kv, StorageError, Store};
use tokio::time::Instant;

/// The workload a seed runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// Clients record call ids on a few `counter` actors, keyed and not.
    Counter,
    /// Clients move money between `account` actors through nested calls
    /// with idempotency keys; the total must be conserved.
    Bank,
    /// Simulated players drive doom-lobby's `player`, `matchmaker` and
    /// `match` actors.
    Doom,
}

impl Workload {
    /// Its command-line name.
    pub fn name(self) -> &'static str {
        match self {
            Workload::Counter => "counter",
            Workload::Bank => "bank",
            Workload::Doom => "doom",
        }
    }

    /// The example crate (under `examples/`) whose component it runs.
    fn example(self) -> &'static str {
        match self {
            Workload::Counter => "counter",
            Workload::Bank => "bank",
            Workload::Doom => "doom-lobby/actors",
        }
    }
}

impl std::str::FromStr for Workload {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "counter" => Ok(Workload::Counter),
            "bank" => Ok(Workload::Bank),
            "doom" => Ok(Workload::Doom),
            other => Err(format!(
                "unknown workload `{other}`; one of counter, bank, doom"
            )),
        }
    }
}

/// A bug switched on through a test-only seam.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plant {
    /// The store accepts a stale epoch's commit.
    SkipFence,
    /// A POP keeps running turns after its lease has ended.
    ServeAfterLease,
    /// POPs ignore idempotency keys.
    IgnoreIdempotency,
}

impl std::str::FromStr for Plant {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "skip-fence" => Ok(Plant::SkipFence),
            "serve-after-lease" => Ok(Plant::ServeAfterLease),
            "ignore-idempotency" => Ok(Plant::IgnoreIdempotency),
            other => Err(format!(
                "unknown bug `{other}`; one of skip-fence, serve-after-lease, ignore-idempotency"
            )),
        }
    }
}

impl Plant {
    /// Its command-line name.
    pub fn name(self) -> &'static str {
        match self {
            Plant::SkipFence => "skip-fence",
            Plant::ServeAfterLease => "serve-after-lease",
            Plant::IgnoreIdempotency => "ignore-idempotency",
        }
    }

    fn set(self, on: bool) {
        match self {
            Plant::SkipFence => tern_storage::plant::set_skip_fence(on),
            Plant::ServeAfterLease => tern_runtime::plant::set_serve_after_lease(on),
            Plant::IgnoreIdempotency => tern_runtime::plant::set_ignore_idempotency(on),
        }
    }
}

/// What a run simulates.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// The workload.
    pub workload: Workload,
    /// POPs.
    pub pops: usize,
    /// A planted bug, if any.
    pub plant: Option<Plant>,
    /// Simulated seconds of load and faults before everything heals.
    pub fault_secs: u64,
    /// Clients (doom: players).
    pub clients: usize,
    /// Calls per client (doom: rounds per player).
    pub calls_per_client: usize,
    /// Actors the clients share (counter: counters; bank: accounts).
    pub actors: usize,
}

impl SimConfig {
    /// The defaults for `workload`.
    pub fn for_workload(workload: Workload) -> SimConfig {
        let base = SimConfig {
            workload,
            ..SimConfig::default()
        };
        match workload {
            Workload::Counter => base,
            Workload::Bank => SimConfig {
                clients: 4,
                calls_per_client: 30,
                actors: 5,
                ..base
            },
            Workload::Doom => SimConfig {
                clients: 8,
                calls_per_client: 6,
                actors: 0,
                ..base
            },
        }
    }

    /// The command that reruns `seed` of this configuration.
    pub fn reproduce(&self, seed: u64) -> String {
        let plant = self
            .plant
            .map(|p| format!(" --plant {}", p.name()))
            .unwrap_or_default();
        format!(
            "cargo run -p tern-sim -- run --seeds 1 --seed-start {seed} --workload {} --pops {} --fault-secs {}{plant}",
            self.workload.name(),
            self.pops,
            self.fault_secs
        )
    }
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            workload: Workload::Counter,
            pops: 3,
            plant: None,
            fault_secs: 30,
            clients: 4,
            calls_per_client: 40,
            // Few actors: clients at different POPs contend for the same
            // ones, so a paused owner's actors get claimed elsewhere (the
            // zombie the fence must stop).
            actors: 3,
        }
    }
}

/// What one seed did.
#[derive(Debug, Clone)]
pub struct SeedReport {
    /// The seed.
    pub seed: u64,
    /// What the checker found (empty: none).
    pub violations: Vec<String>,
    /// Simulated time, ms.
    pub sim_ms: u64,
    /// Events logged.
    pub events: usize,
    /// sha256 of the event log.
    pub trace_hash: String,
    /// The last events before the end (or the violation).
    pub trace_tail: Vec<String>,
}

/// The POP lease the simulated directory grants, ms.
pub const LEASE_MS: u64 = 3_000;
/// The heartbeat interval, ms.
pub const HEARTBEAT_MS: u64 = 1_000;
/// Fuel per ms of CPU budget (instructions, roughly).
pub const FUEL_PER_MS: u64 = 200_000;
/// After the faults heal, every actor must answer within the lease plus
/// this, in simulated time.
pub const RECOVERY_MS_MAX: u64 = LEASE_MS + 7_000;
/// A directory request's deadline at one directory, ms (as the gRPC
/// link's: a third of the lease).
pub const DIRECTORY_RPC_MS: u64 = LEASE_MS / 3;
/// Directory processes (network nodes `dir1`, `dir2`...).
pub const DIRECTORIES: usize = 2;
/// The network node name that stands for every directory process in a
/// partition.
const ALL_DIRECTORIES: &str = "dir*";
/// Wall clock of the simulated world at its start, ms since the epoch.
const WALL_ORIGIN_MS: u64 = 1_790_000_000_000;

// ----------------------------------------------------------------- world

/// Time a POP's clocks stood still (it was paused).
#[derive(Default)]
struct Stopped {
    since: Option<Instant>,
    total: Duration,
}

/// A POP's clocks: simulated time, less the time the POP was paused (a
/// paused machine's clocks stop), running fast or slow by a drift and
/// offset by a skew, both drawn from the seed.
struct SimClock {
    origin: Instant,
    skew_ms: i64,
    /// Parts per million the clock runs fast (negative: slow).
    drift_ppm: i64,
    stopped: Arc<Mutex<Stopped>>,
}

impl Clock for SimClock {
    fn mono_ms(&self) -> u64 {
        let s = self.stopped.lock();
        let now = Instant::now();
        let stopped = s.total + s.since.map_or(Duration::ZERO, |t| now - t);
        let ran = (now - self.origin).saturating_sub(stopped).as_millis() as i128;
        (ran * (1_000_000 + self.drift_ppm as i128) / 1_000_000).max(0) as u64
    }

    fn wall_ms(&self) -> u64 {
        (WALL_ORIGIN_MS + self.mono_ms()).saturating_add_signed(self.skew_ms)
    }
}

/// The directory's clock: simulated time, no skew.
fn directory_clock(origin: Instant) -> Arc<dyn Fn() -> u64 + Send + Sync> {
    Arc::new(move || WALL_ORIGIN_MS + origin.elapsed().as_millis() as u64)
}

/// Faults that are in force.
#[derive(Default)]
struct Faults {
    /// Pairs that cannot talk (by node: "dir1", "dir2"..., "client", or a
    /// POP name).
    cut: BTreeSet<(String, String)>,
    /// Directories that are down (by index).
    directory_down: BTreeSet<usize>,
    /// Per message: chance (per mille) of loss and duplication.
    loss_pm: u32,
    dup_pm: u32,
    /// Network latency range, ms.
    latency_ms: (u64, u64),
    /// Latency range of a commit's way to the store and back, ms.
    store_latency_ms: (u64, u64),
    /// The seed's usual store latency (a slow spell ends back at it).
    store_latency_base: (u64, u64),
}

impl Faults {
    /// Whether `a` and `b` cannot talk (either way round).
    fn cut(&self, a: &str, b: &str) -> bool {
        let pair = |x: &str, y: &str| (x.to_string(), y.to_string());
        let is_dir = |x: &str| x.starts_with("dir");
        // `dir*`: every directory process at once.
        let either = |x: &str, y: &str| {
            self.cut.contains(&pair(x, y))
                || (is_dir(y)
                    && (self.cut.contains(&pair(x, ALL_DIRECTORIES))
                        || self.cut.contains(&pair(ALL_DIRECTORIES, x))))
        };
        either(a, b) || either(b, a)
    }
}

struct PopSlot {
    name: String,
    node: Option<Node>,
    /// Set while paused: messages to and from it wait.
    paused: Arc<Flag>,
    /// Its clocks' standstill (a new life gets a new one).
    stopped: Arc<Mutex<Stopped>>,
}

/// An epoch the directory granted.
#[derive(Debug, Clone)]
struct Grant {
    actor: String,
    epoch: u64,
    pop: String,
    at_ms: u64,
}

/// An acknowledged call: a committed turn, or a read (a turn that changed
/// nothing, whose activation confirmed its epoch).
#[derive(Debug, Clone)]
struct Ack {
    actor: String,
    epoch: u64,
    pop: String,
    /// When the call was first sent: its turn ran after this.
    sent_ms: u64,
    what: String,
    /// Whether the call changes its actor.
    writes: bool,
}

/// The shared state of one simulated cluster.
pub struct Shared {
    origin: Instant,
    rng: Mutex<StdRng>,
    log: Mutex<Vec<String>>,
    pops: Mutex<Vec<PopSlot>>,
    /// The directory processes' cores (a restarted one gets a new core).
    cores: Mutex<Vec<Arc<Core>>>,
    faults: Arc<Mutex<Faults>>,
    /// The directory's handle on the store (never partitioned: the
    /// directory sits next to it).
    store: Store,
    /// The database every POP's handle reaches.
    backend: Arc<dyn KvBackend>,
    injector: FaultInjector,
    grants: Mutex<Vec<Grant>>,
    acks: Mutex<Vec<Ack>>,
    /// Calls that failed with INTERNAL or DATA_LOSS (never expected).
    errors: Mutex<Vec<String>>,
    /// Workload-specific things that must not happen, described.
    anomalies: Mutex<Vec<String>>,
}

impl Shared {
    fn now_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    fn event(&self, e: String) {
        let line = format!("{:>7} {e}", self.now_ms());
        // Also as a log line, so that RUST_LOG interleaves the runtime's
        // own logs with the simulator's events.
        tracing::info!(target: "tern_sim", "{line}");
        self.log.lock().push(line);
    }

    fn roll(&self, per_mille: u32) -> bool {
        per_mille > 0 && self.rng.lock().random_range(0..1000) < per_mille
    }

    fn latency(&self) -> Duration {
        let (lo, hi) = self.faults.lock().latency_ms;
        Duration::from_millis(self.rng.lock().random_range(lo..=hi))
    }

    fn store_latency(&self) -> Duration {
        let (lo, hi) = self.faults.lock().store_latency_ms;
        Duration::from_millis(self.rng.lock().random_range(lo..=hi))
    }

    /// A draw from the seed.
    fn draw<T>(&self, f: impl FnOnce(&mut StdRng) -> T) -> T {
        f(&mut self.rng.lock())
    }

    /// A client's pause before its next call: `calls` calls spread over
    /// the fault window, so the load lasts as long as the faults do.
    fn think(&self, cfg: &SimConfig, calls: usize) -> Duration {
        let mean = cfg.fault_secs * 1_000 / calls.max(1) as u64;
        Duration::from_millis(self.draw(|r| r.random_range(10..(2 * mean).max(20))))
    }

    /// Records something that must not happen.
    fn anomaly(&self, what: String) {
        self.event(format!("anomaly: {what}"));
        self.anomalies.lock().push(what);
    }

    fn cut(&self, a: &str, b: &str) -> bool {
        self.faults.lock().cut(a, b)
    }

    fn node(&self, pop: &str) -> Option<Node> {
        self.pops
            .lock()
            .iter()
            .find(|p| p.name == pop)
            .and_then(|p| p.node.clone())
    }

    fn paused(&self, pop: &str) -> Option<Arc<Flag>> {
        self.pops
            .lock()
            .iter()
            .find(|p| p.name == pop)
            .map(|p| p.paused.clone())
    }

    /// Waits while `pop` is paused.
    async fn while_paused(&self, pop: &str) {
        if let Some(paused) = self.paused(pop) {
            paused.wait_until(false).await;
        }
    }

    /// One hop of a message from `from` to `to`: latency, pauses at both
    /// ends, loss (it never arrives: waits out `deadline`) and partitions.
    async fn hop(
        &self,
        from: &str,
        to: &str,
        deadline: Option<Instant>,
    ) -> Result<(), RuntimeError> {
        self.while_paused(from).await;
        tokio::time::sleep(self.latency()).await;
        if self.cut(from, to) {
            return Err(RuntimeError::Transport(format!("{from} cannot reach {to}")));
        }
        let lost = self.roll(self.faults.lock().loss_pm);
        if lost {
            let until = deadline.unwrap_or_else(|| Instant::now() + Duration::from_secs(30));
            tokio::time::sleep_until(until).await;
            return Err(RuntimeError::DeadlineExceeded(format!(
                "a message from {from} to {to} was lost"
            )));
        }
        self.while_paused(to).await;
        Ok(())
    }
}

// ----------------------------------------------------------- the seams

/// The runtime's `Directory` seam for one simulated POP: the shared
/// decision core, behind the simulated network.
pub struct SimDirectory {
    shared: Arc<Shared>,
    pop: String,
    local: LocalDirectory,
    /// The directory that answered last.
    preferred: std::sync::atomic::AtomicUsize,
}

impl SimDirectory {
    fn new(shared: Arc<Shared>, pop: &str, clock: Arc<dyn Clock>) -> SimDirectory {
        let core = shared.cores.lock()[0].clone();
        SimDirectory {
            local: LocalDirectory::new(core, pop, &endpoint(pop), (0.0, 0.0)).with_clock(clock),
            shared,
            pop: pop.to_string(),
            preferred: Default::default(),
        }
    }

    /// The local directory over directory `i`'s current core (the lease
    /// this POP holds carries over: it is in the store).
    fn local(&self, i: usize) -> &LocalDirectory {
        let core = self.shared.cores.lock()[i].clone();
        if !Arc::ptr_eq(&self.local.core(), &core) {
            self.local.replace_core(core);
        }
        &self.local
    }

    /// A directory that answers: the one that answered last, else each
    /// other in turn (as the gRPC link fails over). A request to one has a
    /// deadline, as the gRPC link's does.
    async fn reach(&self) -> Result<&LocalDirectory, RuntimeError> {
        use std::sync::atomic::Ordering;
        let first = self.preferred.load(Ordering::Relaxed);
        let mut failures = Vec::new();
        for k in 0..DIRECTORIES {
            let i = (first + k) % DIRECTORIES;
            let deadline = Instant::now() + Duration::from_millis(DIRECTORY_RPC_MS);
            let name = format!("dir{}", i + 1);
            match self.shared.hop(&self.pop, &name, Some(deadline)).await {
                Err(e) => failures.push(e.to_string()),
                Ok(()) if self.shared.faults.lock().directory_down.contains(&i) => {
                    failures.push(format!("{name} is down"))
                }
                Ok(()) => {
                    self.preferred.store(i, Ordering::Relaxed);
                    return Ok(self.local(i));
                }
            }
        }
        self.preferred
            .store((first + 1) % DIRECTORIES, Ordering::Relaxed);
        Err(RuntimeError::Transport(format!(
            "no directory answered: {}",
            failures.join("; ")
        )))
    }
}

fn endpoint(pop: &str) -> String {
    format!("http://{pop}.sim:1")
}

#[async_trait]
impl Directory for SimDirectory {
    fn pop(&self) -> &str {
        &self.pop
    }
    async fn register(&self) -> tern_runtime::Result<()> {
        self.reach().await?.register().await
    }
    async fn heartbeat(&self) -> tern_runtime::Result<bool> {
        self.reach().await?.heartbeat().await
    }
    fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(HEARTBEAT_MS)
    }
    fn lease_ok(&self) -> bool {
        self.local.lease_ok()
    }
    async fn claim(&self, actor: &str) -> tern_runtime::Result<ClaimOutcome> {
        let out = self.reach().await?.claim(actor).await;
        if let Ok(ClaimOutcome::Granted { epoch, .. }) = &out {
            let at_ms = self.shared.now_ms();
            self.shared
                .event(format!("grant {actor} epoch {epoch} to {}", self.pop));
            self.shared.grants.lock().push(Grant {
                actor: actor.to_string(),
                epoch: *epoch,
                pop: self.pop.clone(),
                at_ms,
            });
        }
        out
    }
    async fn release(&self, actor: &str, epoch: u64) -> tern_runtime::Result<()> {
        self.reach().await?.release(actor, epoch).await
    }
    async fn lookup(&self, actor: &str, fresh: bool) -> tern_runtime::Result<Option<Owner>> {
        self.reach().await?.lookup(actor, fresh).await
    }
    fn invalidate(&self, _actor: &str) {}
    async fn record_migration(&self, m: MigrationInfo) -> tern_runtime::Result<()> {
        self.reach().await?.record_migration(m).await
    }
    async fn cluster_view(&self) -> tern_runtime::Result<ClusterView> {
        self.reach().await?.cluster_view().await
    }
}

/// The runtime's `StoreLink` seam for one simulated POP: a commit waits
/// out the store's latency each way, a paused POP neither sends nor hears
/// the answer, and a POP cut off from the store cannot commit.
pub struct SimStoreLink {
    shared: Arc<Shared>,
    pop: String,
}

#[async_trait]
impl StoreLink for SimStoreLink {
    async fn send(&self) -> tern_runtime::Result<()> {
        self.shared.while_paused(&self.pop).await;
        tokio::time::sleep(self.shared.store_latency()).await;
        if self.shared.cut(&self.pop, "store") {
            return Err(RuntimeError::Storage(StorageError::Unavailable {
                detail: format!("POP {} is cut off from the store", self.pop),
            }));
        }
        Ok(())
    }

    async fn answer_back(&self) -> tern_runtime::Result<()> {
        tokio::time::sleep(self.shared.store_latency()).await;
        if self.shared.cut(&self.pop, "store") {
            return Err(RuntimeError::Transport(format!(
                "the store's answer to POP {} was lost in a partition",
                self.pop
            )));
        }
        self.shared.while_paused(&self.pop).await;
        Ok(())
    }
}

/// One POP's way into the shared database: while the POP is cut off from
/// the store, every transaction fails as an unreachable FoundationDB
/// cluster's would (`transaction_timed_out`), at once (simulated time
/// cannot pass inside a synchronous store call).
pub struct CutKv {
    inner: Arc<dyn KvBackend>,
    faults: Arc<Mutex<Faults>>,
    pop: String,
}

impl KvBackend for CutKv {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn begin(&self, write: bool) -> Result<Box<dyn KvTransaction>, StorageError> {
        if self.faults.lock().cut(&self.pop, "store") {
            return Err(StorageError::Unavailable {
                detail: format!(
                    "POP {} cannot reach the store (simulated partition)",
                    self.pop
                ),
            });
        }
        self.inner.begin(write)
    }
}

/// The runtime's `Peers` seam for one simulated POP.
pub struct SimPeers {
    shared: Arc<Shared>,
    pop: String,
}

/// A wire-like copy of an error: what a peer's status would carry.
fn over_the_wire(e: RuntimeError) -> RuntimeError {
    match e {
        e @ (RuntimeError::Transport(_) | RuntimeError::DeadlineExceeded(_)) => e,
        e => RuntimeError::Remote {
            kind: e.kind(),
            message: e.to_string(),
        },
    }
}

/// Delivers `req` from `from` to POP `to` as a message in flight: it
/// arrives (or not) whether or not the sender still waits for the answer,
/// as bytes in a socket would. The deadline travels as a timeout
/// (`grpc-timeout`), so the receiver counts it from the message's arrival.
fn send(
    shared: &Arc<Shared>,
    from: &str,
    to: &str,
    req: CallRequest,
    route: Route,
) -> tokio::sync::oneshot::Receiver<Result<Routed, RuntimeError>> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let (shared, from, to) = (shared.clone(), from.to_string(), to.to_string());
    let timeout = route
        .deadline
        .map(|d| d.saturating_duration_since(Instant::now()));
    tokio::spawn(async move {
        let out = async {
            shared.hop(&from, &to, route.deadline).await?;
            let Some(target) = shared.node(&to) else {
                return Err(RuntimeError::Transport(format!("POP {to} is down")));
            };
            let arrived = Route {
                deadline: timeout.map(|t| Instant::now() + t),
                span: None,
                ..route
            };
            let out = target.dispatch(req, arrived).await;
            shared.hop(&to, &from, None).await?;
            out
        }
        .await;
        let _ = tx.send(out);
    });
    rx
}

/// Waits for the answer to a message, until `deadline`.
async fn answer(
    rx: tokio::sync::oneshot::Receiver<Result<Routed, RuntimeError>>,
    deadline: Option<Instant>,
    what: &str,
) -> Result<Routed, RuntimeError> {
    let until = deadline.unwrap_or_else(|| Instant::now() + Duration::from_secs(60));
    match tokio::time::timeout_at(until, rx).await {
        Ok(Ok(r)) => r,
        Ok(Err(_)) => Err(RuntimeError::Transport(format!(
            "{what}: the connection broke"
        ))),
        Err(_) => Err(RuntimeError::DeadlineExceeded(format!(
            "{what}: no answer within the deadline"
        ))),
    }
}

#[async_trait]
impl Peers for SimPeers {
    async fn forward(
        &self,
        owner: &Owner,
        req: &CallRequest,
        route: &Route,
    ) -> tern_runtime::Result<Forwarded> {
        let shared = &self.shared;
        let fwd = Route {
            chain: route.chain.clone(),
            via: Some(self.pop.clone()),
            deadline: route.deadline,
            span: None,
        };
        if shared.roll(shared.faults.lock().dup_pm) {
            // A duplicated message: the owner gets it twice.
            shared.event(format!(
                "net dup {}->{} {}/{}",
                self.pop, owner.pop, req.actor_type, req.id
            ));
            drop(send(
                shared,
                &self.pop,
                &owner.pop,
                req.clone(),
                fwd.clone(),
            ));
        }
        let rx = send(shared, &self.pop, &owner.pop, req.clone(), fwd);
        match answer(rx, route.deadline, &format!("POP {}", owner.pop)).await {
            Ok(Routed::Done(o)) => Ok(Forwarded::Reply(o)),
            Ok(Routed::NotHere { moved_to }) => Ok(Forwarded::NotHere { moved_to }),
            Err(e) => Err(over_the_wire(e)),
        }
    }

    fn learn(&self, _endpoint: &str) {}
}

// ------------------------------------------------------------ clients

/// Calls a POP from a client, through the network: one attempt.
async fn client_call(
    shared: &Arc<Shared>,
    pop: &str,
    req: CallRequest,
    deadline: Instant,
) -> Result<CallOutput, RuntimeError> {
    let route = Route {
        deadline: Some(deadline),
        span: None,
        ..Route::default()
    };
    let rx = send(shared, "client", pop, req, route);
    match answer(rx, Some(deadline), &format!("POP {pop}")).await? {
        Routed::Done(out) => Ok(out),
        Routed::NotHere { .. } => Err(RuntimeError::Transport(
            "a client call was answered as forwarded".into(),
        )),
    }
}

/// Client retries, as `TernClient` does.
const CLIENT_ATTEMPTS_MAX: u32 = 12;
/// Each attempt's deadline, ms.
const CLIENT_CALL_MS: u64 = 5_000;

/// A simulated client: it has a home POP, moves to the next one when its
/// home cannot be reached, and retries as `TernClient` does (transient
/// errors, with backoff, a bounded number of times).
pub(crate) struct Caller {
    name: String,
    home: usize,
    pops: usize,
}

impl Caller {
    fn new(shared: &Shared, name: String, home: usize) -> Caller {
        let pops = shared.pops.lock().len();
        Caller {
            name,
            home: home % pops,
            pops,
        }
    }

    fn pop(&self) -> String {
        pop_name(self.home)
    }

    /// One attempt, no retry (for calls whose every outcome the workload
    /// wants to see).
    async fn once(
        &self,
        shared: &Arc<Shared>,
        req: CallRequest,
    ) -> Result<CallOutput, RuntimeError> {
        let deadline = Instant::now() + Duration::from_millis(CLIENT_CALL_MS);
        let what = format!("{}/{}.{}", req.actor_type, req.id, req.method);
        let sent_ms = shared.now_ms();
        let actor = format!("{}/{}", req.actor_type, req.id);
        let r = client_call(shared, &self.pop(), req, deadline).await;
        self.note(shared, &what, &r);
        if let Ok(out) = &r {
            shared.acks.lock().push(Ack {
                actor,
                epoch: out.epoch,
                pop: out.pop.clone(),
                sent_ms,
                what,
                writes: false,
            });
        }
        r
    }

    fn note(&self, shared: &Shared, what: &str, r: &Result<CallOutput, RuntimeError>) {
        match r {
            Ok(out) => shared.event(format!(
                "{} {what}: ok epoch={} pop={}",
                self.name, out.epoch, out.pop
            )),
            Err(e) => {
                shared.event(format!("{} {what}: {:?} {e}", self.name, e.kind()));
                if matches!(e.kind(), ErrorKind::Internal | ErrorKind::DataLoss) {
                    shared.errors.lock().push(format!("{what}: {e}"));
                }
            }
        }
    }

    /// Sends `req` until it is answered or fails for good. Its
    /// acknowledgement is checked against the epochs the directory
    /// granted; `writes`: the call changes its actor.
    async fn call(
        &mut self,
        shared: &Arc<Shared>,
        req: CallRequest,
        writes: bool,
    ) -> Result<CallOutput, RuntimeError> {
        let now = shared.now_ms();
        self.call_sent_at(shared, req, writes, now).await
    }

    /// [`Caller::call`] for a call first sent (with the same key) at
    /// `sent_ms`: an answer replayed from its idempotency record carries
    /// the epoch it first ran in.
    async fn call_sent_at(
        &mut self,
        shared: &Arc<Shared>,
        req: CallRequest,
        writes: bool,
        sent_ms: u64,
    ) -> Result<CallOutput, RuntimeError> {
        let what = format!(
            "{}/{}.{}{}",
            req.actor_type,
            req.id,
            req.method,
            req.idempotency_key
                .as_deref()
                .map(|k| format!(" [{k}]"))
                .unwrap_or_default()
        );
        let mut backoff = 50u64;
        let mut last = None;
        for attempt in 0..CLIENT_ATTEMPTS_MAX {
            let deadline = Instant::now() + Duration::from_millis(CLIENT_CALL_MS);
            let r = client_call(shared, &self.pop(), req.clone(), deadline).await;
            self.note(shared, &format!("{what} #{attempt}"), &r);
            match r {
                Ok(out) => {
                    shared.acks.lock().push(Ack {
                        actor: format!("{}/{}", req.actor_type, req.id),
                        epoch: out.epoch,
                        pop: out.pop.clone(),
                        sent_ms,
                        what: what.clone(),
                        writes,
                    });
                    return Ok(out);
                }
                Err(e) => {
                    let retry = matches!(
                        e.kind(),
                        ErrorKind::Unavailable
                            | ErrorKind::DeadlineExceeded
                            | ErrorKind::ResourceExhausted
                    );
                    if !retry {
                        return Err(e);
                    }
                    if matches!(e, RuntimeError::Transport(_)) {
                        self.home = (self.home + 1) % self.pops;
                    }
                    last = Some(e);
                    tokio::time::sleep(Duration::from_millis(backoff)).await;
                    backoff = (backoff * 2).min(1_000);
                }
            }
        }
        Err(last.expect("at least one attempt"))
    }
}

/// After the faults healed: sends `req` through every POP in turn until
/// one answers, and records in `v` a violation if none did, or if the
/// answer came later than the lease plus [`RECOVERY_MS_MAX`] allows.
pub(crate) async fn final_call(
    shared: &Arc<Shared>,
    req: CallRequest,
    healed_ms: u64,
    v: &mut Vec<String>,
) -> Option<CallOutput> {
    let pops = shared.pops.lock().len();
    let what = format!("{}/{}.{}", req.actor_type, req.id, req.method);
    for attempt in 0..40u64 {
        let pop = pop_name((attempt as usize) % pops);
        let deadline = Instant::now() + Duration::from_millis(CLIENT_CALL_MS);
        match client_call(shared, &pop, req.clone(), deadline).await {
            Ok(out) => {
                shared.event(format!("final {what} at {pop}"));
                let after = shared.now_ms() - healed_ms;
                if after > RECOVERY_MS_MAX {
                    v.push(format!(
                        "{what} answered {after} ms after the faults healed (bound {RECOVERY_MS_MAX})"
                    ));
                }
                return Some(out);
            }
            Err(e) => {
                shared.event(format!("final {what} at {pop}: {:?}", e.kind()));
                if matches!(e.kind(), ErrorKind::Internal | ErrorKind::DataLoss) {
                    shared.errors.lock().push(format!("{what}: {e}"));
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
    v.push(format!("{what} did not answer after the faults healed"));
    None
}

/// A workload: its clients, and its checks once the faults healed.
#[async_trait]
pub(crate) trait Load: Send + Sync {
    /// The actor types it deploys its component under.
    fn types(&self) -> &'static [&'static str];
    /// Client `cid`'s session.
    async fn client(self: Arc<Self>, shared: Arc<Shared>, cid: usize);
    /// Final reads and the workload's own invariants: the violations.
    async fn finish(&self, shared: &Arc<Shared>, healed_ms: u64) -> Vec<String>;
}

fn pop_name(i: usize) -> String {
    format!("p{i}")
}

/// Builds (or rebuilds after a crash) POP `i`.
fn start_pop(shared: &Arc<Shared>, engine: &TernEngine, seed: u64, i: usize) -> Node {
    let name = pop_name(i);
    let (skew_ms, drift_ppm, life) = {
        let mut r = shared.rng.lock();
        (
            r.random_range(-200..=200i64),
            r.random_range(-2_000..=2_000i64),
            r.random::<u64>(),
        )
    };
    let stopped = Arc::new(Mutex::new(Stopped::default()));
    shared.pops.lock()[i].stopped = stopped.clone();
    let clock: Arc<dyn Clock> = Arc::new(SimClock {
        origin: shared.origin,
        skew_ms,
        drift_ppm,
        stopped,
    });
    let world = World::seeded(
        clock.clone(),
        // Each life of a POP draws its own randomness, as a restarted
        // process would.
        seed ^ life ^ (0x9e37_79b9_7f4a_7c15u64.wrapping_mul(i as u64 + 1)),
    );
    let dir = SimDirectory::new(shared.clone(), &name, clock);
    dir.local(0)
        .register_now()
        .expect("a simulated POP registers");
    // The POP's own handle on the shared database: partitionable.
    let store = Store::from_kv(
        Kv::new(Arc::new(CutKv {
            inner: shared.backend.clone(),
            faults: shared.faults.clone(),
            pop: name.clone(),
        })),
        Some(shared.injector.clone()),
    );
    Node::builder(name.clone(), store, engine.clone())
        .directory(Arc::new(dir))
        .peers(Arc::new(SimPeers {
            shared: shared.clone(),
            pop: name.clone(),
        }))
        .world(world)
        .config(NodeConfig {
            turn_slots: 1,
            forward_patience_ms: 1_000,
            ..NodeConfig::default()
        })
        .store_link(Arc::new(SimStoreLink {
            shared: shared.clone(),
            pop: name.clone(),
        }))
        .lock_step()
        .start()
        .expect("a simulated POP starts")
}

/// The faults one seed injects, drawn up front.
#[derive(Debug, Clone)]
enum Fault {
    Crash {
        pop: usize,
        down_ms: u64,
    },
    Pause {
        pop: usize,
        for_ms: u64,
    },
    Cut {
        a: String,
        b: String,
        for_ms: u64,
    },
    /// A directory process (`None`: every one) is killed and restarted.
    DirectoryDown {
        dir: Option<usize>,
        for_ms: u64,
    },
    /// A POP cannot reach the store.
    StoreCut {
        pop: usize,
        for_ms: u64,
    },
    /// Commits take `ms` each way.
    StoreSlow {
        ms: u64,
        for_ms: u64,
    },
    Store {
        fault: tern_storage::Fault,
        n: usize,
    },
}

fn draw_faults(rng: &mut StdRng, cfg: &SimConfig) -> Vec<(u64, Fault)> {
    let mut out = Vec::new();
    let n = rng.random_range(3..=8);
    let horizon = cfg.fault_secs * 1_000;
    let node = |rng: &mut StdRng| match rng.random_range(0..cfg.pops + 2) {
        k if k < cfg.pops => pop_name(k),
        // A directory process, or (half the time) all of them: a POP cut
        // off from the directory tier.
        k if k == cfg.pops => match rng.random_range(0..DIRECTORIES * 2) {
            d if d < DIRECTORIES => format!("dir{}", d + 1),
            _ => ALL_DIRECTORIES.to_string(),
        },
        _ => "client".to_string(),
    };
    for _ in 0..n {
        let at = rng.random_range(500..horizon.max(1_000));
        // Weights: pauses (the zombie maker) most often.
        let kind = match rng.random_range(0..13) {
            0 | 1 => 0,
            2..=5 => 1,
            6 | 7 => 2,
            8 => 3,
            9 | 10 => 4,
            11 => 5,
            _ => 6,
        };
        let f = match kind {
            0 => Fault::Crash {
                pop: rng.random_range(0..cfg.pops),
                down_ms: rng.random_range(500..5_000),
            },
            1 => Fault::Pause {
                pop: rng.random_range(0..cfg.pops),
                for_ms: rng.random_range(1_000..9_000),
            },
            // Half the cuts part a POP from the directory tier (its lease
            // lapses while its clients still reach it), half any pair.
            2 if rng.random_bool(0.5) => Fault::Cut {
                a: pop_name(rng.random_range(0..cfg.pops)),
                b: ALL_DIRECTORIES.to_string(),
                // Often past a lease (plus the clock-skew margin), so
                // another POP takes the actors over while clients still
                // reach this one.
                for_ms: rng.random_range(1_000..9_000),
            },
            2 => {
                let a = node(rng);
                let mut b = node(rng);
                if a == b {
                    b = pop_name(rng.random_range(0..cfg.pops));
                }
                Fault::Cut {
                    a,
                    b,
                    for_ms: rng.random_range(500..5_000),
                }
            }
            3 => Fault::DirectoryDown {
                // One of them, or (a third of the time) all at once.
                dir: rng.random_range(0..=DIRECTORIES).checked_sub(1),
                for_ms: rng.random_range(500..3_000),
            },
            5 => Fault::StoreCut {
                pop: rng.random_range(0..cfg.pops),
                for_ms: rng.random_range(500..5_000),
            },
            6 => Fault::StoreSlow {
                ms: rng.random_range(100..2_000),
                for_ms: rng.random_range(1_000..6_000),
            },
            _ => Fault::Store {
                fault: match rng.random_range(0..3) {
                    0 => tern_storage::Fault::NotCommitted,
                    1 => tern_storage::Fault::CommitUnknownResult,
                    _ => tern_storage::Fault::TransactionTooOld,
                },
                n: rng.random_range(1..4),
            },
        };
        out.push((at, f));
    }
    out.sort_by_key(|(at, _)| *at);
    out
}

async fn inject(
    shared: Arc<Shared>,
    engine: TernEngine,
    seed: u64,
    faults: Vec<(u64, Fault)>,
    injector: FaultInjector,
) {
    for (at, f) in faults {
        tokio::time::sleep_until(shared.origin + Duration::from_millis(at)).await;
        shared.event(format!("fault {f:?}"));
        match f {
            Fault::Crash { pop, down_ms } => {
                let pop = busiest_unless_busy(&shared, pop);
                let node = shared.pops.lock()[pop].node.take();
                if let Some(n) = node {
                    n.crash().await;
                }
                let (s, e) = (shared.clone(), engine.clone());
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(down_ms)).await;
                    let n = start_pop(&s, &e, seed, pop);
                    s.pops.lock()[pop].node = Some(n);
                    s.event(format!("heal restart {}", pop_name(pop)));
                });
            }
            Fault::Pause { pop, for_ms } => {
                let pop = busiest_unless_busy(&shared, pop);
                pause(&shared, pop, true);
                let s = shared.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(for_ms)).await;
                    pause(&s, pop, false);
                    s.event(format!("heal resume {}", pop_name(pop)));
                });
            }
            Fault::Cut { mut a, b, for_ms } => {
                // Parting a POP from the directories hurts where the actors
                // are.
                if b == ALL_DIRECTORIES
                    && let Some(i) = (0..cfg_pops(&shared)).find(|i| pop_name(*i) == a)
                {
                    a = pop_name(busiest_unless_busy(&shared, i));
                }
                shared.faults.lock().cut.insert((a.clone(), b.clone()));
                let s = shared.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(for_ms)).await;
                    s.faults.lock().cut.remove(&(a.clone(), b.clone()));
                    s.event(format!("heal cut {a}-{b}"));
                });
            }
            Fault::DirectoryDown { dir, for_ms } => {
                let dirs: Vec<usize> = match dir {
                    Some(d) => vec![d],
                    None => (0..DIRECTORIES).collect(),
                };
                shared.faults.lock().directory_down.extend(&dirs);
                let s = shared.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(for_ms)).await;
                    for d in dirs {
                        restart_directory(&s, d);
                    }
                });
            }
            Fault::StoreCut { pop, for_ms } => {
                let pop = busiest_unless_busy(&shared, pop);
                let pair = (pop_name(pop), "store".to_string());
                shared.faults.lock().cut.insert(pair.clone());
                let s = shared.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(for_ms)).await;
                    s.faults.lock().cut.remove(&pair);
                    s.event(format!("heal cut {}-store", pair.0));
                });
            }
            Fault::StoreSlow { ms, for_ms } => {
                shared.faults.lock().store_latency_ms = (ms / 2, ms);
                let s = shared.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(for_ms)).await;
                    let mut f = s.faults.lock();
                    f.store_latency_ms = f.store_latency_base;
                    drop(f);
                    s.event("heal store latency".into());
                });
            }
            Fault::Store { fault, n } => injector.fail_next_commits(fault, n),
        }
    }
}

/// The example components the workloads run, built once per process.
#[derive(Default)]
pub struct Components {
    built: Mutex<BTreeMap<&'static str, Arc<Vec<u8>>>>,
}

impl Components {
    /// Nothing built yet.
    pub fn new() -> Components {
        Components::default()
    }

    /// The component of `workload`, built (with `cargo`, for wasm32-wasip2)
    /// on first use.
    pub fn get(&self, workload: Workload) -> Result<Arc<Vec<u8>>, String> {
        let example = workload.example();
        if let Some(w) = self.built.lock().get(example) {
            return Ok(w.clone());
        }
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .ancestors()
            .nth(2)
            .ok_or("tests/sim is in the workspace")?
            .to_path_buf();
        let path = tern_cli::build::build_guest(&root.join("examples").join(example), true)
            .map_err(|e| format!("building examples/{example}: {e}"))?;
        let wasm = Arc::new(std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?);
        self.built.lock().insert(example, wasm.clone());
        Ok(wasm)
    }
}

/// Runs one seed of `cfg` and checks it.
pub fn run_seed(
    cfg: &SimConfig,
    seed: u64,
    engine: &TernEngine,
    components: &Components,
) -> Result<SeedReport, String> {
    let wasm = components.get(cfg.workload)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .map_err(|e| format!("a current-thread runtime: {e}"))?;
    if let Some(p) = cfg.plant {
        p.set(true);
    }
    let report = rt.block_on(run(cfg.clone(), seed, engine.clone(), wasm));
    if let Some(p) = cfg.plant {
        p.set(false);
    }
    Ok(report)
}

/// Directory `d` comes back (if down): a new core over the same store.
fn restart_directory(s: &Shared, d: usize) {
    if s.faults.lock().directory_down.remove(&d) {
        s.cores.lock()[d] = new_core(&s.store, s.origin);
        s.event(format!("heal dir{}", d + 1));
    }
}

fn new_core(store: &Store, origin: Instant) -> Arc<Core> {
    Arc::new(Core::new(
        store.clone(),
        DirectoryConfig {
            lease_ms: LEASE_MS,
            heartbeat_ms: HEARTBEAT_MS,
            clock: directory_clock(origin),
        },
    ))
}

async fn run(cfg: SimConfig, seed: u64, engine: TernEngine, wasm: Arc<Vec<u8>>) -> SeedReport {
    let origin = Instant::now();
    let (backend, injector) =
        tern_storage::FaultyKv::new(Arc::new(tern_storage::kv::memory::MemoryBackend::new()));
    let backend: Arc<dyn KvBackend> = Arc::new(backend);
    let store = Store::from_kv(Kv::new(backend.clone()), Some(injector.clone()));
    let cores = (0..DIRECTORIES).map(|_| new_core(&store, origin)).collect();
    let mut rng = StdRng::seed_from_u64(seed);
    let store_latency = (0, rng.random_range(1..20));
    let faults = Faults {
        latency_ms: (1, rng.random_range(2..40)),
        loss_pm: rng.random_range(0..20),
        dup_pm: rng.random_range(0..20),
        store_latency_ms: store_latency,
        store_latency_base: store_latency,
        ..Faults::default()
    };
    let plan = draw_faults(&mut rng, &cfg);
    let shared = Arc::new(Shared {
        origin,
        rng: Mutex::new(rng),
        log: Mutex::new(Vec::new()),
        pops: Mutex::new(
            (0..cfg.pops)
                .map(|i| PopSlot {
                    name: pop_name(i),
                    node: None,
                    paused: Arc::default(),
                    stopped: Arc::default(),
                })
                .collect(),
        ),
        cores: Mutex::new(cores),
        faults: Arc::new(Mutex::new(faults)),
        store,
        backend,
        injector: injector.clone(),
        grants: Mutex::new(Vec::new()),
        acks: Mutex::new(Vec::new()),
        errors: Mutex::new(Vec::new()),
        anomalies: Mutex::new(Vec::new()),
    });
    for i in 0..cfg.pops {
        let n = start_pop(&shared, &engine, seed, i);
        shared.pops.lock()[i].node = Some(n);
    }
    let load: Arc<dyn Load> = match cfg.workload {
        Workload::Counter => Arc::new(counter::Counter::new(&cfg)),
        Workload::Bank => Arc::new(bank::Bank::new(&cfg)),
        Workload::Doom => Arc::new(doom::Doom::new(&cfg)),
    };
    let first = shared.node(&pop_name(0)).expect("p0 runs");
    for ty in load.types() {
        first
            .deploy(ty, &wasm, tern_runtime::DeployOptions::default())
            .unwrap_or_else(|e| panic!("deploy {ty}: {e}"));
    }
    shared.event(format!(
        "start seed={seed} workload={} plan={plan:?}",
        cfg.workload.name()
    ));
    tokio::spawn(inject(
        shared.clone(),
        engine.clone(),
        seed,
        plan,
        injector.clone(),
    ));
    let mut clients = Vec::new();
    for c in 0..cfg.clients {
        clients.push(tokio::spawn(load.clone().client(shared.clone(), c)));
    }
    let mut violations = Vec::new();
    for c in clients {
        if let Err(e) = c.await {
            violations.push(format!("a simulated client panicked: {e}"));
        }
    }
    // Heal everything once the fault window is over.
    tokio::time::sleep_until(origin + Duration::from_millis(cfg.fault_secs * 1_000)).await;
    heal(&shared, &engine, seed, &injector).await;
    let healed_ms = shared.now_ms();
    violations.extend(load.finish(&shared, healed_ms).await);
    for slot in shared.pops.lock().iter() {
        if let Some(n) = &slot.node {
            let n = n.clone();
            tokio::spawn(async move { n.crash().await });
        }
    }
    violations.extend(check_cluster(&shared));
    violations.sort();
    violations.dedup();
    let log = shared.log.lock().clone();
    let trace_hash = {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        for l in &log {
            h.update(l.as_bytes());
            h.update(b"\n");
        }
        hex::encode(&h.finalize()[..16])
    };
    SeedReport {
        seed,
        violations,
        sim_ms: shared.now_ms(),
        events: log.len(),
        trace_hash,
        trace_tail: if std::env::var_os("TERN_SIM_TRACE").is_some() {
            log.clone()
        } else {
            log[log.len().saturating_sub(25)..].to_vec()
        },
    }
}

/// The checks every workload shares: nothing panicked or lost data, and
/// no call was acknowledged from an epoch that had already been superseded
/// when it was sent: a write so acknowledged means two activations
/// committed in overlapping epochs (the store's fence must refuse the
/// older one); a read, that a superseded activation still served (it must
/// confirm its epoch, and serve nothing past its lease).
fn check_cluster(shared: &Shared) -> Vec<String> {
    let mut v = Vec::new();
    for e in shared.errors.lock().iter() {
        v.push(format!(
            "a call failed with INTERNAL or DATA_LOSS (a panic or damaged state): {e}"
        ));
    }
    v.extend(shared.anomalies.lock().iter().cloned());
    let grants = shared.grants.lock();
    for w in shared.acks.lock().iter() {
        if let Some(g) = grants
            .iter()
            .find(|g| g.actor == w.actor && g.epoch > w.epoch && g.at_ms < w.sent_ms)
        {
            let why = if w.writes {
                "two activations committed in overlapping epochs"
            } else {
                "a superseded activation served a read"
            };
            v.push(format!(
                "{} was acknowledged from epoch {} at {}, but epoch {} had been granted to {} at {} ms, before the call was sent at {} ms ({why})",
                w.what, w.epoch, w.pop, g.epoch, g.pop, g.at_ms, w.sent_ms
            ));
        }
    }
    v
}

/// How many POPs the cluster has.
fn cfg_pops(shared: &Shared) -> usize {
    shared.pops.lock().len()
}

/// `pop` if it holds actors, else the POP that holds the most: a fault
/// hurts where the actors are.
fn busiest_unless_busy(shared: &Shared, pop: usize) -> usize {
    let pops = shared.pops.lock();
    let active = |i: usize| pops[i].node.as_ref().map_or(0, |n| n.active_actors());
    if active(pop) > 0 {
        return pop;
    }
    (0..pops.len())
        .max_by_key(|i| (active(*i), usize::MAX - i))
        .unwrap_or(pop)
}

/// Pauses (or resumes) POP `pop`: its messages wait and its clocks stand
/// still, as on a paused machine.
fn pause(shared: &Shared, pop: usize, on: bool) {
    let slot = &shared.pops.lock()[pop];
    let mut st = slot.stopped.lock();
    match (on, st.since) {
        (true, None) => st.since = Some(Instant::now()),
        (false, Some(t)) => {
            st.total += Instant::now() - t;
            st.since = None;
        }
        _ => {}
    }
    slot.paused.set(on);
}

/// Resumes, reconnects and restarts everything.
async fn heal(shared: &Arc<Shared>, engine: &TernEngine, seed: u64, injector: &FaultInjector) {
    injector.clear();
    {
        let mut f = shared.faults.lock();
        f.cut.clear();
        f.loss_pm = 0;
        f.dup_pm = 0;
    }
    {
        let mut f = shared.faults.lock();
        f.store_latency_ms = f.store_latency_base;
    }
    for d in 0..DIRECTORIES {
        restart_directory(shared, d);
    }
    let n = shared.pops.lock().len();
    for i in 0..n {
        pause(shared, i, false);
        if shared.pops.lock()[i].node.is_none() {
            let node = start_pop(shared, engine, seed, i);
            shared.pops.lock()[i].node = Some(node);
        }
    }
    shared.event("heal all".into());
}

/// The engine every seed shares: fuel-metered, no ticker thread.
pub fn engine() -> Result<TernEngine, String> {
    TernEngine::with_meter(tern_runtime::engine::CpuMeter::Fuel {
        per_ms: FUEL_PER_MS,
    })
    .map_err(|e| e.to_string())
}
