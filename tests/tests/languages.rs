//! Actors in Python and JavaScript, on a real `tern dev` cluster: built by
//! `tern build` (componentize-py, componentize-js), deployed, called,
//! SIGKILLed with the whole cluster, and read back exactly. Needs the two
//! tools (scripts/lang-tools.sh installs them; scripts/test.sh runs it).

use serde_json::Value;
use tern_tests::{DevCluster, workspace};

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON: {s}: {e}"))
}

/// The two cluster tests run one at a time: each compiles a 12-18 MB
/// component, twice, on a machine of two cores.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn build(example: &str) -> String {
    let dir = workspace().join("examples").join(example);
    let wasm = tern_cli::lang::build_actor(&dir, true, &[])
        .unwrap_or_else(|e| panic!("tern build examples/{example}: {e}"));
    wasm.to_str().unwrap().to_string()
}

/// Deploys `example` as `ty`, increments, churns, SIGKILLs the cluster,
/// restarts it, and checks that the acknowledged state is all there.
fn survives_restart(example: &str, ty: &str) {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let wasm = build(example);
    let data = tempfile::tempdir().unwrap();
    let mut dev = DevCluster::start(data.path());
    dev.tern(&["deploy", ty, &wasm]).expect("deploy");
    let actor = format!("{ty}/alice");
    let mut sum = 0;
    for by in [3, 5, 9] {
        let out = dev
            .tern(&["call", &actor, "incr", &format!("{{\"by\": {by}}}")])
            .expect("incr");
        sum += by;
        assert_eq!(json(&out)["value"], sum, "reply to incr {by}");
    }
    let churned = json(
        &dev.tern(&["call", &actor, "churn", "{\"n\": 20000}"])
            .expect("churn"),
    );
    assert_eq!(churned["kept"], 1, "{churned}");
    let err = dev
        .tern(&["call", &actor, "incr", "{\"by\": \"x\"}"])
        .expect_err("a bad argument is refused");
    assert!(
        err.contains("integer"),
        "the actor's message comes through: {err}"
    );
    dev.kill9();
    let dev = DevCluster::start(data.path());
    let out = dev.tern(&["call", &actor, "get"]).expect("get");
    assert_eq!(
        json(&out)["value"],
        sum,
        "acknowledged increments were lost"
    );
    let again = json(
        &dev.tern(&["call", &actor, "churn", "{\"n\": 10}"])
            .expect("churn after restart"),
    );
    assert_eq!(
        again["kept"], 2,
        "the interpreter's heap came back: {again}"
    );
    // A durable alarm through the language's SDK: set, committed, fired.
    dev.tern(&["call", &actor, "remind", "{\"in_ms\": 0}"])
        .expect("remind");
    dev.wait_until("the alarm fires", 30_000, || {
        dev.tern(&["call", &actor, "reminded"])
            .is_ok_and(|out| json(&out)["reminded"] == 1)
    });
    let missing = dev
        .tern(&["call", &actor, "nope"])
        .expect_err("an unknown method is refused");
    assert!(
        missing.contains("NOT_FOUND")
            || missing.contains("not found")
            || missing.contains("no method"),
        "{missing}"
    );
}

#[test]
fn python_actor_survives_restart() {
    survives_restart("counter-py", "counter_py");
}

#[test]
fn javascript_actor_survives_restart() {
    survives_restart("counter-js", "counter_js");
}

/// The README's Python and JavaScript actors are the examples' code: every
/// line of each block appears in the example the tests build.
#[test]
fn readme_language_examples_are_the_built_ones() {
    let readme = std::fs::read_to_string(workspace().join("README.md")).unwrap();
    for (fence, file) in [
        ("```python", "examples/counter-py/app.py"),
        ("```javascript", "examples/counter-js/app.js"),
    ] {
        let source = std::fs::read_to_string(workspace().join(file)).unwrap();
        let start = readme
            .find(fence)
            .unwrap_or_else(|| panic!("README has a {fence} block"))
            + fence.len();
        let block = &readme[start..start + readme[start..].find("```").unwrap()];
        let lines: Vec<&str> = block.lines().filter(|l| !l.trim().is_empty()).collect();
        assert!(lines.len() > 5, "{fence} block is there");
        for line in lines {
            assert!(
                source.lines().any(|s| s == line),
                "README line {line:?} is not in {file}"
            );
        }
    }
}
