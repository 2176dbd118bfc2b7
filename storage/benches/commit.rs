//! Commit latency and throughput of a one-page turn on sqlite.
//!
//! `cargo bench -p tern-storage --bench commit`
//!
//! Each actor has a 1 MiB memory (16 pages of 64 KiB); each commit changes
//! one page. Snapshot cases, each against a baseline measured in the same
//! run on a fresh sqlite file: a raw KV transaction writing the same page
//! bytes (64 KiB value + small key) with no record layer.
//! - sequential: one actor, one `commit_snapshot` after another;
//! - batch of 32: 32 actors, one `commit_batch` of 32 requests per round
//!   (latency is per batch: every reply in it waits for the batch).
//!
//! Each runs with two kinds of page: random bytes (incompressible, the
//! worst case: stored raw) and a realistic guest page (mostly zero with a
//! few hundred non-zero bytes, like a wasm stack, data or heap page after a
//! small turn; page values are lz4-compressed).
//!
//! Counts are bounded (about 2000 commits per case); the whole run takes a
//! few seconds. Output is a markdown table.

use std::time::{Duration, Instant};

use tern_storage::{ActivationRecord, CommitRequest, MemoryDelta, PAGE_SIZE, SnapshotMeta, Store};

/// Pages of each actor's memory (1 MiB).
const MEMORY_PAGES: u32 = 16;
/// Commits measured per sequential case.
const COMMITS: usize = 2000;
/// Actors per `commit_batch` group.
const BATCH_ACTORS: usize = 32;
/// Rounds of the batched case (63 × 32 = 2016 commits).
const BATCH_ROUNDS: usize = COMMITS.div_ceil(BATCH_ACTORS);
/// Untimed commits before each measured case.
const WARMUP: usize = 50;

/// A page of pseudo-random, non-zero bytes that depends on `seed`.
fn page(seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..PAGE_SIZE)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x as u8) | 1
        })
        .collect()
}

/// Non-zero bytes in a realistic page.
const REALISTIC_DIRTY_BYTES: usize = 384;

/// A realistic guest page: zero except for a few runs of pseudo-random
/// bytes (a stack frame, a few heap objects, some data) that depend on
/// `seed`, [`REALISTIC_DIRTY_BYTES`] in all.
fn realistic_page(seed: u64) -> Vec<u8> {
    let noise = page(seed);
    let mut p = vec![0u8; PAGE_SIZE];
    // Three runs: near the top (stack), in the middle (heap), near the
    // start (data), at offsets that move with the seed.
    let run = REALISTIC_DIRTY_BYTES / 3;
    let shift = (seed as usize % 64) * 8;
    for start in [PAGE_SIZE - 4096 + shift, PAGE_SIZE / 2 + shift, 256 + shift] {
        p[start..start + run].copy_from_slice(&noise[start..start + run]);
    }
    p
}

/// Which pages a case commits.
#[derive(Clone, Copy)]
enum Pages {
    Random,
    Realistic,
}

impl Pages {
    fn make(self, seed: u64) -> Vec<u8> {
        match self {
            Pages::Random => page(seed),
            Pages::Realistic => realistic_page(seed),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Pages::Random => "random pages",
            Pages::Realistic => "realistic pages",
        }
    }
}

fn meta() -> SnapshotMeta {
    SnapshotMeta {
        component_digest: "ab".repeat(32),
        engine_version: "bench".into(),
        globals: vec![65536],
    }
}

fn request(actor: &str, epoch: u64, head: u64, changed: Vec<(u32, Vec<u8>)>) -> CommitRequest {
    CommitRequest {
        actor: actor.into(),
        epoch,
        expected_head_seq: head,
        meta: meta(),
        memories: vec![MemoryDelta {
            len_bytes: MEMORY_PAGES as u64 * PAGE_SIZE as u64,
            changed_pages: changed,
        }],
        extra: vec![],
        ..Default::default()
    }
}

/// An actor claimed and given its full 1 MiB first snapshot.
fn actor(store: &Store, name: &str, kind: Pages) -> ActivationRecord {
    let a = store.claim(name, "pop-bench", 1, &|_| true).expect("claim");
    let all = (0..MEMORY_PAGES)
        .map(|i| (i, kind.make(i as u64)))
        .collect();
    store
        .commit_snapshot(&request(name, a.epoch, 0, all))
        .expect("first snapshot");
    store.get_activation(name).unwrap().expect("claimed")
}

/// A fresh sqlite store in its own directory.
fn sqlite() -> (Store, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::sqlite(&dir.path().join("bench.db")).expect("open sqlite");
    (store, dir)
}

struct Measured {
    /// Latency of each measured operation.
    latencies: Vec<Duration>,
    /// Commits (snapshot commits or raw transactions) done.
    commits: usize,
    total: Duration,
    /// Bytes written to the KV layer per commit.
    bytes_per_commit: u64,
}

impl Measured {
    fn pct(&self, p: f64) -> Duration {
        let mut v = self.latencies.clone();
        v.sort();
        let i = ((v.len() as f64 - 1.0) * p).round() as usize;
        v[i]
    }

    fn per_sec(&self) -> f64 {
        self.commits as f64 / self.total.as_secs_f64()
    }
}

/// Runs `op` `n` times (after `WARMUP` untimed runs); each run does
/// `per_op` commits.
fn measure(store: &Store, n: usize, per_op: usize, mut op: impl FnMut(usize)) -> Measured {
    for i in 0..WARMUP {
        op(i);
    }
    let before = store.stats();
    let mut latencies = Vec::with_capacity(n);
    let start = Instant::now();
    for i in WARMUP..WARMUP + n {
        let t = Instant::now();
        op(i);
        latencies.push(t.elapsed());
    }
    let total = start.elapsed();
    let written = store.stats().since(&before).bytes_written;
    Measured {
        latencies,
        commits: n * per_op,
        total,
        bytes_per_commit: written / (n * per_op) as u64,
    }
}

/// One-page snapshot commits of one actor, one after another.
fn snapshot_sequential(kind: Pages) -> Measured {
    let (store, _dir) = sqlite();
    let a = actor(&store, "bench/seq", kind);
    let mut head = a.head_seq;
    measure(&store, COMMITS, 1, |i| {
        let changed = vec![((i as u32) % MEMORY_PAGES, kind.make(1000 + i as u64))];
        head = store
            .commit_snapshot(&request("bench/seq", a.epoch, head, changed))
            .expect("commit");
    })
}

/// Raw KV transactions, each writing `values` values of one page under
/// small keys: the same bytes as `values` one-page commits.
fn raw(values: usize, n: usize, kind: Pages) -> Measured {
    let (store, _dir) = sqlite();
    let pages: Vec<Vec<u8>> = (0..64).map(|i| kind.make(5000 + i)).collect();
    let kv = store.kv().clone();
    measure(&store, n, values, |i| {
        kv.transact(|tx| {
            for v in 0..values {
                let key = format!("raw/{v}/{}", i as u32 % MEMORY_PAGES);
                tx.set(key.as_bytes(), &pages[(i + v) % pages.len()]);
            }
            Ok(())
        })
        .expect("raw transaction");
    })
}

/// `commit_batch` of one one-page commit for each of 32 actors, per round.
fn snapshot_batched(kind: Pages) -> Measured {
    let (store, _dir) = sqlite();
    let mut heads = Vec::with_capacity(BATCH_ACTORS);
    let actors: Vec<(String, u64)> = (0..BATCH_ACTORS)
        .map(|i| {
            let name = format!("bench/batch/{i}");
            let a = actor(&store, &name, kind);
            heads.push(a.head_seq);
            (name, a.epoch)
        })
        .collect();
    measure(&store, BATCH_ROUNDS, BATCH_ACTORS, |round| {
        let reqs: Vec<CommitRequest> = actors
            .iter()
            .zip(&heads)
            .enumerate()
            .map(|(j, ((name, epoch), head))| {
                let changed = vec![(
                    (round as u32 + j as u32) % MEMORY_PAGES,
                    kind.make(((round * BATCH_ACTORS + j) as u64) << 8),
                )];
                request(name, *epoch, *head, changed)
            })
            .collect();
        for (h, r) in heads.iter_mut().zip(store.commit_batch(&reqs)) {
            *h = r.expect("batched commit");
        }
    })
}

fn us(d: Duration) -> String {
    format!("{:.0}", d.as_secs_f64() * 1e6)
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument is ignored.
    let mut rows = Vec::new();
    for kind in [Pages::Random, Pages::Realistic] {
        let seq = snapshot_sequential(kind);
        let seq_base = raw(1, COMMITS, kind);
        let batch = snapshot_batched(kind);
        let batch_base = raw(BATCH_ACTORS, BATCH_ROUNDS, kind);
        rows.push((
            format!("sequential, 1 actor, {}", kind.name()),
            seq,
            seq_base,
        ));
        rows.push((
            format!(
                "commit_batch, 32 actors (latency per batch), {}",
                kind.name()
            ),
            batch,
            batch_base,
        ));
    }

    println!(
        "\n### sqlite: one-page commit (1 MiB memory, 64 KiB page), {} commits per case, WAL + synchronous=NORMAL\n",
        COMMITS
    );
    println!(
        "| case | commits | latency p50 (µs) | latency p99 (µs) | commits/s | bytes/commit | raw-KV baseline p50 (µs) | baseline p99 (µs) | baseline commits/s | commits/s vs baseline |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (name, m, b) in &rows {
        println!(
            "| {name} | {} | {} | {} | {:.0} | {} | {} | {} | {:.0} | {:.2}× |",
            m.commits,
            us(m.pct(0.5)),
            us(m.pct(0.99)),
            m.per_sec(),
            m.bytes_per_commit,
            us(b.pct(0.5)),
            us(b.pct(0.99)),
            b.per_sec(),
            m.per_sec() / b.per_sec(),
        );
    }
    println!(
        "\nBaseline: `Kv::transact` on a fresh sqlite file writing the same uncompressed page bytes under small keys (1 value per transaction for the sequential case, 32 per transaction for the batched one), no record layer. Realistic pages: zero except {REALISTIC_DIRTY_BYTES} pseudo-random bytes in three runs."
    );
}
