//! # tern-client
//!
//! A small Rust client for tern's ActorService, used by the `tern` CLI, the
//! tests and doom-lobby. It owns the cluster file format, the choice of the
//! nearest POP, retries of `UNAVAILABLE` with the same idempotency key, and
//! a deadline on every call. It must not know wasmtime or the runtime's
//! internals: it speaks only the wire types of `tern-proto` (re-exported as
//! [`pb`]).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tern_proto::GRPC_MESSAGE_BYTES_MAX;
pub use tern_proto::actor as pb;
use tern_proto::actor::actor_service_client::ActorServiceClient;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// The client's errors.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// A malformed endpoint or argument.
    #[error("{0}")]
    InvalidArgument(String),
    /// The POP could not be reached.
    #[error("{0}")]
    Transport(String),
}

impl ClientError {
    /// The gRPC code the CLI reports for it.
    pub fn code(&self) -> tonic::Code {
        match self {
            ClientError::InvalidArgument(_) => tonic::Code::InvalidArgument,
            ClientError::Transport(_) => tonic::Code::Unavailable,
        }
    }
}

/// Result alias.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// The deadline of one call attempt unless the caller sets another, ms.
pub const CALL_MS_DEFAULT: u64 = 30_000;
/// The deadline of a deploy, ms: the POP validates, instruments and
/// compiles the component before it answers, which takes tens of seconds
/// for an interpreter's 10-20 MB component on a small machine.
pub const DEPLOY_MS_MAX: u64 = 300_000;

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

/// A directory process in a cluster file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DirectoryInfo {
    /// Its gRPC endpoint.
    pub endpoint: String,
    /// Its process id.
    pub pid: u32,
}

/// The file `tern dev` writes: `DIR/cluster.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ClusterFile {
    /// Process id of `tern dev`.
    pub pid: u32,
    /// The first directory's URL, if one runs (see `directories` for all).
    pub directory: Option<String>,
    /// Every directory process of the cluster.
    #[serde(default)]
    pub directories: Vec<DirectoryInfo>,
    /// The POPs.
    pub pops: Vec<PopInfo>,
    /// Prometheus metrics URL, if enabled.
    #[serde(default)]
    pub metrics: Option<String>,
    /// Process id of the first directory, if one runs.
    #[serde(default)]
    pub directory_pid: Option<u32>,
    /// The cluster CA certificate, if the cluster uses TLS.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// A file holding the admin token `tern dev` made, if the cluster
    /// checks tokens.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// The live cluster page's URL, if `tern dev` serves one.
    #[serde(default)]
    pub page: Option<String>,
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

/// Longest token file read, bytes.
pub const TOKEN_FILE_BYTES_MAX: u64 = 4096;

/// What a client presents: whom it trusts (the cluster CA, for `https://`
/// POPs), its bearer token, and (a POP reading other POPs) its
/// certificate.
#[derive(Clone, Default)]
pub struct Credentials {
    /// The cluster CA certificate, PEM.
    pub ca_pem: Option<Vec<u8>>,
    /// The bearer token.
    pub token: Option<String>,
    /// A client certificate from the cluster CA (a POP's own): the POP
    /// that reads trusts its holder as that POP, and needs no token.
    pub identity: Option<tonic::transport::Identity>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("ca", &self.ca_pem.is_some())
            .field("token", &self.token.as_ref().map(|_| "<secret>"))
            .field("identity", &self.identity.is_some())
            .finish()
    }
}

/// Reads a token from a file (whitespace around it is ignored), bounded.
pub fn read_token_file(path: &Path) -> Result<String> {
    let len = std::fs::metadata(path)
        .map_err(|e| ClientError::InvalidArgument(format!("cannot read {}: {e}", path.display())))?
        .len();
    if len > TOKEN_FILE_BYTES_MAX {
        return Err(ClientError::InvalidArgument(format!(
            "{} is {len} bytes; a token file holds one token",
            path.display()
        )));
    }
    let text = std::fs::read_to_string(path).map_err(|e| {
        ClientError::InvalidArgument(format!("cannot read {}: {e}", path.display()))
    })?;
    Ok(text.trim().to_string())
}

impl Credentials {
    /// None: a POP started with `--insecure`.
    pub fn none() -> Credentials {
        Credentials::default()
    }

    /// The CA and admin token a cluster file names (none if it names none).
    pub fn of_cluster(c: &ClusterFile) -> Result<Credentials> {
        let ca_pem =
            c.ca.as_deref()
                .map(|p| tern_proto::tls::read_pem(p).map_err(ClientError::InvalidArgument))
                .transpose()?;
        let token = c.token_file.as_deref().map(read_token_file).transpose()?;
        Ok(Credentials {
            ca_pem,
            token,
            identity: None,
        })
    }

    /// A POP's own: the cluster CA and the POP's certificate (no token).
    pub fn of_pop(tls: &tern_proto::tls::Tls) -> Credentials {
        Credentials {
            ca_pem: Some(tls.ca_pem().to_vec()),
            token: None,
            identity: Some(tls.identity().clone()),
        }
    }

    /// The same credentials with another token.
    pub fn with_token(mut self, token: impl Into<String>) -> Credentials {
        self.token = Some(token.into());
        self
    }

    fn endpoint(&self, url: &str) -> Result<tonic::transport::Endpoint> {
        let tls = self.ca_pem.as_deref().map(|ca| {
            let c = tern_proto::tls::client_trusting(ca);
            match &self.identity {
                Some(id) => c.identity(id.clone()),
                None => c,
            }
        });
        tern_proto::endpoint_tls(url, tls.as_ref()).map_err(ClientError::InvalidArgument)
    }

    fn bearer(&self) -> Result<Bearer> {
        self.token
            .as_deref()
            .map(|t| {
                format!("Bearer {t}").parse().map_err(|_| {
                    ClientError::InvalidArgument(
                        "the token has characters a header cannot carry".into(),
                    )
                })
            })
            .transpose()
            .map(Bearer)
    }
}

/// Adds the `authorization: Bearer` header to every request.
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl tonic::service::Interceptor for Bearer {
    fn call(
        &mut self,
        mut req: tonic::Request<()>,
    ) -> std::result::Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// An ActorService client that presents its credentials.
pub type Client = ActorServiceClient<InterceptedService<Channel, Bearer>>;

fn client(ch: Channel, creds: &Credentials) -> Result<Client> {
    Ok(ActorServiceClient::with_interceptor(ch, creds.bearer()?)
        .max_decoding_message_size(GRPC_MESSAGE_BYTES_MAX)
        .max_encoding_message_size(GRPC_MESSAGE_BYTES_MAX))
}

/// Connects to a POP (connect timeout, keepalive, and a default deadline of
/// [`CALL_MS_DEFAULT`] on every request), presenting `creds`.
pub async fn connect(endpoint: &str, creds: &Credentials) -> Result<Client> {
    connect_with_deadline(endpoint, creds, Duration::from_millis(CALL_MS_DEFAULT)).await
}

/// [`connect`] with another deadline on every request (a deploy uses
/// [`DEPLOY_MS_MAX`]).
pub async fn connect_with_deadline(
    endpoint: &str,
    creds: &Credentials,
    deadline: Duration,
) -> Result<Client> {
    let ch = creds
        .endpoint(endpoint)?
        .timeout(deadline)
        .connect()
        .await
        .map_err(|e| ClientError::Transport(format!("cannot connect to {endpoint}: {e}")))?;
    client(ch, creds)
}

/// Builds a call request.
pub fn call_request(actor_type: &str, id: &str, method: &str, payload: Vec<u8>) -> pb::CallRequest {
    pb::CallRequest {
        r#type: actor_type.to_string(),
        id: id.to_string(),
        method: method.to_string(),
        payload,
        idempotency_key: String::new(),
        chain: Vec::new(),
        via_pop: String::new(),
    }
}

/// Great-circle distance between two `[lat, lon]` points, in km.
pub fn distance_km(a: [f64; 2], b: [f64; 2]) -> f64 {
    let (la1, lo1, la2, lo2) = (
        a[0].to_radians(),
        a[1].to_radians(),
        b[0].to_radians(),
        b[1].to_radians(),
    );
    let h = ((la2 - la1) / 2.0).sin().powi(2)
        + la1.cos() * la2.cos() * ((lo2 - lo1) / 2.0).sin().powi(2);
    2.0 * 6371.0 * h.sqrt().asin()
}

/// The POPs ordered from nearest to farthest from `from`.
pub fn by_distance(pops: &[PopInfo], from: [f64; 2]) -> Vec<PopInfo> {
    let mut v = pops.to_vec();
    v.sort_by(|a, b| distance_km(a.coords, from).total_cmp(&distance_km(b.coords, from)));
    v
}

/// Retries of one call before the client gives up.
pub const CLIENT_RETRIES_MAX: u32 = 12;

/// First backoff between retries; it doubles up to [`CLIENT_BACKOFF_MS_MAX`].
pub const CLIENT_BACKOFF_MS: u64 = 50;

/// Longest backoff between retries.
pub const CLIENT_BACKOFF_MS_MAX: u64 = 1_000;

/// A successful call through [`TernClient`].
#[derive(Debug, Clone)]
pub struct Called {
    /// The reply.
    pub reply: pb::CallReply,
    /// How many times the call was retried.
    pub retries: u32,
    /// The POP the client sent it to.
    pub via: String,
}

/// A client that calls the POP nearest to it, retries UNAVAILABLE with the
/// same idempotency key, and fails over to the next nearest POP when its POP
/// is unreachable.
pub struct TernClient {
    pops: Vec<PopInfo>,
    clients: Vec<Client>,
    current: std::sync::atomic::AtomicUsize,
}

impl TernClient {
    /// A client at `coords` for a cluster's POPs, presenting `creds`.
    pub fn new(pops: &[PopInfo], coords: [f64; 2], creds: &Credentials) -> Result<TernClient> {
        let pops = by_distance(pops, coords);
        if pops.is_empty() {
            return Err(ClientError::InvalidArgument(
                "the cluster has no POPs".into(),
            ));
        }
        let clients = pops
            .iter()
            .map(|p| client(creds.endpoint(&p.endpoint)?.connect_lazy(), creds))
            .collect::<Result<Vec<_>>>()?;
        Ok(TernClient {
            pops,
            clients,
            current: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    /// The POP this client currently uses.
    pub fn pop(&self) -> &PopInfo {
        &self.pops[self.current.load(std::sync::atomic::Ordering::Relaxed) % self.pops.len()]
    }

    /// Moves the client to the POP nearest to `coords` (a travelling
    /// player).
    pub fn relocate(&mut self, coords: [f64; 2]) {
        let order = by_distance(&self.pops, coords);
        let mut clients = Vec::new();
        for p in &order {
            let i = self.pops.iter().position(|q| q.name == p.name).unwrap_or(0);
            clients.push(self.clients[i].clone());
        }
        self.pops = order;
        self.clients = clients;
        self.current.store(0, std::sync::atomic::Ordering::Relaxed);
    }

    /// Calls an actor. UNAVAILABLE answers are retried (bounded, with
    /// backoff) with the same idempotency key, so a retried call is applied
    /// at most once. Each attempt has a deadline of [`CALL_MS_DEFAULT`].
    pub async fn call(
        &self,
        actor_type: &str,
        id: &str,
        method: &str,
        payload: Vec<u8>,
        idempotency_key: Option<String>,
    ) -> std::result::Result<Called, tonic::Status> {
        use std::sync::atomic::Ordering::Relaxed;
        use tracing::Instrument;
        use tracing_opentelemetry::OpenTelemetrySpanExt;
        let span =
            tracing::debug_span!("client call", actor = %format!("{actor_type}/{id}"), method);
        let mut req = call_request(actor_type, id, method, payload);
        req.idempotency_key = idempotency_key.unwrap_or_default();
        let mut backoff = CLIENT_BACKOFF_MS;
        let mut retries = 0;
        loop {
            let i = self.current.load(Relaxed) % self.pops.len();
            let mut c = self.clients[i].clone();
            let mut r = tonic::Request::new(req.clone());
            r.set_timeout(Duration::from_millis(CALL_MS_DEFAULT));
            // The POP's spans join the caller's trace (W3C traceparent).
            tern_proto::trace::inject(&span.context(), r.metadata_mut());
            match c.call(r).instrument(span.clone()).await {
                Ok(r) => {
                    return Ok(Called {
                        reply: r.into_inner(),
                        retries,
                        via: self.pops[i].name.clone(),
                    });
                }
                Err(s)
                    if retries < CLIENT_RETRIES_MAX
                        && (s.code() == tonic::Code::Unavailable
                            || std::error::Error::source(&s).is_some()) =>
                {
                    // A status with a source came from the transport, not
                    // from a POP: the POP is gone (maybe mid-call; the same
                    // idempotency key makes the retry safe). Fail over to the
                    // next nearest POP. Otherwise retry where we are.
                    if std::error::Error::source(&s).is_some() {
                        let _ = self.current.compare_exchange(i, i + 1, Relaxed, Relaxed);
                    }
                    retries += 1;
                    tokio::time::sleep(Duration::from_millis(backoff)).await;
                    backoff = (backoff * 2).min(CLIENT_BACKOFF_MS_MAX);
                }
                Err(s) => return Err(s),
            }
        }
    }
}

/// Events a subscription buffers for its reader.
pub const SUBSCRIPTION_BUFFER: usize = 64;

/// A subscription's events, as a [`tokio_stream::Stream`].
pub type Events =
    tokio_stream::wrappers::ReceiverStream<std::result::Result<pb::Event, tonic::Status>>;

impl TernClient {
    /// Follows the events `actor_type/id` publishes on `topic`, from the one
    /// after `resume_after` (0: every kept event), as a stream. When its
    /// POP fails or says UNAVAILABLE, the subscription moves to the next
    /// nearest POP and resumes after the last event it delivered, so the
    /// server sends no gap and no duplicate (bounded retries with backoff;
    /// events are passed on exactly as received). Any other status ends
    /// the stream as its last item: RESOURCE_EXHAUSTED if this reader fell
    /// too far behind, FAILED_PRECONDITION if events it needs are no longer
    /// kept, both naming the seq to resume after. Dropping the stream ends
    /// the subscription.
    pub fn subscribe(&self, actor_type: &str, id: &str, topic: &str, resume_after: u64) -> Events {
        use std::sync::atomic::Ordering::Relaxed;
        let (tx, rx) = tokio::sync::mpsc::channel(SUBSCRIPTION_BUFFER);
        let clients = self.clients.clone();
        let mut i = self.current.load(Relaxed);
        let req = pb::SubscribeRequest {
            r#type: actor_type.to_string(),
            id: id.to_string(),
            topic: topic.to_string(),
            resume_after,
        };
        tokio::spawn(async move {
            let mut last = resume_after;
            let mut backoff = CLIENT_BACKOFF_MS;
            let mut retries = 0;
            loop {
                let mut c = clients[i % clients.len()].clone();
                let req = pb::SubscribeRequest {
                    resume_after: last,
                    ..req.clone()
                };
                let ended = match c.subscribe(req).await {
                    Ok(r) => {
                        let mut s = r.into_inner();
                        loop {
                            match s.message().await {
                                Ok(Some(ev)) => {
                                    // Passed on as received: a reader can
                                    // audit the server's numbering.
                                    last = last.max(ev.seq);
                                    retries = 0;
                                    backoff = CLIENT_BACKOFF_MS;
                                    if tx.send(Ok(ev)).await.is_err() {
                                        return;
                                    }
                                }
                                Ok(None) => {
                                    break tonic::Status::unavailable("the POP ended the stream");
                                }
                                Err(st) => break st,
                            }
                        }
                    }
                    Err(st) => st,
                };
                let transport = std::error::Error::source(&ended).is_some();
                if !(transport || ended.code() == tonic::Code::Unavailable)
                    || retries >= CLIENT_RETRIES_MAX
                {
                    let _ = tx.send(Err(ended)).await;
                    return;
                }
                // Any POP serves a subscription: try the next one (this one
                // may be shutting down).
                i += 1;
                retries += 1;
                tokio::time::sleep(Duration::from_millis(backoff)).await;
                backoff = (backoff * 2).min(CLIENT_BACKOFF_MS_MAX);
            }
        });
        tokio_stream::wrappers::ReceiverStream::new(rx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pop(name: &str, coords: [f64; 2]) -> PopInfo {
        PopInfo {
            name: name.into(),
            endpoint: format!("http://127.0.0.1:1/{name}"),
            pid: 0,
            coords,
        }
    }

    #[test]
    fn client_picks_nearest_pop() {
        let pops = [
            pop("fra", [50.11, 8.68]),
            pop("iad", [39.04, -77.49]),
            pop("nrt", [35.76, 140.39]),
        ];
        let paris = [48.86, 2.35];
        let seoul = [37.57, 126.98];
        let boston = [42.36, -71.06];
        assert_eq!(by_distance(&pops, paris)[0].name, "fra");
        assert_eq!(by_distance(&pops, seoul)[0].name, "nrt");
        assert_eq!(by_distance(&pops, boston)[0].name, "iad");
        let d = distance_km([50.11, 8.68], [39.04, -77.49]);
        assert!(
            (6400.0..6700.0).contains(&d),
            "FRA-IAD is about 6,500 km, got {d}"
        );
    }
}
