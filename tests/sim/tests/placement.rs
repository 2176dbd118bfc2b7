//! The placement comparison (`tern-sim placement`): deterministic, and
//! tern's follow-the-caller does what it is for at WAN distances.

use tern_runtime::Placement;
use tern_sim::placement::{Durability, Policy, Size, WorkloadKind, compare, run_all};

const SMALL: Size = Size {
    players: 8,
    duration_ms: 240_000,
    shared_actors: 2,
};

/// Enough players and time for the travellers to travel.
const MEDIUM: Size = Size {
    players: 24,
    duration_ms: 1_800_000,
    shared_actors: 4,
};

fn report(seed: u64) -> String {
    let bar = indicatif::ProgressBar::hidden();
    let (r, s) = run_all(SMALL, true, seed, &[500], &bar).expect("placement run");
    serde_json::to_string(&(r, s)).unwrap()
}

/// The same seed gives the same report, byte for byte; another seed gives
/// another.
#[test]
fn placement_report_is_deterministic() {
    let a = report(7);
    assert_eq!(a, report(7));
    assert_ne!(a, report(8));
}

/// Travelling players: their actors follow them, so a call costs about a
/// local round trip, where a pinned actor stays on the first continent.
#[test]
fn follow_caller_halves_travellers_latency_against_pinned() {
    let follow = Policy::Follow(Placement::default());
    let f = compare(&follow, WorkloadKind::Travel, Durability::Turn, MEDIUM, 3).unwrap();
    let p = compare(
        &Policy::Pinned,
        WorkloadKind::Travel,
        Durability::Turn,
        MEDIUM,
        3,
    )
    .unwrap();
    assert!(f.stats.migrations > 0, "{f:?}");
    assert_eq!(p.stats.migrations, 0, "{p:?}");
    let ratio = f.stats.p50_ms / p.stats.p50_ms;
    assert!(
        ratio <= 0.5,
        "travel p50: follow {f:?} against pinned {p:?}"
    );
}

/// Players who stay put: following costs nothing against pinning.
#[test]
fn follow_caller_matches_pinned_for_stationary_players() {
    let follow = Policy::Follow(Placement::default());
    let f = compare(
        &follow,
        WorkloadKind::Stationary,
        Durability::Turn,
        MEDIUM,
        4,
    )
    .unwrap();
    let p = compare(
        &Policy::Pinned,
        WorkloadKind::Stationary,
        Durability::Turn,
        MEDIUM,
        4,
    )
    .unwrap();
    let ratio = f.stats.p50_ms / p.stats.p50_ms;
    assert!(
        ratio <= 1.1,
        "stationary p50: follow {f:?} against pinned {p:?}"
    );
}

/// Hot shared actors called from every metro stay where they are: no
/// actor moves back to a POP it left within a minute.
#[test]
fn hot_shared_actors_do_not_ping_pong() {
    let follow = Policy::Follow(Placement::default());
    let f = compare(&follow, WorkloadKind::Shared, Durability::Turn, MEDIUM, 5).unwrap();
    assert_eq!(f.stats.shared_returns, 0, "{f:?}");
    assert!(
        f.stats.shared_migrations <= MEDIUM.shared_actors as u64,
        "{f:?}"
    );
}

/// The command answers `--help` and refuses a bad scale step clearly,
/// before running anything.
#[test]
fn placement_command_refuses_bad_input() {
    let bin = env!("CARGO_BIN_EXE_tern-sim");
    let help = std::process::Command::new(bin)
        .args(["placement", "--help"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&help.stdout);
    for flag in ["--quick", "--report", "--seed", "--chart", "--scale"] {
        assert!(text.contains(flag), "placement --help lacks {flag}: {text}");
    }
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("r.json");
    let out = std::process::Command::new(bin)
        .args(["placement", "--scale", "0", "--report"])
        .arg(&report)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("each step must be between 1 and"),
        "{out:?}"
    );
    assert!(!report.exists());
    let missing = std::process::Command::new(bin)
        .args(["placement", "--quick"])
        .output()
        .unwrap();
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("--report"));
}
