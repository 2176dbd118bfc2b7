//! Migration records: an actor moved from one POP to another.
//!
//! Keys are `("mig", at_ms, token)` under the tern prefix, so a reverse
//! range read returns the newest first. The token (random per call) keeps
//! two migrations in the same millisecond apart and makes a re-run after
//! `commit_unknown_result` write the same key again instead of a duplicate.
//!
//! Retention: the records are a log, not state, and are kept by count and
//! age. [`Store::trim_migrations`] keeps the newest [`MIGRATIONS_KEPT_MAX`]
//! and none older than [`MIGRATION_AGE_MS_MAX`]. Since keys sort by
//! `at_ms`, everything to drop is one key range at the old end, removed by
//! range clears in transactions that each read at most
//! [`MIGRATION_TRIM_BATCH_MAX`] records. [`Store::record_migration`] runs
//! it every [`MIGRATION_TRIM_EVERY`]-th append (per store handle), so
//! appends never scan the log, and a store that is only appended to holds
//! at most `MIGRATIONS_KEPT_MAX + MIGRATION_TRIM_EVERY - 1` records per
//! appending process between trims.

use rkyv::{Archive, Deserialize, Serialize};

use crate::codec::{decode, encode};
use crate::keys::PREFIX;
use crate::tuple::{Elem, pack_into, range_end};
use crate::{StorageError, Store, random_u64};

/// The most migrations one listing returns.
pub const MIGRATIONS_LIST_MAX: usize = 1000;
/// The most migration records a trim keeps (the newest ones).
pub const MIGRATIONS_KEPT_MAX: usize = 1000;
/// Age past which a trim drops a migration record, in milliseconds (7
/// days), counted back from the `now_ms` of the trim.
pub const MIGRATION_AGE_MS_MAX: u64 = 7 * 24 * 60 * 60 * 1000;
/// `record_migration` trims the records on every this-many-th append
/// through a store handle (the first append included).
pub const MIGRATION_TRIM_EVERY: u64 = 64;
/// The most records one trim transaction reads (and removes with one
/// range clear); a trim with more to remove uses several transactions.
pub const MIGRATION_TRIM_BATCH_MAX: usize = 1000;

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

/// Keys of records older than `at_ms` sort before this one.
fn mig_at_prefix(at_ms: u64) -> Vec<u8> {
    let mut k = PREFIX.to_vec();
    pack_into(&mut k, &[Elem::Str("mig"), Elem::Int(at_ms)]);
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
    /// Records a migration (one small transaction). Every
    /// [`MIGRATION_TRIM_EVERY`]-th call through this handle then trims the
    /// records (see [`Store::trim_migrations`]) as of the newest record's
    /// `at_ms`; a failed trim is logged, not returned, since the record
    /// itself is committed.
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
        })?;
        if self
            .next_migration_append()
            .is_multiple_of(MIGRATION_TRIM_EVERY)
            && let Err(e) = self.trim_migrations_as_of(None)
        {
            tracing::warn!(error = %e, "trimming migration records failed");
        }
        Ok(())
    }

    /// Drops migration records older than [`MIGRATION_AGE_MS_MAX`] before
    /// `now_ms`, and all but the newest [`MIGRATIONS_KEPT_MAX`]. Returns
    /// how many it removed. Each transaction reads at most
    /// [`MIGRATION_TRIM_BATCH_MAX`] records and clears them with one range
    /// clear (keys sort by `at_ms`, so the doomed records are one range at
    /// the old end). Safe to run at any time, from any process, e.g. from
    /// the directory's periodic sweep.
    pub fn trim_migrations(&self, now_ms: u64) -> Result<usize, StorageError> {
        self.trim_migrations_as_of(Some(now_ms))
    }

    /// [`Store::trim_migrations`]; `None`: as of the newest record's `at_ms`.
    fn trim_migrations_as_of(&self, now_ms: Option<u64>) -> Result<usize, StorageError> {
        let begin = mig_prefix();
        let end_all = range_end(&begin);
        // The newest MIGRATIONS_KEPT_MAX: the oldest of them bounds what the
        // count keeps (a bounded read from the new end, not a scan).
        let newest = self
            .kv()
            .read(|tx| tx.get_range(&begin, &end_all, Some(MIGRATIONS_KEPT_MAX), true))?;
        let Some((newest_key, newest_val)) = newest.first() else {
            return Ok(0);
        };
        let now_ms = match now_ms {
            Some(t) => t,
            None => decode::<MigrationRecord>(newest_key, newest_val)?.at_ms,
        };
        let age_end = mig_at_prefix(now_ms.saturating_sub(MIGRATION_AGE_MS_MAX));
        let count_end = if newest.len() == MIGRATIONS_KEPT_MAX {
            newest
                .last()
                .map_or_else(|| begin.clone(), |(k, _)| k.clone())
        } else {
            begin.clone()
        };
        // Everything below `end` goes.
        let end = age_end.max(count_end);
        let mut removed = 0;
        loop {
            let n = self.kv().transact(|tx| {
                let doomed = tx.get_range(&begin, &end, Some(MIGRATION_TRIM_BATCH_MAX), false)?;
                if let Some((last, _)) = doomed.last() {
                    let mut stop = last.clone();
                    stop.push(0);
                    tx.clear_range(&begin, &stop);
                }
                Ok(doomed.len())
            })?;
            removed += n;
            if n < MIGRATION_TRIM_BATCH_MAX {
                return Ok(removed);
            }
        }
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

    /// Every stored migration record's `at_ms`, oldest first (a raw scan:
    /// `list_migrations` is capped).
    fn stored(s: &Store) -> Vec<u64> {
        let begin = mig_prefix();
        let end = range_end(&begin);
        s.kv()
            .read(|tx| tx.get_range(&begin, &end, None, false))
            .unwrap()
            .into_iter()
            .map(|(k, v)| decode::<MigrationRecord>(&k, &v).unwrap().at_ms)
            .collect()
    }

    const DAY_MS: u64 = 24 * 60 * 60 * 1000;

    #[test]
    fn migration_records_are_bounded_by_count_and_age() {
        // By count, as appends go: never more than the kept maximum plus
        // one trim period, and a trim leaves exactly the newest ones.
        let s = Store::memory();
        let base = 30 * DAY_MS;
        let n = MIGRATIONS_KEPT_MAX as u64 + 3 * MIGRATION_TRIM_EVERY + 5;
        let begin = mig_prefix();
        let end = range_end(&begin);
        for i in 0..n {
            s.record_migration(&rec("c", base + i)).unwrap();
            let len = s
                .kv()
                .read(|tx| tx.get_range(&begin, &end, None, false))
                .unwrap()
                .len();
            assert!(
                len < MIGRATIONS_KEPT_MAX + MIGRATION_TRIM_EVERY as usize,
                "{len} records after {} appends",
                i + 1
            );
        }
        // The last append-time trim ran on append number n - (n - 1) % 64.
        let since_trim = ((n - 1) % MIGRATION_TRIM_EVERY) as usize;
        assert_eq!(stored(&s).len(), MIGRATIONS_KEPT_MAX + since_trim);
        assert_eq!(s.trim_migrations(base + n).unwrap(), since_trim);
        let at = stored(&s);
        assert_eq!(at.len(), MIGRATIONS_KEPT_MAX);
        assert_eq!(
            at[0],
            base + n - MIGRATIONS_KEPT_MAX as u64,
            "the oldest kept"
        );
        assert_eq!(*at.last().unwrap(), base + n - 1, "the newest kept");
        assert_eq!(
            s.trim_migrations(base + n).unwrap(),
            0,
            "nothing left to trim"
        );

        // By age, against an explicit now: the cutoff itself is kept.
        let s = Store::memory();
        let now = 10 * DAY_MS;
        let cutoff = now - MIGRATION_AGE_MS_MAX;
        for at in [1, cutoff - 1, cutoff, cutoff + 1, now] {
            s.record_migration(&rec("a", at)).unwrap();
        }
        assert_eq!(s.trim_migrations(now).unwrap(), 2);
        assert_eq!(stored(&s), vec![cutoff, cutoff + 1, now]);

        // By age, as appends go: relative to the newest record.
        let s = Store::memory();
        for i in 0..10 {
            s.record_migration(&rec("old", DAY_MS + i)).unwrap();
        }
        for i in 10..MIGRATION_TRIM_EVERY {
            s.record_migration(&rec("new", 9 * DAY_MS + i)).unwrap();
        }
        assert_eq!(stored(&s).len(), MIGRATION_TRIM_EVERY as usize);
        s.record_migration(&rec("new", 9 * DAY_MS)).unwrap(); // the 65th: trims
        let at = stored(&s);
        assert_eq!(at.len(), MIGRATION_TRIM_EVERY as usize + 1 - 10);
        assert!(at.iter().all(|&t| t >= 9 * DAY_MS), "{at:?}");
    }

    #[test]
    fn migration_trim_is_bounded_per_transaction() {
        // A big backlog (written raw, as an old version without retention
        // would have left it) goes in transactions of at most a batch of
        // reads and one range clear each.
        let s = Store::memory();
        let backlog = 2 * MIGRATION_TRIM_BATCH_MAX + 500;
        s.kv()
            .transact(|tx| {
                for i in 0..backlog as u64 {
                    tx.set(&mig_key(DAY_MS + i, i), &encode(&rec("b", DAY_MS + i)));
                }
                Ok(())
            })
            .unwrap();
        let before = s.stats();
        let now = 9 * DAY_MS;
        assert_eq!(s.trim_migrations(now).unwrap(), backlog);
        let d = s.stats().since(&before);
        assert_eq!(d.transactions, 3, "{d:?}");
        assert_eq!(d.keys_written, 3, "one range clear per transaction: {d:?}");
        assert!(stored(&s).is_empty());
    }
}
