//! Cluster tests on `tern dev` with one POP: real processes, real signals.

use serde_json::Value;
use tern_tests::{DevCluster, counter_wasm};

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON: {s}: {e}"))
}

#[test]
fn counter_survives_process_restart() {
    let data = tempfile::tempdir().unwrap();
    let mut dev = DevCluster::start(data.path());
    let wasm = counter_wasm().to_str().unwrap();
    dev.tern(&["deploy", "counter", wasm]).expect("deploy");
    let mut sum = 0;
    for by in [3, 5, 9] {
        let out = dev
            .tern(&[
                "call",
                "counter/alice",
                "incr",
                &format!("{{\"by\": {by}}}"),
            ])
            .expect("incr");
        sum += by;
        assert_eq!(json(&out)["value"], sum, "reply to incr {by}");
    }
    dev.kill9();
    let dev = DevCluster::start(data.path());
    let out = dev.tern(&["call", "counter/alice", "get"]).expect("get");
    assert_eq!(
        json(&out)["value"],
        sum,
        "acknowledged increments were lost"
    );
}

#[test]
fn idle_actor_persisted_on_clean_shutdown() {
    let data = tempfile::tempdir().unwrap();
    let mut dev = DevCluster::start(data.path());
    let wasm = counter_wasm().to_str().unwrap();
    dev.tern(&["deploy", "lazy", wasm, "--durability", "idle"])
        .expect("deploy");
    dev.tern(&["call", "lazy/bob", "incr", "{\"by\": 4}"])
        .expect("incr");
    let status = dev.terminate();
    assert!(status.success(), "tern dev exited with {status}");
    let dev = DevCluster::start(data.path());
    let out = dev.tern(&["call", "lazy/bob", "get"]).expect("get");
    assert_eq!(json(&out)["value"], 4);
}

#[test]
fn cli_errors_are_clear() {
    let data = tempfile::tempdir().unwrap();
    let dev = DevCluster::start(data.path());
    let err = dev.tern(&["call", "nosuch/x", "get"]).unwrap_err();
    assert!(
        err.contains("NotFound") && err.contains("tern deploy nosuch"),
        "{err}"
    );
    let err = dev.tern(&["call", "no-slash", "get"]).unwrap_err();
    assert!(err.contains("TYPE/ID"), "{err}");
    let err = dev.tern(&["call", "a/b", "get", "{not json"]).unwrap_err();
    assert!(err.contains("not valid JSON"), "{err}");
    let bogus = data.path().join("bogus.wasm");
    std::fs::write(&bogus, b"nope").unwrap();
    let err = dev
        .tern(&["deploy", "bad", bogus.to_str().unwrap()])
        .unwrap_err();
    assert!(
        err.contains("InvalidArgument") && err.contains("not a WebAssembly binary"),
        "{err}"
    );
    let status = dev.tern(&["status", "--json"]).expect("status");
    assert_eq!(json(&status)["pop"], "fra");
}
