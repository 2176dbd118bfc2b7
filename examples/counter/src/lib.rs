//! `counter`: the example tern actor, and the runtime's test subject.
//!
//! State lives in a plain struct ([`Counter`]) owned by the SDK's
//! [`actor!`](tern_actor_sdk::actor) macro; the runtime persists it by
//! persisting linear memory.
//!
//! ## Methods
//!
//! | method | payload | reply |
//! |---|---|---|
//! | `incr` | `{"by": n}` | `{"value": v}` |
//! | `get` | (ignored) | `{"value": v}` |
//! | `put` | `{"key": k, "len": n, "fill": b}` | `{"entries": n, "bytes": total}`; stores `n` bytes of value `b` under `k` |
//! | `remove` | `{"key": k}` | `{"removed": bool, "entries": n, "bytes": total}` |
//! | `digest` | (ignored) | `{"entries": n, "bytes": total, "hash": h}` |
//! | `tick` | `{"by": n}` | `{"value": v, "epoch": e, "pop": p}`; like `incr`, and records `(epoch, value)` in the actor's history |
//! | `history` | (ignored) | `{"entries": [[epoch, value], ...]}`, oldest first |
//! | `apply` | `{"id": n}` | `{"count": c}`; records the call id `n` (the simulator's audit trail) |
//! | `applied` | (ignored) | `{"ids": [n, ...]}`, every recorded id in order |
//!
//! `hash` is FNV-1a 64 over the entries sorted by key, each fed as
//! `key_len: u64 LE, key bytes, value_len: u64 LE, value bytes` ([`digest_of`]).
//! `digest` also allocates (it sorts a copy of the keys), so restore tests can
//! check that the allocator's state survived.
//!
//! ## Test-only methods
//!
//! They exist so the runtime's limit and rollback tests have something to hit:
//!
//! | method | payload | behaviour |
//! |---|---|---|
//! | `incr_then_panic` | `{"by": n}` | adds `n` to the counter, then panics: the runtime must roll the change back (`get` shows the old value) and answer `aborted` |
//! | `spin` | (ignored) | adds 1 to the counter, then loops forever doing opaque work: the CPU budget must stop it and roll the change back |
//! | `grow` | `{"mb": n}` | allocates n MiB, writes every byte (0xA5, so no page is all-zero) and keeps it; replies `{"held_mb": total}`. Past the memory cap the allocation fails and the actor panics (a trap): the turn rolls back |
//! | `print` | (ignored) | adds 1, then `println!`s to WASI stdout: the runtime refuses the turn (a handle to stdout cannot survive a restore) and rolls it back |
//! | `echo` | raw bytes | the same bytes |
//! | `call_other` | `{"type": t, "id": i, "method": m, "payload": any JSON (optional), "by": n (optional)}` | adds `n` (default 0) to the counter, then calls `t/i.m` through the host with `payload` encoded as JSON (empty if absent) and returns the callee's reply bytes verbatim; the callee's error is passed through (an `unavailable` one rolls the turn back, the addition with it) |
//! | `set_alarm` | `{"in_ms": n, "tag": t}` or `{"at_ms": n, "tag": t}` | `{"id": i, "at_ms": n}`; a durable alarm (tag `repeat:<ms>` re-arms itself) |
//! | `set_alarm_then_panic` | as `set_alarm` | sets the alarm, then panics: the alarm must not survive the rollback |
//! | `cancel_alarm` | `{"id": i}` | `true` if it was set |
//! | `~alarm` | (from the runtime) | records the alarm once per id, and publishes `[id, tag, due_ms, delivered_ms, pop]` on topic `alarms` |
//! | `fired` | (ignored) | `{"fired": [[id, tag, due_ms, delivered_ms], ...]}` |
//! | `publish` | `{"topic": t, "n": n, "prefix": p}` | `{"value": v}`; publishes `n` events `"<p><i>"` and adds `n` |
//! | `publish_then_panic` | as `publish` | publishes, then panics: nothing may be published |
//! | `unavailable_below` | `{"min": n}` | `{"value": v}` if the counter is at least `n`; else answers `unavailable` (so a caller's retry can succeed later) |

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, DefaultHasher};

use serde::{Deserialize, Serialize};
use tern_actor_sdk::{ActorError, actor};

/// `HashMap` with a fixed-key hasher: no WASI random import, same layout on
/// every run.
type Map = HashMap<String, Vec<u8>, BuildHasherDefault<DefaultHasher>>;

/// The actor's whole state.
#[derive(Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Counter {
    value: u64,
    entries: Map,
    bytes: u64,
    hog: Vec<Vec<u8>>,
    history: Vec<(u64, u64)>,
    applied: Vec<u64>,
    /// Alarms delivered: (id, tag, due at ms, delivered at ms), each id once.
    fired: Vec<(u64, String, u64, u64)>,
}

/// `set_alarm`'s request: due `in_ms` from now (or at `at_ms`).
#[derive(Deserialize)]
pub struct SetAlarm {
    /// Due this many ms from now.
    #[serde(default)]
    pub in_ms: u64,
    /// Due at this time (ms since the Unix epoch), if given.
    #[serde(default)]
    pub at_ms: Option<u64>,
    /// The alarm's tag.
    #[serde(default)]
    pub tag: String,
}

/// `set_alarm`'s reply.
#[derive(Serialize)]
pub struct AlarmSet {
    /// The alarm's id.
    pub id: u64,
    /// When it is due.
    pub at_ms: u64,
}

/// `cancel_alarm`'s request.
#[derive(Deserialize)]
pub struct CancelAlarm {
    /// The alarm's id.
    pub id: u64,
}

/// `fired`'s reply.
#[derive(Serialize)]
pub struct Fired {
    /// (id, tag, due at ms, delivered at ms), oldest first.
    pub fired: Vec<(u64, String, u64, u64)>,
}

/// `publish`'s request: `n` events on `topic`, payloads `"<prefix><i>"`.
#[derive(Deserialize)]
pub struct Publish {
    /// The topic.
    pub topic: String,
    /// How many events.
    pub n: u32,
    /// Payload prefix.
    #[serde(default)]
    pub prefix: String,
}

/// `apply` request: a call id.
#[derive(Deserialize)]
pub struct Apply {
    /// The caller's id for this call.
    pub id: u64,
}

/// `apply` reply.
#[derive(Serialize, Deserialize, Debug, PartialEq, Eq)]
pub struct Applied {
    /// How many ids have been applied, this one included.
    pub count: u64,
}

/// `applied` reply.
#[derive(Serialize, Deserialize, Debug, PartialEq, Eq)]
pub struct AppliedIds {
    /// Every id applied, in order.
    pub ids: Vec<u64>,
}

/// `incr` / `incr_then_panic` request.
#[derive(Deserialize)]
pub struct Incr {
    /// Amount to add.
    pub by: u64,
}

/// Most `tick` entries kept in the history.
pub const HISTORY_ENTRIES_MAX: usize = 10_000;

/// `tick` reply.
#[derive(Serialize, Deserialize, Debug, PartialEq, Eq)]
pub struct Tick {
    /// The counter after the turn.
    pub value: u64,
    /// The epoch of the activation that ran it.
    pub epoch: u64,
    /// The POP that ran it.
    pub pop: String,
}

/// `history` reply.
#[derive(Serialize, Deserialize, Debug, PartialEq, Eq)]
pub struct History {
    /// `(epoch, value)` per tick, oldest first.
    pub entries: Vec<(u64, u64)>,
}

/// `incr` / `get` reply.
#[derive(Serialize, Deserialize, Debug, PartialEq, Eq)]
pub struct Value {
    /// The counter.
    pub value: u64,
}

/// `put` request.
#[derive(Deserialize)]
pub struct Put {
    /// Map key.
    pub key: String,
    /// Number of bytes to store.
    pub len: usize,
    /// The byte value to fill them with.
    #[serde(default)]
    pub fill: u8,
}

/// `remove` request.
#[derive(Deserialize)]
pub struct Remove {
    /// Map key.
    pub key: String,
}

/// `put` reply.
#[derive(Serialize, Deserialize, Debug, PartialEq, Eq)]
pub struct Sizes {
    /// Number of entries.
    pub entries: u64,
    /// Total value bytes.
    pub bytes: u64,
}

/// `remove` reply.
#[derive(Serialize, Deserialize, Debug, PartialEq, Eq)]
pub struct Removed {
    /// Whether the key was there.
    pub removed: bool,
    /// Number of entries left.
    pub entries: u64,
    /// Total value bytes left.
    pub bytes: u64,
}

/// `digest` reply.
#[derive(Serialize, Deserialize, Debug, PartialEq, Eq)]
pub struct Digest {
    /// Number of entries.
    pub entries: u64,
    /// Total value bytes.
    pub bytes: u64,
    /// [`digest_of`] the entries.
    pub hash: u64,
}

/// `grow` request.
#[derive(Deserialize)]
pub struct Grow {
    /// MiB to allocate and keep.
    pub mb: usize,
}

/// `grow` reply.
#[derive(Serialize, Deserialize, Debug, PartialEq, Eq)]
pub struct Held {
    /// MiB held by all `grow` calls so far.
    pub held_mb: u64,
}

/// `call_other` request.
#[derive(Deserialize)]
pub struct CallOther {
    /// Callee type.
    #[serde(rename = "type")]
    pub actor_type: String,
    /// Callee id.
    pub id: String,
    /// Callee method.
    pub method: String,
    /// Payload, sent as JSON; absent means an empty payload.
    #[serde(default)]
    pub payload: Option<serde_json::Value>,
    /// Added to the counter before the call.
    #[serde(default)]
    pub by: u64,
}

/// `unavailable_below` request.
#[derive(Deserialize)]
pub struct Min {
    /// The least counter value that answers.
    pub min: u64,
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

fn fnv(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    h
}

/// The `digest` hash: FNV-1a 64 over the entries sorted by key, each as
/// `key_len u64 LE, key, value_len u64 LE, value`. Usable by tests on the host.
pub fn digest_of<'a>(entries: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> u64 {
    let mut sorted: Vec<(&str, &[u8])> = entries.into_iter().collect();
    sorted.sort_unstable_by(|a, b| a.0.cmp(b.0));
    let mut h = FNV_OFFSET;
    for (k, v) in sorted {
        h = fnv(h, &(k.len() as u64).to_le_bytes());
        h = fnv(h, k.as_bytes());
        h = fnv(h, &(v.len() as u64).to_le_bytes());
        h = fnv(h, v);
    }
    h
}

impl Counter {
    fn sizes(&self) -> Sizes {
        Sizes {
            entries: self.entries.len() as u64,
            bytes: self.bytes,
        }
    }

    fn incr(&mut self, req: Incr) -> Result<Value, ActorError> {
        self.value = self.value.checked_add(req.by).ok_or_else(|| {
            ActorError::failed_precondition(format!(
                "incr: {} + {} overflows u64",
                self.value, req.by
            ))
        })?;
        Ok(Value { value: self.value })
    }

    fn get(&mut self) -> Result<Value, ActorError> {
        Ok(Value { value: self.value })
    }

    /// Like `incr`, and records `(epoch, value)` of the activation that ran
    /// the turn in the actor's own history (for single-activation audits).
    fn tick(&mut self, req: Incr) -> Result<Tick, ActorError> {
        let v = self.incr(req)?;
        let a = tern_actor_sdk::activation();
        if self.history.len() >= HISTORY_ENTRIES_MAX {
            self.history.remove(0);
        }
        self.history.push((a.epoch, v.value));
        Ok(Tick {
            value: v.value,
            epoch: a.epoch,
            pop: a.pop,
        })
    }

    /// Records a call id (the simulator's audit trail).
    fn apply(&mut self, req: Apply) -> Result<Applied, ActorError> {
        self.applied.push(req.id);
        Ok(Applied {
            count: self.applied.len() as u64,
        })
    }

    /// Every id `apply` recorded, in order.
    fn applied(&mut self) -> Result<AppliedIds, ActorError> {
        Ok(AppliedIds {
            ids: self.applied.clone(),
        })
    }

    /// The `(epoch, value)` of every `tick`, oldest first.
    fn history(&mut self) -> Result<History, ActorError> {
        Ok(History {
            entries: self.history.clone(),
        })
    }

    fn put(&mut self, req: Put) -> Result<Sizes, ActorError> {
        let value = vec![req.fill; req.len];
        if let Some(old) = self.entries.insert(req.key, value) {
            self.bytes -= old.len() as u64;
        }
        self.bytes += req.len as u64;
        Ok(self.sizes())
    }

    fn remove(&mut self, req: Remove) -> Result<Removed, ActorError> {
        let old = self.entries.remove(&req.key);
        if let Some(old) = &old {
            self.bytes -= old.len() as u64;
        }
        Ok(Removed {
            removed: old.is_some(),
            entries: self.entries.len() as u64,
            bytes: self.bytes,
        })
    }

    fn digest(&mut self) -> Result<Digest, ActorError> {
        let hash = digest_of(self.entries.iter().map(|(k, v)| (k.as_str(), v.as_slice())));
        let Sizes { entries, bytes } = self.sizes();
        Ok(Digest {
            entries,
            bytes,
            hash,
        })
    }

    fn incr_then_panic(&mut self, req: Incr) -> Result<Value, ActorError> {
        self.value = self.value.wrapping_add(req.by);
        // Make sure the store really happens before the panic.
        std::hint::black_box(&mut self.value);
        panic!(
            "incr_then_panic: deliberate panic after adding {} (value now {})",
            req.by, self.value
        );
    }

    /// Writes a line to WASI stdout with `println!` (which actors should
    /// not do: the runtime refuses the turn with a clear error).
    fn print(&mut self) -> Result<Value, ActorError> {
        self.value = self.value.wrapping_add(1);
        println!("counter: value is now {}", self.value);
        Ok(Value { value: self.value })
    }

    fn unavailable_below(&mut self, req: Min) -> Result<Value, ActorError> {
        if self.value < req.min {
            return Err(ActorError::unavailable(format!(
                "the counter is {}, below {}; try again later",
                self.value, req.min
            )));
        }
        Ok(Value { value: self.value })
    }

    fn spin(&mut self) -> Result<Value, ActorError> {
        self.value = self.value.wrapping_add(1);
        std::hint::black_box(&mut self.value);
        let mut i: u64 = 0;
        loop {
            i = std::hint::black_box(i.wrapping_add(1));
        }
    }

    fn grow(&mut self, req: Grow) -> Result<Held, ActorError> {
        let len = req.mb.checked_mul(1 << 20).ok_or_else(|| {
            ActorError::invalid_argument(format!("grow: {} MiB is too large", req.mb))
        })?;
        let mut block: Vec<u8> = Vec::new();
        if let Err(e) = block.try_reserve_exact(len) {
            // Trap (through the SDK's panic hook, which logs the cause) so the
            // runtime rolls the turn back, as it would for any allocation failure.
            panic!("grow: cannot allocate {} MiB: {e}", req.mb);
        }
        block.resize(len, 0xA5);
        self.hog.push(block);
        let held: usize = self.hog.iter().map(Vec::len).sum();
        Ok(Held {
            held_mb: (held >> 20) as u64,
        })
    }

    fn echo(&mut self, payload: &[u8]) -> Result<Vec<u8>, ActorError> {
        Ok(payload.to_vec())
    }

    fn call_other(&mut self, payload: &[u8]) -> Result<Vec<u8>, ActorError> {
        let req: CallOther = serde_json::from_slice(payload)
            .map_err(|e| ActorError::invalid_argument(format!("call_other: bad request: {e}")))?;
        let body = match &req.payload {
            Some(v) => serde_json::to_vec(v)
                .map_err(|e| ActorError::internal(format!("call_other: {e}")))?,
            None => Vec::new(),
        };
        self.value = self.value.wrapping_add(req.by);
        tern_actor_sdk::debug!("call_other -> {}/{}.{}", req.actor_type, req.id, req.method);
        tern_actor_sdk::call_raw(&req.actor_type, &req.id, &req.method, &body)
    }
}

impl Counter {
    /// Sets an alarm; see [`SetAlarm`].
    fn set_alarm(&mut self, req: SetAlarm) -> Result<AlarmSet, ActorError> {
        let at_ms = req
            .at_ms
            .unwrap_or_else(|| tern_actor_sdk::now_ms() + req.in_ms);
        let id = tern_actor_sdk::set_alarm(at_ms, &req.tag)?;
        Ok(AlarmSet { id, at_ms })
    }

    /// Sets an alarm, then panics: the turn rolls back, and the alarm with it.
    fn set_alarm_then_panic(&mut self, req: SetAlarm) -> Result<AlarmSet, ActorError> {
        self.set_alarm(req)?;
        panic!("set_alarm_then_panic: rolling back the alarm");
    }

    /// Cancels an alarm.
    fn cancel_alarm(&mut self, req: CancelAlarm) -> Result<bool, ActorError> {
        Ok(tern_actor_sdk::cancel_alarm(req.id))
    }

    /// An alarm's turn: records it once per id (delivery is at least once).
    /// A tag `repeat:<ms>` sets the next alarm that many ms later.
    fn on_alarm(&mut self, alarm: tern_actor_sdk::Alarm) -> Result<(), ActorError> {
        if self.fired.iter().any(|f| f.0 == alarm.id) {
            return Ok(());
        }
        if let Some(ms) = alarm.tag.strip_prefix("repeat:") {
            let ms: u64 = ms
                .parse()
                .map_err(|_| ActorError::invalid_argument("repeat:<ms> needs a number"))?;
            tern_actor_sdk::set_alarm(alarm.at_ms + ms, &alarm.tag)?;
        }
        let now = tern_actor_sdk::now_ms();
        // Watchers of the actor's alarms get one event per alarm.
        tern_actor_sdk::publish_json(
            "alarms",
            &(
                alarm.id,
                &alarm.tag,
                alarm.at_ms,
                now,
                tern_actor_sdk::activation().pop,
            ),
        )?;
        self.fired.push((alarm.id, alarm.tag, alarm.at_ms, now));
        Ok(())
    }

    /// Every alarm delivered.
    fn fired(&mut self) -> Result<Fired, ActorError> {
        Ok(Fired {
            fired: self.fired.clone(),
        })
    }

    /// Publishes `n` events; adds `n` to the counter.
    fn publish(&mut self, req: Publish) -> Result<Value, ActorError> {
        for i in 0..req.n {
            tern_actor_sdk::publish(&req.topic, format!("{}{i}", req.prefix).as_bytes())?;
        }
        self.value += u64::from(req.n);
        Ok(Value { value: self.value })
    }

    /// Publishes, then panics: nothing is published.
    fn publish_then_panic(&mut self, req: Publish) -> Result<Value, ActorError> {
        self.publish(req)?;
        panic!("publish_then_panic: rolling back the events");
    }
}

actor!(Counter {
    json set_alarm,
    json set_alarm_then_panic,
    json cancel_alarm,
    json on_alarm as "~alarm",
    json0 fired,
    json publish,
    json publish_then_panic,
    json incr,
    json0 get,
    json tick,
    json0 history,
    json apply,
    json0 applied,
    json put,
    json remove,
    json0 digest,
    json incr_then_panic,
    json0 spin,
    json0 print,
    json grow,
    raw echo,
    raw call_other,
    json unavailable_below,
});

#[cfg(test)]
mod tests {
    use super::*;
    use tern_actor_sdk::{Actor, ErrorKind};

    fn call<T: serde::de::DeserializeOwned>(c: &mut Counter, m: &str, p: &str) -> T {
        serde_json::from_slice(&c.dispatch(m, p.as_bytes()).unwrap()).unwrap()
    }

    #[test]
    fn incr_and_get() {
        let mut c = Counter::default();
        assert_eq!(
            call::<Value>(&mut c, "incr", r#"{"by": 5}"#),
            Value { value: 5 }
        );
        assert_eq!(
            call::<Value>(&mut c, "incr", r#"{"by": 2}"#),
            Value { value: 7 }
        );
        assert_eq!(call::<Value>(&mut c, "get", ""), Value { value: 7 });
        assert_eq!(call::<Value>(&mut c, "get", "{}"), Value { value: 7 });
    }

    #[test]
    fn errors_map_to_kinds() {
        let mut c = Counter::default();
        let e = c.dispatch("nope", b"").unwrap_err();
        assert_eq!(e.kind, ErrorKind::NotFound);
        assert!(e.message.contains("`nope`"), "{e}");
        assert!(
            e.message
                .contains("incr, get, tick, history, apply, applied, put, remove, digest"),
            "{e}"
        );
        let e = c.dispatch("incr", b"{\"by\": -1}").unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidArgument);
        assert!(e.message.contains("invalid value"), "{e}");
        let e = c.dispatch("incr", b"").unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidArgument, "{e}");
        c.dispatch("incr", format!("{{\"by\": {}}}", u64::MAX).as_bytes())
            .unwrap();
        let e = c.dispatch("incr", b"{\"by\": 1}").unwrap_err();
        assert_eq!(e.kind, ErrorKind::FailedPrecondition);
        let e = c
            .dispatch("call_other", br#"{"type":"a","id":"b","method":"c"}"#)
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::Unavailable);
    }

    #[test]
    fn map_and_digest() {
        let mut c = Counter::default();
        let s: Sizes = call(&mut c, "put", r#"{"key": "b", "len": 3, "fill": 7}"#);
        assert_eq!(
            s,
            Sizes {
                entries: 1,
                bytes: 3
            }
        );
        let s: Sizes = call(&mut c, "put", r#"{"key": "a", "len": 100000, "fill": 1}"#);
        assert_eq!(
            s,
            Sizes {
                entries: 2,
                bytes: 100_003
            }
        );
        let s: Sizes = call(&mut c, "put", r#"{"key": "b", "len": 1, "fill": 7}"#);
        assert_eq!(
            s,
            Sizes {
                entries: 2,
                bytes: 100_001
            }
        );
        let d: Digest = call(&mut c, "digest", "");
        let a = vec![1u8; 100_000];
        let expected = digest_of([("b", &[7u8][..]), ("a", &a[..])]);
        assert_eq!(
            d,
            Digest {
                entries: 2,
                bytes: 100_001,
                hash: expected
            }
        );
        let r: Removed = call(&mut c, "remove", r#"{"key": "a"}"#);
        assert_eq!(
            r,
            Removed {
                removed: true,
                entries: 1,
                bytes: 1
            }
        );
        let r: Removed = call(&mut c, "remove", r#"{"key": "a"}"#);
        assert!(!r.removed);
        assert_eq!(
            digest_of([("b", &[7u8][..])]),
            call::<Digest>(&mut c, "digest", "").hash
        );
    }

    #[test]
    fn echo_and_grow() {
        let mut c = Counter::default();
        assert_eq!(c.dispatch("echo", b"\x00\xffabc").unwrap(), b"\x00\xffabc");
        assert_eq!(c.dispatch("echo", b"").unwrap(), b"");
        assert_eq!(
            call::<Held>(&mut c, "grow", r#"{"mb": 2}"#),
            Held { held_mb: 2 }
        );
        assert_eq!(
            call::<Held>(&mut c, "grow", r#"{"mb": 1}"#),
            Held { held_mb: 3 }
        );
    }

    #[test]
    #[should_panic(expected = "deliberate panic")]
    fn incr_then_panic_panics() {
        let mut c = Counter::default();
        let _ = c.dispatch("incr_then_panic", br#"{"by": 1}"#);
    }
}
