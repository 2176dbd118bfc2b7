//! `tern-sim placement`: placement policies compared at WAN distances.
//!
//! A model of a world-wide tern cluster, one thread, simulated time:
//! - every POP, the directory and the store sit in metros of the WAN model
//!   ([`crate::wan`]); every round trip between them is paid at the
//!   measured metro-to-metro RTT, with jitter from the seed;
//! - the directory is the real one (`tern_directory::Core`: claims,
//!   lookups, releases, leases and epochs), over the real store
//!   (`tern_storage::Store` on the memory backend, wrapped in `LatencyKv`
//!   to count the store round trips of each operation);
//! - the placement decision is the real one (`Placement::should_move`,
//!   with the window of calling POPs an activation keeps);
//! - actors are host-side model actors: their state is a real snapshot
//!   (linear-memory pages and a side record) committed, fenced and
//!   restored through the store as a Wasm actor's would be, but no Wasm
//!   runs (a turn costs [`TURN_MS`]).
//!
//! A call's latency is the sum of the round trips on its critical path:
//! client to its nearest POP, the directory lookup (unless the POP's cache
//! knows the owner), the forward to the owning POP, a move (the owner
//! persists and releases, the caller's POP claims and restores), the turn
//! and, with `turn` durability, its commit. Calls do not queue behind each
//! other (an actor's calls are seconds apart in these workloads), so the
//! figures are network and store distance, not load.
//!
//! The policies differ only in where an actor is activated:
//! - `follow` (tern): at the POP that took the call, then it follows its
//!   callers by `Placement::should_move`;
//! - `pinned` (as Durable Objects): where it was first called, for good;
//! - `central`: at the POP in the store's region;
//! - `hash`: at the POP a hash of its name picks.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use tern_directory::{ClaimOutcome, Core, DirectoryConfig};
use tern_runtime::Placement;
use tern_storage::kv::latency::LatencyKv;
use tern_storage::kv::memory::MemoryBackend;
use tern_storage::{CommitRequest, Kv, MemoryDelta, PAGE_SIZE, SnapshotMeta, Store};

use crate::wan::{self, Wan};

/// CPU time of one model turn, ms.
pub const TURN_MS: f64 = 0.2;
/// The directory's lease, ms (tern's default).
pub const LEASE_MS: u64 = 3_000;
/// Heartbeat interval, ms (tern's default).
pub const HEARTBEAT_MS: u64 = 1_000;
/// Idle time after which an activation is persisted and evicted, ms
/// (tern's default `idle_ms`).
pub const IDLE_EVICT_MS: u64 = 30_000;
/// Attempts to route one call before it counts as failed.
const ROUTE_ATTEMPTS_MAX: usize = 8;
/// Calling POPs an activation remembers (tern keeps the window's worth).
const RECENT_MAX: usize = 64;
/// Wall clock of the model at its start, ms since the epoch.
const ORIGIN_MS: u64 = 1_800_000_000_000;

/// Where an actor is activated.
#[derive(Debug, Clone, PartialEq)]
pub enum Policy {
    /// tern: at the POP that took the call, then following its callers.
    Follow(Placement),
    /// Where it was first called, for good.
    Pinned,
    /// At the POP in the store's region.
    Central,
    /// At the POP a hash of its name picks.
    Hash,
}

impl Policy {
    /// Its name in the report.
    pub fn name(&self) -> String {
        match self {
            Policy::Follow(p) if *p == Placement::default() => "follow".into(),
            Policy::Follow(p) => format!(
                "follow(window {}, share {}%, idle {} ms)",
                p.window, p.share_pct, p.idle_move_ms
            ),
            Policy::Pinned => "pinned".into(),
            Policy::Central => "central".into(),
            Policy::Hash => "hash".into(),
        }
    }
}

/// When a turn's changes reach the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Before the reply.
    Turn,
    /// When the activation is evicted or moves.
    Idle,
}

/// One call of a workload.
#[derive(Debug, Clone)]
pub struct Call {
    /// When it is sent, ms from the start.
    pub at_ms: u64,
    /// The caller's metro (index into [`wan::METROS`]).
    pub metro: usize,
    /// The actor.
    pub actor: String,
    /// Whether the turn changes the actor.
    pub writes: bool,
    /// Whether the actor is shared by many callers.
    pub shared: bool,
}

/// What a model run measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunStats {
    /// Calls made.
    pub calls: u64,
    /// Calls that did not settle within the route attempts.
    pub failed: u64,
    /// Client-visible latency, ms, p50.
    pub p50_ms: f64,
    /// p99.
    pub p99_ms: f64,
    /// Moves of an active actor to another POP.
    pub migrations: u64,
    /// Moves of shared actors.
    pub shared_migrations: u64,
    /// Moves of a shared actor back to a POP it left within the last
    /// minute (ping-pong).
    pub shared_returns: u64,
    /// Bytes of actor state restored at another POP because of a move.
    pub bytes_moved: u64,
    /// Store round trips (POPs' and the directory's) per call, evictions
    /// included.
    pub store_round_trips_per_call: f64,
    /// Directory requests (lookups, claims, releases) per call.
    pub directory_round_trips_per_call: f64,
    /// Activations (claims granted) per call.
    pub activations_per_call: f64,
    #[serde(skip)]
    latencies: Vec<f64>,
}

/// An activation at a POP.
struct Active {
    epoch: u64,
    head: u64,
    /// Calling POPs, oldest first.
    recent: VecDeque<String>,
    last_ms: u64,
    dirty: bool,
    /// Writes applied so far (its state).
    version: u64,
}

struct Pop {
    name: String,
    metro: usize,
    incarnation: u64,
    active: HashMap<String, Active>,
    /// Owners this POP learned from the directory.
    cache: HashMap<String, usize>,
}

/// A model cluster.
pub struct Model {
    now: Arc<AtomicU64>,
    core: Core,
    store: Store,
    trips: Arc<AtomicU64>,
    pops: Vec<Pop>,
    by_name: HashMap<String, usize>,
    /// Nearest POP of each metro.
    nearest: Vec<usize>,
    wan: Wan,
    rng: StdRng,
    policy: Policy,
    durability: Durability,
    store_metro: usize,
    dir_metro: usize,
    central: usize,
    /// `pinned`: where each actor was first called.
    homes: HashMap<String, usize>,
    /// Memory pages of a model actor.
    pages: u32,
    /// (due, pop, actor): eviction checks, in time order.
    evictions: VecDeque<(u64, usize, String)>,
    last_heartbeat: u64,
    /// Shared actors' recent moves: (at, from).
    shared_moves: HashMap<String, VecDeque<(u64, usize)>>,
    stats: RunStats,
    dir_requests: u64,
    store_trips: u64,
    activations: u64,
}

/// How a model cluster is laid out.
#[derive(Debug, Clone)]
pub struct Layout {
    /// The metro of each POP (POP names are `<metro code>` or
    /// `<metro code>-<n>` when a metro has several).
    pub pop_metros: Vec<usize>,
    /// The store's metro (one FoundationDB region).
    pub store_metro: usize,
    /// The directory's metro.
    pub dir_metro: usize,
    /// Memory pages of a model actor.
    pub pages: u32,
}

impl Layout {
    /// A POP in every metro of the WAN model; store and directory in
    /// Ashburn (us-east).
    pub fn every_metro() -> Layout {
        let iad = wan::metro("iad");
        Layout {
            pop_metros: (0..wan::METROS.len()).collect(),
            store_metro: iad,
            dir_metro: iad,
            // 17 pages (1.06 MiB): a small Rust actor's linear memory.
            pages: 17,
        }
    }
}

impl Model {
    /// A cluster laid out as `layout`, every POP registered.
    pub fn new(
        layout: &Layout,
        policy: Policy,
        durability: Durability,
        seed: u64,
    ) -> Result<Model, String> {
        let backend = LatencyKv::new(Arc::new(MemoryBackend::new()), Duration::ZERO);
        let trips = backend.counter();
        let store = Store::from_kv(Kv::new(Arc::new(backend)), None);
        let now = Arc::new(AtomicU64::new(0));
        let clock = now.clone();
        let core = Core::new(
            store.clone(),
            DirectoryConfig {
                lease_ms: LEASE_MS,
                heartbeat_ms: HEARTBEAT_MS,
                clock: Arc::new(move || ORIGIN_MS + clock.load(Ordering::Relaxed)),
            },
        );
        let mut per_metro: BTreeMap<usize, usize> = BTreeMap::new();
        let mut pops = Vec::new();
        for &m in &layout.pop_metros {
            let n = per_metro.entry(m).or_default();
            let name = if *n == 0 {
                wan::METROS[m].code.to_string()
            } else {
                format!("{}-{n}", wan::METROS[m].code)
            };
            *n += 1;
            let r = core
                .register(
                    &name,
                    &format!("http://{name}.pop:7700"),
                    (wan::METROS[m].lat, wan::METROS[m].lon),
                )
                .map_err(|e| format!("register {name}: {e}"))?;
            pops.push(Pop {
                name,
                metro: m,
                incarnation: r.incarnation,
                active: HashMap::new(),
                cache: HashMap::new(),
            });
        }
        let wan = Wan::new();
        let nearest = (0..wan::METROS.len())
            .map(|c| {
                (0..pops.len())
                    .min_by(|&a, &b| {
                        wan.base_ms(c, pops[a].metro)
                            .total_cmp(&wan.base_ms(c, pops[b].metro))
                    })
                    .expect("a POP")
            })
            .collect();
        let central = (0..pops.len())
            .min_by(|&a, &b| {
                wan.base_ms(layout.store_metro, pops[a].metro)
                    .total_cmp(&wan.base_ms(layout.store_metro, pops[b].metro))
            })
            .expect("a POP");
        let by_name = pops
            .iter()
            .enumerate()
            .map(|(i, p)| (p.name.clone(), i))
            .collect();
        Ok(Model {
            now,
            core,
            store,
            trips,
            pops,
            by_name,
            nearest,
            wan,
            rng: StdRng::seed_from_u64(seed),
            policy,
            durability,
            store_metro: layout.store_metro,
            dir_metro: layout.dir_metro,
            central,
            homes: HashMap::new(),
            pages: layout.pages,
            evictions: VecDeque::new(),
            last_heartbeat: 0,
            shared_moves: HashMap::new(),
            stats: RunStats::default(),
            dir_requests: 0,
            store_trips: 0,
            activations: 0,
        })
    }

    fn now_ms(&self) -> u64 {
        self.now.load(Ordering::Relaxed)
    }

    /// One round trip between two metros, jittered.
    fn rtt(&mut self, a: usize, b: usize) -> f64 {
        self.wan.sample_ms(&mut self.rng, a, b)
    }

    /// Runs `f` against the store from `metro`: its round trips, paid.
    fn store_op<T>(&mut self, metro: usize, f: impl FnOnce(&Store) -> T) -> (T, f64) {
        let before = self.trips.load(Ordering::Relaxed);
        let out = f(&self.store);
        let n = self.trips.load(Ordering::Relaxed) - before;
        self.store_trips += n;
        let store = self.store_metro;
        let lat = (0..n).map(|_| self.rtt(metro, store)).sum();
        (out, lat)
    }

    /// One directory request from POP `p`: the round trip to the
    /// directory, and the directory's own round trips to the store.
    fn dir_op<T>(&mut self, p: usize, f: impl FnOnce(&Core) -> T) -> (T, f64) {
        self.dir_requests += 1;
        let (from, dir) = (self.pops[p].metro, self.dir_metro);
        let mut lat = self.rtt(from, dir);
        let before = self.trips.load(Ordering::Relaxed);
        let out = f(&self.core);
        let n = self.trips.load(Ordering::Relaxed) - before;
        self.store_trips += n;
        let store = self.store_metro;
        lat += (0..n).map(|_| self.rtt(dir, store)).sum::<f64>();
        (out, lat)
    }

    /// Advances the model's clock to `t`: heartbeats and evictions due
    /// meanwhile happen (off every call's path).
    fn advance(&mut self, t: u64) -> Result<(), String> {
        while self.last_heartbeat + HEARTBEAT_MS <= t {
            self.last_heartbeat += HEARTBEAT_MS;
            self.now.store(self.last_heartbeat, Ordering::Relaxed);
            for i in 0..self.pops.len() {
                let (name, inc) = (self.pops[i].name.clone(), self.pops[i].incarnation);
                let before = self.trips.load(Ordering::Relaxed);
                let (alive, _) = self
                    .core
                    .heartbeat(&name, inc)
                    .map_err(|e| format!("heartbeat {name}: {e}"))?;
                // Heartbeats are per POP, not per call: not counted.
                let _ = before;
                assert!(alive, "POP {name} lost its lease in the model");
            }
            self.evict_due(self.last_heartbeat)?;
        }
        self.now.store(t, Ordering::Relaxed);
        Ok(())
    }

    fn evict_due(&mut self, t: u64) -> Result<(), String> {
        while let Some((due, _, _)) = self.evictions.front() {
            if *due > t {
                break;
            }
            let (_, p, actor) = self.evictions.pop_front().expect("front");
            let Some(a) = self.pops[p].active.get(&actor) else {
                continue;
            };
            let due = a.last_ms + IDLE_EVICT_MS;
            if due > t {
                self.evictions.push_back((due, p, actor));
                continue;
            }
            self.deactivate(p, &actor)?;
        }
        Ok(())
    }

    /// Persists (if dirty) and releases `actor` at POP `p`: the latency
    /// of doing so.
    fn deactivate(&mut self, p: usize, actor: &str) -> Result<f64, String> {
        let a = self.pops[p].active.remove(actor).expect("active");
        let metro = self.pops[p].metro;
        let mut lat = 0.0;
        if a.dirty {
            let req = self.commit_request(actor, &a);
            let (r, l) = self.store_op(metro, |s| s.commit_snapshot(&req));
            r.map_err(|e| format!("persist {actor}: {e}"))?;
            lat += l;
        }
        let (r, l) = self.dir_op(p, |c| c.release(actor, a.epoch));
        r.map_err(|e| format!("release {actor}: {e}"))?;
        Ok(lat + l)
    }

    fn commit_request(&self, actor: &str, a: &Active) -> CommitRequest {
        // The model actor's state: its write count, in page 0 and in a
        // side record, as a Wasm actor's globals and heap would be.
        let mut page = vec![0u8; PAGE_SIZE];
        page[..8].copy_from_slice(&a.version.to_le_bytes());
        CommitRequest {
            actor: actor.to_string(),
            epoch: a.epoch,
            expected_head_seq: a.head,
            meta: SnapshotMeta {
                component_digest: "model".into(),
                engine_version: "model".into(),
                globals: vec![a.version],
            },
            memories: vec![MemoryDelta {
                len_bytes: u64::from(self.pages) * PAGE_SIZE as u64,
                changed_pages: vec![(0, page)],
            }],
            extra: vec![("model".into(), a.version.to_le_bytes().to_vec())],
            ..CommitRequest::default()
        }
    }

    /// Claims and restores `actor` at POP `p`. `Ok(Err(holder))` if a live
    /// POP holds it.
    fn activate(&mut self, p: usize, actor: &str) -> Result<(Result<(), usize>, f64), String> {
        let (name, inc) = (self.pops[p].name.clone(), self.pops[p].incarnation);
        let (r, mut lat) = self.dir_op(p, |c| c.claim(actor, &name, inc));
        match r.map_err(|e| format!("claim {actor} at {name}: {e}"))? {
            ClaimOutcome::Held(h) => {
                let holder = *self
                    .by_name
                    .get(&h.pop)
                    .ok_or_else(|| format!("{actor} held by unknown POP {}", h.pop))?;
                Ok((Err(holder), lat))
            }
            ClaimOutcome::Granted { epoch, head_seq } => {
                self.activations += 1;
                let metro = self.pops[p].metro;
                let (loaded, l) = self.store_op(metro, |s| s.load_snapshot(actor));
                lat += l;
                let loaded = loaded.map_err(|e| format!("restore {actor}: {e}"))?;
                let version = match &loaded {
                    Some(s) => {
                        assert_eq!(
                            s.seq, head_seq,
                            "{actor}: restored a snapshot other than the head"
                        );
                        u64::from_le_bytes(s.memories[0][..8].try_into().expect("8 bytes"))
                    }
                    None => 0,
                };
                let now = self.now_ms();
                self.pops[p].active.insert(
                    actor.to_string(),
                    Active {
                        epoch,
                        head: head_seq,
                        recent: VecDeque::new(),
                        last_ms: now,
                        dirty: false,
                        version,
                    },
                );
                self.evictions
                    .push_back((now + IDLE_EVICT_MS, p, actor.to_string()));
                Ok((Ok(()), lat))
            }
        }
    }

    /// Runs one turn of `actor`, active at `p`, for a call that came
    /// through `via`: the turn, and its commit under `turn` durability.
    fn turn(&mut self, p: usize, actor: &str, via: usize, writes: bool) -> Result<f64, String> {
        let now = self.now_ms();
        let via_name = self.pops[via].name.clone();
        let a = self.pops[p].active.get_mut(actor).expect("active");
        a.recent.push_back(via_name);
        if a.recent.len() > RECENT_MAX {
            a.recent.pop_front();
        }
        a.last_ms = now;
        let mut lat = TURN_MS;
        if writes {
            a.version += 1;
            a.dirty = true;
            if self.durability == Durability::Turn {
                let a = &self.pops[p].active[actor];
                let req = self.commit_request(actor, a);
                let metro = self.pops[p].metro;
                let (r, l) = self.store_op(metro, |s| s.commit_snapshot(&req));
                let head = r.map_err(|e| format!("commit {actor}: {e}"))?;
                lat += l;
                let a = self.pops[p].active.get_mut(actor).expect("active");
                a.head = head;
                a.dirty = false;
            }
        }
        Ok(lat)
    }

    /// Where `policy` puts an actor that is active nowhere, called
    /// through POP `p` (`None`: wherever the call is).
    fn home(&mut self, actor: &str, p: usize) -> Option<usize> {
        match &self.policy {
            Policy::Follow(_) => None,
            Policy::Pinned => Some(*self.homes.entry(actor.to_string()).or_insert(p)),
            Policy::Central => Some(self.central),
            Policy::Hash => {
                let h = <sha2::Sha256 as sha2::Digest>::digest(actor.as_bytes());
                let n = u64::from_le_bytes(h[..8].try_into().expect("8 bytes"));
                Some((n % self.pops.len() as u64) as usize)
            }
        }
    }

    fn note_move(&mut self, actor: &str, from: usize, shared: bool) {
        self.stats.migrations += 1;
        self.stats.bytes_moved += u64::from(self.pages) * PAGE_SIZE as u64;
        if !shared {
            return;
        }
        self.stats.shared_migrations += 1;
        let now = self.now_ms();
        let moves = self.shared_moves.entry(actor.to_string()).or_default();
        while moves.front().is_some_and(|(t, _)| t + 60_000 < now) {
            moves.pop_front();
        }
        moves.push_back((now, from));
        let to = self.pops.iter().position(|p| p.active.contains_key(actor));
        if moves.iter().any(|(_, f)| Some(*f) == to) {
            self.stats.shared_returns += 1;
        }
    }

    /// Routes one call that entered at POP `p`: its latency from the POP
    /// on (`None`: it did not settle).
    fn route(&mut self, p: usize, c: &Call) -> Result<Option<f64>, String> {
        let actor = c.actor.as_str();
        let mut lat = 0.0;
        for _ in 0..ROUTE_ATTEMPTS_MAX {
            if self.pops[p].active.contains_key(actor) {
                return Ok(Some(lat + self.turn(p, actor, p, c.writes)?));
            }
            // Placed elsewhere by policy: forward there; it activates it
            // if need be.
            if let Some(h) = self.home(actor, p)
                && h != p
            {
                let (pm, hm) = (self.pops[p].metro, self.pops[h].metro);
                lat += self.rtt(pm, hm);
                if !self.pops[h].active.contains_key(actor) {
                    let (r, l) = self.activate(h, actor)?;
                    lat += l;
                    if r.is_err() {
                        return Err(format!("{actor} is held away from its home"));
                    }
                }
                return Ok(Some(lat + self.turn(h, actor, p, c.writes)?));
            }
            let owner = match self.pops[p].cache.get(actor) {
                Some(&o) => Some(o),
                None => {
                    let (r, l) = self.dir_op(p, |core| core.lookup(actor));
                    lat += l;
                    let owner = r
                        .map_err(|e| format!("lookup {actor}: {e}"))?
                        .filter(|h| h.pop_alive)
                        .and_then(|h| self.by_name.get(&h.pop).copied());
                    if let Some(o) = owner {
                        self.pops[p].cache.insert(actor.to_string(), o);
                    }
                    owner
                }
            };
            match owner {
                Some(o) if o != p => {
                    let (pm, om) = (self.pops[p].metro, self.pops[o].metro);
                    let hop = self.rtt(pm, om);
                    lat += hop;
                    if !self.pops[o].active.contains_key(actor) {
                        // Not there any more: look it up again.
                        self.pops[p].cache.remove(actor);
                        continue;
                    }
                    let moves = match &self.policy {
                        Policy::Follow(pl) => {
                            let now = self.now_ms();
                            let a = &self.pops[o].active[actor];
                            let mut recent: Vec<String> = a.recent.iter().cloned().collect();
                            recent.push(self.pops[p].name.clone());
                            pl.should_move(&recent, now - a.last_ms, &self.pops[o].name)
                        }
                        _ => false,
                    };
                    if !moves {
                        return Ok(Some(lat + self.turn(o, actor, p, c.writes)?));
                    }
                    // The owner persists and releases, then tells the
                    // caller's POP to claim it.
                    lat += self.deactivate(o, actor)?;
                    self.pops[p].cache.remove(actor);
                    let (r, l) = self.activate(p, actor)?;
                    lat += l;
                    if let Err(h) = r {
                        self.pops[p].cache.insert(actor.to_string(), h);
                        continue;
                    }
                    self.note_move(actor, o, c.shared);
                    return Ok(Some(lat + self.turn(p, actor, p, c.writes)?));
                }
                _ => {
                    let (r, l) = self.activate(p, actor)?;
                    lat += l;
                    match r {
                        Ok(()) => return Ok(Some(lat + self.turn(p, actor, p, c.writes)?)),
                        Err(h) => {
                            self.pops[p].cache.insert(actor.to_string(), h);
                        }
                    }
                }
            }
        }
        Ok(None)
    }

    /// Lets every actor go idle and be evicted.
    pub fn drain(&mut self) -> Result<(), String> {
        let end = self.now_ms() + IDLE_EVICT_MS + 2 * HEARTBEAT_MS;
        self.advance(end)?;
        let left: usize = self.pops.iter().map(|p| p.active.len()).sum();
        assert_eq!(left, 0, "activations left after every actor went idle");
        Ok(())
    }

    /// Makes one call.
    pub fn call(&mut self, c: &Call) -> Result<(), String> {
        self.advance(c.at_ms)?;
        let p = self.nearest[c.metro];
        let access = self
            .wan
            .access_ms(&mut self.rng, c.metro, self.pops[p].metro);
        self.stats.calls += 1;
        match self.route(p, c)? {
            Some(l) => self.stats.latencies.push(access + l),
            None => self.stats.failed += 1,
        }
        Ok(())
    }

    /// Runs `calls` (in time order), then lets every actor go idle and be
    /// evicted, and returns what it measured.
    pub fn run(mut self, calls: &[Call]) -> Result<RunStats, String> {
        for c in calls {
            self.call(c)?;
        }
        self.finish()
    }

    /// Lets every actor go idle and be evicted (so that every run pays
    /// for its evictions), and returns what it measured.
    pub fn finish(mut self) -> Result<RunStats, String> {
        self.drain()?;
        let mut s = self.stats;
        let n = s.calls.max(1) as f64;
        s.store_round_trips_per_call = round3(self.store_trips as f64 / n);
        s.directory_round_trips_per_call = round3(self.dir_requests as f64 / n);
        s.activations_per_call = round3(self.activations as f64 / n);
        s.latencies.sort_by(f64::total_cmp);
        s.p50_ms = round1(percentile(&s.latencies, 50.0));
        s.p99_ms = round1(percentile(&s.latencies, 99.0));
        Ok(s)
    }

    /// The store's bytes (keys and values) and its number of keys.
    pub fn store_bytes(&self) -> Result<(u64, u64), String> {
        let mut bytes = 0u64;
        let mut keys = 0u64;
        let mut from = vec![0u8];
        loop {
            let chunk = self
                .store
                .kv()
                .transact(|tx| tx.get_range(&from, &[0xff; 8], Some(10_000), false))
                .map_err(|e| e.to_string())?;
            let Some((last, _)) = chunk.last() else { break };
            for (k, v) in &chunk {
                bytes += (k.len() + v.len()) as u64;
                keys += 1;
            }
            from = last.clone();
            from.push(0);
            if chunk.len() < 10_000 {
                break;
            }
        }
        Ok((bytes, keys))
    }
}

/// Latencies of a finished run, sorted (for the chart).
impl RunStats {
    /// The sorted latencies, ms.
    pub fn latencies(&self) -> &[f64] {
        &self.latencies
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p / 100.0).round() as usize]
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// The random draws of a workload.
fn gap(rng: &mut StdRng, lo_ms: u64, hi_ms: u64) -> u64 {
    rng.random_range(lo_ms..=hi_ms)
}

// ------------------------------------------------------------- workloads

/// A workload: its calls, in time order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkloadKind {
    /// Players who stay in one city, each calling its own actor.
    Stationary,
    /// Players who travel: by car (their nearest metro changes every few
    /// minutes) and by airplane (a session, a flight, a session on another
    /// continent).
    Travel,
    /// Hot shared actors (matchmakers) called from every metro.
    Shared,
    /// doom-lobby's mix: a player actor each, a matchmaker per continent,
    /// matches of four players.
    Doom,
}

impl WorkloadKind {
    /// Every workload.
    pub const ALL: [WorkloadKind; 4] = [
        WorkloadKind::Stationary,
        WorkloadKind::Travel,
        WorkloadKind::Shared,
        WorkloadKind::Doom,
    ];

    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            WorkloadKind::Stationary => "stationary",
            WorkloadKind::Travel => "travel",
            WorkloadKind::Shared => "shared",
            WorkloadKind::Doom => "doom",
        }
    }
}

/// How big the workloads are.
#[derive(Debug, Clone, Copy)]
pub struct Size {
    /// Players (stationary, travel, doom).
    pub players: usize,
    /// Simulated duration, ms.
    pub duration_ms: u64,
    /// Shared actors (the shared workload).
    pub shared_actors: usize,
}

impl Size {
    /// `--quick`: a few minutes of CPU in a debug build.
    pub const QUICK: Size = Size {
        players: 60,
        duration_ms: 600_000,
        shared_actors: 4,
    };
    /// The full comparison.
    pub const FULL: Size = Size {
        players: 400,
        duration_ms: 1_800_000,
        shared_actors: 8,
    };
}

/// One player's calls to its own actor from `metro` in [from, to).
fn session(
    rng: &mut StdRng,
    out: &mut Vec<Call>,
    actor: &str,
    metro: usize,
    from: u64,
    to: u64,
) -> u64 {
    let mut t = from;
    while t < to {
        out.push(Call {
            at_ms: t,
            metro,
            actor: actor.to_string(),
            writes: rng.random_bool(0.5),
            shared: false,
        });
        t += gap(rng, 1_000, 4_000);
    }
    t
}

/// The calls of `kind`, sized `size`, drawn from `seed`.
pub fn workload(kind: WorkloadKind, size: Size, seed: u64) -> Vec<Call> {
    let mut rng = StdRng::seed_from_u64(seed ^ (kind as u64 + 1).wrapping_mul(0x9e37_79b9));
    let n = wan::METROS.len();
    let mut out = Vec::new();
    let end = size.duration_ms;
    match kind {
        WorkloadKind::Stationary => {
            for i in 0..size.players {
                let metro = rng.random_range(0..n);
                let start = gap(&mut rng, 0, 10_000);
                session(
                    &mut rng,
                    &mut out,
                    &format!("player/s{i}"),
                    metro,
                    start,
                    end,
                );
            }
        }
        WorkloadKind::Travel => {
            for i in 0..size.players {
                let actor = format!("player/t{i}");
                let mut metro = rng.random_range(0..n);
                let mut t = gap(&mut rng, 0, 10_000);
                if i % 2 == 0 {
                    // By car: the nearest metro changes every 3 to 6
                    // minutes, to the next one along the road.
                    let mut seen = vec![metro];
                    while t < end {
                        let leg = t + gap(&mut rng, 180_000, 360_000);
                        t = session(&mut rng, &mut out, &actor, metro, t, leg.min(end));
                        metro = wan::next_on_road(metro, &seen);
                        seen.push(metro);
                    }
                } else {
                    // By airplane: play, fly 10 to 20 minutes, play on
                    // another continent.
                    while t < end {
                        let leg = t + gap(&mut rng, 180_000, 300_000);
                        t = session(&mut rng, &mut out, &actor, metro, t, leg.min(end));
                        t += gap(&mut rng, 600_000, 1_200_000);
                        metro = wan::far_metro(&mut rng, metro);
                    }
                }
            }
        }
        WorkloadKind::Shared => {
            for j in 0..size.shared_actors {
                let actor = format!("matchmaker/m{j}");
                let mut t = gap(&mut rng, 0, 1_000);
                while t < end {
                    out.push(Call {
                        at_ms: t,
                        metro: rng.random_range(0..n),
                        actor: actor.clone(),
                        writes: rng.random_bool(0.5),
                        shared: true,
                    });
                    t += gap(&mut rng, 100, 400);
                }
            }
        }
        WorkloadKind::Doom => {
            // Players in sessions of 2 to 4 minutes: a join at their
            // continent's matchmaker, then their match (four players of
            // the continent, one in eight from another) every 1 to 2 s and
            // their own actor every 5 s.
            let continents = wan::continents();
            for (ci, cont) in continents.iter().enumerate() {
                let metros: Vec<usize> = (0..n)
                    .filter(|&m| wan::METROS[m].continent == *cont)
                    .collect();
                let players = (size.players / continents.len()).max(4);
                let mut t0 = gap(&mut rng, 0, 10_000);
                let mut round = 0;
                while t0 < end {
                    let mut round_end = t0;
                    for g in 0..players / 4 {
                        let matched = format!("match/{cont}-{round}-{g}");
                        let stop = (t0 + gap(&mut rng, 120_000, 240_000)).min(end);
                        for k in 0..4 {
                            let pi = g * 4 + k;
                            let metro = if rng.random_ratio(1, 8) {
                                rng.random_range(0..n)
                            } else {
                                metros[pi % metros.len()]
                            };
                            let me = format!("player/d{ci}-{pi}");
                            let mut push = |at_ms: u64, actor: &str, shared: bool, writes: bool| {
                                out.push(Call {
                                    at_ms,
                                    metro,
                                    actor: actor.to_string(),
                                    writes,
                                    shared,
                                })
                            };
                            push(
                                t0 + k as u64 * 50,
                                &format!("matchmaker/{cont}"),
                                true,
                                true,
                            );
                            let mut t = t0 + 500;
                            let mut next_own = t;
                            while t < stop {
                                push(t, &matched, true, true);
                                if t >= next_own {
                                    push(t + 1, &me, false, true);
                                    next_own = t + 5_000;
                                }
                                t += gap(&mut rng, 1_000, 2_000);
                            }
                        }
                        round_end = round_end.max(stop);
                    }
                    t0 = round_end + gap(&mut rng, 5_000, 30_000);
                    round += 1;
                }
            }
        }
    }
    out.sort_by(|a, b| a.at_ms.cmp(&b.at_ms).then_with(|| a.actor.cmp(&b.actor)));
    out
}

// ---------------------------------------------------------------- report

/// One policy on one workload.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// The policy.
    pub policy: String,
    /// The workload.
    pub workload: WorkloadKind,
    /// The durability.
    pub durability: Durability,
    /// What it measured.
    #[serde(flatten)]
    pub stats: RunStats,
}

/// One step of the scale run.
#[derive(Debug, Clone, Serialize)]
pub struct ScaleRow {
    /// Actors.
    pub actors: u64,
    /// POPs.
    pub pops: usize,
    /// Calls made.
    pub calls: u64,
    /// Directory requests per call.
    pub directory_ops_per_call: f64,
    /// Store round trips per call (the POPs' and the directory's).
    pub store_round_trips_per_call: f64,
    /// Directory and store operations per call, together.
    pub ops_per_call: f64,
    /// The store's bytes (keys and values) per actor.
    pub store_bytes_per_actor: f64,
    /// Store keys per actor.
    pub store_keys_per_actor: f64,
    /// Client-visible latency, ms.
    pub p50_ms: f64,
    /// p99.
    pub p99_ms: f64,
}

/// The report `tern-sim placement` writes.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The seed.
    pub seed: u64,
    /// Whether `--quick`.
    pub quick: bool,
    /// The WAN model.
    pub wan: wan::Description,
    /// Players per workload, simulated minutes.
    pub players: usize,
    /// Simulated duration of each workload, s.
    pub duration_s: u64,
    /// Every policy on every workload (`turn` durability).
    pub results: Vec<Row>,
    /// tern's policy with `turn` against `idle` durability.
    pub durability: Vec<Row>,
    /// The scale run.
    pub scale: Vec<ScaleRow>,
}

/// The summary `tern-sim placement` prints last.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Travelling players' p50 under `follow` over `pinned`.
    pub travel_p50_ratio_vs_pinned: f64,
    /// Stationary players' p50 under `follow` over `pinned`.
    pub stationary_p50_ratio_vs_pinned: f64,
    /// `ops_per_call` at each scale step.
    pub scale_ops_per_call: Vec<f64>,
    /// Shared actors' returns to a POP they left within a minute, `follow`.
    pub shared_returns: u64,
}

/// The policies compared.
pub fn policies() -> Vec<Policy> {
    let d = Placement::default();
    vec![
        Policy::Follow(d),
        Policy::Follow(Placement { window: 4, ..d }),
        Policy::Follow(Placement { window: 8, ..d }),
        Policy::Pinned,
        Policy::Central,
        Policy::Hash,
    ]
}

/// One policy on one workload.
pub fn compare(
    policy: &Policy,
    kind: WorkloadKind,
    durability: Durability,
    size: Size,
    seed: u64,
) -> Result<Row, String> {
    let calls = workload(kind, size, seed);
    let model = Model::new(&Layout::every_metro(), policy.clone(), durability, seed)?;
    Ok(Row {
        policy: policy.name(),
        workload: kind,
        durability,
        stats: model.run(&calls)?,
    })
}

/// Spacing of an actor's calls in the scale run, ms.
const SCALE_CALL_GAP_MS: u64 = 5_000;
/// Calls per actor in the scale run.
const SCALE_CALLS_PER_ACTOR: u64 = 3;
/// New actors per simulated second in the scale run.
const SCALE_ACTORS_PER_S: u64 = 1_000;
/// POPs in the scale run.
pub const SCALE_POPS: usize = 50;

/// The scale run with `actors` actors on [`SCALE_POPS`] POPs: each actor
/// called three times, 5 s apart, from its own metro (`follow`, `turn`).
pub fn scale(actors: u64, seed: u64) -> Result<ScaleRow, String> {
    let mut layout = Layout::every_metro();
    layout.pop_metros = (0..SCALE_POPS).map(|i| i % wan::METROS.len()).collect();
    layout.pages = 1;
    let mut model = Model::new(
        &layout,
        Policy::Follow(Placement::default()),
        Durability::Turn,
        seed,
    )?;
    let mut rng = StdRng::seed_from_u64(seed);
    let n = wan::METROS.len();
    let metros: Vec<u8> = (0..actors).map(|_| rng.random_range(0..n) as u8).collect();
    // (at, actor, k), in time order.
    let mut order: Vec<(u64, u32, u8)> = (0..actors)
        .flat_map(|i| {
            let t0 = i * 1_000 / SCALE_ACTORS_PER_S;
            (0..SCALE_CALLS_PER_ACTOR).map(move |k| (t0 + k * SCALE_CALL_GAP_MS, i as u32, k as u8))
        })
        .collect();
    order.sort_unstable();
    for (at_ms, i, k) in order {
        model.call(&Call {
            at_ms,
            metro: metros[i as usize] as usize,
            actor: format!("model/a{i}"),
            writes: k != 1,
            shared: false,
        })?;
    }
    model.drain()?;
    let (bytes, keys) = model.store_bytes()?;
    let stats = model.finish()?;
    let a = actors as f64;
    Ok(ScaleRow {
        actors,
        pops: SCALE_POPS,
        calls: stats.calls,
        directory_ops_per_call: stats.directory_round_trips_per_call,
        store_round_trips_per_call: stats.store_round_trips_per_call,
        ops_per_call: round3(
            stats.directory_round_trips_per_call + stats.store_round_trips_per_call,
        ),
        store_bytes_per_actor: round1(bytes as f64 / a),
        store_keys_per_actor: round3(keys as f64 / a),
        p50_ms: stats.p50_ms,
        p99_ms: stats.p99_ms,
    })
}

/// Runs the whole comparison and the scale steps.
pub fn run_all(
    size: Size,
    quick: bool,
    seed: u64,
    scale_steps: &[u64],
    progress: &indicatif::ProgressBar,
) -> Result<(Report, Summary), String> {
    let policies = policies();
    let mut results = Vec::new();
    for kind in WorkloadKind::ALL {
        for p in &policies {
            progress.set_message(format!("{} on {}", p.name(), kind.name()));
            results.push(compare(p, kind, Durability::Turn, size, seed)?);
            progress.inc(1);
        }
    }
    let mut durability = Vec::new();
    for kind in [WorkloadKind::Stationary, WorkloadKind::Doom] {
        for d in [Durability::Turn, Durability::Idle] {
            progress.set_message(format!("durability {d:?} on {}", kind.name()));
            durability.push(compare(&policies[0], kind, d, size, seed)?);
            progress.inc(1);
        }
    }
    let mut scale_rows = Vec::new();
    for &actors in scale_steps {
        progress.set_message(format!("scale: {actors} actors on {SCALE_POPS} POPs"));
        scale_rows.push(scale(actors, seed)?);
        progress.inc(1);
    }
    let p50 = |policy: &str, kind: WorkloadKind| {
        results
            .iter()
            .find(|r| r.policy == policy && r.workload == kind)
            .map_or(f64::NAN, |r| r.stats.p50_ms)
    };
    let ratio = |kind| round3(p50("follow", kind) / p50("pinned", kind));
    let summary = Summary {
        travel_p50_ratio_vs_pinned: ratio(WorkloadKind::Travel),
        stationary_p50_ratio_vs_pinned: ratio(WorkloadKind::Stationary),
        scale_ops_per_call: scale_rows.iter().map(|s| s.ops_per_call).collect(),
        shared_returns: results
            .iter()
            .filter(|r| r.policy == "follow")
            .map(|r| r.stats.shared_returns)
            .sum(),
    };
    let report = Report {
        seed,
        quick,
        wan: wan::describe(),
        players: size.players,
        duration_s: size.duration_ms / 1_000,
        results,
        durability,
        scale: scale_rows,
    };
    Ok((report, summary))
}

/// How many steps [`run_all`] takes (for its progress bar).
pub fn steps(scale_steps: &[u64]) -> u64 {
    (WorkloadKind::ALL.len() * policies().len() + 4 + scale_steps.len()) as u64
}

// ----------------------------------------------------------------- chart

/// Draws the latency CDF of every policy, one panel per workload, as SVG.
pub fn chart(report: &Report, path: &std::path::Path) -> Result<(), String> {
    use plotters::prelude::*;
    let root = SVGBackend::new(path, (1200, 900)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let panels = root.split_evenly((2, 2));
    let colors = [
        RGBColor(0x1f, 0x77, 0xb4),
        RGBColor(0x17, 0xbe, 0xcf),
        RGBColor(0x9e, 0xda, 0xe5),
        RGBColor(0xd6, 0x27, 0x28),
        RGBColor(0x2c, 0xa0, 0x2c),
        RGBColor(0x94, 0x67, 0xbd),
    ];
    for (panel, kind) in panels.iter().zip(WorkloadKind::ALL) {
        let rows: Vec<&Row> = report
            .results
            .iter()
            .filter(|r| r.workload == kind)
            .collect();
        let mut c = ChartBuilder::on(panel)
            .caption(
                format!("{}: client-visible latency, CDF", kind.name()),
                ("sans-serif", 20),
            )
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d((1f64..2_000f64).log_scale(), 0f64..1f64)
            .map_err(|e| e.to_string())?;
        c.configure_mesh()
            .x_desc("ms (log scale)")
            .y_desc("fraction of calls")
            .draw()
            .map_err(|e| e.to_string())?;
        for (i, r) in rows.iter().enumerate() {
            let lat = r.stats.latencies();
            let n = lat.len().max(1) as f64;
            // At most 400 points a line.
            let step = (lat.len() / 400).max(1);
            let points = lat
                .iter()
                .enumerate()
                .step_by(step)
                .map(|(k, &ms)| (ms.clamp(1.0, 2_000.0), (k + 1) as f64 / n));
            let color = colors[i % colors.len()];
            c.draw_series(LineSeries::new(points, color.stroke_width(2)))
                .map_err(|e| e.to_string())?
                .label(r.policy.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                });
        }
        c.configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| e.to_string())?;
    }
    root.present().map_err(|e| e.to_string())
}

/// The report as a markdown table (for people and BENCHMARKS.md).
pub fn table(r: &Report) -> String {
    let mut s = String::from(
        "| workload | policy | durability | calls | p50 ms | p99 ms | migrations | MiB moved | store round trips/call | directory requests/call |\n|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for row in r.results.iter().chain(&r.durability) {
        let t = &row.stats;
        s += &format!(
            "| {} | {} | {:?} | {} | {:.1} | {:.1} | {} | {:.1} | {:.2} | {:.2} |\n",
            row.workload.name(),
            row.policy,
            row.durability,
            t.calls,
            t.p50_ms,
            t.p99_ms,
            t.migrations,
            t.bytes_moved as f64 / (1 << 20) as f64,
            t.store_round_trips_per_call,
            t.directory_round_trips_per_call
        );
    }
    s += "\n| actors | POPs | calls | directory requests/call | store round trips/call | store bytes/actor | store keys/actor | p50 ms | p99 ms |\n|---|---|---|---|---|---|---|---|---|\n";
    for x in &r.scale {
        s += &format!(
            "| {} | {} | {} | {:.3} | {:.3} | {:.0} | {:.2} | {:.1} | {:.1} |\n",
            x.actors,
            x.pops,
            x.calls,
            x.directory_ops_per_call,
            x.store_round_trips_per_call,
            x.store_bytes_per_actor,
            x.store_keys_per_actor,
            x.p50_ms,
            x.p99_ms
        );
    }
    s
}
