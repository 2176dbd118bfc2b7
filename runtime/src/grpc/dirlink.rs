//! The POP's link to the DirectoryService over gRPC: registration, the
//! lease, claims, lookups with a bounded cache invalidated by the
//! directory's watch stream, and migration records. It implements the
//! [`Directory`] seam.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use dashmap::DashMap;
use tern_proto::directory as pb;
use tern_proto::directory::directory_service_client::DirectoryServiceClient;
use tokio::time::Instant;
use tonic::transport::{Channel, ClientTlsConfig};

use crate::directory::{
    ActivationView, CLUSTER_VIEW_MIGRATIONS, ClaimOutcome, ClusterView, Directory,
    LOOKUP_CACHE_ENTRIES_MAX, LeaseClock, MigrationInfo, Owner, PopView,
};
use crate::error::{Result, RuntimeError};

/// Time limit of one directory RPC.
pub const DIRECTORY_RPC_MS_MAX: u64 = 2_000;

/// How long a POP keeps trying to register at startup.
pub const REGISTER_MS_MAX: u64 = 30_000;

/// A link to the directory for one POP.
pub struct DirectoryLink {
    client: DirectoryServiceClient<Channel>,
    pop: String,
    endpoint: String,
    coords: [f64; 2],
    incarnation: AtomicU64,
    lease_ms: AtomicU64,
    heartbeat_ms: AtomicU64,
    /// When our lease ends, by our own clock (conservatively: from the time
    /// the renewing request was sent).
    lease: LeaseClock,
    cache: DashMap<String, Owner>,
}

fn status_err(what: &str, s: tonic::Status) -> RuntimeError {
    match s.code() {
        tonic::Code::InvalidArgument => {
            RuntimeError::InvalidArgument(format!("directory {what}: {}", s.message()))
        }
        tonic::Code::FailedPrecondition => RuntimeError::LeaseLost(s.message().to_string()),
        _ => RuntimeError::Transport(format!("directory {what}: {}", s.message())),
    }
}

impl DirectoryLink {
    /// Connects to the directory at `url` and registers this POP (retrying
    /// for up to [`REGISTER_MS_MAX`]). An `https://` directory needs `tls`:
    /// the cluster CA and this POP's certificate (`pop:<name>`).
    pub async fn connect(
        url: &str,
        pop: &str,
        endpoint: &str,
        coords: [f64; 2],
        tls: Option<&ClientTlsConfig>,
    ) -> Result<Arc<DirectoryLink>> {
        let channel = super::endpoint(url, tls)
            .map_err(|e| RuntimeError::InvalidArgument(format!("bad directory URL: {e}")))?
            .timeout(Duration::from_millis(DIRECTORY_RPC_MS_MAX))
            .connect_lazy();
        let link = Arc::new(DirectoryLink {
            client: DirectoryServiceClient::new(channel),
            pop: pop.to_string(),
            endpoint: endpoint.to_string(),
            coords,
            incarnation: AtomicU64::new(0),
            lease_ms: AtomicU64::new(3_000),
            heartbeat_ms: AtomicU64::new(1_000),
            lease: LeaseClock::default(),
            cache: DashMap::new(),
        });
        let started = Instant::now();
        let mut backoff = Duration::from_millis(50);
        loop {
            match Directory::register(link.as_ref()).await {
                Ok(()) => return Ok(link),
                Err(e) if started.elapsed() < Duration::from_millis(REGISTER_MS_MAX) => {
                    tracing::warn!(error = %e, "cannot register with the directory yet; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(1_000));
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn cache_owner(&self, actor: &str, owner: Owner) {
        if self.cache.len() >= LOOKUP_CACHE_ENTRIES_MAX {
            metrics::counter!("tern_lookup_cache_clears_total").increment(1);
            self.cache.clear();
        }
        self.cache.insert(actor.to_string(), owner);
    }

    /// A request with the directory RPC deadline.
    fn req<T>(msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        r.set_timeout(Duration::from_millis(DIRECTORY_RPC_MS_MAX));
        r
    }
}

#[async_trait]
impl Directory for DirectoryLink {
    fn pop(&self) -> &str {
        &self.pop
    }

    async fn register(&self) -> Result<()> {
        let sent = self.lease.now_ms();
        let r = self
            .client
            .clone()
            .register(Self::req(pb::RegisterRequest {
                name: self.pop.clone(),
                endpoint: self.endpoint.clone(),
                lat: self.coords[0],
                lon: self.coords[1],
            }))
            .await
            .map_err(|s| status_err("register", s))?
            .into_inner();
        self.incarnation.store(r.incarnation, Ordering::Release);
        self.lease_ms.store(r.lease_ms, Ordering::Release);
        self.heartbeat_ms.store(r.heartbeat_ms, Ordering::Release);
        self.lease.renewed(sent, r.lease_ms);
        self.cache.clear();
        tracing::info!(pop = %self.pop, incarnation = r.incarnation, "registered with the directory");
        Ok(())
    }

    async fn heartbeat(&self) -> Result<bool> {
        let sent = self.lease.now_ms();
        let r = self
            .client
            .clone()
            .heartbeat(Self::req(pb::HeartbeatRequest {
                name: self.pop.clone(),
                incarnation: self.incarnation.load(Ordering::Acquire),
            }))
            .await
            .map_err(|s| status_err("heartbeat", s))?
            .into_inner();
        if r.alive {
            self.lease
                .renewed(sent, self.lease_ms.load(Ordering::Acquire));
        } else {
            self.lease.lapsed();
        }
        Ok(r.alive)
    }

    fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.heartbeat_ms.load(Ordering::Acquire).max(50))
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
        let r = self
            .client
            .clone()
            .claim(Self::req(pb::ClaimRequest {
                actor: actor.to_string(),
                pop: self.pop.clone(),
                incarnation: self.incarnation.load(Ordering::Acquire),
            }))
            .await
            .map_err(|s| status_err("claim", s))?
            .into_inner();
        match r.outcome {
            Some(pb::claim_reply::Outcome::Granted(g)) => {
                self.cache_owner(
                    actor,
                    Owner {
                        pop: self.pop.clone(),
                        endpoint: self.endpoint.clone(),
                        epoch: g.epoch,
                    },
                );
                Ok(ClaimOutcome::Granted {
                    epoch: g.epoch,
                    head_seq: g.head_seq,
                })
            }
            Some(pb::claim_reply::Outcome::Held(a)) => {
                let owner = Owner {
                    pop: a.pop,
                    endpoint: a.endpoint,
                    epoch: a.epoch,
                };
                self.cache_owner(actor, owner.clone());
                Ok(ClaimOutcome::Held(owner))
            }
            None => Err(RuntimeError::Transport(
                "directory sent an empty claim reply".into(),
            )),
        }
    }

    async fn release(&self, actor: &str, epoch: u64) -> Result<()> {
        self.cache.remove(actor);
        self.client
            .clone()
            .release(Self::req(pb::ReleaseRequest {
                actor: actor.to_string(),
                epoch,
            }))
            .await
            .map_err(|s| status_err("release", s))?;
        Ok(())
    }

    async fn lookup(&self, actor: &str, fresh: bool) -> Result<Option<Owner>> {
        if !fresh && let Some(o) = self.cache.get(actor) {
            return Ok(Some(o.clone()));
        }
        let r = self
            .client
            .clone()
            .lookup(Self::req(pb::LookupRequest {
                actor: actor.to_string(),
            }))
            .await
            .map_err(|s| status_err("lookup", s))?
            .into_inner();
        let owner = r.active.map(|a| Owner {
            pop: a.pop,
            endpoint: a.endpoint,
            epoch: a.epoch,
        });
        match &owner {
            Some(o) => self.cache_owner(actor, o.clone()),
            None => {
                self.cache.remove(actor);
            }
        }
        Ok(owner)
    }

    fn invalidate(&self, actor: &str) {
        self.cache.remove(actor);
    }

    async fn record_migration(&self, m: MigrationInfo) -> Result<()> {
        self.client
            .clone()
            .record_migration(Self::req(pb::Migration {
                actor: m.actor,
                from_pop: m.from_pop,
                to_pop: m.to_pop,
                at_ms: m.at_ms,
                duration_ms: m.duration_ms,
                reason: m.reason,
            }))
            .await
            .map_err(|s| status_err("record migration", s))?;
        Ok(())
    }

    async fn cluster_view(&self) -> Result<ClusterView> {
        let mut c = self.client.clone();
        let pops = c
            .list_pops(Self::req(pb::ListPopsRequest {}))
            .await
            .map_err(|s| status_err("list pops", s))?
            .into_inner()
            .pops;
        let acts = c
            .list_activations(Self::req(pb::ListActivationsRequest { pop: String::new() }))
            .await
            .map_err(|s| status_err("list activations", s))?
            .into_inner()
            .activations;
        let migs = c
            .list_migrations(Self::req(pb::ListMigrationsRequest {
                limit: CLUSTER_VIEW_MIGRATIONS as u32,
            }))
            .await
            .map_err(|s| status_err("list migrations", s))?
            .into_inner()
            .migrations;
        Ok(ClusterView {
            pops: pops
                .into_iter()
                .map(|p| PopView {
                    name: p.name,
                    endpoint: p.endpoint,
                    alive: p.alive,
                    lease_age_ms: p.lease_age_ms,
                    lat: p.lat,
                    lon: p.lon,
                })
                .collect(),
            activations: acts
                .into_iter()
                .filter(|a| a.pop_alive)
                .map(|a| ActivationView {
                    actor: a.actor,
                    pop: a.pop,
                    epoch: a.epoch,
                })
                .collect(),
            migrations: migs
                .into_iter()
                .map(|m| MigrationInfo {
                    actor: m.actor,
                    from_pop: m.from_pop,
                    to_pop: m.to_pop,
                    at_ms: m.at_ms,
                    duration_ms: m.duration_ms,
                    reason: m.reason,
                })
                .collect(),
        })
    }
}

impl DirectoryLink {
    /// Follows the directory's change stream, dropping cached lookups that
    /// changed; reconnects (clearing the cache) when the stream ends.
    pub fn spawn_watch(self: &Arc<Self>) {
        let link = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let Some(l) = link.upgrade() else { return };
                let stream = l.client.clone().watch(pb::WatchRequest {}).await;
                match stream {
                    Ok(s) => {
                        let mut s = s.into_inner();
                        l.cache.clear();
                        while let Ok(Some(change)) = s.message().await {
                            if change.pop.is_empty() || change.pop != l.pop {
                                l.cache.remove(&change.actor);
                            }
                        }
                        l.cache.clear();
                    }
                    Err(e) => tracing::debug!(error = %e, "directory watch unavailable"),
                }
                drop(l);
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
    }
}
