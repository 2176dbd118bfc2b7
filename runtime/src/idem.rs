//! Idempotency keys, with a payment API's contract: a retried call carrying
//! a key already applied gets the recorded outcome instead of running
//! again; the same key with a different request is refused.
//!
//! Each actor keeps its keys for the type's `idempotency_ms` (24 hours by
//! default) and at most `idempotency_keys_max` of them (4,096 by default;
//! the oldest are forgotten first). Records are committed in the same
//! transaction as the turn that produced them (as per-actor side records of
//! the snapshot), so with `turn` durability a retry is applied at most once
//! across POPs and crashes.

use std::collections::{BTreeMap, HashMap, VecDeque};

use crate::error::{ErrorKind, RuntimeError};

/// Longest idempotency key, in bytes.
pub const IDEMPOTENCY_KEY_BYTES_MAX: usize = 128;

/// Largest reply kept for a retry, in bytes; a larger reply is remembered as
/// applied without its bytes.
pub const IDEMPOTENT_REPLY_BYTES_MAX: usize = 60 * 1024;

/// Uncommitted record bytes after which an `idle`-durability actor commits
/// early, so one commit's side records stay small.
pub const IDEM_PENDING_BYTES_MAX: usize = 512 * 1024;

/// Side-record prefix of client keys.
pub const CLIENT_PREFIX: &str = "idem2/";
/// Side-record prefix of the keys a forwarding POP gives unkeyed calls.
pub const FORWARD_PREFIX: &str = "fwd/";
/// Records of the first format; deleted when found.
const OLD_PREFIX: &str = "idem/";

/// Idempotency keys starting with this were made by a forwarding POP for a
/// call that came without one (see `route`).
pub const FORWARD_KEY_MARK: &str = "~fwd/";

/// How long forwarding keys are kept: longer than any call's deadline, so
/// a re-routed call still finds its key.
pub const FORWARD_KEYS_RETENTION: Retention = Retention {
    ms: 10 * 60_000,
    keys_max: 4_096,
};

/// What a retry with an applied key gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The reply bytes.
    Reply(Vec<u8>),
    /// An error: its kind and message.
    Error(ErrorKind, String),
    /// Applied, but the reply was too large to keep.
    AppliedReplyDropped,
}

/// A fingerprint of a request: sha256 of its method and payload, truncated.
pub type Fingerprint = [u8; 16];

/// The fingerprint of `method(payload)`.
pub fn fingerprint(method: &str, payload: &[u8]) -> Fingerprint {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update((method.len() as u64).to_le_bytes());
    h.update(method.as_bytes());
    h.update(payload);
    let d = h.finalize();
    let mut f = [0u8; 16];
    f.copy_from_slice(&d[..16]);
    f
}

/// An applied call: its outcome and the activation that ran it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The outcome.
    pub outcome: Outcome,
    /// The epoch of the activation that ran it.
    pub epoch: u64,
    /// The POP that ran it.
    pub pop: String,
    /// When it was applied, ms since the Unix epoch.
    pub at_ms: u64,
    /// The request's fingerprint.
    pub fingerprint: Fingerprint,
}

impl Applied {
    fn encode(&self, seq: u64) -> Vec<u8> {
        let mut v = seq.to_le_bytes().to_vec();
        v.extend_from_slice(&self.at_ms.to_le_bytes());
        v.extend_from_slice(&self.epoch.to_le_bytes());
        v.extend_from_slice(&self.fingerprint);
        let pop = &self.pop.as_bytes()[..self.pop.len().min(255)];
        v.push(pop.len() as u8);
        v.extend_from_slice(pop);
        match &self.outcome {
            Outcome::Reply(b) => {
                v.push(0);
                v.extend_from_slice(b);
            }
            Outcome::Error(kind, msg) => {
                v.push(1);
                v.push(kind.to_u8());
                v.extend_from_slice(msg.as_bytes());
            }
            Outcome::AppliedReplyDropped => v.push(2),
        }
        v
    }

    fn decode(v: &[u8]) -> Option<(u64, Applied)> {
        let u64_at = |i: usize| Some(u64::from_le_bytes(v.get(i..i + 8)?.try_into().ok()?));
        let seq = u64_at(0)?;
        let at_ms = u64_at(8)?;
        let epoch = u64_at(16)?;
        let fingerprint: Fingerprint = v.get(24..40)?.try_into().ok()?;
        let n = *v.get(40)? as usize;
        let pop = String::from_utf8_lossy(v.get(41..41 + n)?).into_owned();
        let rest = v.get(41 + n..)?;
        let body = rest.get(1..).unwrap_or_default();
        let outcome = match rest.first()? {
            0 => Outcome::Reply(body.to_vec()),
            1 => Outcome::Error(
                ErrorKind::from_u8(*body.first()?),
                String::from_utf8_lossy(&body[1..]).into_owned(),
            ),
            2 => Outcome::AppliedReplyDropped,
            _ => return None,
        };
        Some((
            seq,
            Applied {
                outcome,
                epoch,
                pop,
                at_ms,
                fingerprint,
            },
        ))
    }

    /// What a retry gets: the recorded reply, or the recorded error.
    pub fn replay(&self, key: &str) -> Result<Vec<u8>, RuntimeError> {
        match &self.outcome {
            Outcome::Reply(b) => Ok(b.clone()),
            Outcome::Error(kind, message) => Err(RuntimeError::Guest {
                kind: *kind,
                message: message.clone(),
            }),
            Outcome::AppliedReplyDropped => Err(RuntimeError::Guest {
                kind: ErrorKind::FailedPrecondition,
                message: format!(
                    "the call with idempotency key `{key}` was already applied; its reply was too large to keep"
                ),
            }),
        }
    }
}

/// How long keys are kept, and how many.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Keys older than this are forgotten, ms.
    pub ms: u64,
    /// At most this many keys are kept.
    pub keys_max: usize,
}

/// The keys of one actor (one table for client keys, one for forwarding
/// keys, so forwarded calls never push client keys out).
pub struct IdemTable {
    prefix: &'static str,
    retention: Retention,
    /// Keys, oldest first, with their sequence numbers.
    order: VecDeque<(u64, String)>,
    map: HashMap<String, (u64, Applied)>,
    next_seq: u64,
    /// Side records to commit with the next snapshot, by name; an empty
    /// value deletes the record.
    pending: BTreeMap<String, Vec<u8>>,
    pending_bytes: usize,
}

impl IdemTable {
    /// An empty table whose side records are named `prefix` + key.
    pub fn new(prefix: &'static str, retention: Retention) -> IdemTable {
        assert!(
            retention.keys_max > 0,
            "idempotency_keys_max must be positive"
        );
        IdemTable {
            prefix,
            retention,
            order: VecDeque::new(),
            map: HashMap::new(),
            next_seq: 0,
            pending: BTreeMap::new(),
            pending_bytes: 0,
        }
    }

    /// Rebuilds the table from the side records of a snapshot, forgetting
    /// what retention says is gone as of `now_ms`.
    pub fn restore(
        prefix: &'static str,
        extra: &[(String, Vec<u8>)],
        retention: Retention,
        now_ms: u64,
    ) -> IdemTable {
        let mut t = IdemTable::new(prefix, retention);
        let mut entries: Vec<(u64, String, Applied)> = Vec::new();
        for (name, v) in extra {
            if let Some(key) = name.strip_prefix(prefix) {
                match Applied::decode(v) {
                    Some((seq, a)) => entries.push((seq, key.to_string(), a)),
                    None => t.stage(name.clone(), Vec::new()),
                }
            } else if prefix == CLIENT_PREFIX && name.starts_with(OLD_PREFIX) {
                t.stage(name.clone(), Vec::new());
            }
        }
        entries.sort_by_key(|e| e.0);
        for (seq, key, a) in entries {
            t.next_seq = seq + 1;
            t.order.push_back((seq, key.clone()));
            t.map.insert(key, (seq, a));
        }
        t.expire(now_ms);
        t
    }

    fn stage(&mut self, name: String, value: Vec<u8>) {
        let n = name.len();
        self.pending_bytes += n + value.len();
        if let Some(old) = self.pending.insert(name, value) {
            self.pending_bytes -= n + old.len();
        }
    }

    /// Forgets keys past retention (by age, then by count).
    fn expire(&mut self, now_ms: u64) {
        while let Some((seq, key)) = self.order.front().cloned() {
            let stale = match self.map.get(&key) {
                Some((s, _)) if *s != seq => true, // superseded entry
                Some((_, a)) => {
                    now_ms.saturating_sub(a.at_ms) > self.retention.ms
                        || self.map.len() > self.retention.keys_max
                }
                None => true,
            };
            if !stale {
                break;
            }
            self.order.pop_front();
            if self.map.get(&key).is_some_and(|(s, _)| *s == seq) {
                self.map.remove(&key);
                self.stage(format!("{}{key}", self.prefix), Vec::new());
            }
        }
        assert!(
            self.map.len() <= self.retention.keys_max,
            "idempotency table over its bound"
        );
    }

    /// The recorded outcome for `key` if it was applied (and is still
    /// remembered at `now_ms`). The same key with another request is
    /// refused with INVALID_ARGUMENT.
    pub fn check(
        &self,
        key: &str,
        fp: &Fingerprint,
        now_ms: u64,
    ) -> Result<Option<&Applied>, RuntimeError> {
        let Some((_, a)) = self.map.get(key) else {
            return Ok(None);
        };
        if now_ms.saturating_sub(a.at_ms) > self.retention.ms {
            return Ok(None);
        }
        if a.fingerprint != *fp {
            return Err(RuntimeError::InvalidArgument(format!(
                "idempotency key `{key}` was already used for a different request (another method or payload); a retry must repeat the request exactly, and a new request needs a new key"
            )));
        }
        Ok(Some(a))
    }

    /// Records that `key` was applied.
    pub fn record(&mut self, key: &str, mut applied: Applied) {
        if let Outcome::Reply(b) = &applied.outcome
            && b.len() > IDEMPOTENT_REPLY_BYTES_MAX
        {
            applied.outcome = Outcome::AppliedReplyDropped;
        }
        let now = applied.at_ms;
        let seq = self.next_seq;
        self.next_seq += 1;
        self.stage(format!("{}{key}", self.prefix), applied.encode(seq));
        self.map.insert(key.to_string(), (seq, applied));
        self.order.push_back((seq, key.to_string()));
        self.expire(now);
    }

    /// Keys remembered.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether no key is remembered.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Whether records wait for a commit.
    pub fn is_dirty(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Bytes of records waiting for a commit.
    pub fn pending_bytes(&self) -> usize {
        self.pending_bytes
    }

    /// The records to commit.
    pub fn pending(&self) -> Vec<(String, Vec<u8>)> {
        self.pending
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Marks the pending records committed.
    pub fn committed(&mut self) {
        self.pending.clear();
        self.pending_bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const R: Retention = Retention {
        ms: 1_000,
        keys_max: 4,
    };

    fn applied(outcome: Outcome, at_ms: u64, fp: Fingerprint) -> Applied {
        Applied {
            outcome,
            epoch: 3,
            pop: "fra".into(),
            at_ms,
            fingerprint: fp,
        }
    }

    #[test]
    fn idempotency_records_survive_restore_in_order() {
        let fp = fingerprint("m", b"p");
        let mut t = IdemTable::new(CLIENT_PREFIX, R);
        t.record("a", applied(Outcome::Reply(b"1".to_vec()), 10, fp));
        t.record(
            "b",
            applied(Outcome::Error(ErrorKind::NotFound, "nope".into()), 11, fp),
        );
        t.record(
            "c",
            applied(
                Outcome::Reply(vec![0; IDEMPOTENT_REPLY_BYTES_MAX + 1]),
                12,
                fp,
            ),
        );
        let r = IdemTable::restore(CLIENT_PREFIX, &t.pending(), R, 20);
        assert_eq!(
            r.check("a", &fp, 20).unwrap().unwrap().replay("a").unwrap(),
            b"1"
        );
        let e = r
            .check("b", &fp, 20)
            .unwrap()
            .unwrap()
            .replay("b")
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound);
        assert_eq!(
            r.check("c", &fp, 20).unwrap().unwrap().outcome,
            Outcome::AppliedReplyDropped
        );
        let keys: Vec<&str> = r.order.iter().map(|(_, k)| k.as_str()).collect();
        assert_eq!(keys, ["a", "b", "c"]);
    }

    #[test]
    fn idempotency_table_is_bounded_by_count_oldest_first() {
        let fp = fingerprint("m", b"");
        let mut t = IdemTable::new(CLIENT_PREFIX, R);
        for i in 0..10 {
            t.record(&format!("k{i}"), applied(Outcome::Reply(Vec::new()), 5, fp));
        }
        assert_eq!(t.len(), 4);
        assert!(t.check("k5", &fp, 5).unwrap().is_none());
        assert!(t.check("k6", &fp, 5).unwrap().is_some());
        let pending = t.pending();
        assert!(pending.iter().any(|(n, v)| n == "idem2/k0" && v.is_empty()));
        // Pending records stay one per key however many turns ran.
        assert_eq!(pending.len(), 10);
    }

    #[test]
    fn idempotency_keys_expire_by_age() {
        let fp = fingerprint("m", b"");
        let mut t = IdemTable::new(CLIENT_PREFIX, R);
        t.record("old", applied(Outcome::Reply(Vec::new()), 0, fp));
        assert!(t.check("old", &fp, 1_000).unwrap().is_some());
        assert!(t.check("old", &fp, 1_001).unwrap().is_none());
        t.record("new", applied(Outcome::Reply(Vec::new()), 2_000, fp));
        assert_eq!(t.len(), 1, "the old key was collected");
    }

    #[test]
    fn same_key_with_another_request_is_refused() {
        let mut t = IdemTable::new(CLIENT_PREFIX, R);
        t.record(
            "k",
            applied(Outcome::Reply(Vec::new()), 0, fingerprint("incr", b"1")),
        );
        let e = t.check("k", &fingerprint("incr", b"2"), 0).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        assert!(e.to_string().contains("different request"), "{e}");
    }

    #[test]
    fn forwarding_keys_live_in_their_own_table() {
        let fp = fingerprint("m", b"");
        let mut c = IdemTable::new(CLIENT_PREFIX, R);
        c.record("client", applied(Outcome::Reply(Vec::new()), 0, fp));
        let mut f = IdemTable::new(FORWARD_PREFIX, R);
        for i in 0..10 {
            f.record(
                &format!("~fwd/{i}"),
                applied(Outcome::Reply(Vec::new()), 0, fp),
            );
        }
        let mut all = c.pending();
        all.extend(f.pending());
        let c2 = IdemTable::restore(CLIENT_PREFIX, &all, R, 0);
        let f2 = IdemTable::restore(FORWARD_PREFIX, &all, R, 0);
        assert_eq!(
            c2.len(),
            1,
            "forwarded calls did not push the client key out"
        );
        assert_eq!(f2.len(), 4);
    }

    #[test]
    fn old_format_records_are_deleted_on_restore() {
        let t = IdemTable::restore(CLIENT_PREFIX, &[("idem/x".into(), vec![1, 2, 3])], R, 0);
        assert!(t.is_empty());
        assert_eq!(t.pending(), vec![("idem/x".to_string(), Vec::new())]);
    }
}
