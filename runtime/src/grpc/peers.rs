//! Forwarding calls to other POPs over gRPC: one multiplexed connection
//! per peer, opened once (concurrent first calls share it) and ahead of
//! need when the POP learns of a peer.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use dashmap::DashMap;
use tern_proto::actor as pb;
use tern_proto::actor::actor_service_client::ActorServiceClient;
use tokio::sync::OnceCell;
use tonic::transport::{Channel, ClientTlsConfig};

use super::{GRPC_MESSAGE_BYTES_MAX, NOT_HERE_METADATA, endpoint, from_peer};
use crate::directory::Owner;
use crate::error::{Result, RuntimeError};
use crate::node::{CallOutput, CallRequest, RolloutOutcome, Route};
use crate::peers::{Forwarded, Peers};

/// Peers a POP keeps connections to; past it the least useful are dropped
/// (all of them: connections reopen on demand).
pub const PEER_CONNECTIONS_MAX: usize = 1_024;

type Client = ActorServiceClient<Channel>;

/// How long another POP may take to move its active actors of a type, ms.
pub const ROLLOUT_MS_MAX: u64 = 30_000;

/// Other POPs, reached over gRPC.
pub struct GrpcPeers {
    me: String,
    tls: Option<ClientTlsConfig>,
    conns: DashMap<String, Arc<OnceCell<Client>>>,
}

impl GrpcPeers {
    /// Peers of the POP named `me`. With `tls` (the cluster CA and this
    /// POP's certificate), peers at `https://` endpoints are reached over
    /// mTLS, which is how they know a forwarded call comes from a POP.
    pub fn new(me: &str, tls: Option<ClientTlsConfig>) -> Arc<GrpcPeers> {
        Arc::new(GrpcPeers {
            me: me.to_string(),
            tls,
            conns: DashMap::new(),
        })
    }

    fn cell(&self, url: &str) -> Arc<OnceCell<Client>> {
        if let Some(c) = self.conns.get(url) {
            return c.clone();
        }
        if self.conns.len() >= PEER_CONNECTIONS_MAX {
            metrics::counter!("tern_peer_connections_dropped_total").increment(1);
            self.conns.clear();
        }
        self.conns
            .entry(url.to_string())
            .or_insert_with(|| Arc::new(OnceCell::new()))
            .clone()
    }

    /// The connection to `url`, opening it if needed. Concurrent callers
    /// wait for the same connection attempt.
    async fn client(&self, url: &str) -> Result<Client> {
        let cell = self.cell(url);
        let c = cell
            .get_or_try_init(|| open(url, self.tls.as_ref()))
            .await?;
        Ok(c.clone())
    }
}

/// Opens a connection to the POP at `url`.
async fn open(url: &str, tls: Option<&ClientTlsConfig>) -> Result<Client> {
    let ch = endpoint(url, tls)?
        .connect()
        .await
        .map_err(|e| RuntimeError::Transport(format!("cannot connect to POP at {url}: {e}")))?;
    metrics::counter!("tern_peer_connections_opened_total").increment(1);
    Ok(ActorServiceClient::new(ch)
        .max_decoding_message_size(GRPC_MESSAGE_BYTES_MAX)
        .max_encoding_message_size(GRPC_MESSAGE_BYTES_MAX))
}

#[async_trait]
impl Peers for GrpcPeers {
    async fn forward(&self, owner: &Owner, req: &CallRequest, route: &Route) -> Result<Forwarded> {
        let actor = format!("{}/{}", req.actor_type, req.id);
        let left = route
            .deadline
            .map(|d| d.saturating_duration_since(tokio::time::Instant::now()))
            .unwrap_or(Duration::from_millis(crate::node::CALL_DEADLINE_MS_DEFAULT));
        if left.is_zero() {
            return Err(RuntimeError::DeadlineExceeded(format!(
                "{actor}: the call's deadline passed before it could be forwarded to POP {}",
                owner.pop
            )));
        }
        let call = async {
            let mut client = self.client(&owner.endpoint).await?;
            let mut request = tonic::Request::new(pb::CallRequest {
                r#type: req.actor_type.clone(),
                id: req.id.clone(),
                method: req.method.clone(),
                payload: req.payload.clone(),
                idempotency_key: req.idempotency_key.clone().unwrap_or_default(),
                chain: route.chain.clone(),
                via_pop: self.me.clone(),
            });
            request.set_timeout(left);
            super::inject_trace(request.metadata_mut());
            metrics::counter!("tern_calls_forwarded_total").increment(1);
            match client.call(request).await {
                Ok(r) => {
                    let r = r.into_inner();
                    Ok(Forwarded::Reply(CallOutput {
                        payload: r.payload,
                        epoch: r.epoch,
                        pop: r.pop,
                    }))
                }
                Err(s) => {
                    if let Some(v) = s.metadata().get(NOT_HERE_METADATA) {
                        let to = v.to_str().unwrap_or_default().to_string();
                        return Ok(Forwarded::NotHere {
                            moved_to: (!to.is_empty()).then_some(to),
                        });
                    }
                    Err(from_peer(&actor, &owner.pop, s))
                }
            }
        };
        match tokio::time::timeout(left, call).await {
            Ok(r) => r,
            Err(_) => Err(RuntimeError::DeadlineExceeded(format!(
                "{actor}: POP {} did not answer within the call's deadline ({} ms)",
                owner.pop,
                left.as_millis()
            ))),
        }
    }

    async fn rollout(&self, endpoint: &str, actor_type: &str) -> Result<RolloutOutcome> {
        let mut client = self.client(endpoint).await?;
        let mut req = tonic::Request::new(pb::RolloutNowRequest {
            r#type: actor_type.to_string(),
        });
        req.set_timeout(Duration::from_millis(ROLLOUT_MS_MAX));
        let r = tokio::time::timeout(Duration::from_millis(ROLLOUT_MS_MAX), client.rollout_now(req))
            .await
            .map_err(|_| {
                RuntimeError::DeadlineExceeded(format!(
                    "the POP at {endpoint} did not finish its rollout of `{actor_type}` within {ROLLOUT_MS_MAX} ms"
                ))
            })?
            .map_err(|s| from_peer(actor_type, endpoint, s))?;
        let r = r.into_inner();
        Ok(RolloutOutcome {
            moved: r.moved,
            failed: r.failed,
        })
    }

    fn learn(&self, url: &str) {
        let cell = self.cell(url);
        if cell.initialized() {
            return;
        }
        let url = url.to_string();
        let tls = self.tls.clone();
        // Open the connection in the background; a call meanwhile waits for
        // this same attempt instead of opening its own.
        tokio::spawn(async move {
            if let Err(e) = cell.get_or_try_init(|| open(&url, tls.as_ref())).await {
                tracing::debug!(error = %e, "cannot open a connection to a peer yet");
            }
        });
    }
}
