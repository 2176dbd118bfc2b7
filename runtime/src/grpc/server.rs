//! The ActorService gRPC server: converts wire types to node calls and
//! runtime errors to statuses.

use std::time::Duration;

use tern_proto::actor as pb;
use tern_proto::actor::actor_service_server::{ActorService, ActorServiceServer};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};

use super::{
    CONCURRENT_REQUESTS_PER_CONNECTION_MAX, GRPC_MESSAGE_BYTES_MAX, KEEPALIVE_INTERVAL_MS,
    KEEPALIVE_TIMEOUT_MS, NOT_HERE_METADATA, durability_from_pb, durability_to_pb, limits_from_pb,
    limits_to_pb, placement_from_pb, request_timeout,
};
use crate::node::{CallRequest, DeployOptions, Node, Route};
use crate::route::Routed;

/// The service.
pub struct ActorServiceImpl {
    node: Node,
}

/// The tonic service for `node`.
pub fn service(node: Node) -> ActorServiceServer<ActorServiceImpl> {
    ActorServiceServer::new(ActorServiceImpl { node })
        .max_decoding_message_size(GRPC_MESSAGE_BYTES_MAX)
        .max_encoding_message_size(GRPC_MESSAGE_BYTES_MAX)
}

/// Serves `node` on `listener` until `shutdown` completes, with keepalive
/// and a bounded number of concurrent requests per connection.
pub async fn serve(
    node: Node,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), String> {
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_millis(KEEPALIVE_INTERVAL_MS)))
        .http2_keepalive_timeout(Some(Duration::from_millis(KEEPALIVE_TIMEOUT_MS)))
        .concurrency_limit_per_connection(CONCURRENT_REQUESTS_PER_CONNECTION_MAX)
        .tcp_nodelay(true)
        .add_service(service(node))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await
        .map_err(|e| e.to_string())
}

#[tonic::async_trait]
impl ActorService for ActorServiceImpl {
    async fn call(&self, req: Request<pb::CallRequest>) -> Result<Response<pb::CallReply>, Status> {
        let deadline = request_timeout(&req).map(|d| tokio::time::Instant::now() + d);
        let r = req.into_inner();
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
                },
            )
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
        let r = req.into_inner();
        let node = self.node.clone();
        let info = tokio::task::spawn_blocking(move || {
            node.deploy(
                &r.r#type,
                &r.component,
                DeployOptions {
                    durability: durability_from_pb(r.durability),
                    limits: limits_from_pb(r.limits),
                    placement: placement_from_pb(r.placement),
                    upgrade: r.upgrade,
                },
            )
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))??;
        Ok(Response::new(pb::DeployReply {
            digest: info.digest,
            component_bytes: info.component_bytes,
        }))
    }

    async fn status(
        &self,
        _req: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusReply>, Status> {
        let s = self.node.status().await;
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
                .map(|(name, digest, cfg)| pb::ActorTypeStatus {
                    r#type: name,
                    digest,
                    durability: durability_to_pb(cfg.durability) as i32,
                    limits: Some(limits_to_pb(cfg.limits)),
                })
                .collect(),
            actors: s.actors,
            turns_total: s.turns,
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
}
