//! The POP's seam to the activation directory.
//!
//! [`Directory`] is everything the POP core asks of the directory: its
//! membership lease, claims, releases, lookups, migration records and a
//! view of the cluster. Two implementations:
//! - [`LocalDirectory`] embeds the directory's decision core
//!   (`tern_directory::Core`, the one copy of the claim rules) in process:
//!   a single POP, or many POP cores driven by a simulator;
//! - the gRPC link to a `tern directory` service
//!   (`crate::grpc::DirectoryLink`).
//!
//! Both keep the lease by the POP's own clock ([`LeaseClock`]): the lease
//! is taken to end `lease_ms` after the renewing request was *sent*, so the
//! POP believes it has lapsed no later than the directory does.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use tern_directory::{ClaimOutcome as CoreClaim, Core, DirectoryError};

use crate::clock::{Clock, SystemClock};
use crate::error::{Result, RuntimeError};

/// Where an actor is active.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    /// POP name.
    pub pop: String,
    /// Its ActorService endpoint.
    pub endpoint: String,
    /// The activation epoch.
    pub epoch: u64,
}

/// The outcome of a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// Ours, with a new epoch.
    Granted {
        /// The epoch.
        epoch: u64,
        /// The snapshot head at claim time.
        head_seq: u64,
    },
    /// A live POP holds it.
    Held(Owner),
}

/// A POP as the directory sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct PopView {
    /// Name.
    pub name: String,
    /// Endpoint.
    pub endpoint: String,
    /// Whether its lease is current.
    pub alive: bool,
    /// Time since its last renewal, ms.
    pub lease_age_ms: u64,
    /// Latitude.
    pub lat: f64,
    /// Longitude.
    pub lon: f64,
}

/// An activation as the directory sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActivationView {
    /// The actor.
    pub actor: String,
    /// Its POP.
    pub pop: String,
    /// Its epoch.
    pub epoch: u64,
}

/// A migration of an actor between POPs: the record layer's own record
/// (the directory stores it as is).
pub use tern_storage::MigrationRecord as MigrationInfo;

/// POPs, activations and recent migrations.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClusterView {
    /// POPs.
    pub pops: Vec<PopView>,
    /// Active actors.
    pub activations: Vec<ActivationView>,
    /// Recent migrations, newest first.
    pub migrations: Vec<MigrationInfo>,
}

/// Migrations listed by `cluster_view`.
pub const CLUSTER_VIEW_MIGRATIONS: usize = 50;

/// Lookups a POP caches before its cache is cleared.
pub const LOOKUP_CACHE_ENTRIES_MAX: usize = 100_000;

/// What the POP core asks of the directory.
#[async_trait]
pub trait Directory: Send + Sync + 'static {
    /// This POP's name.
    fn pop(&self) -> &str;
    /// Registers (again): a new incarnation; earlier activations are void.
    async fn register(&self) -> Result<()>;
    /// Renews the lease. `Ok(false)`: it had lapsed (register again).
    async fn heartbeat(&self) -> Result<bool>;
    /// How often to heartbeat.
    fn heartbeat_interval(&self) -> Duration;
    /// Whether the lease is current by this POP's own clock.
    fn lease_ok(&self) -> bool;
    /// Claims `actor` for this POP.
    async fn claim(&self, actor: &str) -> Result<ClaimOutcome>;
    /// Releases `actor` at `epoch`.
    async fn release(&self, actor: &str, epoch: u64) -> Result<()>;
    /// Where `actor` is active: possibly from a cache unless `fresh`.
    async fn lookup(&self, actor: &str, fresh: bool) -> Result<Option<Owner>>;
    /// Drops a cached lookup.
    fn invalidate(&self, actor: &str);
    /// Records a migration.
    async fn record_migration(&self, m: MigrationInfo) -> Result<()>;
    /// POPs, activations and recent migrations.
    async fn cluster_view(&self) -> Result<ClusterView>;
    /// The names of the POPs whose lease is current.
    async fn live_pops(&self) -> Result<Vec<String>> {
        Ok(self
            .cluster_view()
            .await?
            .pops
            .into_iter()
            .filter(|p| p.alive)
            .map(|p| p.name)
            .collect())
    }
}

/// The lease as this POP's own (monotonic) clock sees it.
pub struct LeaseClock {
    clock: Arc<dyn Clock>,
    /// When the lease ends, on `clock`'s monotonic scale.
    deadline_ms: Mutex<Option<u64>>,
}

impl Default for LeaseClock {
    fn default() -> Self {
        LeaseClock::new(Arc::new(SystemClock))
    }
}

impl std::fmt::Debug for LeaseClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseClock")
            .field("deadline_ms", &*self.deadline_ms.lock())
            .finish()
    }
}

impl LeaseClock {
    /// A lease kept by `clock`.
    pub fn new(clock: Arc<dyn Clock>) -> LeaseClock {
        LeaseClock {
            clock,
            deadline_ms: Mutex::new(None),
        }
    }

    /// Now, on the lease's clock (read it when sending a renewal).
    pub fn now_ms(&self) -> u64 {
        self.clock.mono_ms()
    }

    /// A renewal sent at `sent_ms` (from [`LeaseClock::now_ms`]) granted
    /// `lease_ms`.
    pub fn renewed(&self, sent_ms: u64, lease_ms: u64) {
        *self.deadline_ms.lock() = Some(sent_ms.saturating_add(lease_ms));
    }

    /// The lease lapsed.
    pub fn lapsed(&self) {
        *self.deadline_ms.lock() = None;
    }

    /// Whether the lease is current now.
    pub fn ok(&self) -> bool {
        let now = self.clock.mono_ms();
        self.deadline_ms.lock().is_some_and(|d| now < d)
    }
}

/// Converts a directory error into the runtime's.
pub fn dir_err(what: &str, e: DirectoryError) -> RuntimeError {
    match e {
        DirectoryError::Storage(s) => RuntimeError::Storage(s),
        DirectoryError::LeaseLapsed { .. } | DirectoryError::UnknownPop { .. } => {
            RuntimeError::LeaseLost(format!("directory {what}: {e}"))
        }
        DirectoryError::InvalidArgument(m) => {
            RuntimeError::InvalidArgument(format!("directory {what}: {m}"))
        }
        other => RuntimeError::Transport(format!("directory {what}: {other}")),
    }
}

/// Runs blocking storage work from async code: off the worker on a
/// multi-threaded runtime, inline on a current-thread one (a simulator).
pub fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// The endpoint an in-process POP registers with (nothing dials it).
pub const LOCAL_ENDPOINT: &str = "http://in-process.invalid:1";

/// The directory's decision core, embedded in this process.
pub struct LocalDirectory {
    core: Mutex<Arc<Core>>,
    pop: String,
    endpoint: String,
    coords: (f64, f64),
    incarnation: Mutex<u64>,
    lease: LeaseClock,
}

impl LocalDirectory {
    /// A directory for POP `pop` over `core`. Call
    /// [`Directory::register`] before claiming.
    pub fn new(core: Arc<Core>, pop: &str, endpoint: &str, coords: (f64, f64)) -> LocalDirectory {
        LocalDirectory {
            core: Mutex::new(core),
            pop: pop.to_string(),
            endpoint: endpoint.to_string(),
            coords,
            incarnation: Mutex::new(0),
            lease: LeaseClock::default(),
        }
    }

    /// Keeps the lease by `clock` (default: the system's).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> LocalDirectory {
        self.lease = LeaseClock::new(clock);
        self
    }

    /// The embedded core.
    pub fn core(&self) -> Arc<Core> {
        self.core.lock().clone()
    }

    /// Uses `core` from now on (a restarted directory: all its state is in
    /// the store, so this POP's incarnation and lease carry over).
    pub fn replace_core(&self, core: Arc<Core>) {
        *self.core.lock() = core;
    }

    /// Registers now (blocking on the store): a new incarnation.
    pub fn register_now(&self) -> Result<()> {
        let sent = self.lease.now_ms();
        let r = blocking(|| self.core().register(&self.pop, &self.endpoint, self.coords))
            .map_err(|e| dir_err("register", e))?;
        *self.incarnation.lock() = r.incarnation;
        self.lease.renewed(sent, self.core().config().lease_ms);
        Ok(())
    }
}

#[async_trait]
impl Directory for LocalDirectory {
    fn pop(&self) -> &str {
        &self.pop
    }

    async fn register(&self) -> Result<()> {
        self.register_now()
    }

    async fn heartbeat(&self) -> Result<bool> {
        let sent = self.lease.now_ms();
        let inc = *self.incarnation.lock();
        let (alive, _) = blocking(|| self.core().heartbeat(&self.pop, inc))
            .map_err(|e| dir_err("heartbeat", e))?;
        if alive {
            self.lease.renewed(sent, self.core().config().lease_ms);
        } else {
            self.lease.lapsed();
        }
        Ok(alive)
    }

    fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.core().config().heartbeat_ms.max(10))
    }

    fn lease_ok(&self) -> bool {
        self.lease.ok()
    }

    async fn claim(&self, actor: &str) -> Result<ClaimOutcome> {
        if !self.lease_ok() {
            return Err(RuntimeError::LeaseLost(format!(
                "POP {} has no current lease; it cannot take actors",
                self.pop
            )));
        }
        let inc = *self.incarnation.lock();
        match blocking(|| self.core().claim(actor, &self.pop, inc))
            .map_err(|e| dir_err("claim", e))?
        {
            CoreClaim::Granted { epoch, head_seq } => Ok(ClaimOutcome::Granted { epoch, head_seq }),
            CoreClaim::Held(h) => Ok(ClaimOutcome::Held(Owner {
                pop: h.pop,
                endpoint: h.endpoint,
                epoch: h.epoch,
            })),
        }
    }

    async fn release(&self, actor: &str, epoch: u64) -> Result<()> {
        blocking(|| self.core().release(actor, epoch)).map_err(|e| dir_err("release", e))
    }

    async fn lookup(&self, actor: &str, _fresh: bool) -> Result<Option<Owner>> {
        let h = blocking(|| self.core().lookup(actor)).map_err(|e| dir_err("lookup", e))?;
        Ok(h.map(|h| Owner {
            pop: h.pop,
            endpoint: h.endpoint,
            epoch: h.epoch,
        }))
    }

    fn invalidate(&self, _actor: &str) {}

    async fn record_migration(&self, m: MigrationInfo) -> Result<()> {
        blocking(|| self.core().record_migration(m)).map_err(|e| dir_err("record migration", e))
    }

    async fn cluster_view(&self) -> Result<ClusterView> {
        let core = self.core();
        let lease_ms = core.config().lease_ms;
        blocking(|| {
            let (pops, now) = core.list_pops()?;
            let acts = core.list_activations(None)?;
            let migs = core.list_migrations(CLUSTER_VIEW_MIGRATIONS)?;
            Ok::<_, DirectoryError>(ClusterView {
                pops: pops
                    .into_iter()
                    .map(|(name, p)| PopView {
                        name,
                        endpoint: p.addr.clone(),
                        alive: now <= p.lease_until_ms,
                        lease_age_ms: now.saturating_sub(p.lease_until_ms.saturating_sub(lease_ms)),
                        lat: p.coords.0,
                        lon: p.coords.1,
                    })
                    .collect(),
                activations: acts
                    .into_iter()
                    .filter(|h| h.pop_alive)
                    .map(|h| ActivationView {
                        actor: h.actor,
                        pop: h.pop,
                        epoch: h.epoch,
                    })
                    .collect(),
                migrations: migs,
            })
        })
        .map_err(|e| dir_err("cluster view", e))
    }
}
