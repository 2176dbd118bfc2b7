//! The ActorService gRPC server: converts wire types to node calls.

use tern_proto::actor as pb;
use tern_proto::actor::actor_service_server::{ActorService, ActorServiceServer};
use tonic::{Request, Response, Status};

use crate::config::{Durability, Limits};
use crate::node::{CallRequest, Node};

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
            .call(CallRequest {
                actor_type: r.r#type,
                id: r.id,
                method: r.method,
                payload: r.payload,
            })
            .await?;
        Ok(Response::new(pb::CallReply {
            payload: out.payload,
            pop: self.node.name().to_string(),
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
                durability_from_pb(r.durability),
                limits_from_pb(r.limits),
                r.upgrade,
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
        let node = self.node.clone();
        let s = tokio::task::spawn_blocking(move || node.status())
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
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
        }))
    }
}
