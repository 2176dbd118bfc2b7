//! Bounds on what the record layer writes: every commit transaction stays
//! under `GROUP_TXN_BYTES_MAX`, whatever records it carries.

use crate::conformance::{claim, page, random_page, req, sparse_page};
use crate::kv::TRANSACTION_BYTES_MAX;
use crate::*;

/// An `extra` record of `len` bytes that depend on `seed`.
fn extra(name: &str, seed: u64, len: usize) -> (String, Vec<u8>) {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let data = (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    (name.to_string(), data)
}

/// A first commit for `actor` (claimed here) with two small pages and
/// `n_extra` extra records of `extra_len` bytes.
fn small_req_with_extras(
    store: &Store,
    actor: &str,
    n_extra: usize,
    extra_len: usize,
) -> CommitRequest {
    let epoch = claim(store, actor, "pop-a").epoch;
    let seed = actor.bytes().map(u64::from).sum::<u64>();
    let mut r = req(
        actor,
        epoch,
        0,
        4,
        &[(0, sparse_page(seed, 0)), (3, sparse_page(seed, 3))],
    );
    r.extra = (0..n_extra)
        .map(|i| extra(&format!("idem-{i}"), seed + i as u64, extra_len))
        .collect();
    r
}

#[test]
fn group_commit_respects_transaction_limit() {
    let store = Store::memory();
    let reqs: Vec<CommitRequest> = (0..200)
        .map(|i| small_req_with_extras(&store, &format!("grp/{i}"), 4, 60_000))
        .collect();
    let total_extra: usize = reqs
        .iter()
        .flat_map(|r| &r.extra)
        .map(|(_, v)| v.len())
        .sum();
    assert!(
        total_extra as u64 > 4 * TRANSACTION_BYTES_MAX,
        "the batch carries far more than one transaction can hold"
    );
    let before = store.stats();
    let out = store.commit_batch(&reqs);
    let d = store.stats().since(&before);
    assert!(
        out.iter().all(|r| r == &Ok(1)),
        "every request commits: {out:?}"
    );
    for r in &reqs {
        assert_eq!(store.get_activation(&r.actor).unwrap().unwrap().head_seq, 1);
    }
    assert!(
        d.transactions > 1,
        "the batch took more than one transaction: {d:?}"
    );
    assert!(
        d.bytes_written as usize > total_extra,
        "every extra record was written: {d:?}"
    );
    assert!(
        d.transaction_bytes_max <= GROUP_TXN_BYTES_MAX as u64,
        "no transaction went over the group budget: {d:?}"
    );
    // The records are all there.
    let s = store.load_snapshot("grp/199").unwrap().unwrap();
    assert_eq!(s.extra.len(), 4);
    assert_eq!(s.extra, {
        let mut e = reqs[199].extra.clone();
        e.sort();
        e
    });
}

#[test]
fn oversized_request_is_refused_alone_in_its_batch() {
    let store = Store::memory();
    let ok1 = small_req_with_extras(&store, "ovr/1", 2, 60_000);
    // 180 records of 60 kB: 10.8 MB, more than a whole transaction.
    let big = small_req_with_extras(&store, "ovr/2", 180, 60_000);
    let ok3 = small_req_with_extras(&store, "ovr/3", 2, 60_000);
    let out = store.commit_batch(&[ok1.clone(), big.clone(), ok3.clone()]);
    assert_eq!(out[0], Ok(1));
    assert_eq!(out[2], Ok(1));
    match &out[1] {
        Err(StorageError::InvalidArgument(msg)) => {
            assert!(
                msg.contains("GROUP_TXN_BYTES_MAX"),
                "names the limit: {msg}"
            );
            assert!(msg.contains("ovr/2"), "names the actor: {msg}");
        }
        other => panic!("the oversized request must be refused: {other:?}"),
    }
    assert_eq!(store.get_activation("ovr/2").unwrap().unwrap().head_seq, 0);
    assert_eq!(store.load_snapshot("ovr/2").unwrap(), None);
    assert_eq!(
        store.load_snapshot("ovr/1").unwrap().unwrap().extra.len(),
        2
    );
    // Alone, through commit_snapshot, the same refusal, and nothing written.
    let before = store.stats();
    assert!(matches!(
        store.commit_snapshot(&big),
        Err(StorageError::InvalidArgument(_))
    ));
    assert_eq!(store.stats().since(&before).transactions, 0);
}

#[test]
fn staged_commit_manifest_transaction_respects_limit() {
    let store = Store::memory();
    // Big pages (staged) plus 4.2 MB of extra records.
    let e = claim(&store, "stg/1", "pop-a").epoch;
    let pages: Vec<(u32, Vec<u8>)> = (0..32).map(|i| (i, random_page(i as u64 + 1))).collect();
    let mut r = req("stg/1", e, 0, 32, &pages);
    r.extra = (0..70)
        .map(|i| extra(&format!("k{i}"), i, 60_000))
        .collect();
    let before = store.stats();
    assert_eq!(store.commit_snapshot(&r), Ok(1));
    let d = store.stats().since(&before);
    assert!(d.transactions > 2, "staged: {d:?}");
    assert!(
        d.transaction_bytes_max <= GROUP_TXN_BYTES_MAX as u64,
        "{d:?}"
    );
    let s = store.load_snapshot("stg/1").unwrap().unwrap();
    assert_eq!(s.extra.len(), 70);
    assert_eq!(s.memories[0][..PAGE_SIZE], random_page(1)[..]);

    // Pages under the staging threshold, but pages and extras together over
    // the group budget: staged, so no transaction goes over it.
    let e = claim(&store, "stg/2", "pop-a").epoch;
    let pages: Vec<(u32, Vec<u8>)> = (0..14).map(|i| (i, random_page(i as u64 + 100))).collect();
    let mut r = req("stg/2", e, 0, 14, &pages);
    r.extra = (0..75)
        .map(|i| extra(&format!("k{i}"), i, 60_000))
        .collect();
    let before = store.stats();
    assert_eq!(store.commit_batch(std::slice::from_ref(&r)), vec![Ok(1)]);
    let d = store.stats().since(&before);
    assert!(
        d.bytes_written > GROUP_TXN_BYTES_MAX as u64,
        "the commit as a whole is over the budget: {d:?}"
    );
    assert!(
        d.transaction_bytes_max <= GROUP_TXN_BYTES_MAX as u64,
        "{d:?}"
    );
    let s = store.load_snapshot("stg/2").unwrap().unwrap();
    assert_eq!(s.extra.len(), 75);
    assert_eq!(s.memories[0][13 * PAGE_SIZE..], random_page(113)[..]);
}

#[test]
fn commit_bound_covers_what_it_writes() {
    // apply_commit asserts that it wrote no more than its bound; walk a
    // history that exercises every kind of record: pages set, superseded,
    // zeroed, a memory shrinking and a memory dropped, extras set and
    // cleared, a long POP name.
    let store = Store::memory();
    let pop = "p".repeat(POP_NAME_BYTES_MAX);
    let e = store.claim("hist/1", &pop, 1, &|_| true).unwrap().epoch;
    let mut r = req(
        "hist/1",
        e,
        0,
        8,
        &(0..8).map(|i| (i, page(1, i))).collect::<Vec<_>>(),
    );
    r.memories.push(MemoryDelta {
        len_bytes: 3 * PAGE_SIZE as u64,
        changed_pages: vec![(2, page(2, 2))],
    });
    r.extra = vec![extra("a", 1, 100), extra("b", 2, EXTRA_BYTES_MAX)];
    assert_eq!(store.commit_snapshot(&r), Ok(1));
    let mut r = req(
        "hist/1",
        e,
        1,
        3,
        &[(1, vec![0; PAGE_SIZE]), (2, page(3, 2))],
    );
    r.extra = vec![("a".into(), vec![])];
    assert_eq!(store.commit_batch(std::slice::from_ref(&r)), vec![Ok(2)]);
    let s = store.load_snapshot("hist/1").unwrap().unwrap();
    assert_eq!(s.memories.len(), 1);
    assert_eq!(s.memories[0].len(), 3 * PAGE_SIZE);
    assert_eq!(s.memories[0][..PAGE_SIZE], page(1, 0)[..]);
    assert!(
        s.memories[0][PAGE_SIZE..2 * PAGE_SIZE]
            .iter()
            .all(|&b| b == 0)
    );
    assert_eq!(s.extra.len(), 1);
    // A POP name over the limit is refused at claim time.
    assert!(matches!(
        store.claim("hist/2", &format!("{pop}x"), 1, &|_| true),
        Err(StorageError::InvalidArgument(_))
    ));
}

#[test]
fn activation_index_matches_active_claims() {
    // `act_by_pop` has an entry exactly for each active claim: claims that
    // move, re-claims by the holder, releases (twice, and stale ones) leave
    // no entry behind, so the index never outgrows the live activations.
    let store = Store::memory();
    let pops = ["pop-a", "pop-b", "pop-c"];
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    for step in 0..600u64 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let actor = format!("idx/{}", x % 13);
        let pop = pops[(x >> 8) as usize % pops.len()];
        match (x >> 16) % 3 {
            0 | 1 => {
                store.claim(&actor, pop, step, &|_| true).unwrap();
            }
            _ => {
                if let Some(a) = store.get_activation(&actor).unwrap() {
                    // The current epoch, or a stale one (refused, no change).
                    let epoch = if (x >> 24).is_multiple_of(4) {
                        a.epoch.saturating_sub(1)
                    } else {
                        a.epoch
                    };
                    let r = store.release(&actor, epoch);
                    assert!(r.is_ok() || matches!(r, Err(StorageError::Fenced { .. })));
                }
            }
        }
        if step % 50 == 49 {
            for pop in pops {
                let mut want: Vec<String> = store
                    .list_activations()
                    .unwrap()
                    .into_iter()
                    .filter(|(_, a)| a.active && a.pop == pop)
                    .map(|(actor, _)| actor)
                    .collect();
                want.sort();
                assert_eq!(
                    store.list_activations_by_pop(pop).unwrap(),
                    want,
                    "{pop} at step {step}"
                );
            }
        }
    }
    // Every actor ever claimed keeps its activation record (the epoch).
    let all = store.list_activations().unwrap();
    assert_eq!(all.len(), 13);
    assert!(all.iter().all(|(_, a)| a.epoch >= 1));
}

/// A rewrite of more pages than a commit clears inline leaves the versions
/// it supersedes (and the manifest naming them) to GC, which clears them in
/// steps of at most its per-transaction budget, and loses nothing.
#[test]
fn huge_rewrite_leaves_superseded_pages_to_bounded_gc() {
    let store = Store::memory().with_clear_limits(8, 5);
    let a = claim(&store, "huge/1", "pop-a");
    let first: Vec<(u32, Vec<u8>)> = (0..20).map(|i| (i, sparse_page(1, i))).collect();
    store
        .commit_snapshot(&req("huge/1", a.epoch, 0, 20, &first))
        .unwrap();
    let pages = |s: &Store| {
        s.kv()
            .read(|tx| tx.get_prefix(&crate::keys::page_prefix("huge/1")))
            .unwrap()
            .len()
    };
    // A small rewrite still clears inline.
    store
        .commit_snapshot(&req("huge/1", a.epoch, 1, 20, &[(0, sparse_page(2, 0))]))
        .unwrap();
    assert_eq!(pages(&store), 20);
    assert!(!store.needs_gc("huge/1").unwrap());
    // Rewriting all 20 (over the inline 8) leaves the 20 old versions.
    let second: Vec<(u32, Vec<u8>)> = (0..20).map(|i| (i, sparse_page(3, i))).collect();
    store
        .commit_snapshot(&req("huge/1", a.epoch, 2, 20, &second))
        .unwrap();
    assert_eq!(pages(&store), 40, "the superseded versions wait for GC");
    assert!(store.needs_gc("huge/1").unwrap());
    let head = store.load_snapshot("huge/1").unwrap().unwrap();
    let st = store.gc_snapshots("huge/1").unwrap();
    assert_eq!(st.pages_deleted, 20, "{st:?}");
    assert_eq!(st.manifests_deleted, 1, "{st:?}");
    assert_eq!(st.transactions, 4, "20 clears at 5 per step: {st:?}");
    assert_eq!(pages(&store), 20);
    assert!(!store.needs_gc("huge/1").unwrap());
    assert_eq!(store.load_snapshot("huge/1").unwrap().unwrap(), head);
    for (i, p) in &second {
        let off = *i as usize * PAGE_SIZE;
        assert_eq!(&head.memories[0][off..off + PAGE_SIZE], &p[..]);
    }
}

/// A transaction's size counts what FoundationDB counts: a clear costs
/// about four times its key, a set three times its key plus the value, and
/// a write transaction's reads their conflict ranges.
#[test]
fn transaction_size_counts_conflict_ranges() {
    let kv = Store::memory().kv().clone();
    let key = vec![b'k'; 100];
    let mut tx = kv.begin().unwrap();
    tx.set(&key, &[1; 50]);
    assert_eq!(tx.size(), 3 * 100 + 1 + 50);
    assert_eq!(tx.bytes_written(), 150);
    tx.clear(&key);
    assert_eq!(tx.size(), 351 + 4 * 100 + 2);
    tx.get(&key).unwrap();
    assert_eq!(tx.size(), 753 + 2 * 100 + 1);
    tx.get_range(b"a", b"b", None, false).unwrap();
    assert_eq!(tx.size(), 954 + 2);
    tx.commit().unwrap();
    assert_eq!(kv.stats().transaction_bytes_last, 956);
    // A read-only transaction sends no conflict ranges.
    let mut ro = kv.begin_read().unwrap();
    ro.get(&key).unwrap();
    assert_eq!(ro.size(), 0);
    // Clears alone push a transaction over the limit long before their
    // keys add up to it.
    let big_key = vec![b'x'; 9_000];
    let clears = (TRANSACTION_BYTES_MAX / (4 * 9_000)) as usize + 1;
    assert!((clears * 9_000) as u64 <= TRANSACTION_BYTES_MAX / 3);
    let r = kv.transact(|tx| {
        for i in 0..clears {
            let mut k = big_key.clone();
            k.extend_from_slice(&(i as u64).to_be_bytes());
            tx.clear(&k[..9_000]);
        }
        Ok(())
    });
    assert!(
        matches!(
            r,
            Err(StorageError::LimitExceeded {
                what: "transaction",
                ..
            })
        ),
        "{r:?}"
    );
}

/// A backend that puts `n` bytes in front of every key, as FoundationDB
/// does with a test prefix.
struct Prefixed(std::sync::Arc<dyn crate::kv::KvBackend>, usize);

impl crate::kv::KvBackend for Prefixed {
    fn name(&self) -> &'static str {
        "prefixed"
    }
    fn begin(&self, write: bool) -> Result<Box<dyn crate::kv::KvTransaction>, StorageError> {
        self.0.begin(write)
    }
    fn key_prefix_len(&self) -> usize {
        self.1
    }
}

/// The key limit counts the backend's prefix: the conformance case for
/// the largest key and value, on a backend with a 16-byte prefix (as
/// FoundationDB's test prefix is).
#[test]
fn key_limit_includes_the_backend_prefix() {
    let backend = Prefixed(
        std::sync::Arc::new(crate::kv::memory::MemoryBackend::new()),
        16,
    );
    let h = crate::conformance::Harness::over(Kv::new(std::sync::Arc::new(backend)));
    assert_eq!(h.kv().key_prefix_len(), 16);
    crate::conformance::max_key_and_value_sizes(&h);
}

/// Extra records are bounded in count and name length per commit, with a
/// message that says what to do.
#[test]
fn extra_records_bounded_in_count_and_name() {
    let store = Store::memory();
    let mut r = small_req_with_extras(&store, "ext/1", 0, 0);
    r.extra = (0..EXTRA_RECORDS_PER_COMMIT_MAX + 1)
        .map(|i| (format!("k{i}"), vec![1]))
        .collect();
    match store.commit_snapshot(&r) {
        Err(StorageError::InvalidArgument(m)) => assert!(m.contains("commit more often"), "{m}"),
        other => panic!("{other:?}"),
    }
    r.extra = vec![("n".repeat(EXTRA_NAME_BYTES_MAX + 1), vec![1])];
    assert!(matches!(
        store.commit_snapshot(&r),
        Err(StorageError::InvalidArgument(_))
    ));
    r.extra = vec![("n".repeat(EXTRA_NAME_BYTES_MAX), vec![1])];
    assert_eq!(store.commit_snapshot(&r), Ok(1));
}
