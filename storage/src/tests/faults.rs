//! Memory-backend fault injection: the code paths FoundationDB exercises.

use crate::conformance::{apply, claim, page, req};
use crate::*;

fn counter(store: &Store) -> u64 {
    store
        .kv()
        .read(|tx| tx.get(b"counter"))
        .unwrap()
        .map(|v| u64::from_be_bytes(v.try_into().unwrap()))
        .unwrap_or(0)
}

fn increment(tx: &mut Transaction) -> Result<(), StorageError> {
    let n = tx
        .get(b"counter")?
        .map(|v| u64::from_be_bytes(v.try_into().unwrap()))
        .unwrap_or(0);
    tx.set(b"counter", &(n + 1).to_be_bytes());
    Ok(())
}

#[test]
fn racing_transactions_one_fails_not_committed_and_retry_succeeds() {
    let store = Store::memory();
    let kv = store.kv();
    let mut t1 = kv.begin().unwrap();
    let mut t2 = kv.begin().unwrap();
    increment(&mut t1).unwrap();
    increment(&mut t2).unwrap();
    t1.commit().unwrap();
    assert_eq!(
        t2.commit(),
        Err(StorageError::NotCommitted),
        "t2 read a key t1 changed"
    );
    assert_eq!(counter(&store), 1);
    // A blind writer does not conflict; a reader of an untouched key neither.
    let mut t3 = kv.begin().unwrap();
    let mut t4 = kv.begin().unwrap();
    t3.get(b"other").unwrap();
    t3.set(b"x", b"1");
    increment(&mut t4).unwrap();
    t4.commit().unwrap();
    t3.commit().unwrap();
    // transact retries the loser until both increments land.
    let before = store.stats();
    let mut first = true;
    kv.transact(|tx| {
        increment(tx)?;
        if first {
            first = false;
            kv.transact(increment)?; // a racing commit in between
        }
        Ok(())
    })
    .unwrap();
    assert_eq!(counter(&store), 4);
    assert_eq!(store.stats().since(&before).retries, 1);
}

#[test]
fn range_read_conflicts_with_insert_into_range() {
    let store = Store::memory();
    let kv = store.kv();
    let mut t1 = kv.begin().unwrap();
    assert!(t1.get_range(b"a", b"m", None, false).unwrap().is_empty());
    t1.set(b"z", b"saw-empty");
    kv.transact(|tx| {
        tx.set(b"c", b"phantom");
        Ok(())
    })
    .unwrap();
    assert_eq!(
        t1.commit(),
        Err(StorageError::NotCommitted),
        "phantom insert detected"
    );
}

#[test]
fn snapshot_isolation_reads_see_start_version() {
    let store = Store::memory();
    let kv = store.kv();
    kv.transact(|tx| {
        tx.set(b"k", b"v1");
        Ok(())
    })
    .unwrap();
    let mut r = kv.begin_read().unwrap();
    kv.transact(|tx| {
        tx.set(b"k", b"v2");
        tx.set(b"new", b"n");
        Ok(())
    })
    .unwrap();
    assert_eq!(r.get(b"k").unwrap().as_deref(), Some(&b"v1"[..]));
    assert!(r.get_range(b"a", b"z", None, false).unwrap().len() == 1);
    r.commit().unwrap();
}

#[test]
fn retry_on_not_committed() {
    let (store, faults) = Store::memory_with_faults();
    faults.fail_next_commits(Fault::NotCommitted, 3);
    store.kv().transact(increment).unwrap();
    assert_eq!(counter(&store), 1);
    assert_eq!(store.stats().retries, 3);
    assert_eq!(faults.pending(), 0);
}

#[test]
fn retry_on_transaction_too_old() {
    let (store, faults) = Store::memory_with_faults();
    faults.fail_next_commits(Fault::TransactionTooOld, 2);
    let t = TypeRecord {
        digest: "d".into(),
        config_json: "{}".into(),
        deployed_at_ms: 1,
    };
    store.put_type("t", &t).unwrap();
    assert_eq!(store.get_type("t").unwrap(), Some(t));
    assert_eq!(store.stats().retries, 2);
}

#[test]
fn retries_are_bounded_by_the_time_budget() {
    let (store, faults) = Store::memory_with_faults();
    // A spent budget still allows one retry, and no more.
    let spent = store.clone().with_retry_budget(std::time::Duration::ZERO);
    faults.fail_next_commits(Fault::NotCommitted, 10);
    match spent.kv().transact(increment) {
        Err(StorageError::RetriesExhausted { attempts, last, .. }) => {
            assert_eq!(attempts, 2);
            assert_eq!(*last, StorageError::NotCommitted);
        }
        other => panic!("expected RetriesExhausted, got {other:?}"),
    }
    assert_eq!(faults.pending(), 8);
    faults.clear();
    // A budget of 300 ms: retried, with waits, until it is spent.
    let budget = store
        .clone()
        .with_retry_budget(std::time::Duration::from_millis(300));
    faults.fail_next_commits(Fault::TransactionTooOld, 10_000);
    match budget.kv().transact(increment) {
        Err(StorageError::RetriesExhausted {
            attempts,
            elapsed_ms,
            last,
        }) => {
            assert!(attempts >= 2, "{attempts}");
            assert!(elapsed_ms >= 300, "gave up before the budget: {elapsed_ms}");
            assert!(
                faults.pending() > 10_000 - 200,
                "waits between attempts: {attempts} attempts"
            );
            assert!(matches!(*last, StorageError::TransactionTooOld { .. }));
        }
        other => panic!("expected RetriesExhausted, got {other:?}"),
    }
    faults.clear();
    assert_eq!(counter(&store), 0);
    assert!(
        !StorageError::Fenced {
            actor: "a".into(),
            epoch_given: 1,
            epoch_current: 2
        }
        .is_retryable()
    );
    assert!(StorageError::CommitUnknownResult.is_retryable());
}

#[test]
fn commit_unknown_result_applies_the_write() {
    let (store, faults) = Store::memory_with_faults();
    faults.fail_next_commits(Fault::CommitUnknownResult, 1);
    // A naive closure re-run applies twice: that is what FDB can do, and
    // why the record layer carries tokens.
    store.kv().transact(increment).unwrap();
    assert_eq!(counter(&store), 2);
}

#[test]
fn commit_unknown_result_snapshot_never_double_applies() {
    let (store, faults) = Store::memory_with_faults();
    let a = claim(&store, "u/1", "pop-a");
    store
        .commit_snapshot(&req("u/1", a.epoch, 0, 2, &[(0, page(1, 0))]))
        .unwrap();
    faults.fail_next_commits(Fault::CommitUnknownResult, 1);
    assert_eq!(
        store
            .commit_snapshot(&req("u/1", a.epoch, 1, 2, &[(1, page(2, 1))]))
            .unwrap(),
        2
    );
    assert_eq!(
        store.get_activation("u/1").unwrap().unwrap().head_seq,
        2,
        "advanced by exactly 1"
    );
    // Staged commit whose manifest transaction reports unknown result.
    let big: Vec<(u32, Vec<u8>)> = (0..40).map(|i| (i, page(3, i))).collect();
    faults.pass_next_commits(3); // the staging transactions (2.6 MB: 3 of them)
    faults.fail_next_commits(Fault::CommitUnknownResult, 1);
    assert_eq!(
        store
            .commit_snapshot(&req("u/1", a.epoch, 2, 40, &big))
            .unwrap(),
        3
    );
    assert_eq!(
        faults.pending(),
        0,
        "the manifest transaction consumed the fault"
    );
    assert_eq!(store.get_activation("u/1").unwrap().unwrap().head_seq, 3);
    // A staging transaction with unknown result is re-run harmlessly.
    faults.fail_next_commits(Fault::CommitUnknownResult, 2);
    assert_eq!(
        store
            .commit_snapshot(&req("u/1", a.epoch, 3, 40, &big))
            .unwrap(),
        4
    );
    let mut want = Vec::new();
    apply(&mut want, 2, &[(0, page(1, 0)), (1, page(2, 1))]);
    apply(&mut want, 40, &big);
    let s = store.load_snapshot("u/1").unwrap().unwrap();
    assert_eq!(s.seq, 4);
    assert!(s.memories[0] == want);
    // Group commit too, with chained requests for one actor.
    faults.fail_next_commits(Fault::CommitUnknownResult, 2);
    let out = store.commit_batch(&[
        req("u/1", a.epoch, 4, 40, &[(0, page(5, 0))]),
        req("u/1", a.epoch, 5, 40, &[(1, page(5, 1))]),
    ]);
    assert_eq!(out, vec![Ok(5), Ok(6)]);
    assert_eq!(store.get_activation("u/1").unwrap().unwrap().head_seq, 6);
}

#[test]
fn commit_unknown_result_claim_bumps_epoch_once() {
    let (store, faults) = Store::memory_with_faults();
    claim(&store, "u/2", "pop-a");
    faults.fail_next_commits(Fault::CommitUnknownResult, 1);
    let r = store.claim("u/2", "pop-b", 5, &|_| true).unwrap();
    assert_eq!(r.epoch, 2, "the re-run recognised its own claim");
    assert_eq!(store.get_activation("u/2").unwrap().unwrap().epoch, 2);
    faults.fail_next_commits(Fault::CommitUnknownResult, 1);
    store.release("u/2", 2).unwrap();
    assert!(!store.get_activation("u/2").unwrap().unwrap().active);
}

#[test]
fn fenced_commit_is_not_retried() {
    let (store, faults) = Store::memory_with_faults();
    let a = claim(&store, "u/3", "pop-a");
    claim(&store, "u/3", "pop-b");
    faults.fail_next_commits(Fault::NotCommitted, 1);
    let before = store.stats();
    let r = store.commit_snapshot(&req("u/3", a.epoch, 0, 1, &[(0, page(1, 0))]));
    assert!(matches!(r, Err(StorageError::Fenced { .. })));
    assert_eq!(store.stats().since(&before).transactions, 0);
}

#[test]
fn open_urls() {
    assert_eq!(Store::open("memory").unwrap().backend_name(), "memory");
    assert_eq!(Store::open("memory:").unwrap().backend_name(), "memory");
    let e = Store::open("postgres://x").err().unwrap();
    let msg = e.to_string();
    assert!(
        msg.contains("sqlite:PATH") && msg.contains("memory"),
        "{msg}"
    );
    let e = Store::open("fdb:/etc/foundationdb/fdb.cluster")
        .err()
        .unwrap();
    assert!(e.to_string().contains("fdb"), "{e}");
    assert!(Store::open("sqlite:").is_err());
}

#[test]
fn memory_old_versions_are_swept() {
    // Many overwrites with no live readers must not grow memory without
    // bound: sweeps drop versions nobody can read, and cleared keys.
    let backend = std::sync::Arc::new(crate::kv::memory::MemoryBackend::new());
    let kv = Kv::new(backend.clone());
    for i in 0..1000u32 {
        kv.transact(|tx| {
            tx.set(b"k", &i.to_be_bytes());
            tx.set(format!("tmp{i}").as_bytes(), b"x");
            tx.clear(format!("tmp{}", i.wrapping_sub(1)).as_bytes());
            Ok(())
        })
        .unwrap();
    }
    assert!(
        backend.stored_versions() < 3 * 256 + 10, // ~3 versions per commit between sweeps; unswept: ~3000
        "versions kept: {}",
        backend.stored_versions()
    );
    let all = kv
        .read(|tx| tx.get_range(b"", b"\xff", None, false))
        .unwrap();
    assert_eq!(all.len(), 2, "k and the last tmp key");
    assert_eq!(
        kv.read(|tx| tx.get(b"k")).unwrap(),
        Some(999u32.to_be_bytes().to_vec())
    );
    // A live reader pins its version across sweeps.
    let mut r = kv.begin_read().unwrap();
    for i in 0..600u32 {
        kv.transact(|tx| {
            tx.set(b"k", &(5000 + i).to_be_bytes());
            Ok(())
        })
        .unwrap();
    }
    assert_eq!(r.get(b"k").unwrap(), Some(999u32.to_be_bytes().to_vec()));
}

/// A valid manifest copied over another actor's is refused: it names the
/// actor and version it belongs to, under its checksum.
#[test]
fn moved_manifest_detected() {
    let store = Store::memory();
    for (actor, seed) in [("m/a", 1), ("m/b", 2)] {
        let e = claim(&store, actor, "pop").epoch;
        store
            .commit_snapshot(&req(actor, e, 0, 2, &[(0, page(seed, 0))]))
            .unwrap();
    }
    store
        .kv()
        .transact(|tx| {
            let a = tx.get_prefix(&crate::keys::manifest("m/a", 1))?;
            for (i, (_, v)) in a.iter().enumerate() {
                tx.set(&crate::keys::manifest_part("m/b", 1, i as u64), v);
            }
            Ok(())
        })
        .unwrap();
    match store.load_snapshot("m/b") {
        Err(StorageError::Corrupt { reason, .. }) => {
            assert!(reason.contains("belongs to actor \"m/a\""), "{reason}")
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    assert!(store.load_snapshot("m/a").unwrap().is_some());
}

/// A commit that timed out is retried once; a second timeout gives up with
/// a message that says the commit may or may not have been applied.
#[test]
fn commit_timeout_is_retried_once() {
    let (store, faults) = Store::memory_with_faults();
    faults.fail_next_commits(Fault::CommitTimedOut, 1);
    store.kv().transact(increment).unwrap();
    assert_eq!(counter(&store), 1);
    assert_eq!(store.stats().retries, 1);
    faults.fail_next_commits(Fault::CommitTimedOut, 3);
    match store.kv().transact(increment) {
        Err(e @ StorageError::RetriesExhausted { attempts: 2, .. }) => {
            assert!(
                e.to_string().contains("may or may not have been applied"),
                "{e}"
            );
            assert!(e.is_transient(), "the caller may try again later");
        }
        other => panic!("expected a give-up after two timeouts, got {other:?}"),
    }
    assert_eq!(faults.pending(), 1, "no third attempt");
}

/// The wait before each retry follows FoundationDB's schedule: 10 ms
/// doubling to 1 s, jittered down by at most half.
#[test]
fn backoff_follows_foundationdb_schedule() {
    use crate::kv::backoff_delay;
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
    assert_eq!(ms(backoff_delay(1, 0)), 10.0);
    assert_eq!(ms(backoff_delay(2, 0)), 20.0);
    assert_eq!(ms(backoff_delay(7, 0)), 640.0);
    assert_eq!(ms(backoff_delay(8, 0)), 1000.0);
    assert_eq!(ms(backoff_delay(60, 0)), 1000.0);
    for r in [1u64, 7, u64::MAX / 3, u64::MAX] {
        let d = ms(backoff_delay(3, r));
        assert!((20.0..=40.0).contains(&d), "{d}");
    }
}
