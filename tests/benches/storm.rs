//! An unrelated actor's latency during a CPU storm on its POP, against the
//! same without the storm, measured in one run (see BENCHMARKS.md).
//!
//! Run: `cargo build --release -p tern-cli --bin tern &&
//! cargo bench -p tern-tests --bench storm`. Bounded: two 10 s phases.

use std::time::Duration;

use tern_tests::{DevCluster, counter_wasm, percentile, runtime, storm};

const SPINNERS: usize = 64;
const PHASE: Duration = Duration::from_secs(10);

fn main() {
    let data = tempfile::tempdir().unwrap();
    let dev = DevCluster::start_pops(data.path(), 1);
    let wasm = counter_wasm().to_str().unwrap();
    dev.tern(&["deploy", "counter", wasm]).unwrap();
    let rt = runtime();
    let quiet = rt.block_on(async { storm(dev.connect("fra").await, 0, PHASE).await });
    let loud = rt.block_on(async { storm(dev.connect("fra").await, SPINNERS, PHASE).await });
    let row = |name: &str, r: &tern_tests::StormReport| {
        println!(
            "{name:<22} calls {:>5}  p50 {:>7.2} ms  p99 {:>7.2} ms  spins {:>5}  lease errors {}",
            r.calm_ms.len(),
            percentile(&r.calm_ms, 50.0),
            percentile(&r.calm_ms, 99.0),
            r.spins,
            r.lease_errors
        );
    };
    println!("unrelated actor on a POP, {SPINNERS} spinners re-sending at once, {PHASE:?} each:");
    row("baseline (no storm)", &quiet);
    row("during the storm", &loud);
    println!(
        "ratio storm/baseline: p50 {:.2}x, p99 {:.2}x",
        percentile(&loud.calm_ms, 50.0) / percentile(&quiet.calm_ms, 50.0),
        percentile(&loud.calm_ms, 99.0) / percentile(&quiet.calm_ms, 99.0)
    );
}
