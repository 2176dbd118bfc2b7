//! Wire types of tern: the generated tonic/prost code for the gRPC services.
//!
//! This is the only crate that knows wire types. Other crates convert at
//! their edges (the runtime's server and client modules).

/// `tern.actor.v1`: the ActorService every POP serves.
pub mod actor {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("tern.actor.v1");
}

/// `tern.directory.v1`: the DirectoryService.
pub mod directory {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("tern.directory.v1");
}

pub mod tls;

/// W3C trace context (`traceparent`, `tracestate`) in gRPC metadata, through
/// the process's global propagator (none is set unless traces are
/// exported, and then these do nothing).
pub mod trace {
    use opentelemetry::propagation::{Extractor, Injector};
    use tonic::metadata::{KeyRef, MetadataKey, MetadataMap, MetadataValue};

    struct Inject<'a>(&'a mut MetadataMap);

    impl Injector for Inject<'_> {
        fn set(&mut self, key: &str, value: String) {
            if let (Ok(k), Ok(v)) = (
                MetadataKey::from_bytes(key.as_bytes()),
                MetadataValue::try_from(value.as_str()),
            ) {
                self.0.insert(k, v);
            }
        }
    }

    struct Extract<'a>(&'a MetadataMap);

    impl Extractor for Extract<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            self.0.get(key).and_then(|v| v.to_str().ok())
        }

        fn keys(&self) -> Vec<&str> {
            self.0
                .keys()
                .filter_map(|k| match k {
                    KeyRef::Ascii(k) => Some(k.as_str()),
                    KeyRef::Binary(_) => None,
                })
                .collect()
        }
    }

    /// Puts `cx`'s trace context into an outgoing request's metadata.
    pub fn inject(cx: &opentelemetry::Context, md: &mut MetadataMap) {
        opentelemetry::global::get_text_map_propagator(|p| p.inject_context(cx, &mut Inject(md)));
    }

    /// The trace context an incoming request carries (empty if none).
    pub fn extract(md: &MetadataMap) -> opentelemetry::Context {
        opentelemetry::global::get_text_map_propagator(|p| p.extract(&Extract(md)))
    }
}

/// The standard `grpc.health.v1.Health` service (its reporter sets what
/// it answers) and server reflection (`grpc.reflection.v1`) over tern's
/// descriptors, so grpcurl and standard health probes work. Neither needs
/// a token: they tell nothing about actors.
pub fn health_and_reflection() -> (
    tonic_health::server::HealthReporter,
    tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
    tonic_reflection::server::v1::ServerReflectionServer<
        impl tonic_reflection::server::v1::ServerReflection,
    >,
) {
    let (reporter, health) = tonic_health::server::health_reporter();
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .expect("tern's own descriptors are valid");
    (reporter, health, reflection)
}

/// The encoded `FileDescriptorSet` of tern's services, for gRPC server
/// reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/tern_descriptor.bin"));

use std::time::Duration;

/// Largest gRPC message a tern server or client accepts, in bytes.
pub const GRPC_MESSAGE_BYTES_MAX: usize = 64 << 20;

/// Largest component a POP accepts by default, bytes (`tern pop
/// --component-bytes-max`); well under [`GRPC_MESSAGE_BYTES_MAX`], so an
/// oversized deploy gets a clear answer instead of a transport error.
pub const COMPONENT_BYTES_MAX_DEFAULT: usize = 32 << 20;

/// Room a deploy request needs besides its component, bytes.
pub const DEPLOY_OVERHEAD_BYTES_MAX: usize = 1 << 20;

/// HTTP/2 keepalive ping interval on every tern channel and server, ms.
pub const KEEPALIVE_INTERVAL_MS: u64 = 1_000;

/// A keepalive ping unanswered this long closes the connection, ms: a dead
/// or frozen peer is noticed within interval + timeout.
pub const KEEPALIVE_TIMEOUT_MS: u64 = 2_000;

/// Time limit for opening a connection, ms.
pub const CONNECT_MS_MAX: u64 = 1_000;

/// An endpoint to `url` with tern's connection settings: connect timeout,
/// HTTP/2 keepalive (also while idle), no Nagle delay. An `https://` URL
/// needs `tls` (whom to trust, and possibly who we are); an `http://` one
/// ignores it.
pub fn endpoint_tls(
    url: &str,
    tls: Option<&tonic::transport::ClientTlsConfig>,
) -> Result<tonic::transport::Endpoint, String> {
    let e = endpoint(url)?;
    if !url.starts_with("https://") {
        return Ok(e);
    }
    let tls = tls.ok_or_else(|| {
        format!("`{url}` uses TLS: give the cluster's CA certificate (--ca, or the data directory's tls/ca.pem)")
    })?;
    e.tls_config(tls.clone())
        .map_err(|e| format!("TLS settings for `{url}`: {e}"))
}

/// The connections a server accepts on `listener`, with no Nagle delay.
///
/// `Server::builder().tcp_nodelay` applies only to listeners tonic binds
/// itself, not to an incoming stream: without this, a reply written in
/// several pieces on a connection that also carries a stream (a
/// subscription, a watch) waits for the peer's delayed ACK, about 40 ms.
pub fn incoming(listener: tokio::net::TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true))
}

/// An endpoint to `url` with tern's connection settings, without TLS
/// settings (see [`endpoint_tls`]).
pub fn endpoint(url: &str) -> Result<tonic::transport::Endpoint, String> {
    Ok(tonic::transport::Channel::from_shared(url.to_string())
        .map_err(|e| format!("bad endpoint `{url}`: {e}"))?
        .connect_timeout(Duration::from_millis(CONNECT_MS_MAX))
        .http2_keep_alive_interval(Duration::from_millis(KEEPALIVE_INTERVAL_MS))
        .keep_alive_timeout(Duration::from_millis(KEEPALIVE_TIMEOUT_MS))
        .keep_alive_while_idle(true)
        .tcp_nodelay(true))
}
