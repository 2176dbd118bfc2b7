//! The simulator's own guarantees: it is deterministic, its checker
//! catches planted bugs, the CI batch of seeds passes, and seeds that once
//! found real bugs stay fixed.

use std::sync::{Mutex, MutexGuard, OnceLock};

use tern_runtime::TernEngine;
use tern_sim::{Plant, SimConfig, counter_wasm, engine, run_seed};

/// Planted bugs are process-wide switches: tests run one at a time.
fn one_at_a_time() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

fn setup() -> &'static (TernEngine, Vec<u8>) {
    static S: OnceLock<(TernEngine, Vec<u8>)> = OnceLock::new();
    S.get_or_init(|| {
        (
            engine().expect("engine"),
            counter_wasm().expect("counter component"),
        )
    })
}

/// The first seed in `seeds` with a violation, if any.
fn first_failing(cfg: &SimConfig, seeds: std::ops::Range<u64>) -> Option<(u64, Vec<String>)> {
    let (engine, wasm) = setup();
    seeds.into_iter().find_map(|seed| {
        let r = run_seed(cfg, seed, engine, wasm);
        (!r.violations.is_empty()).then_some((seed, r.violations))
    })
}

#[test]
fn sim_is_deterministic() {
    let _one = one_at_a_time();
    let (engine, wasm) = setup();
    let cfg = SimConfig::default();
    for seed in [5, 9] {
        let a = run_seed(&cfg, seed, engine, wasm);
        let b = run_seed(&cfg, seed, engine, wasm);
        assert_eq!(a.trace_hash, b.trace_hash, "seed {seed}");
        assert_eq!(a.events, b.events, "seed {seed}");
        assert!(
            a.events > 50,
            "seed {seed} did something ({} events)",
            a.events
        );
    }
    let other = run_seed(&cfg, 6, engine, wasm);
    let five = run_seed(&cfg, 5, engine, wasm);
    assert_ne!(other.trace_hash, five.trace_hash, "seeds differ");
}

fn planted(bug: Plant) -> SimConfig {
    SimConfig {
        plant: Some(bug),
        ..SimConfig::default()
    }
}

#[test]
fn sim_finds_planted_serve_after_lease() {
    let _one = one_at_a_time();
    let found = first_failing(&planted(Plant::ServeAfterLease), 0..200);
    assert!(
        found.is_some(),
        "serve-after-lease went unnoticed for 200 seeds"
    );
}

#[test]
fn sim_finds_planted_ignore_idempotency() {
    let _one = one_at_a_time();
    let found = first_failing(&planted(Plant::IgnoreIdempotency), 0..200);
    let (_, violations) = found.expect("ignore-idempotency went unnoticed for 200 seeds");
    assert!(
        violations.iter().any(|v| v.contains("times")),
        "a keyed call applied twice: {violations:?}"
    );
}

/// The CI batch: these seeds must pass.
#[test]
fn sim_seeds_pass() {
    let _one = one_at_a_time();
    let found = first_failing(&SimConfig::default(), 0..60);
    assert!(found.is_none(), "{found:?}");
}

/// Seed 23 found forwarding keys repeated by a restarted POP (an owner
/// replayed an old reply to a new call); seed 9 found a paused POP, its
/// clock stopped, answering reads from a superseded activation.
#[test]
fn sim_regression_seeds_pass() {
    let _one = one_at_a_time();
    let (engine, wasm) = setup();
    for seed in [9, 23] {
        let r = run_seed(&SimConfig::default(), seed, engine, wasm);
        assert!(r.violations.is_empty(), "seed {seed}: {:?}", r.violations);
    }
}
