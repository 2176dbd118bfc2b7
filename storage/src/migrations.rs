//! Migration records: an actor moved from one POP to another.
//!
//! Keys are `("mig", at_ms, token)` under the tern prefix, so a reverse
//! range read returns the newest first. The token (random per call) keeps
//! two migrations in the same millisecond apart and makes a re-run after
//! `commit_unknown_result` write the same key again instead of a duplicate.

use rkyv::{Archive, Deserialize, Serialize};

use crate::codec::{decode, encode};
use crate::keys::PREFIX;
use crate::tuple::{Elem, pack_into, range_end};
use crate::{StorageError, Store, random_u64};

/// The most migrations one listing returns.
pub const MIGRATIONS_LIST_MAX: usize = 1000;

/// One migration of an actor between POPs.
#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    Archive,
    Serialize,
    Deserialize,
)]
pub struct MigrationRecord {
    /// The actor that moved.
    pub actor: String,
    /// The POP it left.
    pub from_pop: String,
    /// The POP it moved to.
    pub to_pop: String,
    /// When it happened, ms since the Unix epoch.
    pub at_ms: u64,
    /// Time from the decision to move until the new POP ran the call, ms.
    pub duration_ms: u64,
    /// Why it moved (e.g. "caller share", "idle").
    pub reason: String,
}

fn mig_prefix() -> Vec<u8> {
    let mut k = PREFIX.to_vec();
    pack_into(&mut k, &[Elem::Str("mig")]);
    k
}

fn mig_key(at_ms: u64, token: u64) -> Vec<u8> {
    let mut k = PREFIX.to_vec();
    pack_into(
        &mut k,
        &[Elem::Str("mig"), Elem::Int(at_ms), Elem::Int(token)],
    );
    k
}

impl Store {
    /// Records a migration (one small transaction).
    pub fn record_migration(&self, rec: &MigrationRecord) -> Result<(), StorageError> {
        if rec.actor.is_empty() {
            return Err(StorageError::InvalidArgument(
                "a migration needs a non-empty actor".into(),
            ));
        }
        let key = mig_key(rec.at_ms, random_u64());
        let val = encode(rec);
        self.kv().transact(|tx| {
            tx.set(&key, &val);
            Ok(())
        })
    }

    /// The latest `limit` migrations (at most [`MIGRATIONS_LIST_MAX`]),
    /// newest first.
    pub fn list_migrations(&self, limit: usize) -> Result<Vec<MigrationRecord>, StorageError> {
        let begin = mig_prefix();
        let end = range_end(&begin);
        let limit = limit.min(MIGRATIONS_LIST_MAX);
        self.kv()
            .read(|tx| tx.get_range(&begin, &end, Some(limit), true))?
            .into_iter()
            .map(|(k, v)| decode(&k, &v))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(actor: &str, at_ms: u64) -> MigrationRecord {
        MigrationRecord {
            actor: actor.into(),
            from_pop: "a".into(),
            to_pop: "b".into(),
            at_ms,
            duration_ms: 3,
            reason: "test".into(),
        }
    }

    #[test]
    fn migrations_list_newest_first_with_limit() {
        let s = Store::memory();
        s.record_migration(&rec("x", 10)).unwrap();
        s.record_migration(&rec("y", 30)).unwrap();
        s.record_migration(&rec("z", 20)).unwrap();
        s.record_migration(&rec("w", 20)).unwrap();
        let all = s.list_migrations(100).unwrap();
        let at: Vec<u64> = all.iter().map(|m| m.at_ms).collect();
        assert_eq!(at, vec![30, 20, 20, 10]);
        assert_eq!(s.list_migrations(2).unwrap().len(), 2);
        assert_eq!(s.list_migrations(0).unwrap().len(), 0);
    }
}
