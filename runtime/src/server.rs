//! The ActorService gRPC server: converts wire types to node calls.

use tern_proto::actor as pb;
use tern_proto::actor::actor_service_server::{ActorService, ActorServiceServer};
use tonic::{Request, Response, Status};

use crate::config::{Durability, Limits, Placement};
use crate::node::{CallRequest, DeployOptions, Node, Route};

/// Largest gRPC message accepted, in bytes (components can be large).
pub const GRPC_MESSAGE_BYTES_MAX: usize = 64 << 20;

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

/// Wire durability to the runtime's.
pub fn durability_from_pb(d: i32) -> Durability {
    match pb::Durability::try_from(d) {
        Ok(pb::Durability::Idle) => Durability::Idle,
        _ => Durability::Turn,
    }
}

/// The runtime's durability on the wire.
pub fn durability_to_pb(d: Durability) -> pb::Durability {
    match d {
        Durability::Turn => pb::Durability::Turn,
        Durability::Idle => pb::Durability::Idle,
    }
}

/// Wire limits to the runtime's (zero means default).
pub fn limits_from_pb(l: Option<pb::Limits>) -> Limits {
    let l = l.unwrap_or_default();
    Limits {
        turn_cpu_ms_max: l.turn_cpu_ms_max,
        memory_bytes_max: l.memory_bytes_max,
        payload_bytes_max: l.payload_bytes_max,
        mailbox_depth_max: l.mailbox_depth_max,
        idle_ms: l.idle_ms,
    }
    .or_defaults()
}

/// Wire placement to the runtime's (absent: defaults).
pub fn placement_from_pb(p: Option<pb::Placement>) -> Placement {
    match p {
        None => Placement::default(),
        Some(p) => {
            let d = Placement::default();
            Placement {
                follow_caller: p.follow_caller,
                window: if p.window == 0 { d.window } else { p.window },
                share_pct: if p.share_pct == 0 {
                    d.share_pct
                } else {
                    p.share_pct
                },
                idle_move_ms: if p.idle_move_ms == 0 {
                    d.idle_move_ms
                } else {
                    p.idle_move_ms
                },
            }
        }
    }
}

/// The runtime's placement on the wire.
pub fn placement_to_pb(p: Placement) -> pb::Placement {
    pb::Placement {
        follow_caller: p.follow_caller,
        window: p.window,
        share_pct: p.share_pct,
        idle_move_ms: p.idle_move_ms,
    }
}

/// The runtime's limits on the wire.
pub fn limits_to_pb(l: Limits) -> pb::Limits {
    pb::Limits {
        turn_cpu_ms_max: l.turn_cpu_ms_max,
        memory_bytes_max: l.memory_bytes_max,
        payload_bytes_max: l.payload_bytes_max,
        mailbox_depth_max: l.mailbox_depth_max,
        idle_ms: l.idle_ms,
    }
}

#[tonic::async_trait]
impl ActorService for ActorServiceImpl {
    async fn call(&self, req: Request<pb::CallRequest>) -> Result<Response<pb::CallReply>, Status> {
        let r = req.into_inner();
        let out = self
            .node
            .route(
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
                },
            )
            .await?;
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
        let (pops, acts, migs) = s.cluster.unwrap_or_default();
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
        }))
    }
}
