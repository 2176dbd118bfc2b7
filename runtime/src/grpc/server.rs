//! The ActorService gRPC server: converts wire types to node calls and
//! runtime errors to statuses, and decides who is calling.
//!
//! A request comes from one of three callers ([`Caller`]):
//! - another POP, proven by its certificate over mTLS: its forwarded call's
//!   `via_pop` and `chain` are honoured;
//! - a client with a bearer token: checked against the token's scopes and
//!   types; the forwarding fields are ignored (a client cannot pretend to be
//!   a POP, skip the cycle check's view of the chain, or steer placement);
//! - anyone, when the POP runs with `--insecure` (no token store).

use std::sync::Arc;
use std::time::Duration;

use tern_proto::actor as pb;
use tern_proto::actor::actor_service_server::{ActorService, ActorServiceServer};
use tokio::net::TcpListener;
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Response, Status};

use super::{
    CONCURRENT_REQUESTS_PER_CONNECTION_MAX, GRPC_MESSAGE_BYTES_MAX, KEEPALIVE_INTERVAL_MS,
    KEEPALIVE_TIMEOUT_MS, NOT_HERE_METADATA, durability_from_pb, durability_to_pb, limits_from_pb,
    limits_to_pb, placement_from_pb, request_timeout,
};
use crate::auth::{Grant, Need, Scope, Tokens};
use crate::config::Rollout;
use crate::directory::blocking;
use crate::error::RuntimeError;
use crate::node::{CallRequest, DeployOptions, Node, Route};
use crate::route::Routed;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Longest `authorization` header value read, bytes.
pub const AUTHORIZATION_BYTES_MAX: usize = 512;

/// How a POP tells its callers apart.
#[derive(Clone, Default)]
pub struct Security {
    /// TLS: the cluster CA and this POP's certificate. Other POPs prove
    /// who they are with theirs.
    pub tls: Option<tern_proto::tls::Tls>,
    /// The cluster's client tokens; `None` serves everyone (`--insecure`).
    pub tokens: Option<Arc<Tokens>>,
}

/// Who sent a request.
#[derive(Debug, Clone)]
pub enum Caller {
    /// Another POP, by its verified certificate.
    Pop(String),
    /// A client, by its token.
    Client(Grant),
    /// Anyone: authentication is off.
    Open,
}

/// The service.
pub struct ActorServiceImpl {
    node: Node,
    tokens: Option<Arc<Tokens>>,
}

/// Decides who sent a request from its headers and TLS session alone,
/// before its body is read, so a stranger's 64 MiB message is refused
/// without being decoded. The [`Caller`] travels to the handler in the
/// request's extensions.
#[derive(Clone)]
pub struct Authenticate {
    tokens: Option<Arc<Tokens>>,
}

impl tonic::service::Interceptor for Authenticate {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        let caller = caller(&req, self.tokens.as_ref())?;
        req.extensions_mut().insert(caller);
        Ok(req)
    }
}

/// The tonic service for `node`; with `tokens`, clients must present one.
pub fn service(
    node: Node,
    tokens: Option<Arc<Tokens>>,
) -> InterceptedService<ActorServiceServer<ActorServiceImpl>, Authenticate> {
    let auth = Authenticate {
        tokens: tokens.clone(),
    };
    let svc = ActorServiceServer::new(ActorServiceImpl { node, tokens })
        .max_decoding_message_size(GRPC_MESSAGE_BYTES_MAX)
        .max_encoding_message_size(GRPC_MESSAGE_BYTES_MAX);
    InterceptedService::new(svc, auth)
}

/// Serves `node` on `listener` until `shutdown` completes, with keepalive
/// and a bounded number of concurrent requests per connection, over TLS
/// if `security` has it.
pub async fn serve(
    node: Node,
    listener: TcpListener,
    security: Security,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), String> {
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = &security.tls {
        builder = builder
            .tls_config(tls.server(tern_proto::tls::ClientCerts::Optional))
            .map_err(|e| format!("TLS settings: {e}"))?;
    }
    let (reporter, health, reflection) = tern_proto::health_and_reflection();
    let lease = tokio::spawn(report_lease(node.clone(), reporter));
    let served = builder
        .http2_keepalive_interval(Some(Duration::from_millis(KEEPALIVE_INTERVAL_MS)))
        .http2_keepalive_timeout(Some(Duration::from_millis(KEEPALIVE_TIMEOUT_MS)))
        .concurrency_limit_per_connection(CONCURRENT_REQUESTS_PER_CONNECTION_MAX)
        .tcp_nodelay(true)
        .add_service(service(node, security.tokens))
        .add_service(health)
        .add_service(reflection)
        .serve_with_incoming_shutdown(tern_proto::incoming(listener), shutdown)
        .await
        .map_err(|e| e.to_string());
    lease.abort();
    served
}

/// How often the health service re-reads the POP's lease, ms.
pub const HEALTH_POLL_MS: u64 = 250;

/// Keeps `grpc.health.v1` in step with the POP's lease: SERVING while the
/// lease is current, NOT_SERVING while the POP holds none (it cannot run
/// actors then, so a load balancer should send callers elsewhere).
async fn report_lease(node: Node, reporter: tonic_health::server::HealthReporter) {
    use tonic_health::ServingStatus;
    let mut last = None;
    loop {
        let ok = node.lease_ok();
        if last != Some(ok) {
            let status = if ok {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            for name in ["", tern_proto::actor::actor_service_server::SERVICE_NAME] {
                reporter.set_service_status(name, status).await;
            }
            tracing::info!(serving = ok, "health status");
            last = Some(ok);
        }
        tokio::time::sleep(Duration::from_millis(HEALTH_POLL_MS)).await;
    }
}

/// The bearer token of a request, if any.
fn bearer<T>(req: &Request<T>) -> Result<Option<&str>, RuntimeError> {
    let Some(v) = req.metadata().get("authorization") else {
        return Ok(None);
    };
    let bad = || {
        RuntimeError::Unauthenticated(
            "the authorization header must read `Bearer <token>`".to_string(),
        )
    };
    if v.len() > AUTHORIZATION_BYTES_MAX {
        return Err(bad());
    }
    let v = v.to_str().map_err(|_| bad())?;
    let t = v
        .strip_prefix("Bearer ")
        .or_else(|| v.strip_prefix("bearer "))
        .ok_or_else(bad)?;
    Ok(Some(t.trim()))
}

/// Who sent `req` (see the module docs).
fn caller<T>(req: &Request<T>, tokens: Option<&Arc<Tokens>>) -> Result<Caller, RuntimeError> {
    if let Some(pop) = tern_proto::tls::peer_pop(req) {
        return Ok(Caller::Pop(pop));
    }
    let Some(tokens) = tokens else {
        return Ok(Caller::Open);
    };
    let token = bearer(req)?.ok_or_else(|| {
            RuntimeError::Unauthenticated(
                "this POP needs a token: send `authorization: Bearer <token>` (the tern CLI reads --token, $TERN_TOKEN or the data directory's admin.token; `tern token create --scope call` makes one)"
                    .to_string(),
            )
        })?;
    let tokens = tokens.clone();
    let token = token.to_string();
    Ok(Caller::Client(blocking(move || tokens.verify(&token))?))
}

impl ActorServiceImpl {
    /// `Ok` if `req`'s sender (found by [`Authenticate`]) may do `need`.
    fn authorize<T>(&self, req: &Request<T>, need: Need<'_>) -> Result<Caller, RuntimeError> {
        let caller = req.extensions().get::<Caller>().cloned().ok_or_else(|| {
            RuntimeError::Internal("a request reached the service without authentication".into())
        })?;
        if let Caller::Client(g) = &caller {
            g.check(need)?;
        }
        Ok(caller)
    }

    /// The token store, for the admin RPCs.
    fn token_store(&self) -> Result<&Arc<Tokens>, RuntimeError> {
        self.tokens.as_ref().ok_or_else(|| {
            RuntimeError::InvalidArgument(
                "this POP runs with --insecure: it has no tokens to manage".to_string(),
            )
        })
    }
}

fn token_info(g: Grant) -> pb::TokenInfo {
    pb::TokenInfo {
        id: g.id,
        scopes: g.scopes.iter().map(|s| s.as_str().to_string()).collect(),
        types: g.types.into_iter().collect(),
        label: g.label,
        created_ms: g.created_ms,
    }
}

#[tonic::async_trait]
impl ActorService for ActorServiceImpl {
    async fn call(&self, req: Request<pb::CallRequest>) -> Result<Response<pb::CallReply>, Status> {
        let deadline = request_timeout(&req).map(|d| tokio::time::Instant::now() + d);
        let caller = self.authorize(&req, Need::Call(&req.get_ref().r#type))?;
        // The caller's trace (a client's, or the forwarding POP's) goes on.
        let span = tracing::debug_span!(
            "call",
            actor = %format!("{}/{}", req.get_ref().r#type, req.get_ref().id),
            method = %req.get_ref().method,
        );
        // (An error only means no trace layer records spans here.)
        let _ = span.set_parent(tern_proto::trace::extract(req.metadata()));
        let mut r = req.into_inner();
        if let Caller::Pop(name) = &caller
            && !r.via_pop.is_empty()
            && r.via_pop != *name
        {
            // A POP forwards only as itself.
            r.via_pop = name.clone();
        }
        if matches!(caller, Caller::Client(_)) {
            // Only a POP forwards: a client's forwarding fields are ignored.
            if !r.via_pop.is_empty() || !r.chain.is_empty() {
                metrics::counter!("tern_forged_forward_fields_total").increment(1);
            }
            r.via_pop.clear();
            r.chain.clear();
        }
        let routed = self
            .node
            .dispatch(
                CallRequest {
                    actor_type: r.r#type,
                    id: r.id,
                    method: r.method,
                    payload: r.payload,
                    idempotency_key: (!r.idempotency_key.is_empty()).then_some(r.idempotency_key),
                },
                Route {
                    chain: r.chain,
                    via: (!r.via_pop.is_empty()).then_some(r.via_pop),
                    deadline,
                    span: None,
                },
            )
            .instrument(span)
            .await?;
        let out = match routed {
            Routed::Done(out) => out,
            Routed::NotHere { moved_to } => {
                let mut status = Status::unavailable(format!(
                    "{} is not active at this POP{}; look it up again",
                    "the actor",
                    moved_to
                        .as_ref()
                        .map(|p| format!(" (it moved to {p})"))
                        .unwrap_or_default()
                ));
                if let Ok(v) = moved_to.unwrap_or_default().parse() {
                    status.metadata_mut().insert(NOT_HERE_METADATA, v);
                }
                return Err(status);
            }
        };
        Ok(Response::new(pb::CallReply {
            payload: out.payload,
            pop: out.pop,
            epoch: out.epoch,
        }))
    }

    async fn deploy(
        &self,
        req: Request<pb::DeployRequest>,
    ) -> Result<Response<pb::DeployReply>, Status> {
        self.authorize(&req, Need::Deploy(&req.get_ref().r#type))?;
        let r = req.into_inner();
        let ty = r.r#type.clone();
        let r_dry_run = r.dry_run;
        let rollout = match pb::Rollout::try_from(r.rollout) {
            Ok(pb::Rollout::Now) => Rollout::Now,
            _ => Rollout::Lazy,
        };
        let node = self.node.clone();
        let info = tokio::task::spawn_blocking(move || {
            node.deploy(
                &r.r#type,
                &r.component,
                DeployOptions {
                    durability: durability_from_pb(r.durability),
                    limits: limits_from_pb(r.limits),
                    placement: placement_from_pb(r.placement),
                    rollout,
                    dry_run: r.dry_run,
                },
            )
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))??;
        let rolled = match rollout {
            Rollout::Now if !r_dry_run => self.node.rollout_cluster(&ty).await?,
            _ => Default::default(),
        };
        Ok(Response::new(pb::DeployReply {
            digest: info.digest,
            component_bytes: info.component_bytes,
            version: info.version,
            plan: info.plan,
            rolled_now: rolled.moved,
            upgrade_failures: rolled.failed,
        }))
    }

    async fn status(
        &self,
        req: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusReply>, Status> {
        self.authorize(&req, Need::Admin)?;
        let s = self.node.status().await;
        let failures: Vec<u64> = {
            let node = self.node.clone();
            let names: Vec<String> = s.types.iter().map(|(n, _, _)| n.clone()).collect();
            blocking(move || {
                names
                    .iter()
                    .map(|n| node.upgrade_failures(n).unwrap_or(0))
                    .collect()
            })
        };
        let view = s.cluster.clone().unwrap_or_default();
        // A single POP with its directory in process shows no cluster.
        let (pops, acts, migs) = if view
            .pops
            .iter()
            .any(|p| p.endpoint == crate::directory::LOCAL_ENDPOINT)
        {
            Default::default()
        } else {
            (view.pops, view.activations, view.migrations)
        };
        let pops = pops
            .into_iter()
            .map(|p| pb::ClusterPop {
                actors: acts.iter().filter(|a| a.pop == p.name).count() as u64,
                name: p.name,
                endpoint: p.endpoint,
                alive: p.alive,
                lease_age_ms: p.lease_age_ms,
                lat: p.lat,
                lon: p.lon,
            })
            .collect();
        let migrations = migs
            .into_iter()
            .map(|m| pb::MigrationInfo {
                actor: m.actor,
                from_pop: m.from_pop,
                to_pop: m.to_pop,
                at_ms: m.at_ms,
                duration_ms: m.duration_ms,
                reason: m.reason,
            })
            .collect();
        Ok(Response::new(pb::StatusReply {
            pop: s.pop,
            version: crate::engine::ENGINE_VERSION.to_string(),
            active_actors: s.actors.len() as u64,
            types: s
                .types
                .into_iter()
                .zip(failures)
                .map(
                    |((name, digest, cfg), upgrade_failures)| pb::ActorTypeStatus {
                        active_by_version: self.node.active_versions(&name).into_iter().collect(),
                        r#type: name,
                        digest,
                        durability: durability_to_pb(cfg.durability) as i32,
                        limits: Some(limits_to_pb(cfg.limits)),
                        version: cfg.version,
                        upgrade_failures,
                    },
                )
                .collect(),
            actors: s.actors,
            turns_total: s.turns,
            turns_failed_total: s.turns_failed,
            commits_total: s.commits,
            store_bytes_written: s.store_bytes_written,
            pops,
            migrations,
            resident_bytes: s.resident_bytes,
            resident_bytes_max: s.config.resident_bytes_max,
            activations_max: s.config.activations_max as u64,
            lease_ok: s.lease_ok,
        }))
    }

    async fn create_token(
        &self,
        req: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenReply>, Status> {
        self.authorize(&req, Need::Admin)?;
        let tokens = self.token_store()?.clone();
        let r = req.into_inner();
        let scopes = r
            .scopes
            .iter()
            .map(|s| s.parse::<Scope>())
            .collect::<Result<Vec<_>, _>>()?;
        let new = blocking(move || tokens.create(&scopes, &r.types, &r.label))?;
        tracing::info!(id = %new.grant.id, scopes = ?new.grant.scopes, "token created");
        Ok(Response::new(pb::CreateTokenReply {
            token: new.token,
            info: Some(token_info(new.grant)),
        }))
    }

    async fn list_tokens(
        &self,
        req: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensReply>, Status> {
        self.authorize(&req, Need::Admin)?;
        let tokens = self.token_store()?.clone();
        let list = blocking(move || tokens.list())?;
        Ok(Response::new(pb::ListTokensReply {
            tokens: list.into_iter().map(token_info).collect(),
        }))
    }

    type SubscribeStream =
        std::pin::Pin<Box<dyn futures::Stream<Item = Result<pb::Event, Status>> + Send>>;

    async fn subscribe(
        &self,
        req: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        self.authorize(&req, Need::Call(&req.get_ref().r#type))?;
        let r = req.into_inner();
        let sub = self
            .node
            .subscribe(&r.r#type, &r.id, &r.topic, r.resume_after)?;
        let stream = futures::stream::unfold(sub, |mut sub| async move {
            let item = sub.next().await?.map(|e| pb::Event {
                topic: e.topic,
                seq: e.seq,
                payload: e.payload,
            });
            Some((item.map_err(Status::from), sub))
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn inspect(
        &self,
        req: Request<pb::InspectRequest>,
    ) -> Result<Response<pb::InspectReply>, Status> {
        self.authorize(&req, Need::Deploy(&req.get_ref().r#type))?;
        let r = req.into_inner();
        let pop = self.node.name().to_string();
        Ok(Response::new(
            match self.node.inspect(&r.r#type, &r.id).await? {
                None => pb::InspectReply {
                    pop,
                    ..Default::default()
                },
                Some(i) => pb::InspectReply {
                    active: true,
                    pop,
                    epoch: i.epoch,
                    version: i.version,
                    memory_bytes: i.memory_bytes,
                    last_turns: i
                        .last_turns
                        .into_iter()
                        .map(|t| pb::TurnInfo {
                            method: t.method,
                            at_ms: t.at_ms,
                            ok: t.ok,
                            micros: t.micros,
                        })
                        .collect(),
                },
            },
        ))
    }

    async fn logs(&self, req: Request<pb::LogsRequest>) -> Result<Response<pb::LogsReply>, Status> {
        self.authorize(&req, Need::Deploy(&req.get_ref().r#type))?;
        let r = req.into_inner();
        let limit = if r.limit == 0 {
            usize::MAX
        } else {
            r.limit as usize
        };
        let lines = self.node.guest_logs(&r.r#type, &r.id, limit)?;
        Ok(Response::new(pb::LogsReply {
            lines: lines
                .into_iter()
                .map(|l| pb::LogLine {
                    at_ms: l.at_ms,
                    level: l.level.to_string(),
                    message: l.message,
                })
                .collect(),
            pop: self.node.name().to_string(),
        }))
    }

    async fn revoke_token(
        &self,
        req: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::RevokeTokenReply>, Status> {
        self.authorize(&req, Need::Admin)?;
        let tokens = self.token_store()?.clone();
        let id = req.into_inner().id;
        let revoked = blocking(move || tokens.revoke(&id))?;
        Ok(Response::new(pb::RevokeTokenReply { revoked }))
    }

    async fn rollback(
        &self,
        req: Request<pb::RollbackRequest>,
    ) -> Result<Response<pb::RollbackReply>, Status> {
        self.authorize(&req, Need::Deploy(&req.get_ref().r#type))?;
        let r = req.into_inner();
        let node = self.node.clone();
        let ty = r.r#type.clone();
        let (version, plan) = tokio::task::spawn_blocking(move || node.rollback(&ty))
            .await
            .map_err(|e| Status::internal(e.to_string()))??;
        let rolled = match pb::Rollout::try_from(r.rollout) {
            Ok(pb::Rollout::Now) => self.node.rollout_cluster(&r.r#type).await?,
            _ => Default::default(),
        };
        Ok(Response::new(pb::RollbackReply {
            version,
            plan,
            rolled_now: rolled.moved,
            upgrade_failures: rolled.failed,
        }))
    }

    async fn versions(
        &self,
        req: Request<pb::VersionsRequest>,
    ) -> Result<Response<pb::VersionsReply>, Status> {
        self.authorize(&req, Need::Deploy(&req.get_ref().r#type))?;
        let ty = req.into_inner().r#type;
        let node = self.node.clone();
        let v = tokio::task::spawn_blocking(move || node.versions(&ty))
            .await
            .map_err(|e| Status::internal(e.to_string()))??;
        Ok(Response::new(pb::VersionsReply {
            versions: v
                .versions
                .into_iter()
                .map(|v| pb::VersionInfo {
                    version: v.version,
                    digest: v.digest,
                    deployed_at_ms: v.deployed_at_ms,
                    current: v.current,
                    actors: v.actors,
                })
                .collect(),
            failures: v
                .failures
                .into_iter()
                .map(|(actor, f)| pb::UpgradeFailureInfo {
                    actor,
                    from_version: f.from_version,
                    to_version: f.to_version,
                    error: f.error,
                    at_ms: f.at_ms,
                })
                .collect(),
            actors_counted: v.counted,
            truncated: v.truncated,
        }))
    }

    async fn rollout_now(
        &self,
        req: Request<pb::RolloutNowRequest>,
    ) -> Result<Response<pb::RolloutNowReply>, Status> {
        self.authorize(&req, Need::Deploy(&req.get_ref().r#type))?;
        let ty = req.into_inner().r#type;
        let o = self.node.rollout_now(&ty, |_, _| {}).await?;
        Ok(Response::new(pb::RolloutNowReply {
            moved: o.moved,
            failed: o.failed,
        }))
    }
}
