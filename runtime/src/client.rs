//! A small Rust client for the ActorService, used by the CLI and tests.

use std::path::Path;

use serde::{Deserialize, Serialize};
use tern_proto::actor as pb;
use tern_proto::actor::actor_service_client::ActorServiceClient;
use tonic::transport::Channel;

use crate::error::{Result, RuntimeError};
use crate::server::GRPC_MESSAGE_BYTES_MAX;

/// One POP in `cluster.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PopInfo {
    /// POP name.
    pub name: String,
    /// gRPC endpoint, `http://127.0.0.1:PORT`.
    pub endpoint: String,
    /// Process id serving it.
    pub pid: u32,
    /// Location, `[lat, lon]`.
    pub coords: [f64; 2],
}

/// The file `tern dev` writes: `DIR/cluster.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ClusterFile {
    /// Process id of `tern dev`.
    pub pid: u32,
    /// Directory service URL, if one runs.
    pub directory: Option<String>,
    /// The POPs.
    pub pops: Vec<PopInfo>,
    /// Prometheus metrics URL, if enabled.
    #[serde(default)]
    pub metrics: Option<String>,
}

impl ClusterFile {
    /// Reads a cluster file.
    pub fn read(path: &Path) -> std::io::Result<ClusterFile> {
        let text = std::fs::read_to_string(path)?;
        serde_json::from_str(&text).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{}: {e}", path.display()),
            )
        })
    }

    /// Writes it atomically (temp file + rename).
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)?;
        std::fs::rename(tmp, path)
    }
}

/// Connects to a POP.
pub async fn connect(endpoint: &str) -> Result<ActorServiceClient<Channel>> {
    let ch = Channel::from_shared(endpoint.to_string())
        .map_err(|e| RuntimeError::InvalidArgument(format!("bad endpoint `{endpoint}`: {e}")))?
        .connect()
        .await
        .map_err(|e| RuntimeError::Transport(format!("cannot connect to {endpoint}: {e}")))?;
    Ok(ActorServiceClient::new(ch)
        .max_decoding_message_size(GRPC_MESSAGE_BYTES_MAX)
        .max_encoding_message_size(GRPC_MESSAGE_BYTES_MAX))
}

/// Builds a call request.
pub fn call_request(actor_type: &str, id: &str, method: &str, payload: Vec<u8>) -> pb::CallRequest {
    pb::CallRequest {
        r#type: actor_type.to_string(),
        id: id.to_string(),
        method: method.to_string(),
        payload,
        idempotency_key: String::new(),
    }
}
