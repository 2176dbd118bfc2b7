//! The runtime's gRPC edge: the only module that knows proto and tonic
//! types. It serves the ActorService ([`server`]), forwards calls to other
//! POPs ([`peers`]) and links a POP to the DirectoryService ([`dirlink`]).
//!
//! Every channel it opens has a connect timeout and HTTP/2 keepalive (a
//! dead or frozen peer is detected within [`KEEPALIVE_INTERVAL_MS`] +
//! [`KEEPALIVE_TIMEOUT_MS`]), and every request a deadline, sent as
//! `grpc-timeout` so the receiver knows it too.

pub mod dirlink;
pub mod peers;
pub mod server;

use std::time::Duration;

use tern_proto::actor as pb;
use tonic::transport::{ClientTlsConfig, Endpoint};
use tonic::{Code, Status};

use crate::config::{Durability, Limits, Placement};
use crate::error::{ErrorKind, RuntimeError};

pub use dirlink::DirectoryLink;
pub use peers::GrpcPeers;
pub use server::{Caller, Security, serve, service};

pub use tern_proto::{GRPC_MESSAGE_BYTES_MAX, KEEPALIVE_INTERVAL_MS, KEEPALIVE_TIMEOUT_MS};

/// Concurrent requests served per connection.
pub const CONCURRENT_REQUESTS_PER_CONNECTION_MAX: usize = 4_096;

/// gRPC metadata key marking a "not here" answer to a forwarded call.
pub const NOT_HERE_METADATA: &str = "x-tern-not-here";

/// The gRPC code for an error kind.
pub fn code_of(kind: ErrorKind) -> Code {
    match kind {
        ErrorKind::NotFound => Code::NotFound,
        ErrorKind::InvalidArgument => Code::InvalidArgument,
        ErrorKind::ResourceExhausted => Code::ResourceExhausted,
        ErrorKind::Aborted => Code::Aborted,
        ErrorKind::FailedPrecondition => Code::FailedPrecondition,
        ErrorKind::Unavailable => Code::Unavailable,
        ErrorKind::DeadlineExceeded => Code::DeadlineExceeded,
        ErrorKind::DataLoss => Code::DataLoss,
        ErrorKind::Internal => Code::Internal,
        ErrorKind::Unauthenticated => Code::Unauthenticated,
        ErrorKind::PermissionDenied => Code::PermissionDenied,
    }
}

/// The error kind of a gRPC code (codes tern never sends map to the
/// nearest kind by what the caller should do).
pub fn kind_of(code: Code) -> ErrorKind {
    match code {
        Code::NotFound | Code::Unimplemented => ErrorKind::NotFound,
        Code::InvalidArgument | Code::OutOfRange | Code::AlreadyExists => {
            ErrorKind::InvalidArgument
        }
        Code::ResourceExhausted => ErrorKind::ResourceExhausted,
        Code::Aborted => ErrorKind::Aborted,
        Code::FailedPrecondition => ErrorKind::FailedPrecondition,
        Code::Unauthenticated => ErrorKind::Unauthenticated,
        Code::PermissionDenied => ErrorKind::PermissionDenied,
        Code::Unavailable | Code::Cancelled => ErrorKind::Unavailable,
        Code::DeadlineExceeded => ErrorKind::DeadlineExceeded,
        Code::DataLoss => ErrorKind::DataLoss,
        Code::Ok | Code::Unknown | Code::Internal => ErrorKind::Internal,
    }
}

impl From<RuntimeError> for Status {
    fn from(e: RuntimeError) -> Self {
        Status::new(code_of(e.kind()), e.to_string())
    }
}

/// The error a forwarding POP reconstructs from a peer's status (a "not
/// here" answer is handled before this).
pub fn from_peer(actor: &str, pop: &str, s: Status) -> RuntimeError {
    if std::error::Error::source(&s).is_some() {
        // The status came from the transport, not from the peer.
        return RuntimeError::Transport(format!("POP {pop} unreachable: {}", s.message()));
    }
    match s.code() {
        Code::Unknown | Code::Cancelled => {
            RuntimeError::Transport(format!("{actor} at POP {pop}: {}", s.message()))
        }
        Code::DeadlineExceeded => RuntimeError::DeadlineExceeded(format!(
            "{actor} at POP {pop}: the call's deadline passed: {}",
            s.message()
        )),
        code => RuntimeError::Remote {
            kind: kind_of(code),
            message: s.message().to_string(),
        },
    }
}

/// An endpoint to `url` with tern's connection settings (connect timeout,
/// keepalive) and, for an `https://` URL, `tls`.
pub fn endpoint(url: &str, tls: Option<&ClientTlsConfig>) -> Result<Endpoint, RuntimeError> {
    tern_proto::endpoint_tls(url, tls).map_err(RuntimeError::InvalidArgument)
}

/// Parses a `grpc-timeout` header value (`<digits><unit>`, unit one of
/// `H M S m u n`). `None` if absent or malformed.
pub fn parse_grpc_timeout(v: &str) -> Option<Duration> {
    if v.len() < 2 || v.len() > 9 {
        return None;
    }
    let (digits, unit) = v.split_at(v.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The deadline a request carries, as a duration from now.
pub fn request_timeout<T>(req: &tonic::Request<T>) -> Option<Duration> {
    req.metadata()
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_grpc_timeout)
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

/// Wire limits to the runtime's (zero means default; not yet validated).
pub fn limits_from_pb(l: Option<pb::Limits>) -> Limits {
    let l = l.unwrap_or_default();
    Limits {
        turn_cpu_ms_max: l.turn_cpu_ms_max,
        memory_bytes_max: l.memory_bytes_max,
        payload_bytes_max: l.payload_bytes_max,
        mailbox_depth_max: l.mailbox_depth_max,
        idle_ms: l.idle_ms,
        idempotency_ms: l.idempotency_ms,
        idempotency_keys_max: l.idempotency_keys_max,
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
        idempotency_ms: l.idempotency_ms,
        idempotency_keys_max: l.idempotency_keys_max,
    }
}

/// Wire placement to the runtime's (absent: defaults).
pub fn placement_from_pb(p: Option<pb::Placement>) -> Placement {
    let d = Placement::default();
    let pick = |v: u64, d: u64| if v == 0 { d } else { v };
    match p {
        None => d,
        Some(p) => Placement {
            follow_caller: p.follow_caller,
            window: pick(p.window.into(), d.window.into()) as u32,
            share_pct: pick(p.share_pct.into(), d.share_pct.into()) as u32,
            idle_move_ms: pick(p.idle_move_ms, d.idle_move_ms),
        },
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

/// Puts the current span's trace context into an outgoing request, so the
/// receiver's spans join the same trace.
pub(crate) fn inject_trace(md: &mut tonic::metadata::MetadataMap) {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    tern_proto::trace::inject(&tracing::Span::current().context(), md);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_kinds_map_to_codes_and_back() {
        for k in ErrorKind::ALL {
            assert_eq!(kind_of(code_of(k)), k, "{k:?}");
            assert_eq!(ErrorKind::from_u8(k.to_u8()), k);
        }
    }

    #[test]
    fn grpc_timeout_header_parses() {
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("3S"), Some(Duration::from_secs(3)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("5u"), Some(Duration::from_micros(5)));
        for bad in ["", "m", "12", "12x", "-1m", "1234567890m"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad}");
        }
    }
}
