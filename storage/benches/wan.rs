//! What a store's distance costs: restoring a 1 MiB actor (16 stored
//! pages), a group commit of 32 actors (one changed page each) and
//! fetching a 1 MB component, with every round trip to the
//! store delayed by 80 ms (`kv::latency::LatencyKv` over the memory
//! backend), against a baseline measured in the same run: the same store
//! reading one key per round trip, as the record layer did before it
//! batched its reads.
//!
//! `cargo bench -p tern-storage --bench wan`
//!
//! Bounded: 3 runs of each case (about 30 s in all). Output is a markdown
//! table.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tern_storage::kv::latency::LatencyKv;
use tern_storage::kv::memory::MemoryBackend;
use tern_storage::{CommitRequest, Kv, MemoryDelta, PAGE_SIZE, SnapshotMeta, Store};

/// The delay of one round trip, ms (a POP far from its store).
const RTT_MS: u64 = 80;
/// Pages of the actor's memory (1 MiB).
const PAGES: u32 = 16;
/// Runs of each case.
const RUNS: usize = 3;
/// Actors of one group commit.
const GROUP: usize = 32;

fn store(sequential: bool) -> (Store, Arc<std::sync::atomic::AtomicU64>) {
    let (far, trips, _) = stores(sequential);
    (far, trips)
}

/// The same database seen from far (every round trip delayed and counted)
/// and from near (no delay: for setting up a case quickly).
fn stores(sequential: bool) -> (Store, Arc<std::sync::atomic::AtomicU64>, Store) {
    let db = Arc::new(MemoryBackend::new());
    let near = Store::from_kv(Kv::new(db.clone()), None);
    let mut kv = LatencyKv::new(db, Duration::from_millis(RTT_MS));
    if sequential {
        kv = kv.sequential();
    }
    let trips = kv.counter();
    (Store::from_kv(Kv::new(Arc::new(kv)), None), trips, near)
}

/// (ms per restore, round trips per restore).
fn restore(sequential: bool) -> (f64, u64) {
    let (store, trips) = store(sequential);
    let a = store.claim("bench/a", "pop", 1, &|_| true).expect("claim");
    let changed = (0..PAGES)
        .map(|i| (i, vec![(i as u8).wrapping_add(1); PAGE_SIZE]))
        .collect();
    store
        .commit_snapshot(&CommitRequest {
            actor: "bench/a".into(),
            epoch: a.epoch,
            expected_head_seq: 0,
            meta: SnapshotMeta::default(),
            memories: vec![MemoryDelta {
                len_bytes: PAGES as u64 * PAGE_SIZE as u64,
                changed_pages: changed,
            }],
            extra: vec![],
            ..Default::default()
        })
        .expect("commit");
    let before = trips.load(Ordering::Relaxed);
    let started = Instant::now();
    for _ in 0..RUNS {
        store
            .load_snapshot("bench/a")
            .expect("restore")
            .expect("a snapshot");
    }
    let ms = started.elapsed().as_secs_f64() * 1e3 / RUNS as f64;
    (ms, (trips.load(Ordering::Relaxed) - before) / RUNS as u64)
}

/// A request that changes page `page` of `actor`'s 1 MiB memory (a page
/// with a few non-zero bytes: it compresses, so 32 of them fit one group).
fn change(actor: &str, epoch: u64, head: u64, page: u32) -> CommitRequest {
    let mut data = vec![0u8; PAGE_SIZE];
    data[..8].copy_from_slice(&(head + 1).to_le_bytes());
    CommitRequest {
        actor: actor.into(),
        epoch,
        expected_head_seq: head,
        meta: SnapshotMeta::default(),
        memories: vec![MemoryDelta {
            len_bytes: PAGES as u64 * PAGE_SIZE as u64,
            changed_pages: vec![(page, data)],
        }],
        extra: vec![],
        ..Default::default()
    }
}

/// Sets by `group_commit` when a group commit failed (the baseline does:
/// its round trips outlast FoundationDB's 5 s transaction limit).
static GROUP_FAILED: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

/// (ms per group commit of GROUP actors, round trips per group commit).
/// A run that fails is reported (in GROUP_FAILED) and ends the case.
fn group_commit(sequential: bool) -> (f64, u64) {
    let (store, trips, near) = stores(sequential);
    let actors: Vec<(String, u64)> = (0..GROUP)
        .map(|i| {
            let actor = format!("bench/{i}");
            let epoch = near
                .claim(&actor, "pop", 1, &|_| true)
                .expect("claim")
                .epoch;
            near.commit_snapshot(&change(&actor, epoch, 0, 0))
                .expect("first commit");
            (actor, epoch)
        })
        .collect();
    let before = trips.load(Ordering::Relaxed);
    let started = Instant::now();
    for run in 0..RUNS {
        let head = run as u64 + 1;
        let reqs: Vec<CommitRequest> = actors
            .iter()
            .map(|(actor, epoch)| change(actor, *epoch, head, 1 + run as u32))
            .collect();
        let out = store.commit_batch(&reqs);
        if let Some(Err(e)) = out.iter().find(|r| r.is_err()) {
            *GROUP_FAILED.lock().expect("not poisoned") = Some(e.to_string());
            let ms = started.elapsed().as_secs_f64() * 1e3;
            return (ms, trips.load(Ordering::Relaxed) - before);
        }
        assert!(out.iter().all(|r| r == &Ok(head + 1)), "{out:?}");
    }
    let ms = started.elapsed().as_secs_f64() * 1e3 / RUNS as f64;
    (ms, (trips.load(Ordering::Relaxed) - before) / RUNS as u64)
}

/// (ms per fetch, round trips per fetch).
fn component(sequential: bool) -> (f64, u64) {
    let (store, trips) = store(sequential);
    let bytes: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    let digest = store.put_component(&bytes).expect("put");
    let before = trips.load(Ordering::Relaxed);
    let started = Instant::now();
    for _ in 0..RUNS {
        store.get_component(&digest).expect("get").expect("present");
    }
    let ms = started.elapsed().as_secs_f64() * 1e3 / RUNS as f64;
    (ms, (trips.load(Ordering::Relaxed) - before) / RUNS as u64)
}

fn main() {
    println!("round trip {RTT_MS} ms; {RUNS} runs each");
    println!();
    println!("| case | one key per round trip | batched | speed-up |");
    println!("|---|---|---|---|");
    for (name, f) in [
        (
            "restore, 1 MiB actor (16 pages)",
            restore as fn(bool) -> (f64, u64),
        ),
        ("group commit, 32 actors", group_commit),
        ("component fetch, 1 MB", component),
    ] {
        let (base_ms, base_trips) = f(true);
        let base_failed = GROUP_FAILED.lock().expect("not poisoned").take();
        let (ms, trips) = f(false);
        if let Some(e) = GROUP_FAILED.lock().expect("not poisoned").take() {
            panic!("{name}: the batched store failed: {e}");
        }
        match base_failed {
            Some(e) => println!(
                "| {name} | fails after {base_ms:.0} ms ({base_trips} round trips): {e} | {ms:.0} ms ({trips} round trips) | from failing to {ms:.0} ms |"
            ),
            None => println!(
                "| {name} | {base_ms:.0} ms ({base_trips} round trips) | {ms:.0} ms ({trips} round trips) | {:.1}× |",
                base_ms / ms
            ),
        }
    }
}
