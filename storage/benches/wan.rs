//! What a store's distance costs: restoring a 1 MiB actor (16 stored
//! pages) and fetching a 1 MB component, with every round trip to the
//! store delayed by 80 ms (`kv::latency::LatencyKv` over the memory
//! backend), against a baseline measured in the same run: the same store
//! reading one key per round trip, as the record layer did before it
//! batched its reads.
//!
//! `cargo bench -p tern-storage --bench wan`
//!
//! Bounded: 3 runs of each case (about 10 s in all). Output is a markdown
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

fn store(sequential: bool) -> (Store, Arc<std::sync::atomic::AtomicU64>) {
    let mut kv = LatencyKv::new(
        Arc::new(MemoryBackend::new()),
        Duration::from_millis(RTT_MS),
    );
    if sequential {
        kv = kv.sequential();
    }
    let trips = kv.counter();
    (Store::from_kv(Kv::new(Arc::new(kv)), None), trips)
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
        ("component fetch, 1 MB", component),
    ] {
        let (base_ms, base_trips) = f(true);
        let (ms, trips) = f(false);
        println!(
            "| {name} | {base_ms:.0} ms ({base_trips} round trips) | {ms:.0} ms ({trips} round trips) | {:.1}× |",
            base_ms / ms
        );
    }
}
