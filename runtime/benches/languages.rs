//! What an actor costs in Python and JavaScript against Rust (issue 18):
//! the same counter (`examples/counter`, `examples/counter-py`,
//! `examples/counter-js`), on one node over the embedded store (sqlite),
//! `turn` durability:
//! - deploy: validating, instrumenting and compiling the component;
//! - cold activation: the first `get` after the actor was evicted
//!   (restore from the store, instantiate, write memories and globals, run);
//! - snapshot: bytes the first commit of a fresh actor writes;
//! - small turn: bytes one `incr` commits;
//! - warm calls per second: `get` on an active actor.
//!
//! Each figure is also given as a ratio to the Rust actor's, measured in
//! the same run. Run: `cargo bench -p tern-runtime --bench languages`
//! (needs componentize-py and componentize-js: `eval "$(bash
//! scripts/lang-tools.sh)"` first). Counts are bounded (about two minutes).

use std::path::{Path, PathBuf};
use std::time::Instant;

use tern_runtime::config::{Durability, Limits};
use tern_runtime::{CallRequest, Node, TernEngine};
use tern_storage::Store;

const COLD_ROUNDS: usize = 5;
const SMALL_TURNS: usize = 40;
const WARM_CALLS: usize = 2_000;

struct Figures {
    deploy_ms: f64,
    cold_ms: f64,
    snapshot_bytes: u64,
    turn_bytes: u64,
    turn_pages: f64,
    warm_per_s: f64,
}

fn req(id: &str, method: &str, payload: &str) -> CallRequest {
    CallRequest {
        actor_type: "c".into(),
        id: id.into(),
        method: method.into(),
        payload: payload.as_bytes().to_vec(),
        idempotency_key: None,
    }
}

async fn measure(engine: &TernEngine, wasm: &[u8]) -> Figures {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&format!("sqlite:{}", dir.path().join("b.db").display())).unwrap();
    let node = Node::new("bench", store.clone(), engine.clone());
    let started = Instant::now();
    node.deploy(
        "c",
        wasm,
        tern_runtime::DeployOptions {
            durability: Durability::Turn,
            limits: Limits::default(),
            ..Default::default()
        },
    )
    .expect("deploy");
    let deploy_ms = started.elapsed().as_secs_f64() * 1e3;
    let written = || store.stats().bytes_written;

    // The first commit of a fresh actor: its whole snapshot.
    let before = written();
    node.call(req("a", "incr", "{\"by\": 1}"))
        .await
        .expect("incr");
    let snapshot_bytes = written() - before;

    let before = written();
    let pages_before = node.status().await.pages_changed;
    for _ in 0..SMALL_TURNS {
        node.call(req("a", "incr", "{\"by\": 1}"))
            .await
            .expect("incr");
    }
    let turn_bytes = (written() - before) / SMALL_TURNS as u64;
    let turn_pages = (node.status().await.pages_changed - pages_before) as f64 / SMALL_TURNS as f64;

    let mut cold = 0.0;
    for _ in 0..COLD_ROUNDS {
        node.evict("c", "a").await;
        let t = Instant::now();
        node.call(req("a", "get", "")).await.expect("get");
        cold += t.elapsed().as_secs_f64() * 1e3;
    }

    let t = Instant::now();
    for _ in 0..WARM_CALLS {
        node.call(req("a", "get", "")).await.expect("get");
    }
    let warm_per_s = WARM_CALLS as f64 / t.elapsed().as_secs_f64();
    Figures {
        deploy_ms,
        cold_ms: cold / COLD_ROUNDS as f64,
        snapshot_bytes,
        turn_bytes,
        turn_pages,
        warm_per_s,
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let build = |dir: PathBuf| -> Vec<u8> {
        let path = tern_cli::lang::build_actor(&dir, true, &[])
            .unwrap_or_else(|e| panic!("build {}: {e}", dir.display()));
        std::fs::read(path).unwrap()
    };
    let engine = TernEngine::new().unwrap();
    let _guard = rt.enter();
    let mut rows = Vec::new();
    for (name, dir) in [
        ("Rust", "counter"),
        ("Python", "counter-py"),
        ("JavaScript", "counter-js"),
    ] {
        let wasm = build(examples.join(dir));
        let f = rt.block_on(measure(&engine, &wasm));
        rows.push((name, wasm.len(), f));
    }
    let rust = &rows[0].2;
    println!(
        "| actor | component | deploy (compile) | cold activation | snapshot | bytes per small turn | pages per small turn | warm calls/s |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (name, size, f) in &rows {
        println!(
            "| {name} | {:.1} MB | {:.0} ms ({:.0}×) | {:.1} ms ({:.0}×) | {} kB ({:.0}×) | {} kB ({:.1}×) | {:.1} | {:.0} ({:.2}×) |",
            *size as f64 / 1e6,
            f.deploy_ms,
            f.deploy_ms / rust.deploy_ms,
            f.cold_ms,
            f.cold_ms / rust.cold_ms,
            f.snapshot_bytes / 1000,
            f.snapshot_bytes as f64 / rust.snapshot_bytes as f64,
            f.turn_bytes / 1000,
            f.turn_bytes as f64 / rust.turn_bytes as f64,
            f.turn_pages,
            f.warm_per_s,
            f.warm_per_s / rust.warm_per_s,
        );
    }
}
