//! # tern-sim
//!
//! A deterministic simulator of a whole tern cluster. One process, one
//! thread, simulated time:
//! - N real POP cores (`tern_runtime::Node`, real wasmtime, the real
//!   `counter` component), built in lock step (`NodeBuilder::lock_step`:
//!   turns run one thread at a time, commits inline) with a fuel-metered
//!   engine, so CPU budgets are counted in instructions, not wall time;
//! - the directory's decision core (`tern_directory::Core`) in process,
//!   reached through [`SimDirectory`] (the runtime's `Directory` seam);
//! - the memory store with fault injection;
//! - a simulated network ([`SimPeers`], the runtime's `Peers` seam, and
//!   the clients' links) that delays, drops, duplicates and partitions.
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
use tern_runtime::directory::{
    ClaimOutcome, ClusterView, Directory, LocalDirectory, MigrationInfo, Owner,
};
use tern_runtime::peers::{Forwarded, Peers};
use tern_runtime::route::Routed;
use tern_runtime::{
    CallOutput, CallRequest, DeployOptions, ErrorKind, Node, NodeConfig, Route, RuntimeError,
    TernEngine,
};
use tern_storage::{FaultInjector, Store};
use tokio::sync::watch;
use tokio::time::Instant;

/// The workload a seed runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// Clients record call ids on a few `counter` actors, keyed and not.
    Counter,
}

impl std::str::FromStr for Workload {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "counter" => Ok(Workload::Counter),
            "bank" | "doom" => Err(format!(
                "workload `{s}` is not implemented yet; only `counter` is"
            )),
            other => Err(format!("unknown workload `{other}`; try `counter`")),
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
    /// Clients.
    pub clients: usize,
    /// Calls per client.
    pub calls_per_client: usize,
    /// Actors the clients share.
    pub actors: usize,
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
            actors: 6,
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
/// A directory request's deadline, ms (as the gRPC link's).
pub const DIRECTORY_RPC_MS: u64 = 2_000;
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
    /// Pairs that cannot talk (by node: "dir", "client", or a POP name).
    cut: BTreeSet<(String, String)>,
    directory_down: bool,
    /// Per message: chance (per mille) of loss and duplication.
    loss_pm: u32,
    dup_pm: u32,
    /// Network latency range, ms.
    latency_ms: (u64, u64),
}

struct PopSlot {
    name: String,
    node: Option<Node>,
    /// `true` while paused: messages to and from it wait.
    paused: watch::Sender<bool>,
    /// Its clocks' standstill (a new life gets a new one).
    stopped: Arc<Mutex<Stopped>>,
}

/// The shared state of one simulated cluster.
pub struct Shared {
    origin: Instant,
    rng: Mutex<StdRng>,
    log: Mutex<Vec<String>>,
    pops: Mutex<Vec<PopSlot>>,
    core: Mutex<Arc<Core>>,
    faults: Mutex<Faults>,
    store: Store,
}

impl Shared {
    fn now_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    fn event(&self, e: String) {
        let line = format!("{:>7} {e}", self.now_ms());
        self.log.lock().push(line);
    }

    fn roll(&self, per_mille: u32) -> bool {
        per_mille > 0 && self.rng.lock().random_range(0..1000) < per_mille
    }

    fn latency(&self) -> Duration {
        let (lo, hi) = self.faults.lock().latency_ms;
        Duration::from_millis(self.rng.lock().random_range(lo..=hi))
    }

    fn cut(&self, a: &str, b: &str) -> bool {
        let f = self.faults.lock();
        f.cut.contains(&(a.to_string(), b.to_string()))
            || f.cut.contains(&(b.to_string(), a.to_string()))
    }

    fn node(&self, pop: &str) -> Option<Node> {
        self.pops
            .lock()
            .iter()
            .find(|p| p.name == pop)
            .and_then(|p| p.node.clone())
    }

    fn paused(&self, pop: &str) -> Option<watch::Receiver<bool>> {
        self.pops
            .lock()
            .iter()
            .find(|p| p.name == pop)
            .map(|p| p.paused.subscribe())
    }

    /// Waits while `pop` is paused.
    async fn while_paused(&self, pop: &str) {
        if let Some(mut rx) = self.paused(pop) {
            let _ = rx.wait_for(|p| !*p).await;
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
}

impl SimDirectory {
    fn new(shared: Arc<Shared>, pop: &str, clock: Arc<dyn Clock>) -> SimDirectory {
        let core = shared.core.lock().clone();
        SimDirectory {
            local: LocalDirectory::new(core, pop, &endpoint(pop), (0.0, 0.0)).with_clock(clock),
            shared,
            pop: pop.to_string(),
        }
    }

    /// The local directory over the current core (a restarted directory
    /// has a new core; the lease this POP holds carries over).
    fn local(&self) -> &LocalDirectory {
        let core = self.shared.core.lock().clone();
        if !Arc::ptr_eq(&self.local.core(), &core) {
            self.local.replace_core(core);
        }
        &self.local
    }

    async fn reach(&self) -> Result<&LocalDirectory, RuntimeError> {
        // A directory RPC has a deadline, as the gRPC link's does.
        let deadline = Instant::now() + Duration::from_millis(DIRECTORY_RPC_MS);
        self.shared.hop(&self.pop, "dir", Some(deadline)).await?;
        if self.shared.faults.lock().directory_down {
            return Err(RuntimeError::Transport("the directory is down".into()));
        }
        Ok(self.local())
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
        self.local().lease_ok()
    }
    async fn claim(&self, actor: &str) -> tern_runtime::Result<ClaimOutcome> {
        self.reach().await?.claim(actor).await
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

// -------------------------------------------------------------- the run

/// One call a client sent.
#[derive(Debug, Clone)]
struct Sent {
    id: u64,
    actor: String,
    keyed: bool,
    sent_ms: u64,
}

/// One acknowledged call.
#[derive(Debug, Clone)]
struct Ack {
    id: u64,
    actor: String,
    count: u64,
    epoch: u64,
    acked_ms: u64,
}

/// One read (`applied`) a client got an answer to.
#[derive(Debug, Clone)]
struct Read {
    actor: String,
    sent_ms: u64,
    ids: Vec<u64>,
    pop: String,
}

#[derive(Default)]
struct Record {
    sent: Vec<Sent>,
    acks: Vec<Ack>,
    reads: Vec<Read>,
    internal_errors: Vec<String>,
    /// Other things that must not happen, described.
    anomalies: Vec<String>,
}

/// Calls a POP from a client, through the network.
async fn client_call(
    shared: &Arc<Shared>,
    pop: &str,
    req: CallRequest,
    deadline: Instant,
) -> Result<CallOutput, RuntimeError> {
    let route = Route {
        deadline: Some(deadline),
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

async fn client(shared: Arc<Shared>, cfg: SimConfig, cid: usize, rec: Arc<Mutex<Record>>) {
    let pops: Vec<String> = (0..cfg.pops).map(pop_name).collect();
    let mut home = cid % pops.len();
    for n in 0..cfg.calls_per_client {
        let (actor_no, keyed, read, slow, pause) = {
            let mut r = shared.rng.lock();
            (
                r.random_range(0..cfg.actors),
                r.random_bool(0.7),
                r.random_bool(0.3),
                r.random_bool(0.03),
                r.random_range(10..400u64),
            )
        };
        tokio::time::sleep(Duration::from_millis(pause)).await;
        let actor = format!("a{actor_no}");
        if slow {
            // A turn that burns its whole CPU budget: it must roll back and
            // leave the actor as it was.
            let deadline = Instant::now() + Duration::from_millis(CLIENT_CALL_MS);
            let req = CallRequest::new("counter", &actor, "spin", Vec::new());
            let r = client_call(&shared, &pops[home], req, deadline).await;
            shared.event(format!(
                "c{cid} spin counter/{actor}: {:?}",
                r.as_ref().err().map(|e| e.kind())
            ));
            if let Ok(out) = r {
                rec.lock().anomalies.push(format!(
                    "spin on counter/{actor} returned at {} instead of hitting its CPU budget",
                    out.pop
                ));
            }
            continue;
        }
        if read {
            let sent_ms = shared.now_ms();
            let deadline = Instant::now() + Duration::from_millis(CLIENT_CALL_MS);
            let req = CallRequest::new("counter", &actor, "applied", Vec::new());
            if let Ok(out) = client_call(&shared, &pops[home], req, deadline).await {
                let ids: Vec<u64> = serde_json::from_slice::<serde_json::Value>(&out.payload)
                    .ok()
                    .and_then(|v| v["ids"].as_array().cloned())
                    .unwrap_or_default()
                    .iter()
                    .filter_map(|x| x.as_u64())
                    .collect();
                shared.event(format!(
                    "c{cid} read counter/{actor} ids={} epoch={} pop={}",
                    ids.len(),
                    out.epoch,
                    out.pop
                ));
                rec.lock().reads.push(Read {
                    actor: actor.clone(),
                    sent_ms,
                    ids,
                    pop: out.pop,
                });
            }
            continue;
        }
        let id = (cid as u64) << 32 | n as u64;
        let payload = serde_json::to_vec(&serde_json::json!({ "id": id })).expect("json");
        let mut req = CallRequest::new("counter", &actor, "apply", payload);
        if keyed {
            req.idempotency_key = Some(format!("c{cid}-{n}"));
        }
        rec.lock().sent.push(Sent {
            id,
            actor: actor.clone(),
            keyed,
            sent_ms: shared.now_ms(),
        });
        shared.event(format!("c{cid} send #{id:x} counter/{actor} keyed={keyed}"));
        let mut backoff = 50u64;
        for attempt in 0..CLIENT_ATTEMPTS_MAX {
            let deadline = Instant::now() + Duration::from_millis(CLIENT_CALL_MS);
            match client_call(&shared, &pops[home], req.clone(), deadline).await {
                Ok(out) => {
                    let count = serde_json::from_slice::<serde_json::Value>(&out.payload)
                        .ok()
                        .and_then(|v| v["count"].as_u64())
                        .unwrap_or(0);
                    shared.event(format!(
                        "c{cid} ack #{id:x} count={count} epoch={} pop={}",
                        out.epoch, out.pop
                    ));
                    rec.lock().acks.push(Ack {
                        id,
                        actor: actor.clone(),
                        count,
                        epoch: out.epoch,
                        acked_ms: shared.now_ms(),
                    });
                    break;
                }
                Err(e) => {
                    shared.event(format!(
                        "c{cid} err #{id:x} attempt {attempt}: {:?}",
                        e.kind()
                    ));
                    if matches!(e.kind(), ErrorKind::Internal | ErrorKind::DataLoss) {
                        rec.lock().internal_errors.push(e.to_string());
                    }
                    let retry = matches!(
                        e.kind(),
                        ErrorKind::Unavailable
                            | ErrorKind::DeadlineExceeded
                            | ErrorKind::ResourceExhausted
                    );
                    if !retry {
                        break;
                    }
                    if matches!(e, RuntimeError::Transport(_)) {
                        home = (home + 1) % pops.len();
                    }
                    tokio::time::sleep(Duration::from_millis(backoff)).await;
                    backoff = (backoff * 2).min(1_000);
                }
            }
        }
    }
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
    dir.local()
        .register_now()
        .expect("a simulated POP registers");
    Node::builder(name.clone(), shared.store.clone(), engine.clone())
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
    DirectoryDown {
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
        k if k == cfg.pops => "dir".to_string(),
        _ => "client".to_string(),
    };
    for _ in 0..n {
        let at = rng.random_range(500..horizon.max(1_000));
        // Weights: pauses (the zombie maker) most often.
        let kind = match rng.random_range(0..10) {
            0 | 1 => 0,
            2..=5 => 1,
            6 | 7 => 2,
            8 => 3,
            _ => 4,
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
                for_ms: rng.random_range(500..3_000),
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
            Fault::Cut { a, b, for_ms } => {
                shared.faults.lock().cut.insert((a.clone(), b.clone()));
                let s = shared.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(for_ms)).await;
                    s.faults.lock().cut.remove(&(a.clone(), b.clone()));
                    s.event(format!("heal cut {a}-{b}"));
                });
            }
            Fault::DirectoryDown { for_ms } => {
                shared.faults.lock().directory_down = true;
                let s = shared.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(for_ms)).await;
                    // A restarted directory: a new core over the same store.
                    let core = Arc::new(Core::new(
                        s.store.clone(),
                        DirectoryConfig {
                            lease_ms: LEASE_MS,
                            heartbeat_ms: HEARTBEAT_MS,
                            clock: directory_clock(s.origin),
                        },
                    ));
                    *s.core.lock() = core;
                    s.faults.lock().directory_down = false;
                    s.event("heal directory".into());
                });
            }
            Fault::Store { fault, n } => injector.fail_next_commits(fault, n),
        }
    }
}

/// Runs one seed of `cfg` and checks it.
pub fn run_seed(cfg: &SimConfig, seed: u64, engine: &TernEngine, wasm: &[u8]) -> SeedReport {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a current-thread runtime");
    if let Some(p) = cfg.plant {
        p.set(true);
    }
    let report = rt.block_on(run(cfg.clone(), seed, engine.clone(), wasm.to_vec()));
    if let Some(p) = cfg.plant {
        p.set(false);
    }
    report
}

async fn run(cfg: SimConfig, seed: u64, engine: TernEngine, wasm: Vec<u8>) -> SeedReport {
    let origin = Instant::now();
    let (store, injector) = Store::memory_with_faults();
    let core = Arc::new(Core::new(
        store.clone(),
        DirectoryConfig {
            lease_ms: LEASE_MS,
            heartbeat_ms: HEARTBEAT_MS,
            clock: directory_clock(origin),
        },
    ));
    let mut rng = StdRng::seed_from_u64(seed);
    let faults = Faults {
        latency_ms: (1, rng.random_range(2..40)),
        loss_pm: rng.random_range(0..20),
        dup_pm: rng.random_range(0..20),
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
                    paused: watch::channel(false).0,
                    stopped: Arc::default(),
                })
                .collect(),
        ),
        core: Mutex::new(core),
        faults: Mutex::new(faults),
        store,
    });
    for i in 0..cfg.pops {
        let n = start_pop(&shared, &engine, seed, i);
        shared.pops.lock()[i].node = Some(n);
    }
    let first = shared.node(&pop_name(0)).expect("p0 runs");
    first
        .deploy("counter", &wasm, DeployOptions::default())
        .expect("deploy counter");
    shared.event(format!("start seed={seed} plan={plan:?}"));
    let rec = Arc::new(Mutex::new(Record::default()));
    tokio::spawn(inject(
        shared.clone(),
        engine.clone(),
        seed,
        plan,
        injector.clone(),
    ));
    let mut clients = Vec::new();
    for c in 0..cfg.clients {
        clients.push(tokio::spawn(client(
            shared.clone(),
            cfg.clone(),
            c,
            rec.clone(),
        )));
    }
    for c in clients {
        let _ = c.await;
    }
    // Heal everything once the fault window is over.
    tokio::time::sleep_until(origin + Duration::from_millis(cfg.fault_secs * 1_000)).await;
    heal(&shared, &engine, seed, &injector).await;
    let healed_ms = shared.now_ms();
    let mut finals = BTreeMap::new();
    let mut violations = Vec::new();
    for a in 0..cfg.actors {
        let actor = format!("a{a}");
        match final_read(&shared, &actor, cfg.pops).await {
            Some((ids, at_ms)) => {
                if at_ms - healed_ms > RECOVERY_MS_MAX {
                    violations.push(format!(
                        "counter/{actor} answered {} ms after the faults healed (bound {RECOVERY_MS_MAX})",
                        at_ms - healed_ms
                    ));
                }
                finals.insert(actor, ids);
            }
            None => violations.push(format!(
                "counter/{actor} did not answer after the faults healed"
            )),
        }
    }
    for slot in shared.pops.lock().iter() {
        if let Some(n) = &slot.node {
            let n = n.clone();
            tokio::spawn(async move { n.crash().await });
        }
    }
    violations.extend(check(&rec.lock(), &finals));
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
    let _ = slot.paused.send(on);
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
    if shared.faults.lock().directory_down {
        let core = Arc::new(Core::new(
            shared.store.clone(),
            DirectoryConfig {
                lease_ms: LEASE_MS,
                heartbeat_ms: HEARTBEAT_MS,
                clock: directory_clock(shared.origin),
            },
        ));
        *shared.core.lock() = core;
        shared.faults.lock().directory_down = false;
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

/// Reads `applied` of `actor` (retrying through every POP); the ids and
/// when it answered.
async fn final_read(shared: &Arc<Shared>, actor: &str, pops: usize) -> Option<(Vec<u64>, u64)> {
    for attempt in 0..40u64 {
        let pop = pop_name((attempt as usize) % pops);
        let deadline = Instant::now() + Duration::from_millis(CLIENT_CALL_MS);
        let req = CallRequest::new("counter", actor, "applied", Vec::new());
        match client_call(shared, &pop, req, deadline).await {
            Ok(out) => {
                let v: serde_json::Value = serde_json::from_slice(&out.payload).ok()?;
                let ids = v["ids"]
                    .as_array()?
                    .iter()
                    .filter_map(|x| x.as_u64())
                    .collect();
                shared.event(format!("final counter/{actor} read at {pop}"));
                return Some((ids, shared.now_ms()));
            }
            Err(e) => {
                shared.event(format!("final counter/{actor} at {pop}: {:?}", e.kind()));
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
    None
}

/// The checker. `finals` maps each actor to the ids it applied, in order.
fn check(rec: &Record, finals: &BTreeMap<String, Vec<u64>>) -> Vec<String> {
    let mut v = Vec::new();
    let sent: BTreeMap<u64, &Sent> = rec.sent.iter().map(|s| (s.id, s)).collect();
    for e in &rec.internal_errors {
        v.push(format!("a call failed with INTERNAL (a panic): {e}"));
    }
    v.extend(rec.anomalies.iter().cloned());
    for (actor, ids) in finals {
        let mut seen: BTreeMap<u64, usize> = BTreeMap::new();
        for id in ids {
            *seen.entry(*id).or_default() += 1;
        }
        for (id, n) in &seen {
            match sent.get(id) {
                None => v.push(format!(
                    "counter/{actor} applied #{id:x}, which was never sent"
                )),
                Some(s) if s.actor != *actor => v.push(format!(
                    "counter/{actor} applied #{id:x}, which was sent to counter/{}",
                    s.actor
                )),
                Some(s) if s.keyed && *n > 1 => v.push(format!(
                    "counter/{actor} applied keyed call #{id:x} {n} times"
                )),
                _ => {}
            }
        }
        let acks: Vec<&Ack> = rec.acks.iter().filter(|a| a.actor == *actor).collect();
        for a in &acks {
            let n = seen.get(&a.id).copied().unwrap_or(0);
            if n == 0 {
                v.push(format!(
                    "counter/{actor} lost acknowledged call #{:x}",
                    a.id
                ));
            }
            // The acked count is the id's position in the final state.
            let pos = ids.iter().position(|x| *x == a.id).map(|p| p as u64 + 1);
            let keyed = sent.get(&a.id).is_some_and(|s| s.keyed);
            if keyed && pos != Some(a.count) {
                v.push(format!(
                    "counter/{actor}: keyed call #{:x} was acknowledged as #{} but sits at {:?} in the final state (a lost or forked update)",
                    a.id, a.count, pos
                ));
            }
        }
        // Acknowledged counts are unique, and epochs never go back as
        // counts rise: no two activations committed in overlapping epochs.
        let mut by_count: Vec<&&Ack> = acks.iter().collect();
        by_count.sort_by_key(|a| (a.count, a.acked_ms));
        for w in by_count.windows(2) {
            if w[0].count == w[1].count && w[0].id != w[1].id {
                v.push(format!(
                    "counter/{actor}: calls #{:x} and #{:x} were both acknowledged as #{}",
                    w[0].id, w[1].id, w[0].count
                ));
            }
            if w[1].epoch < w[0].epoch {
                v.push(format!(
                    "counter/{actor}: #{} ran at epoch {} after #{} at epoch {} (overlapping activations)",
                    w[1].count, w[1].epoch, w[0].count, w[0].epoch
                ));
            }
        }
        // Reads are linearizable: a read sees every call acknowledged
        // before it was sent, and only calls that were sent.
        for r in rec.reads.iter().filter(|r| r.actor == *actor) {
            let got: BTreeSet<u64> = r.ids.iter().copied().collect();
            for a in acks.iter().filter(|a| a.acked_ms < r.sent_ms) {
                if !got.contains(&a.id) {
                    v.push(format!(
                        "counter/{actor}: a read sent at {} ms (answered by {}) misses #{:x}, acknowledged at {} ms (a stale read)",
                        r.sent_ms, r.pop, a.id, a.acked_ms
                    ));
                }
            }
            for id in &got {
                if !sent.contains_key(id) {
                    v.push(format!(
                        "counter/{actor}: a read saw #{id:x}, which was never sent"
                    ));
                }
            }
        }
        // Real-time order: a call sent after another was acknowledged
        // lands after it.
        for a in &acks {
            for b in &acks {
                let b_sent = sent.get(&b.id).map_or(0, |s| s.sent_ms);
                if a.acked_ms < b_sent && a.count >= b.count {
                    v.push(format!(
                        "counter/{actor}: #{:x} (acked as #{}) was sent after #{:x} (acked as #{}) was acknowledged, yet landed first",
                        b.id, b.count, a.id, a.count
                    ));
                }
            }
        }
    }
    v.sort();
    v.dedup();
    v
}

/// Builds the counter component (once per process).
pub fn counter_wasm() -> Result<Vec<u8>, String> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .ok_or("tests/sim is in the workspace")?
        .to_path_buf();
    let path = tern_cli::build::build_guest(&root.join("examples/counter"), true)
        .map_err(|e| e.to_string())?;
    std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))
}

/// The engine every seed shares: fuel-metered, no ticker thread.
pub fn engine() -> Result<TernEngine, String> {
    TernEngine::with_meter(tern_runtime::engine::CpuMeter::Fuel {
        per_ms: FUEL_PER_MS,
    })
    .map_err(|e| e.to_string())
}
