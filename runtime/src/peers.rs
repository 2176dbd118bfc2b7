//! The POP's seam to other POPs: forwarding a call to the POP that owns the
//! actor. The gRPC implementation is `crate::grpc::GrpcPeers`; a simulator
//! supplies its own network.

use async_trait::async_trait;

use crate::directory::Owner;
use crate::error::{Result, RuntimeError};
use crate::node::{CallOutput, CallRequest, RolloutOutcome, Route};

/// What the owner answered to a forwarded call.
#[derive(Debug, Clone)]
pub enum Forwarded {
    /// It ran the call.
    Reply(CallOutput),
    /// The actor is not active there (a stale lookup), or it just moved to
    /// `moved_to` (the forwarding POP) because of this call.
    NotHere {
        /// The POP the actor moved to, if it moved because of this call.
        moved_to: Option<String>,
    },
}

/// Other POPs.
#[async_trait]
pub trait Peers: Send + Sync + 'static {
    /// Sends `req` to `owner`, bounded by `route.deadline`. A failure to
    /// reach the owner is [`RuntimeError::Transport`]; an error the owner
    /// answered keeps its kind ([`RuntimeError::Remote`]).
    async fn forward(&self, owner: &Owner, req: &CallRequest, route: &Route) -> Result<Forwarded>;

    /// Learns of a POP at `endpoint`: opens its connection ahead of need,
    /// so a burst of calls is never serialized behind connection setup.
    fn learn(&self, endpoint: &str);

    /// Asks the POP at `endpoint` to move its active actors of
    /// `actor_type` to the type's current version now (a `--rollout now`
    /// deploy or rollback at another POP). Returns how many it moved.
    /// Peers that cannot (a simulator's) move none: their actors move at
    /// their next activation.
    async fn rollout(&self, endpoint: &str, actor_type: &str) -> Result<RolloutOutcome> {
        let _ = (endpoint, actor_type);
        Ok(RolloutOutcome::default())
    }
}

/// Peers for a POP that has none (a single POP).
#[derive(Debug, Default, Clone, Copy)]
pub struct NoPeers;

#[async_trait]
impl Peers for NoPeers {
    async fn forward(
        &self,
        owner: &Owner,
        _req: &CallRequest,
        _route: &Route,
    ) -> Result<Forwarded> {
        Err(RuntimeError::Transport(format!(
            "this POP has no peers, but the directory says POP {} holds the actor",
            owner.pop
        )))
    }

    fn learn(&self, _endpoint: &str) {}
}
