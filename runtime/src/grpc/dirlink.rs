//! The POP's link to the DirectoryService over gRPC: registration, the
//! lease, claims, lookups with a bounded cache invalidated by the
//! directories' watch streams, and migration records. It implements the
//! [`Directory`] seam.
//!
//! A cluster may run several directory processes over one store; every
//! one of them decides alike (each decision is one store transaction). The
//! link knows them all and sends each request to the one that answered
//! last; when that one fails (refuses the connection, or gives no answer
//! within an attempt's deadline, a third of the lease, connecting
//! included) it tries the next at once, so a lease is renewed through any
//! live directory well before it ends. A claim carries a token of its own,
//! so sent again elsewhere it gets the same grant, never a second epoch. A
//! registration that got no answer in time is the exception: it may still
//! be applied there (a second one elsewhere would supersede the first's
//! incarnation), so the link returns UNAVAILABLE and sends the next one,
//! the POP's retry, to the next directory. It follows the watch stream of
//! every directory, since each announces only the changes decided through
//! it.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
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

/// Longest time one directory RPC attempt may take at one directory
/// process; the attempt deadline is a third of the lease, at most this.
pub const DIRECTORY_RPC_MS_MAX: u64 = 2_000;

/// Shortest attempt deadline, ms (a very short lease still leaves a
/// directory this long to answer).
pub const DIRECTORY_ATTEMPT_MS_MIN: u64 = 100;

/// How long a POP keeps trying to register at startup.
pub const REGISTER_MS_MAX: u64 = 30_000;

/// Most directory endpoints a POP takes.
pub const DIRECTORIES_MAX: usize = 16;

/// One directory process.
struct Dir {
    url: String,
    client: DirectoryServiceClient<Channel>,
}

/// A link to the cluster's directories for one POP.
pub struct DirectoryLink {
    dirs: Vec<Dir>,
    /// The directory that answered last (requests go there first).
    preferred: AtomicUsize,
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

/// Whether a failed request should be tried at another directory: the
/// process is unreachable, gave no answer in time, or could not decide
/// (its store is unavailable to it). A decision (a refusal, an invalid
/// request, a lease that lapsed) is the same at every directory.
fn fails_over(s: &tonic::Status) -> bool {
    use tonic::Code::*;
    matches!(
        s.code(),
        Unavailable | DeadlineExceeded | Cancelled | Unknown | Internal | ResourceExhausted
    )
}

/// A status with its causes (a transport error's detail, such as
/// "Connection refused", is in its source chain).
fn status_text(s: &tonic::Status) -> String {
    let mut out = format!("{:?}: {}", s.code(), s.message());
    let mut src = std::error::Error::source(s);
    while let Some(e) = src {
        let text = e.to_string();
        if !out.contains(&text) {
            out.push_str(&format!(": {text}"));
        }
        src = e.source();
    }
    out
}

impl DirectoryLink {
    /// Connects to the directories at `urls` (one or several processes of
    /// one cluster) and registers this POP through whichever answers
    /// (retrying for up to [`REGISTER_MS_MAX`]). An `https://` directory
    /// needs `tls`: the cluster CA and this POP's certificate
    /// (`pop:<name>`).
    pub async fn connect(
        urls: &[String],
        pop: &str,
        endpoint: &str,
        coords: [f64; 2],
        tls: Option<&ClientTlsConfig>,
    ) -> Result<Arc<DirectoryLink>> {
        if urls.is_empty() || urls.len() > DIRECTORIES_MAX {
            return Err(RuntimeError::InvalidArgument(format!(
                "a POP needs between 1 and {DIRECTORIES_MAX} directory endpoints, got {}",
                urls.len()
            )));
        }
        let mut dirs = Vec::with_capacity(urls.len());
        for url in urls {
            let channel = super::endpoint(url, tls)
                .map_err(|e| {
                    RuntimeError::InvalidArgument(format!("bad directory URL {url}: {e}"))
                })?
                .timeout(Duration::from_millis(DIRECTORY_RPC_MS_MAX))
                .connect_timeout(Duration::from_millis(DIRECTORY_RPC_MS_MAX))
                .connect_lazy();
            dirs.push(Dir {
                url: url.clone(),
                client: DirectoryServiceClient::new(channel),
            });
        }
        let link = Arc::new(DirectoryLink {
            dirs,
            preferred: AtomicUsize::new(0),
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
                    tracing::warn!(error = %e, "cannot register with a directory yet; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(1_000));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The directory endpoints this link uses.
    pub fn directories(&self) -> Vec<String> {
        self.dirs.iter().map(|d| d.url.clone()).collect()
    }

    fn cache_owner(&self, actor: &str, owner: Owner) {
        if self.cache.len() >= LOOKUP_CACHE_ENTRIES_MAX {
            metrics::counter!("tern_lookup_cache_clears_total").increment(1);
            self.cache.clear();
        }
        self.cache.insert(actor.to_string(), owner);
    }

    /// The deadline of one attempt at one directory: a third of the lease,
    /// so a renewal that finds its directory silent still has time to go
    /// through another before the lease ends.
    fn attempt(&self) -> Duration {
        let ms = (self.lease_ms.load(Ordering::Acquire) / 3)
            .clamp(DIRECTORY_ATTEMPT_MS_MIN, DIRECTORY_RPC_MS_MAX);
        Duration::from_millis(ms)
    }

    /// Sends a request (`send(client, request deadline)`) to the directory
    /// that answered last, and on a failure that another directory might
    /// not have, to each other one in turn (each attempt bounded by
    /// [`DirectoryLink::attempt`], connecting included). `idempotent`:
    /// whether a request that got no answer in time may be sent elsewhere
    /// at once. Fails with UNAVAILABLE naming every directory tried and
    /// why, once none answered.
    async fn call<T, F, Fut>(&self, what: &str, idempotent: bool, send: F) -> Result<T>
    where
        F: Fn(DirectoryServiceClient<Channel>, Duration) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    {
        let n = self.dirs.len();
        let first = self.preferred.load(Ordering::Relaxed) % n;
        let mut failures = Vec::new();
        for k in 0..n {
            let i = (first + k) % n;
            let d = &self.dirs[i];
            let within = self.attempt();
            let answer = tokio::time::timeout(within, send(d.client.clone(), within))
                .await
                .unwrap_or_else(|_| {
                    Err(tonic::Status::deadline_exceeded(format!(
                        "no answer within {} ms",
                        within.as_millis()
                    )))
                });
            match answer {
                Err(s) if !idempotent && s.code() == tonic::Code::DeadlineExceeded => {
                    metrics::counter!("tern_directory_failovers_total").increment(1);
                    self.preferred.store((i + 1) % n, Ordering::Relaxed);
                    failures.push(format!("{}: {}", d.url, status_text(&s)));
                    return Err(RuntimeError::Transport(format!(
                        "directory {what}: {}; not sent to another directory at once, since it may still be applied there (retry: the next attempt goes to the next directory)",
                        failures.join("; ")
                    )));
                }
                Ok(r) => {
                    if k > 0 {
                        self.preferred.store(i, Ordering::Relaxed);
                        tracing::info!(pop = %self.pop, directory = %d.url, failed = ?failures, "switched to another directory");
                    }
                    return Ok(r.into_inner());
                }
                Err(s) if fails_over(&s) => {
                    metrics::counter!("tern_directory_failovers_total").increment(1);
                    failures.push(format!("{}: {}", d.url, status_text(&s)));
                }
                Err(s) => return Err(status_err(what, s)),
            }
        }
        // Start with the next one next time.
        self.preferred.store((first + 1) % n, Ordering::Relaxed);
        Err(RuntimeError::Transport(format!(
            "directory {what}: no directory answered ({} tried: {})",
            n,
            failures.join("; ")
        )))
    }

    /// A request with deadline `within`.
    fn req<T>(msg: T, within: Duration) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        r.set_timeout(within);
        super::inject_trace(r.metadata_mut());
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
        let msg = pb::RegisterRequest {
            name: self.pop.clone(),
            endpoint: self.endpoint.clone(),
            lat: self.coords[0],
            lon: self.coords[1],
        };
        let r = self
            .call("register", false, |mut c, t| {
                let m = msg.clone();
                async move { c.register(Self::req(m, t)).await }
            })
            .await?;
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
        let msg = pb::HeartbeatRequest {
            name: self.pop.clone(),
            incarnation: self.incarnation.load(Ordering::Acquire),
        };
        let r = self
            .call("heartbeat", true, |mut c, t| {
                let m = msg.clone();
                async move { c.heartbeat(Self::req(m, t)).await }
            })
            .await?;
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
        let msg = pb::ClaimRequest {
            actor: actor.to_string(),
            pop: self.pop.clone(),
            incarnation: self.incarnation.load(Ordering::Acquire),
            // Names this claim, so a copy sent to another directory after
            // no answer gets the same grant (never 0: 0 is "none").
            request_token: rand::random::<u64>().max(1),
        };
        let r = self
            .call("claim", true, |mut c, t| {
                let m = msg.clone();
                async move { c.claim(Self::req(m, t)).await }
            })
            .await?;
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
        let msg = pb::ReleaseRequest {
            actor: actor.to_string(),
            epoch,
        };
        self.call("release", true, |mut c, t| {
            let m = msg.clone();
            async move { c.release(Self::req(m, t)).await }
        })
        .await?;
        Ok(())
    }

    async fn lookup(&self, actor: &str, fresh: bool) -> Result<Option<Owner>> {
        if !fresh && let Some(o) = self.cache.get(actor) {
            return Ok(Some(o.clone()));
        }
        let msg = pb::LookupRequest {
            actor: actor.to_string(),
        };
        let r = self
            .call("lookup", true, |mut c, t| {
                let m = msg.clone();
                async move { c.lookup(Self::req(m, t)).await }
            })
            .await?;
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
        let msg = pb::Migration {
            actor: m.actor,
            from_pop: m.from_pop,
            to_pop: m.to_pop,
            at_ms: m.at_ms,
            duration_ms: m.duration_ms,
            reason: m.reason,
        };
        self.call("record migration", true, |mut c, t| {
            let m = msg.clone();
            async move { c.record_migration(Self::req(m, t)).await }
        })
        .await?;
        Ok(())
    }

    async fn live_pops(&self) -> Result<Vec<String>> {
        let pops = self
            .call("list pops", true, |mut c, t| async move {
                c.list_pops(Self::req(pb::ListPopsRequest {}, t)).await
            })
            .await?
            .pops;
        Ok(pops
            .into_iter()
            .filter(|p| p.alive)
            .map(|p| p.name)
            .collect())
    }

    async fn cluster_view(&self) -> Result<ClusterView> {
        let pops = self
            .call("list pops", true, |mut c, t| async move {
                c.list_pops(Self::req(pb::ListPopsRequest {}, t)).await
            })
            .await?
            .pops;
        let acts = self
            .call("list activations", true, |mut c, t| async move {
                c.list_activations(Self::req(
                    pb::ListActivationsRequest { pop: String::new() },
                    t,
                ))
                .await
            })
            .await?
            .activations;
        let migs = self
            .call("list migrations", true, |mut c, t| async move {
                c.list_migrations(Self::req(
                    pb::ListMigrationsRequest {
                        limit: CLUSTER_VIEW_MIGRATIONS as u32,
                    },
                    t,
                ))
                .await
            })
            .await?
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
    /// Follows every directory's change stream (each announces the
    /// changes decided through it), dropping cached lookups that changed.
    /// A stream that ends is reconnected; the cache is cleared whenever a
    /// stream starts, since changes may have been missed meanwhile. (A
    /// stale entry costs a hop, never a wrong answer: a POP runs a
    /// forwarded call only for an actor it holds.)
    pub fn spawn_watch(self: &Arc<Self>) {
        for i in 0..self.dirs.len() {
            let link = Arc::downgrade(self);
            tokio::spawn(async move {
                loop {
                    let Some(l) = link.upgrade() else { return };
                    let stream = l.dirs[i].client.clone().watch(pb::WatchRequest {}).await;
                    match stream {
                        Ok(s) => {
                            let mut s = s.into_inner();
                            l.cache.clear();
                            while let Ok(Some(change)) = s.message().await {
                                if change.pop.is_empty() || change.pop != l.pop {
                                    l.cache.remove(&change.actor);
                                }
                            }
                        }
                        Err(e) => {
                            tracing::debug!(directory = %l.dirs[i].url, error = %e, "directory watch unavailable")
                        }
                    }
                    drop(l);
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            });
        }
    }
}
