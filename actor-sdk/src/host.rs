//! Safe wrappers over the `tern:actor/host` imports.
//!
//! On wasm32 they call the host. On other targets (host unit tests of an
//! actor's logic) they use local stand-ins, documented on each function.

use std::fmt;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::ActorError;

#[cfg(target_arch = "wasm32")]
use crate::bindings::tern::actor::host as imports;

/// Logging through the runtime's logs, tagged with the actor's address.
///
/// Prefer the `format!`-style macros [`trace!`](crate::trace),
/// [`debug!`](crate::debug), [`info!`](crate::info), [`warn!`](crate::warn)
/// and [`error!`](crate::error). Never use `println!`/`eprintln!` in an actor:
/// WASI stdio handles do not survive a snapshot/restore.
pub mod log {
    /// A log level.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
    pub enum Level {
        /// Very detailed.
        Trace,
        /// Debugging detail.
        Debug,
        /// Normal events.
        Info,
        /// Something unusual.
        Warn,
        /// Something failed.
        Error,
    }

    /// Log `message` at `level`. Off wasm32 it goes to stderr.
    pub fn log(level: Level, message: &str) {
        #[cfg(target_arch = "wasm32")]
        {
            use crate::bindings::tern::actor::host::Level as L;
            let l = match level {
                Level::Trace => L::Trace,
                Level::Debug => L::Debug,
                Level::Info => L::Info,
                Level::Warn => L::Warn,
                Level::Error => L::Error,
            };
            super::imports::log(l, message);
        }
        #[cfg(not(target_arch = "wasm32"))]
        eprintln!("[actor {level:?}] {message}");
    }

    /// Log at trace level.
    pub fn trace(message: &str) {
        log(Level::Trace, message)
    }
    /// Log at debug level.
    pub fn debug(message: &str) {
        log(Level::Debug, message)
    }
    /// Log at info level.
    pub fn info(message: &str) {
        log(Level::Info, message)
    }
    /// Log at warn level.
    pub fn warn(message: &str) {
        log(Level::Warn, message)
    }
    /// Log at error level.
    pub fn error(message: &str) {
        log(Level::Error, message)
    }
}

/// Log at trace level, `format!`-style: `trace!("x = {x}")`.
#[macro_export]
macro_rules! trace {
    ($($arg:tt)+) => { $crate::log::log($crate::log::Level::Trace, &::std::format!($($arg)+)) };
}
/// Log at debug level, `format!`-style.
#[macro_export]
macro_rules! debug {
    ($($arg:tt)+) => { $crate::log::log($crate::log::Level::Debug, &::std::format!($($arg)+)) };
}
/// Log at info level, `format!`-style.
#[macro_export]
macro_rules! info {
    ($($arg:tt)+) => { $crate::log::log($crate::log::Level::Info, &::std::format!($($arg)+)) };
}
/// Log at warn level, `format!`-style.
#[macro_export]
macro_rules! warn {
    ($($arg:tt)+) => { $crate::log::log($crate::log::Level::Warn, &::std::format!($($arg)+)) };
}
/// Log at error level, `format!`-style.
#[macro_export]
macro_rules! error {
    ($($arg:tt)+) => { $crate::log::log($crate::log::Level::Error, &::std::format!($($arg)+)) };
}

/// Wall-clock time in milliseconds since the Unix epoch, from the host.
/// Off wasm32: the system clock.
pub fn now_ms() -> u64 {
    #[cfg(target_arch = "wasm32")]
    {
        imports::now_ms()
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}

/// A random number from the host. Off wasm32: a xorshift generator seeded
/// from the clock (not for cryptography).
pub fn random_u64() -> u64 {
    #[cfg(target_arch = "wasm32")]
    {
        imports::random_u64()
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        use std::sync::atomic::{AtomicU64, Ordering};
        static STATE: AtomicU64 = AtomicU64::new(0);
        let mut x = STATE.load(Ordering::Relaxed);
        if x == 0 {
            x = now_ms() | 1;
        }
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        STATE.store(x, Ordering::Relaxed);
        x
    }
}

/// An actor's address: `type/id`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ActorAddress {
    /// The actor type (`player`).
    pub actor_type: String,
    /// The actor id within the type (`alice`).
    pub id: String,
}

impl fmt::Display for ActorAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.actor_type, self.id)
    }
}

/// This actor's own address. Off wasm32: `local/test`.
pub fn self_address() -> ActorAddress {
    #[cfg(target_arch = "wasm32")]
    {
        let (actor_type, id) = imports::self_address();
        ActorAddress { actor_type, id }
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        ActorAddress {
            actor_type: "local".into(),
            id: "test".into(),
        }
    }
}

/// The activation running the current turn.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Activation {
    /// The POP it runs at.
    pub pop: String,
    /// Its epoch: one higher with every new claim of the actor.
    pub epoch: u64,
}

/// The activation running this turn. Off wasm32: `local`, epoch 0.
pub fn activation() -> Activation {
    #[cfg(target_arch = "wasm32")]
    {
        let (pop, epoch) = imports::activation();
        Activation { pop, epoch }
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        Activation {
            pop: "local".into(),
            epoch: 0,
        }
    }
}

/// Call `method` on actor `actor_type/id` with raw bytes and wait for its
/// reply. The runtime refuses calls that would form a cycle. Off wasm32:
/// always fails with `unavailable`.
pub fn call_raw(
    actor_type: &str,
    id: &str,
    method: &str,
    payload: &[u8],
) -> Result<Vec<u8>, ActorError> {
    #[cfg(target_arch = "wasm32")]
    {
        imports::call(actor_type, id, method, payload).map_err(ActorError::from)
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        let _ = payload;
        Err(ActorError::unavailable(format!(
            "call to {actor_type}/{id}.{method}: actor calls need the tern runtime (not running in wasm)"
        )))
    }
}

/// Call `method` on actor `actor_type/id` with a JSON request and decode its
/// JSON reply (an empty reply decodes as `null`). Errors from the callee are
/// passed through; a request that does not encode or a reply that does not
/// decode as `Resp` gives `internal`.
pub fn call<Req: Serialize + ?Sized, Resp: DeserializeOwned>(
    actor_type: &str,
    id: &str,
    method: &str,
    req: &Req,
) -> Result<Resp, ActorError> {
    let payload = serde_json::to_vec(req).map_err(|e| {
        ActorError::internal(format!(
            "call to {actor_type}/{id}.{method}: request does not encode as JSON: {e}"
        ))
    })?;
    let reply = call_raw(actor_type, id, method, &payload)?;
    let bytes: &[u8] = if reply.is_empty() { b"null" } else { &reply };
    serde_json::from_slice(bytes).map_err(|e| {
        ActorError::internal(format!(
            "call to {actor_type}/{id}.{method}: reply is not the expected JSON: {e}"
        ))
    })
}

/// The method an alarm's turn runs: list the handler in [`actor!`](crate::actor)
/// as `json on_alarm as "~alarm"`, with
/// `fn on_alarm(&mut self, alarm: Alarm) -> Result<(), ActorError>`.
pub const ALARM_METHOD: &str = "~alarm";

/// A fired alarm, as its `~alarm` turn receives it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Alarm {
    /// Its id, as [`set_alarm`] returned it: the same on every delivery of
    /// this alarm (delivery is at least once).
    pub id: u64,
    /// The tag given to [`set_alarm`].
    pub tag: String,
    /// When it was due, ms since the Unix epoch.
    pub at_ms: u64,
}

/// Sets a durable alarm at `at_ms` (ms since the Unix epoch) carrying `tag`;
/// returns its id. It is committed with the current turn and fires as a
/// turn of the `~alarm` method (see [`Alarm`]). Off wasm32: returns
/// increasing ids and fires nothing.
pub fn set_alarm(at_ms: u64, tag: &str) -> Result<u64, ActorError> {
    #[cfg(target_arch = "wasm32")]
    {
        imports::set_alarm(at_ms, tag).map_err(ActorError::from)
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let _ = (at_ms, tag);
        Ok(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

/// Cancels alarm `id` with the current turn; false if it is not set.
/// Off wasm32: always false.
pub fn cancel_alarm(id: u64) -> bool {
    #[cfg(target_arch = "wasm32")]
    {
        imports::cancel_alarm(id)
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        let _ = id;
        false
    }
}

/// Publishes `payload` on `topic` to the actor's subscribers, released
/// once the current turn commits. Off wasm32: accepted and dropped.
pub fn publish(topic: &str, payload: &[u8]) -> Result<(), ActorError> {
    #[cfg(target_arch = "wasm32")]
    {
        imports::publish(topic, payload).map_err(ActorError::from)
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        let _ = (topic, payload);
        Ok(())
    }
}

/// Publishes `value` as JSON on `topic` (see [`publish`]).
pub fn publish_json<T: Serialize + ?Sized>(topic: &str, value: &T) -> Result<(), ActorError> {
    let bytes = serde_json::to_vec(value).map_err(|e| {
        ActorError::internal(format!(
            "event for topic {topic:?} does not encode as JSON: {e}"
        ))
    })?;
    publish(topic, &bytes)
}
