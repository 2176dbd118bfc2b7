//! The POP's link to the DirectoryService: registration, the lease, claims,
//! lookups with a cache invalidated by the directory's watch stream, and
//! migration records.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use parking_lot::Mutex;
use tern_proto::directory as pb;
use tern_proto::directory::directory_service_client::DirectoryServiceClient;
use tonic::transport::Channel;

use crate::error::{Result, RuntimeError};

/// Time limit of one directory RPC.
pub const DIRECTORY_RPC_MS_MAX: u64 = 2_000;

/// How long a POP keeps trying to register at startup.
pub const REGISTER_MS_MAX: u64 = 30_000;

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
#[derive(Debug, Clone)]
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
    lease_deadline: Mutex<Option<Instant>>,
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
    /// for up to [`REGISTER_MS_MAX`]).
    pub async fn connect(
        url: &str,
        pop: &str,
        endpoint: &str,
        coords: [f64; 2],
    ) -> Result<Arc<DirectoryLink>> {
        let channel = Channel::from_shared(url.to_string())
            .map_err(|e| RuntimeError::InvalidArgument(format!("bad directory URL `{url}`: {e}")))?
            .timeout(Duration::from_millis(DIRECTORY_RPC_MS_MAX))
            .connect_timeout(Duration::from_millis(DIRECTORY_RPC_MS_MAX))
            .connect_lazy();
        let link = Arc::new(DirectoryLink {
            client: DirectoryServiceClient::new(channel),
            pop: pop.to_string(),
            endpoint: endpoint.to_string(),
            coords,
            incarnation: AtomicU64::new(0),
            lease_ms: AtomicU64::new(3_000),
            heartbeat_ms: AtomicU64::new(1_000),
            lease_deadline: Mutex::new(None),
            cache: DashMap::new(),
        });
        let started = Instant::now();
        let mut backoff = Duration::from_millis(50);
        loop {
            match link.register().await {
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

    /// Registers (again): a new incarnation; earlier activations are void.
    pub async fn register(&self) -> Result<()> {
        let sent = Instant::now();
        let r = self
            .client
            .clone()
            .register(pb::RegisterRequest {
                name: self.pop.clone(),
                endpoint: self.endpoint.clone(),
                lat: self.coords[0],
                lon: self.coords[1],
            })
            .await
            .map_err(|s| status_err("register", s))?
            .into_inner();
        self.incarnation.store(r.incarnation, Ordering::Release);
        self.lease_ms.store(r.lease_ms, Ordering::Release);
        self.heartbeat_ms.store(r.heartbeat_ms, Ordering::Release);
        *self.lease_deadline.lock() = Some(sent + Duration::from_millis(r.lease_ms));
        self.cache.clear();
        tracing::info!(pop = %self.pop, incarnation = r.incarnation, "registered with the directory");
        Ok(())
    }

    /// Whether our lease is current by our own clock.
    pub fn lease_ok(&self) -> bool {
        self.lease_deadline
            .lock()
            .is_some_and(|d| Instant::now() < d)
    }

    /// Renews the lease. `Ok(false)`: it had lapsed (re-register).
    pub async fn heartbeat(&self) -> Result<bool> {
        let sent = Instant::now();
        let r = self
            .client
            .clone()
            .heartbeat(pb::HeartbeatRequest {
                name: self.pop.clone(),
                incarnation: self.incarnation.load(Ordering::Acquire),
            })
            .await
            .map_err(|s| status_err("heartbeat", s))?
            .into_inner();
        if r.alive {
            *self.lease_deadline.lock() =
                Some(sent + Duration::from_millis(self.lease_ms.load(Ordering::Acquire)));
        } else {
            *self.lease_deadline.lock() = None;
        }
        Ok(r.alive)
    }

    /// The heartbeat interval the directory asked for.
    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.heartbeat_ms.load(Ordering::Acquire).max(50))
    }

    /// Claims `actor` for this POP.
    pub async fn claim(&self, actor: &str) -> Result<ClaimOutcome> {
        if !self.lease_ok() {
            return Err(RuntimeError::LeaseLost(format!(
                "POP {} has no current lease; it cannot take actors",
                self.pop
            )));
        }
        let r = self
            .client
            .clone()
            .claim(pb::ClaimRequest {
                actor: actor.to_string(),
                pop: self.pop.clone(),
                incarnation: self.incarnation.load(Ordering::Acquire),
            })
            .await
            .map_err(|s| status_err("claim", s))?
            .into_inner();
        match r.outcome {
            Some(pb::claim_reply::Outcome::Granted(g)) => {
                self.cache.insert(
                    actor.to_string(),
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
                self.cache.insert(actor.to_string(), owner.clone());
                Ok(ClaimOutcome::Held(owner))
            }
            None => Err(RuntimeError::Transport(
                "directory sent an empty claim reply".into(),
            )),
        }
    }

    /// Releases `actor` at `epoch`.
    pub async fn release(&self, actor: &str, epoch: u64) -> Result<()> {
        self.cache.remove(actor);
        self.client
            .clone()
            .release(pb::ReleaseRequest {
                actor: actor.to_string(),
                epoch,
            })
            .await
            .map_err(|s| status_err("release", s))?;
        Ok(())
    }

    /// Where `actor` is active: from the cache unless `fresh`.
    pub async fn lookup(&self, actor: &str, fresh: bool) -> Result<Option<Owner>> {
        if !fresh && let Some(o) = self.cache.get(actor) {
            return Ok(Some(o.clone()));
        }
        let r = self
            .client
            .clone()
            .lookup(pb::LookupRequest {
                actor: actor.to_string(),
            })
            .await
            .map_err(|s| status_err("lookup", s))?
            .into_inner();
        let owner = r.active.map(|a| Owner {
            pop: a.pop,
            endpoint: a.endpoint,
            epoch: a.epoch,
        });
        match &owner {
            Some(o) => {
                self.cache.insert(actor.to_string(), o.clone());
            }
            None => {
                self.cache.remove(actor);
            }
        }
        Ok(owner)
    }

    /// Drops a cached lookup.
    pub fn invalidate(&self, actor: &str) {
        self.cache.remove(actor);
    }

    /// Records a migration.
    pub async fn record_migration(&self, m: pb::Migration) -> Result<()> {
        self.client
            .clone()
            .record_migration(m)
            .await
            .map_err(|s| status_err("record migration", s))?;
        Ok(())
    }

    /// POPs, activations and recent migrations, for `status`.
    pub async fn cluster_view(
        &self,
    ) -> Result<(Vec<pb::Pop>, Vec<pb::Activation>, Vec<pb::Migration>)> {
        let mut c = self.client.clone();
        let pops = c
            .list_pops(pb::ListPopsRequest {})
            .await
            .map_err(|s| status_err("list pops", s))?
            .into_inner()
            .pops;
        let acts = c
            .list_activations(pb::ListActivationsRequest { pop: String::new() })
            .await
            .map_err(|s| status_err("list activations", s))?
            .into_inner()
            .activations;
        let migs = c
            .list_migrations(pb::ListMigrationsRequest { limit: 50 })
            .await
            .map_err(|s| status_err("list migrations", s))?
            .into_inner()
            .migrations;
        Ok((pops, acts, migs))
    }

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
