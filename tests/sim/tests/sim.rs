//! The simulator's own guarantees: it is deterministic, its checker
//! catches planted bugs, the CI batch of seeds of every workload passes,
//! and seeds that once found real bugs stay fixed.

use std::sync::{Mutex, MutexGuard, OnceLock};

use tern_runtime::TernEngine;
use tern_sim::{Components, Plant, SimConfig, Workload, engine, run_seed};

/// Planted bugs are process-wide switches: tests run one at a time.
fn one_at_a_time() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

fn setup() -> &'static (TernEngine, Components) {
    static S: OnceLock<(TernEngine, Components)> = OnceLock::new();
    S.get_or_init(|| (engine().expect("engine"), Components::new()))
}

fn run(cfg: &SimConfig, seed: u64) -> tern_sim::SeedReport {
    let (engine, components) = setup();
    run_seed(cfg, seed, engine, components).expect("the seed runs")
}

/// The first seed in `seeds` with a violation, if any.
fn first_failing(cfg: &SimConfig, seeds: std::ops::Range<u64>) -> Option<(u64, Vec<String>)> {
    seeds.into_iter().find_map(|seed| {
        let r = run(cfg, seed);
        (!r.violations.is_empty()).then_some((seed, r.violations))
    })
}

#[test]
fn sim_is_deterministic() {
    let _one = one_at_a_time();
    for w in [Workload::Counter, Workload::Bank, Workload::Doom] {
        let cfg = SimConfig::for_workload(w);
        let seed = 5;
        let a = run(&cfg, seed);
        let b = run(&cfg, seed);
        assert_eq!(a.trace_hash, b.trace_hash, "{w:?} seed {seed}");
        assert_eq!(a.events, b.events, "{w:?} seed {seed}");
        assert!(
            a.events > 50,
            "{w:?} seed {seed} did something ({} events)",
            a.events
        );
        let other = run(&cfg, 6);
        assert_ne!(other.trace_hash, a.trace_hash, "{w:?}: seeds differ");
    }
}

fn planted(bug: Plant) -> SimConfig {
    SimConfig {
        plant: Some(bug),
        ..SimConfig::default()
    }
}

#[test]
fn sim_finds_planted_skip_fence() {
    let _one = one_at_a_time();
    let found = first_failing(&planted(Plant::SkipFence), 0..200);
    assert!(found.is_some(), "skip-fence went unnoticed for 200 seeds");
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

/// The CI batch: these seeds of every workload must pass.
#[test]
fn sim_seeds_pass() {
    let _one = one_at_a_time();
    for (w, seeds) in [
        (Workload::Counter, 0..60),
        (Workload::Bank, 0..40),
        (Workload::Doom, 0..12),
    ] {
        let found = first_failing(&SimConfig::for_workload(w), seeds);
        assert!(found.is_none(), "{w:?}: {found:?}");
    }
}

/// Seed 11 (counter) found a POP that crashed with a call in flight
/// answering it INTERNAL ("its task panicked") instead of UNAVAILABLE.
#[test]
fn sim_regression_crash_mid_call_is_unavailable() {
    let _one = one_at_a_time();
    let r = run(&SimConfig::default(), 11);
    assert!(r.violations.is_empty(), "seed 11: {:?}", r.violations);
}

/// Seed 28 (counter) found a call that asked its actor to move to the
/// caller's POP left without an answer when the activation lost its lease
/// before the move finished (the caller saw INTERNAL).
#[test]
fn sim_regression_move_cut_short_is_answered() {
    let _one = one_at_a_time();
    let r = run(&SimConfig::default(), 28);
    assert!(r.violations.is_empty(), "seed 28: {:?}", r.violations);
}
