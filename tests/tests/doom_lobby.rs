//! The doom-lobby load test against a real local cluster: players from three
//! metros, one POP SIGKILLed mid-session, one player travelling, and a
//! second version of the actors' code deployed `--rollout now` at 60 % of
//! play; nothing acknowledged may be lost or applied twice, and no upgrade
//! may fail.

use std::process::Command;
use std::time::{Duration, Instant};

/// How long the whole load test (cluster start, guest build, 20 s of play,
/// audit, shutdown) may take.
const RUN_MS_MAX: u64 = 600_000;

#[test]
fn doom_lobby_loses_nothing_under_pop_kill() {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report.json");
    let mut child = Command::new(tern_tests::doom_lobby_bin())
        .args([
            "loadtest",
            "--players",
            "24",
            "--duration",
            "20",
            "--kill-pops",
            "1",
            "--upgrade-at",
            "0.6",
            "--tern",
        ])
        .arg(tern_tests::tern_bin())
        .arg("--report")
        .arg(&report)
        .stdout(std::fs::File::create(dir.path().join("stdout")).unwrap())
        .stderr(std::fs::File::create(dir.path().join("stderr")).unwrap())
        .spawn()
        .expect("start doom-lobby");
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if started.elapsed() > Duration::from_millis(RUN_MS_MAX) {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("doom-lobby loadtest did not finish within {RUN_MS_MAX} ms");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stdout = std::fs::read_to_string(dir.path().join("stdout")).unwrap_or_default();
    let stderr = std::fs::read_to_string(dir.path().join("stderr")).unwrap_or_default();
    eprintln!("{stderr}\n{stdout}");
    let text = std::fs::read_to_string(&report)
        .unwrap_or_else(|e| panic!("no report ({e}); doom-lobby exited with {status}"));
    let r: serde_json::Value = serde_json::from_str(&text).expect("report is JSON");
    let n = |k: &str| {
        r[k].as_u64()
            .unwrap_or_else(|| panic!("report lacks `{k}`: {text}"))
    };
    assert_eq!(n("players"), 24);
    assert_eq!(
        n("lost_updates"),
        0,
        "acknowledged updates were lost: {text}"
    );
    assert_eq!(
        n("duplicate_applies"),
        0,
        "updates were applied twice: {text}"
    );
    assert!(n("matches_completed") > 0, "no match completed: {text}");
    // Match state is pushed, driven by alarms: every subscriber saw every
    // event once, across the POP kill.
    assert!(n("push_events") > 0, "no match event was pushed: {text}");
    assert_eq!(n("push_gaps"), 0, "a subscriber missed events: {text}");
    assert_eq!(
        n("push_duplicates"),
        0,
        "a subscriber got an event twice: {text}"
    );
    for k in ["push_latency_ms", "alarm_late_ms"] {
        assert!(
            r[k]["p50"].is_number() && r[k]["p99"].is_number() && r[k]["calls"].as_u64() > Some(0),
            "report lacks `{k}` figures: {text}"
        );
    }
    // The mid-run upgrade (version 2 of the actors, --rollout now).
    assert!(
        r["upgrade_failures"]
            .as_array()
            .is_some_and(|f| f.is_empty()),
        "upgrades failed: {text}"
    );
    assert!(
        n("actors_on_new_version") > 0,
        "no actor is on version 2: {text}"
    );
    assert!(
        n("migrations") >= 1,
        "the travelling player's actor did not move: {text}"
    );
    assert!(n("calls_ok") > 0);
    for k in ["calls_retried", "calls_failed", "failover_ms_max"] {
        n(k);
    }
    assert_eq!(r["killed_pops"].as_array().map(Vec::len), Some(1), "{text}");
    assert!(r["latency_ms"]["p50"].is_number() && r["latency_ms"]["p99"].is_number());
    assert!(
        r["latency_ms"]["per_pop"]
            .as_object()
            .is_some_and(|m| m.len() >= 2),
        "{text}"
    );
    assert_eq!(r["audit"]["phantom_applies"], 0, "{text}");
    assert_eq!(r["audit"]["unaudited_actors"], 0, "{text}");
    assert!(
        status.success(),
        "doom-lobby exited with {status}: {stdout}"
    );
}
