//! The gRPC `DirectoryService` (`tern directory`): a thin tonic edge over
//! [`Core`], which makes every decision.
//!
//! This module validates nothing itself and decides nothing: it converts
//! wire types, runs each [`Core`] call on a blocking thread (storage calls
//! are synchronous) under a per-request deadline, maps [`DirectoryError`]
//! to gRPC codes ([`grpc_code`]), streams the core's changes to `Watch`
//! subscribers, and drives [`Core::sweep`] every heartbeat period.
//!
//! Deadlines: tonic's `Server::timeout` (and the client's `grpc-timeout`
//! header, which tonic's server always honours, taking the shorter of the
//! two) bounds a request only until its response headers are returned; the
//! body of a streaming response is not timed (tonic 0.14.9,
//! `transport/service/grpc_timeout.rs`). So a long-lived `Watch` stream is
//! not cut by it, while every unary call is bounded.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use tern_proto::directory as pb;
use tern_proto::directory::directory_service_server::{DirectoryService, DirectoryServiceServer};
use tern_proto::tls::{ClientCerts, Tls, peer_name, peer_pop};
use tern_storage::{MigrationRecord, StorageError, Store};
use tokio::sync::{broadcast, watch};
use tonic::{Code, Request, Response, Status};

use crate::DirectoryError;
use crate::core::{ClaimOutcome, Core, Holder, WATCH_BUFFER_CHANGES_MAX};

pub use crate::core::DirectoryConfig;

/// Migrations `ListMigrations` returns when the request gives no limit.
pub const MIGRATIONS_LIST_DEFAULT: usize = 100;
/// The longest a unary request may take, in ms, before it fails with
/// `DEADLINE_EXCEEDED` (a client's shorter `grpc-timeout` wins).
pub const DIRECTORY_REQUEST_MS_MAX: u64 = 5_000;
/// Slack of the server-wide backstop deadline over
/// [`DIRECTORY_REQUEST_MS_MAX`], in ms: the handler's own deadline fires
/// first and answers `DEADLINE_EXCEEDED`; the backstop (tonic's
/// `Server::timeout`, answered `CANCELLED`) covers anything outside it.
pub const DIRECTORY_DEADLINE_BACKSTOP_SLACK_MS: u64 = 1_000;
/// Interval of HTTP/2 keepalive pings to each client, in ms.
pub const HTTP2_KEEPALIVE_INTERVAL_MS: u64 = 10_000;
/// How long a keepalive ping may go unanswered before the connection is
/// closed, in ms.
pub const HTTP2_KEEPALIVE_TIMEOUT_MS: u64 = 5_000;
/// Requests in flight per connection; more wait for a slot.
pub const REQUESTS_PER_CONNECTION_MAX: usize = 256;
/// Concurrent HTTP/2 streams per connection (open `Watch` streams count).
pub const STREAMS_PER_CONNECTION_MAX: u32 = 512;
/// Largest request message accepted, in bytes.
pub const REQUEST_BYTES_MAX: usize = 64 * 1024;
/// Largest reply message sent, in bytes (a listing past it fails with
/// `RESOURCE_EXHAUSTED` rather than sending without bound).
pub const REPLY_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Shortest lease sweep period, in ms, whatever `heartbeat_ms` says.
const SWEEP_PERIOD_MS_MIN: u64 = 10;

/// The gRPC code of an error, by what the caller should do next.
pub fn grpc_code(e: &DirectoryError) -> Code {
    match e {
        DirectoryError::Overloaded { .. } => Code::ResourceExhausted,
        DirectoryError::Deadline { .. } => Code::DeadlineExceeded,
        e if e.is_retryable() => Code::Unavailable,
        DirectoryError::LeaseLapsed { .. }
        | DirectoryError::UnknownPop { .. }
        | DirectoryError::Fenced { .. }
        | DirectoryError::HeldElsewhere { .. } => Code::FailedPrecondition,
        DirectoryError::Storage(StorageError::Fenced { .. }) => Code::FailedPrecondition,
        DirectoryError::PermissionDenied(_) => Code::PermissionDenied,
        DirectoryError::InvalidArgument(_)
        | DirectoryError::Storage(StorageError::InvalidArgument(_)) => Code::InvalidArgument,
        _ => Code::Internal,
    }
}

impl From<DirectoryError> for Status {
    fn from(e: DirectoryError) -> Status {
        Status::new(grpc_code(&e), e.to_string())
    }
}

/// The directory service over `dir`, with its message size limits, ready
/// to add to a tonic server. Call [`GrpcDirectory::close`] at shutdown to
/// end its watch streams.
pub fn service(dir: GrpcDirectory) -> DirectoryServiceServer<GrpcDirectory> {
    DirectoryServiceServer::new(dir)
        .max_decoding_message_size(REQUEST_BYTES_MAX)
        .max_encoding_message_size(REPLY_BYTES_MAX)
}

/// Serves a directory over `store` on `listener` until `shutdown`
/// completes. See [`serve_core`].
pub async fn serve(
    listener: tokio::net::TcpListener,
    store: Store,
    cfg: DirectoryConfig,
    tls: Option<Tls>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DirectoryError> {
    serve_core(listener, Arc::new(Core::new(store, cfg)), tls, shutdown).await
}

/// Serves `core` on `listener` until `shutdown` completes, sweeping leases
/// every heartbeat period. At shutdown, open watch streams end
/// (subscribers reconnect elsewhere or later) and in-flight requests
/// finish.
///
/// With `tls`, every connection must present a certificate signed by the
/// cluster CA (mTLS), and a POP acts only as the name in its certificate.
/// Without it, anyone who reaches the port is trusted: loopback only.
pub async fn serve_core(
    listener: tokio::net::TcpListener,
    core: Arc<Core>,
    tls: Option<Tls>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DirectoryError> {
    let dir = GrpcDirectory::new(core.clone()).authenticated(tls.is_some());
    let addr = listener.local_addr().ok();
    tracing::info!(
        ?addr,
        lease_ms = core.config().lease_ms,
        mtls = tls.is_some(),
        "directory serving"
    );
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = &tls {
        builder = builder
            .tls_config(tls.server(ClientCerts::Required))
            .map_err(|e| DirectoryError::Server(format!("TLS settings: {e}")))?;
    }
    let sweeper = tokio::spawn(sweep_loop(core.clone()));
    let incoming = tern_proto::incoming(listener);
    // A directory answers while it runs: its state is all in the store.
    let (reporter, health, reflection) = tern_proto::health_and_reflection();
    for name in [
        "",
        tern_proto::directory::directory_service_server::SERVICE_NAME,
    ] {
        reporter
            .set_service_status(name, tonic_health::ServingStatus::Serving)
            .await;
    }
    let closer = dir.clone();
    let res = builder
        .timeout(Duration::from_millis(
            DIRECTORY_REQUEST_MS_MAX + DIRECTORY_DEADLINE_BACKSTOP_SLACK_MS,
        ))
        .http2_keepalive_interval(Some(Duration::from_millis(HTTP2_KEEPALIVE_INTERVAL_MS)))
        .http2_keepalive_timeout(Some(Duration::from_millis(HTTP2_KEEPALIVE_TIMEOUT_MS)))
        .concurrency_limit_per_connection(REQUESTS_PER_CONNECTION_MAX)
        .max_concurrent_streams(STREAMS_PER_CONNECTION_MAX)
        .add_service(service(dir.clone()))
        .add_service(health)
        .add_service(reflection)
        .serve_with_incoming_shutdown(incoming, async move {
            shutdown.await;
            closer.close();
        })
        .await;
    sweeper.abort();
    dir.close();
    tracing::info!(?addr, "directory stopped");
    res.map_err(|e| DirectoryError::Server(format!("serving on {addr:?}: {e}")))
}

/// Every heartbeat period, runs the core's lease sweep.
async fn sweep_loop(core: Arc<Core>) {
    let period = Duration::from_millis(core.config().heartbeat_ms.max(SWEEP_PERIOD_MS_MIN));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let c = core.clone();
        match tokio::task::spawn_blocking(move || c.sweep()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "lease sweep failed"),
            Err(e) => tracing::warn!(error = %e, "lease sweep task failed"),
        }
    }
}

// -------------------------------------------------------------- tonic edge

/// The tonic implementation of `DirectoryService`.
#[derive(Clone)]
pub struct GrpcDirectory {
    core: Arc<Core>,
    closing: Arc<watch::Sender<bool>>,
    request_timeout: Duration,
    authenticated: bool,
}

impl GrpcDirectory {
    /// The edge over `core`, with the [`DIRECTORY_REQUEST_MS_MAX`] deadline.
    pub fn new(core: Arc<Core>) -> GrpcDirectory {
        GrpcDirectory {
            core,
            closing: Arc::new(watch::channel(false).0),
            request_timeout: Duration::from_millis(DIRECTORY_REQUEST_MS_MAX),
            authenticated: false,
        }
    }

    /// Whether peers are authenticated by mTLS: then each request acts
    /// only as the POP named in its peer's certificate.
    pub fn authenticated(mut self, on: bool) -> GrpcDirectory {
        self.authenticated = on;
        self
    }

    /// The POP the request's peer may act as: `None` when authentication
    /// is off (anyone may act as anyone), else the name in its verified
    /// certificate, or PERMISSION_DENIED for a certificate that is not a
    /// POP's.
    fn acting_pop<T>(&self, req: &Request<T>) -> Result<Option<String>, Status> {
        if !self.authenticated {
            return Ok(None);
        }
        match peer_pop(req) {
            Some(p) => Ok(Some(p)),
            None => Err(DirectoryError::PermissionDenied(format!(
                "only POPs may use the directory; this peer's certificate names `{}`",
                peer_name(req).unwrap_or_else(|| "nobody".into())
            ))
            .into()),
        }
    }

    /// PERMISSION_DENIED unless `acting` (from [`Self::acting_pop`]) may
    /// act as POP `name` for `what`.
    fn must_be(acting: &Option<String>, name: &str, what: &str) -> Result<(), Status> {
        match acting {
            Some(me) if me != name => Err(DirectoryError::PermissionDenied(format!(
                "POP `{me}` cannot {what} as POP `{name}`; a POP acts only under the name in its certificate"
            ))
            .into()),
            _ => Ok(()),
        }
    }

    /// The same edge with another per-request deadline (tests).
    pub fn with_request_timeout(mut self, timeout: Duration) -> GrpcDirectory {
        self.request_timeout = timeout;
        self
    }

    /// The decision core.
    pub fn core(&self) -> &Arc<Core> {
        &self.core
    }

    /// Ends every open watch stream (at shutdown); new ones end at once.
    pub fn close(&self) {
        self.closing.send_replace(true);
    }

    /// Runs `f` on a blocking thread, within the per-request deadline. At
    /// the deadline the caller gets `DEADLINE_EXCEEDED`; the blocking call
    /// itself cannot be cancelled and finishes on its own.
    /// A span for handling `req`, joined to the caller's trace.
    fn traced<T>(req: &Request<T>, name: &'static str, actor: &str) -> tracing::Span {
        use tracing_opentelemetry::OpenTelemetrySpanExt;
        let span = tracing::debug_span!("directory", op = name, actor = %actor);
        // (An error only means no trace layer records spans here.)
        let _ = span.set_parent(tern_proto::trace::extract(req.metadata()));
        span
    }

    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Core) -> Result<T, DirectoryError> + Send + 'static,
    ) -> Result<T, Status> {
        let core = self.core.clone();
        let task = tokio::task::spawn_blocking(move || f(&core));
        match tokio::time::timeout(self.request_timeout, task).await {
            Ok(joined) => joined
                .map_err(|e| DirectoryError::Server(format!("blocking task failed: {e}")))?
                .map_err(Status::from),
            Err(_) => Err(DirectoryError::Deadline {
                ms: self.request_timeout.as_millis() as u64,
            }
            .into()),
        }
    }
}

fn to_pb(h: Holder) -> pb::Activation {
    pb::Activation {
        actor: h.actor,
        pop: h.pop,
        endpoint: h.endpoint,
        epoch: h.epoch,
        pop_alive: h.pop_alive,
    }
}

/// The stream type of `Watch`.
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::ActivationChange, Status>> + Send>>;

#[tonic::async_trait]
impl DirectoryService for GrpcDirectory {
    async fn register(
        &self,
        req: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterReply>, Status> {
        let acting = self.acting_pop(&req)?;
        let r = req.into_inner();
        Self::must_be(&acting, &r.name, "register")?;
        let reg = self
            .run(move |c| c.register(&r.name, &r.endpoint, (r.lat, r.lon)))
            .await?;
        Ok(Response::new(pb::RegisterReply {
            incarnation: reg.incarnation,
            lease_ms: self.core.config().lease_ms,
            heartbeat_ms: self.core.config().heartbeat_ms,
            lease_until_ms: reg.lease_until_ms,
        }))
    }

    async fn heartbeat(
        &self,
        req: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatReply>, Status> {
        let acting = self.acting_pop(&req)?;
        let r = req.into_inner();
        Self::must_be(&acting, &r.name, "renew a lease")?;
        let (alive, lease_until_ms) = self
            .run(move |c| c.heartbeat(&r.name, r.incarnation))
            .await?;
        Ok(Response::new(pb::HeartbeatReply {
            alive,
            lease_until_ms,
        }))
    }

    async fn lookup(
        &self,
        req: Request<pb::LookupRequest>,
    ) -> Result<Response<pb::LookupReply>, Status> {
        self.acting_pop(&req)?;
        let span = Self::traced(&req, "lookup", &req.get_ref().actor);
        let r = req.into_inner();
        let h =
            tracing::Instrument::instrument(self.run(move |c| c.lookup(&r.actor)), span).await?;
        Ok(Response::new(pb::LookupReply {
            active: h.map(to_pb),
        }))
    }

    async fn claim(
        &self,
        req: Request<pb::ClaimRequest>,
    ) -> Result<Response<pb::ClaimReply>, Status> {
        use pb::claim_reply::Outcome;
        let acting = self.acting_pop(&req)?;
        let span = Self::traced(&req, "claim", &req.get_ref().actor);
        let r = req.into_inner();
        Self::must_be(&acting, &r.pop, "claim")?;
        let out = tracing::Instrument::instrument(
            self.run(move |c| c.claim_once(&r.actor, &r.pop, r.incarnation, r.request_token)),
            span,
        )
        .await?;
        let outcome = match out {
            ClaimOutcome::Granted { epoch, head_seq } => {
                Outcome::Granted(pb::Granted { epoch, head_seq })
            }
            ClaimOutcome::Held(h) => Outcome::Held(to_pb(h)),
        };
        Ok(Response::new(pb::ClaimReply {
            outcome: Some(outcome),
        }))
    }

    async fn release(
        &self,
        req: Request<pb::ReleaseRequest>,
    ) -> Result<Response<pb::ReleaseReply>, Status> {
        let acting = self.acting_pop(&req)?;
        let r = req.into_inner();
        self.run(move |c| match acting {
            Some(pop) => c.release_held_by(&r.actor, r.epoch, &pop),
            None => c.release(&r.actor, r.epoch),
        })
        .await?;
        Ok(Response::new(pb::ReleaseReply {}))
    }

    async fn list_activations(
        &self,
        req: Request<pb::ListActivationsRequest>,
    ) -> Result<Response<pb::ListActivationsReply>, Status> {
        self.acting_pop(&req)?;
        let r = req.into_inner();
        let list = self
            .run(move |c| c.list_activations(Some(r.pop.as_str()).filter(|p| !p.is_empty())))
            .await?;
        Ok(Response::new(pb::ListActivationsReply {
            activations: list.into_iter().map(to_pb).collect(),
        }))
    }

    async fn list_pops(
        &self,
        req: Request<pb::ListPopsRequest>,
    ) -> Result<Response<pb::ListPopsReply>, Status> {
        self.acting_pop(&req)?;
        let (pops, now) = self.run(|c| c.list_pops()).await?;
        let lease_ms = self.core.config().lease_ms;
        let pops = pops
            .into_iter()
            .map(|(name, p)| pb::Pop {
                name,
                endpoint: p.addr.clone(),
                lat: p.coords.0,
                lon: p.coords.1,
                incarnation: p.incarnation,
                lease_until_ms: p.lease_until_ms,
                alive: Core::pop_alive(&p, now),
                lease_age_ms: now.saturating_sub(p.lease_until_ms.saturating_sub(lease_ms)),
            })
            .collect();
        Ok(Response::new(pb::ListPopsReply { pops, now_ms: now }))
    }

    async fn record_migration(
        &self,
        req: Request<pb::Migration>,
    ) -> Result<Response<pb::RecordMigrationReply>, Status> {
        let acting = self.acting_pop(&req)?;
        let m = req.into_inner();
        if let Some(me) = &acting
            && *me != m.from_pop
            && *me != m.to_pop
        {
            return Err(DirectoryError::PermissionDenied(format!(
                "POP `{me}` cannot record a migration between `{}` and `{}`",
                m.from_pop, m.to_pop
            ))
            .into());
        }
        let rec = MigrationRecord {
            actor: m.actor,
            from_pop: m.from_pop,
            to_pop: m.to_pop,
            at_ms: m.at_ms,
            duration_ms: m.duration_ms,
            reason: m.reason,
        };
        self.run(move |c| c.record_migration(rec)).await?;
        Ok(Response::new(pb::RecordMigrationReply {}))
    }

    async fn list_migrations(
        &self,
        req: Request<pb::ListMigrationsRequest>,
    ) -> Result<Response<pb::ListMigrationsReply>, Status> {
        self.acting_pop(&req)?;
        let limit = match req.into_inner().limit {
            0 => MIGRATIONS_LIST_DEFAULT,
            n => n as usize,
        };
        let list = self.run(move |c| c.list_migrations(limit)).await?;
        Ok(Response::new(pb::ListMigrationsReply {
            migrations: list
                .into_iter()
                .map(|m| pb::Migration {
                    actor: m.actor,
                    from_pop: m.from_pop,
                    to_pop: m.to_pop,
                    at_ms: m.at_ms,
                    duration_ms: m.duration_ms,
                    reason: m.reason,
                })
                .collect(),
        }))
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        req: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        self.acting_pop(&req)?;
        let rx = self.core.try_subscribe()?;
        let closing = self.closing.subscribe();
        let stream = futures::stream::unfold(Some((rx, closing)), |state| async move {
            let (mut rx, mut closing) = state?;
            if *closing.borrow() {
                return None;
            }
            let next = tokio::select! {
                r = rx.recv() => r,
                _ = closing.wait_for(|c| *c) => return None,
            };
            match next {
                Ok(c) => Some((
                    Ok(pb::ActivationChange {
                        actor: c.actor,
                        pop: c.pop.unwrap_or_default(),
                        epoch: c.epoch,
                    }),
                    Some((rx, closing)),
                )),
                Err(broadcast::error::RecvError::Lagged(n)) => Some((
                    Err(Status::aborted(format!(
                        "watch fell behind by {n} changes (buffer {WATCH_BUFFER_CHANGES_MAX}); reconnect and drop cached lookups"
                    ))),
                    None,
                )),
                Err(broadcast::error::RecvError::Closed) => None,
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }
}
