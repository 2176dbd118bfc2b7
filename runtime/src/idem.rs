//! Idempotency keys: a retried call carrying a key already applied gets the
//! recorded outcome instead of running again.
//!
//! Each actor keeps its most recent keys and outcomes. They are committed in
//! the same transaction as the turn that produced them (as per-actor side
//! records of the snapshot), so with `turn` durability a retry is applied at
//! most once across POPs and crashes.

use std::collections::{HashMap, VecDeque};

/// Most keys remembered per actor.
pub const IDEMPOTENCY_KEYS_MAX: usize = 256;

/// Longest idempotency key, in bytes.
pub const IDEMPOTENCY_KEY_BYTES_MAX: usize = 128;

/// Largest reply kept for a retry, in bytes; a larger reply is remembered as
/// applied without its bytes.
pub const IDEMPOTENT_REPLY_BYTES_MAX: usize = 60 * 1024;

const PREFIX: &str = "idem/";

/// What a retry with an applied key gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The reply bytes.
    Reply(Vec<u8>),
    /// The guest's own error: (gRPC code as i32, message).
    Error(i32, String),
    /// Applied, but the reply was too large to keep.
    AppliedReplyDropped,
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
}

impl Applied {
    fn encode(&self, seq: u64) -> Vec<u8> {
        let mut v = seq.to_le_bytes().to_vec();
        v.extend_from_slice(&self.epoch.to_le_bytes());
        let pop = &self.pop.as_bytes()[..self.pop.len().min(255)];
        v.push(pop.len() as u8);
        v.extend_from_slice(pop);
        v.extend(self.outcome.encode());
        v
    }

    fn decode(v: &[u8]) -> Option<(u64, Applied)> {
        let seq = u64::from_le_bytes(v.get(..8)?.try_into().ok()?);
        let epoch = u64::from_le_bytes(v.get(8..16)?.try_into().ok()?);
        let n = *v.get(16)? as usize;
        let pop = String::from_utf8_lossy(v.get(17..17 + n)?).into_owned();
        let outcome = Outcome::decode(v.get(17 + n..)?)?;
        Some((
            seq,
            Applied {
                outcome,
                epoch,
                pop,
            },
        ))
    }
}

impl Outcome {
    fn encode(&self) -> Vec<u8> {
        let mut v = Vec::new();
        match self {
            Outcome::Reply(b) => {
                v.push(0);
                v.extend_from_slice(b);
            }
            Outcome::Error(code, msg) => {
                v.push(1);
                v.extend_from_slice(&code.to_le_bytes());
                v.extend_from_slice(msg.as_bytes());
            }
            Outcome::AppliedReplyDropped => v.push(2),
        }
        v
    }

    fn decode(v: &[u8]) -> Option<Outcome> {
        let body = &v[1.min(v.len())..];
        let out = match v.first()? {
            0 => Outcome::Reply(body.to_vec()),
            1 => Outcome::Error(
                i32::from_le_bytes(body.get(..4)?.try_into().ok()?),
                String::from_utf8_lossy(&body[4..]).into_owned(),
            ),
            2 => Outcome::AppliedReplyDropped,
            _ => return None,
        };
        Some(out)
    }
}

/// The keys of one actor.
#[derive(Default)]
pub struct IdemTable {
    order: VecDeque<String>,
    map: HashMap<String, Applied>,
    next_seq: u64,
    /// Side records to commit with the next snapshot: (name, value); an
    /// empty value deletes the record.
    pending: Vec<(String, Vec<u8>)>,
}

impl IdemTable {
    /// Rebuilds the table from the side records of a snapshot.
    pub fn restore(extra: &[(String, Vec<u8>)]) -> IdemTable {
        let mut entries: Vec<(u64, String, Applied)> = extra
            .iter()
            .filter_map(|(name, v)| {
                let key = name.strip_prefix(PREFIX)?;
                let (seq, out) = Applied::decode(v)?;
                Some((seq, key.to_string(), out))
            })
            .collect();
        entries.sort_by_key(|e| e.0);
        let mut t = IdemTable::default();
        for (seq, key, out) in entries {
            t.next_seq = seq + 1;
            t.order.push_back(key.clone());
            t.map.insert(key, out);
        }
        t
    }

    /// What was recorded for `key`, if it was applied.
    pub fn get(&self, key: &str) -> Option<&Applied> {
        self.map.get(key)
    }

    /// Records that `key` was applied by the activation `(pop, epoch)`.
    pub fn record(&mut self, key: &str, outcome: Outcome, pop: &str, epoch: u64) {
        let outcome = match outcome {
            Outcome::Reply(b) if b.len() > IDEMPOTENT_REPLY_BYTES_MAX => {
                Outcome::AppliedReplyDropped
            }
            o => o,
        };
        let applied = Applied {
            outcome,
            epoch,
            pop: pop.to_string(),
        };
        let seq = self.next_seq;
        self.next_seq += 1;
        self.pending
            .push((format!("{PREFIX}{key}"), applied.encode(seq)));
        if self.map.insert(key.to_string(), applied).is_none() {
            self.order.push_back(key.to_string());
        }
        while self.order.len() > IDEMPOTENCY_KEYS_MAX {
            if let Some(old) = self.order.pop_front() {
                self.map.remove(&old);
                self.pending.push((format!("{PREFIX}{old}"), Vec::new()));
            }
        }
    }

    /// Whether records wait for a commit.
    pub fn is_dirty(&self) -> bool {
        !self.pending.is_empty()
    }

    /// The records to commit.
    pub fn pending(&self) -> Vec<(String, Vec<u8>)> {
        self.pending.clone()
    }

    /// Marks the pending records committed.
    pub fn committed(&mut self) {
        self.pending.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idempotency_records_survive_restore_in_order() {
        let mut t = IdemTable::default();
        t.record("a", Outcome::Reply(b"1".to_vec()), "fra", 3);
        t.record("b", Outcome::Error(9, "nope".into()), "iad", 4);
        t.record(
            "c",
            Outcome::Reply(vec![0; IDEMPOTENT_REPLY_BYTES_MAX + 1]),
            "nrt",
            5,
        );
        let r = IdemTable::restore(&t.pending());
        let a = r.get("a").unwrap();
        assert_eq!(
            (&a.outcome, a.pop.as_str(), a.epoch),
            (&Outcome::Reply(b"1".to_vec()), "fra", 3)
        );
        assert_eq!(
            r.get("b").unwrap().outcome,
            Outcome::Error(9, "nope".into())
        );
        assert_eq!(r.get("c").unwrap().outcome, Outcome::AppliedReplyDropped);
        assert_eq!(r.order, ["a", "b", "c"]);
    }

    #[test]
    fn idempotency_table_is_bounded() {
        let mut t = IdemTable::default();
        for i in 0..IDEMPOTENCY_KEYS_MAX + 10 {
            t.record(&format!("k{i}"), Outcome::Reply(Vec::new()), "fra", 1);
        }
        assert_eq!(t.map.len(), IDEMPOTENCY_KEYS_MAX);
        assert!(t.get("k0").is_none());
        assert!(
            t.pending()
                .iter()
                .any(|(n, v)| n == "idem/k0" && v.is_empty())
        );
    }
}
