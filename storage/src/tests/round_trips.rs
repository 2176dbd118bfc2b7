//! Round trips per operation, counted by the latency wrapper: what an
//! operation costs at WAN distance is its round trips times the distance.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::conformance::{claim, page, random_page, req, sparse_page};
use crate::kv::KvBackend;
use crate::kv::latency::LatencyKv;
use crate::kv::memory::MemoryBackend;
use crate::kv::sqlite::SqliteBackend;
use crate::{Kv, Store};

/// A store over `backend` whose round trips are counted.
fn counted(backend: Arc<dyn KvBackend>) -> (Store, Arc<AtomicU64>) {
    let wrapped = LatencyKv::new(backend, Duration::ZERO);
    let trips = wrapped.counter();
    (Store::from_kv(Kv::new(Arc::new(wrapped)), None), trips)
}

/// Round trips of restoring actors of 1 and of 64 stored pages: the same
/// (the pages are read in one batch), and 3: the activation record with
/// the side records, the manifest, the pages.
fn restore_round_trips_are_constant(backend: Arc<dyn KvBackend>) {
    let (store, trips) = counted(backend);
    let mut costs = Vec::new();
    for pages in [1u32, 64] {
        let actor = format!("r/{pages}");
        let a = claim(&store, &actor, "pop-a");
        let changed: Vec<_> = (0..pages).map(|i| (i, page(i as u64 + 1, 0))).collect();
        store
            .commit_snapshot(&req(&actor, a.epoch, 0, pages, &changed))
            .unwrap();
        let before = trips.load(Ordering::Relaxed);
        let loaded = store.load_snapshot(&actor).unwrap().expect("a snapshot");
        assert_eq!(loaded.memories[0].len(), pages as usize * crate::PAGE_SIZE);
        costs.push(trips.load(Ordering::Relaxed) - before);
    }
    assert_eq!(
        costs[0], costs[1],
        "restore round trips grow with pages: {costs:?}"
    );
    assert_eq!(costs[1], 3, "restore took {} round trips", costs[1]);
}

#[test]
fn restore_round_trips_are_constant_memory() {
    restore_round_trips_are_constant(Arc::new(MemoryBackend::new()));
}

#[test]
fn restore_round_trips_are_constant_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let backend = SqliteBackend::open(&dir.path().join("t.db")).unwrap();
    restore_round_trips_are_constant(Arc::new(backend));
}

/// The wrapper counts a batched read as one round trip, and a loop of
/// reads as one each.
#[test]
fn latency_wrapper_counts_a_batched_read_once() {
    let wrapped = LatencyKv::new(Arc::new(MemoryBackend::new()), Duration::from_millis(1));
    let trips = wrapped.counter();
    let kv = Kv::new(Arc::new(wrapped));
    let keys: Vec<Vec<u8>> = (0..50u8).map(|i| vec![b'k', i]).collect();
    kv.transact(|tx| {
        for k in &keys {
            tx.set(k, b"v");
        }
        Ok(())
    })
    .unwrap();
    assert_eq!(trips.load(Ordering::Relaxed), 1, "one commit");
    let got = kv.read(|tx| tx.get_many(&keys)).unwrap();
    assert!(got.iter().all(|v| v.as_deref() == Some(&b"v"[..])));
    assert_eq!(trips.load(Ordering::Relaxed), 2, "one batched read");
    kv.read(|tx| {
        keys.iter()
            .map(|k| tx.get(k))
            .collect::<Result<Vec<_>, _>>()
    })
    .unwrap();
    assert_eq!(trips.load(Ordering::Relaxed), 52, "fifty single reads");
}

/// Fetching a 1 MB component: its header, then every chunk at once, not a
/// range read that FoundationDB would answer in 80 kB replies.
fn component_fetch_round_trips_are_bounded(backend: Arc<dyn KvBackend>) {
    let (store, trips) = counted(backend);
    let bytes: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    let digest = store.put_component(&bytes).unwrap();
    let before = trips.load(Ordering::Relaxed);
    assert_eq!(store.get_component(&digest).unwrap().unwrap(), bytes);
    let cost = trips.load(Ordering::Relaxed) - before;
    assert_eq!(cost, 2, "a component fetch took {cost} round trips");
}

#[test]
fn component_fetch_round_trips_are_bounded_memory() {
    component_fetch_round_trips_are_bounded(Arc::new(MemoryBackend::new()));
}

#[test]
fn component_fetch_round_trips_are_bounded_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let backend = SqliteBackend::open(&dir.path().join("t.db")).unwrap();
    component_fetch_round_trips_are_bounded(Arc::new(backend));
}

/// A first commit for each of `n` actors named `prefix/i`, then the
/// requests of their second commit (one sparse page each: small enough
/// that all of them fit one group).
fn second_commits(store: &Store, prefix: &str, n: usize) -> Vec<crate::CommitRequest> {
    (0..n)
        .map(|i| {
            let actor = format!("{prefix}/{i}");
            let a = claim(store, &actor, "pop-a");
            store
                .commit_snapshot(&req(&actor, a.epoch, 0, 4, &[(0, page(i as u64, 0))]))
                .unwrap();
            req(&actor, a.epoch, 1, 4, &[(1, sparse_page(i as u64, 1))])
        })
        .collect()
}

/// A group commit of 1 and of 32 actors costs the same round trips: every
/// activation record and every manifest in one batch, then the commit.
fn group_commit_round_trips_are_constant(backend: Arc<dyn KvBackend>) {
    let (store, trips) = counted(backend);
    let mut costs = Vec::new();
    for n in [1usize, 32] {
        let reqs = second_commits(&store, &format!("g{n}"), n);
        let before = trips.load(Ordering::Relaxed);
        let out = store.commit_batch(&reqs);
        assert!(out.iter().all(|r| r == &Ok(2)), "{out:?}");
        costs.push(trips.load(Ordering::Relaxed) - before);
    }
    assert_eq!(
        costs[0], costs[1],
        "group commit round trips grow with requests: {costs:?}"
    );
    assert_eq!(costs[1], 2, "one batched read and the commit: {costs:?}");
}

#[test]
fn group_commit_round_trips_are_constant_memory() {
    group_commit_round_trips_are_constant(Arc::new(MemoryBackend::new()));
}

#[test]
fn group_commit_round_trips_are_constant_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let backend = SqliteBackend::open(&dir.path().join("t.db")).unwrap();
    group_commit_round_trips_are_constant(Arc::new(backend));
}

/// A GC step costs the same round trips whether it collects one old
/// manifest or twenty, and abandoned stages of any size: the activation
/// record, one batch of range reads, one batch of staged-page reads, the
/// commit.
fn gc_round_trips_are_constant(backend: Arc<dyn KvBackend>) {
    let (store, trips) = counted(backend);
    // Nothing superseded is cleared inline: every commit leaves its
    // predecessor's manifest to GC.
    let store = store.with_clear_limits(0, 10_000);
    let mut costs = Vec::new();
    for commits in [2u64, 21] {
        let actor = format!("gc{commits}");
        let a = claim(&store, &actor, "pop-a");
        for head in 0..commits {
            store
                .commit_snapshot(&req(&actor, a.epoch, head, 4, &[(0, page(head + 1, 0))]))
                .unwrap();
        }
        // A stage the POP abandoned at the next seq, then lost the actor.
        let big: Vec<(u32, Vec<u8>)> = (0..20).map(|i| (i, random_page(i as u64))).collect();
        store
            .stage_without_manifest(&req(&actor, a.epoch, commits, 20, &big))
            .unwrap();
        claim(&store, &actor, "pop-b");
        let before = trips.load(Ordering::Relaxed);
        let st = store.gc_snapshots(&actor).unwrap();
        assert_eq!(st.manifests_deleted, commits - 1, "{st:?}");
        assert_eq!(st.pages_deleted, commits - 1 + 20, "{st:?}");
        assert_eq!(st.transactions, 1, "{st:?}");
        costs.push(trips.load(Ordering::Relaxed) - before);
    }
    assert_eq!(costs[0], costs[1], "GC round trips grow: {costs:?}");
    assert_eq!(costs[1], 4, "{costs:?}");
}

#[test]
fn gc_round_trips_are_constant_memory() {
    gc_round_trips_are_constant(Arc::new(MemoryBackend::new()));
}

#[test]
fn gc_round_trips_are_constant_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let backend = SqliteBackend::open(&dir.path().join("t.db")).unwrap();
    gc_round_trips_are_constant(Arc::new(backend));
}

/// A claim that takes an actor over reads the activation record and the
/// claimant's POP record in one batch, then the holder's POP record, then
/// commits: 3 round trips.
fn claim_round_trips_are_bounded(backend: Arc<dyn KvBackend>) {
    let (store, trips) = counted(backend);
    for pop in ["pop-a", "pop-b"] {
        store
            .put_pop(
                pop,
                &crate::PopRecord {
                    addr: format!("http://{pop}"),
                    coords: (0.0, 0.0),
                    lease_until_ms: 10_000,
                    incarnation: 1,
                },
            )
            .unwrap();
    }
    let judge = |_: &crate::ClaimFacts| Ok::<(), ()>(());
    store
        .claim_as("c/1", "pop-a", 1, 1, 7, &judge)
        .unwrap()
        .unwrap();
    let before = trips.load(Ordering::Relaxed);
    let b = store
        .claim_as("c/1", "pop-b", 1, 2, 8, &judge)
        .unwrap()
        .unwrap();
    assert_eq!(b.pop, "pop-b");
    let cost = trips.load(Ordering::Relaxed) - before;
    assert_eq!(cost, 3, "a takeover claim took {cost} round trips");
}

#[test]
fn claim_round_trips_are_bounded_memory() {
    claim_round_trips_are_bounded(Arc::new(MemoryBackend::new()));
}

#[test]
fn claim_round_trips_are_bounded_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let backend = SqliteBackend::open(&dir.path().join("t.db")).unwrap();
    claim_round_trips_are_bounded(Arc::new(backend));
}
