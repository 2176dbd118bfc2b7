//! # tern-actor-sdk
//!
//! The guest SDK for [tern](https://example.invalid/tern) actors.
//!
//! A tern actor is a WebAssembly component that exports one function,
//! `handle(method, payload) -> result<list<u8>, actor-error>` (see the WIT
//! package `tern:actor` in `wit/actor.wit`). The runtime persists the actor's
//! whole linear memory between calls, so **state lives in plain Rust values**:
//! no serialization code, no storage API. Each call runs as one atomic turn:
//! if it traps (panics, runs out of CPU or memory) the runtime puts the memory
//! back to what it was before the call.
//!
//! ## Writing an actor
//!
//! An actor is a struct that implements [`Default`] (its state on the very
//! first call) and a set of methods, listed in the [`actor!`] macro:
//!
//! ```
//! use serde::{Deserialize, Serialize};
//! use tern_actor_sdk::{ActorError, actor};
//!
//! #[derive(Default, Serialize, Deserialize)]
//! #[serde(default)]
//! pub struct Counter {
//!     value: u64,
//! }
//!
//! #[derive(Deserialize)]
//! pub struct Incr {
//!     by: u64,
//! }
//!
//! #[derive(Serialize)]
//! pub struct Value {
//!     value: u64,
//! }
//!
//! impl Counter {
//!     /// `json`: the payload is decoded from JSON into the argument, the
//!     /// reply is encoded as JSON.
//!     fn incr(&mut self, req: Incr) -> Result<Value, ActorError> {
//!         self.value = self
//!             .value
//!             .checked_add(req.by)
//!             .ok_or_else(|| ActorError::failed_precondition("counter would overflow"))?;
//!         tern_actor_sdk::debug!("counter is now {}", self.value);
//!         Ok(Value { value: self.value })
//!     }
//!
//!     /// `json0`: no argument; the payload is ignored.
//!     fn get(&mut self) -> Result<Value, ActorError> {
//!         Ok(Value { value: self.value })
//!     }
//!
//!     /// `raw`: bytes in, bytes out.
//!     fn echo(&mut self, payload: &[u8]) -> Result<Vec<u8>, ActorError> {
//!         Ok(payload.to_vec())
//!     }
//! }
//!
//! actor!(Counter {
//!     json incr,
//!     json0 get,
//!     raw echo,
//!     json incr as "add",   // the same method under a second wire name
//! });
//!
//! # fn main() {
//! // Outside WebAssembly the dispatcher can be driven directly (unit tests):
//! use tern_actor_sdk::Actor;
//! let mut c = Counter::default();
//! assert_eq!(c.dispatch("incr", br#"{"by": 2}"#).unwrap(), br#"{"value":2}"#);
//! assert_eq!(c.dispatch("get", b"").unwrap(), br#"{"value":2}"#);
//! assert_eq!(c.dispatch("echo", b"\x00hi").unwrap(), b"\x00hi");
//! // What an upgrade does: `save` in the old code, `load` in the new one.
//! let saved = c.save().unwrap();
//! assert_eq!(Counter::load(&saved).unwrap().dispatch("get", b"").unwrap(), br#"{"value":2}"#);
//! let err = c.dispatch("nope", b"").unwrap_err();
//! assert_eq!(err.kind, tern_actor_sdk::ErrorKind::NotFound);
//! assert!(err.message.contains("known methods: incr, get, echo, add"));
//! # }
//! ```
//!
//! ### Changing the code
//!
//! The runtime persists the actor's memory, which belongs to one exact
//! build. When a type is redeployed, each actor moves to the new code by
//! state transfer: the old build's `save` export writes the actor struct
//! as JSON (serde), the new build's `load` export reads it into its own
//! struct. So the struct derives `Serialize` and `Deserialize`; with
//! `#[serde(default)]` on it, fields added (or removed) later and any
//! change of methods need no code. For a change serde cannot bridge
//! (a renamed field, a new shape), name a function that builds the new
//! state from the old JSON: `actor!(Counter { ... } migrate Counter::migrate)`,
//! with `fn migrate(old: serde_json::Value) -> Result<Counter, ActorError>`.
//!
//! ### Method kinds
//!
//! | kind    | signature                                                        | payload |
//! |---------|------------------------------------------------------------------|---------|
//! | `json`  | `fn m(&mut self, req: Req) -> Result<Resp, ActorError>`          | JSON, decoded into `Req: DeserializeOwned`; an **empty payload decodes as `null`**, so `Req = ()` or `Option<T>` accept it |
//! | `json0` | `fn m(&mut self) -> Result<Resp, ActorError>`                    | ignored |
//! | `raw`   | `fn m(&mut self, payload: &[u8]) -> Result<Vec<u8>, ActorError>` | passed through |
//!
//! `Resp: Serialize` is encoded with `serde_json`. The wire name of a method
//! is its Rust name (`incr_then_panic` stays `incr_then_panic`) unless an
//! `as "wire-name"` suffix is given.
//!
//! ### Errors
//!
//! Methods return [`ActorError`], which maps one to one onto the WIT
//! `actor-error` record (and from there onto a gRPC status in the runtime):
//!
//! | constructor | WIT `error-kind` | gRPC |
//! |---|---|---|
//! | [`ActorError::not_found`] | `not-found` | NOT_FOUND |
//! | [`ActorError::invalid_argument`] | `invalid-argument` | INVALID_ARGUMENT |
//! | [`ActorError::failed_precondition`] | `failed-precondition` | FAILED_PRECONDITION |
//! | [`ActorError::resource_exhausted`] | `resource-exhausted` | RESOURCE_EXHAUSTED |
//! | [`ActorError::unavailable`] | `unavailable` | UNAVAILABLE |
//! | [`ActorError::aborted`] | `aborted` | ABORTED |
//! | [`ActorError::internal`] | `internal` | INTERNAL |
//!
//! The dispatcher itself produces: `not-found` for an unknown method (the
//! message names it and lists the known ones), `invalid-argument` when the
//! payload does not decode (with serde's message), `internal` when the reply
//! does not encode, and `failed-precondition` if `handle` is re-entered while
//! a call is running (the runtime refuses call cycles, so this should not
//! happen). **Returning an error does not roll the turn back**: whatever the
//! method changed before returning `Err` stays. Panic to roll back.
//!
//! ### Panics
//!
//! On the first call the SDK installs a panic hook that sends the panic
//! message and location to the host log at `error` level (WASI stdio must not
//! be used: its handles do not survive a snapshot/restore). The panic then
//! aborts, the guest traps, and the runtime rolls the turn back and answers
//! `aborted`.
//!
//! ## Host functions
//!
//! - logging: [`trace!`], [`debug!`], [`info!`], [`warn!`], [`error!`]
//!   (`format!`-style), or [`log::log`] / [`log::info`] etc. with a `&str`;
//! - [`now_ms`], [`random_u64`], [`self_address`], [`activation`];
//! - [`call`] (JSON) and [`call_raw`] (bytes) to call another actor.
//!
//! On non-wasm targets (unit tests of the actor's logic on the host) these use
//! local stand-ins: logs go to stderr, `now_ms` reads the system clock,
//! `random_u64` is a seeded xorshift, `self_address` is `("local", "test")`
//! and `call` fails with `unavailable`.
//!
//! ## Building
//!
//! The actor crate is a `cdylib` (add `rlib` too to unit-test it on the host)
//! built for `wasm32-wasip2`:
//!
//! ```text
//! [lib]
//! crate-type = ["cdylib", "rlib"]
//! ```
//!
//! ```text
//! CARGO_TARGET_WASM32_WASIP2_RUSTFLAGS="-C link-arg=-zstack-size=65536" \
//!     cargo build --target wasm32-wasip2 --release
//! ```
//!
//! `-zstack-size=65536` gives the guest a 64 KiB shadow stack instead of
//! Rust's default 1 MiB, so a small actor starts at 128 KiB of linear memory
//! (two 64 KiB pages) instead of about 1.1 MiB, which is what every snapshot
//! and every activation pays for. `tern_cli::build::build_guest` sets it
//! for you; an actor crate can also make it its own default with a build
//! script (see `examples/counter/build.rs`) that prints
//! `cargo::rustc-link-arg-cdylib=-zstack-size=65536` when
//! `CARGO_CFG_TARGET_ARCH` is `wasm32`. Deep recursion then needs care: a
//! stack overflow traps (and rolls the turn back).
//!
//! Do not use threads, `std::io::stdout`/`stderr`/`println!`, files or other
//! WASI handles in an actor: host resources do not survive a restore.

#![warn(missing_docs)]

extern crate self as tern_actor_sdk;

use std::fmt;

pub use serde;
pub use serde_json;

/// The generated WIT bindings (wit-bindgen). Not a stable API: use the
/// wrappers of this crate.
#[doc(hidden)]
#[allow(missing_docs, clippy::all, unsafe_op_in_unsafe_fn)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "wit",
        world: "actor",
        pub_export_macro: true,
        export_macro_name: "export",
        default_bindings_module: "tern_actor_sdk::bindings",
        runtime_path: "tern_actor_sdk::__private::wit_bindgen::rt",
    });
}

#[doc(hidden)]
pub mod __private {
    pub use crate::dispatch::kinds;
    pub use wit_bindgen;
}

mod dispatch;
mod host;
mod panic_hook;

pub use dispatch::{Actor, ActorCell};
pub use host::{
    ALARM_METHOD, Activation, ActorAddress, Alarm, activation, call, call_raw, cancel_alarm, log,
    now_ms, publish, publish_json, random_u64, self_address, set_alarm,
};

/// What kind of failure an [`ActorError`] is. Mirrors the WIT `error-kind`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The method (or the called actor's type) does not exist: NOT_FOUND.
    NotFound,
    /// The payload could not be decoded or is invalid: INVALID_ARGUMENT.
    InvalidArgument,
    /// The actor refused the call in its current state: FAILED_PRECONDITION.
    FailedPrecondition,
    /// A limit was hit (payload, mailbox, CPU, memory): RESOURCE_EXHAUSTED.
    ResourceExhausted,
    /// Transient; retry later, possibly elsewhere: UNAVAILABLE.
    Unavailable,
    /// The callee trapped and its turn was rolled back: ABORTED.
    Aborted,
    /// Anything else: INTERNAL.
    Internal,
}

impl ErrorKind {
    /// The WIT name of the kind (`not-found`, `invalid-argument`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::NotFound => "not-found",
            ErrorKind::InvalidArgument => "invalid-argument",
            ErrorKind::FailedPrecondition => "failed-precondition",
            ErrorKind::ResourceExhausted => "resource-exhausted",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Aborted => "aborted",
            ErrorKind::Internal => "internal",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error with a message a person can act on. Mirrors the WIT
/// `actor-error` record; the runtime maps [`ErrorKind`] onto a gRPC status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActorError {
    /// What the caller should do next.
    pub kind: ErrorKind,
    /// Human-readable detail.
    pub message: String,
}

macro_rules! ctor {
    ($($(#[$doc:meta])* $name:ident => $kind:ident,)*) => {$(
        $(#[$doc])*
        pub fn $name(message: impl Into<String>) -> Self {
            Self::new(ErrorKind::$kind, message)
        }
    )*};
}

impl ActorError {
    /// An error of any kind.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    ctor! {
        /// `not-found`: the method or the called actor's type does not exist.
        not_found => NotFound,
        /// `invalid-argument`: the payload is malformed or invalid.
        invalid_argument => InvalidArgument,
        /// `failed-precondition`: refused in the actor's current state.
        failed_precondition => FailedPrecondition,
        /// `resource-exhausted`: a limit was hit.
        resource_exhausted => ResourceExhausted,
        /// `unavailable`: transient, retry later.
        unavailable => Unavailable,
        /// `aborted`: a callee trapped and its turn was rolled back.
        aborted => Aborted,
        /// `internal`: anything else.
        internal => Internal,
    }
}

impl fmt::Display for ActorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)
    }
}

impl std::error::Error for ActorError {}

use bindings::tern::actor::types as wit;

impl From<wit::ErrorKind> for ErrorKind {
    fn from(k: wit::ErrorKind) -> Self {
        match k {
            wit::ErrorKind::NotFound => ErrorKind::NotFound,
            wit::ErrorKind::InvalidArgument => ErrorKind::InvalidArgument,
            wit::ErrorKind::FailedPrecondition => ErrorKind::FailedPrecondition,
            wit::ErrorKind::ResourceExhausted => ErrorKind::ResourceExhausted,
            wit::ErrorKind::Unavailable => ErrorKind::Unavailable,
            wit::ErrorKind::Aborted => ErrorKind::Aborted,
            wit::ErrorKind::Internal => ErrorKind::Internal,
        }
    }
}

impl From<ErrorKind> for wit::ErrorKind {
    fn from(k: ErrorKind) -> Self {
        match k {
            ErrorKind::NotFound => wit::ErrorKind::NotFound,
            ErrorKind::InvalidArgument => wit::ErrorKind::InvalidArgument,
            ErrorKind::FailedPrecondition => wit::ErrorKind::FailedPrecondition,
            ErrorKind::ResourceExhausted => wit::ErrorKind::ResourceExhausted,
            ErrorKind::Unavailable => wit::ErrorKind::Unavailable,
            ErrorKind::Aborted => wit::ErrorKind::Aborted,
            ErrorKind::Internal => wit::ErrorKind::Internal,
        }
    }
}

impl From<wit::ActorError> for ActorError {
    fn from(e: wit::ActorError) -> Self {
        Self {
            kind: e.kind.into(),
            message: e.message,
        }
    }
}

impl From<ActorError> for wit::ActorError {
    fn from(e: ActorError) -> Self {
        Self {
            kind: e.kind.into(),
            message: e.message,
        }
    }
}

/// The README's Rust examples, compiled and run as doctests so they stay
/// true.
#[doc = include_str!("../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
