//! Changing an actor's code on a real cluster: the README's commands, and
//! a rollout in the middle of a load that must lose nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::OnceLock;

use tern_tests::{DevCluster, metro, runtime, workspace};

/// The todo example built with `features`, once per test binary each.
fn todo(features: &'static [&'static str]) -> PathBuf {
    static V1: OnceLock<PathBuf> = OnceLock::new();
    static V2: OnceLock<PathBuf> = OnceLock::new();
    let cell = if features.is_empty() { &V1 } else { &V2 };
    cell.get_or_init(|| {
        tern_cli::build::build_guest_with(&workspace().join("examples/todo"), true, features)
            .expect("build examples/todo")
    })
    .clone()
}

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

/// The README's "Changing an actor's code" commands, in order.
#[test]
fn readme_changing_code_by_hand() {
    let data = tempfile::tempdir().unwrap();
    let dev = DevCluster::start(data.path());
    let (v1, v2) = (todo(&[]), todo(&["v2"]));
    let (v1, v2) = (v1.to_str().unwrap(), v2.to_str().unwrap());
    let out = dev.tern(&["deploy", "todo", v1]).unwrap();
    assert_eq!(json(&out)["version"], 1);
    dev.tern(&["call", "todo/alice", "add", r#"{"text": "milk"}"#])
        .unwrap();
    let out = dev.tern(&["deploy", "todo", v2]).unwrap();
    assert_eq!(json(&out)["version"], 2);
    let out = dev
        .tern(&["deploy", "todo", v2, "--rollout", "now"])
        .unwrap();
    assert_eq!(json(&out)["version"], 2);
    // alice was active unless a slow machine let her idle time (30 s)
    // pass since her call; either way she answers the new method next.
    assert!(json(&out)["rolled_now"].as_u64() <= Some(1), "{out}");
    let count = dev.tern(&["call", "todo/alice", "count"]).unwrap();
    assert_eq!(json(&count), serde_json::json!({"items": 1, "done": 0}));
    let s = dev.status("fra");
    let t = &s["types"][0];
    assert_eq!(
        (t["version"].as_u64(), &t["active_by_version"]),
        (Some(2), &serde_json::json!({"2": 1})),
        "{s}"
    );
    let v = json(&dev.tern(&["versions", "todo", "--json"]).unwrap());
    assert_eq!(v["versions"][1]["current"], true, "{v}");
    assert_eq!(v["versions"][1]["actors"], 1, "{v}");
    dev.tern(&["versions", "todo"]).unwrap();
    let out = dev.tern(&["rollback", "todo", "--rollout", "now"]).unwrap();
    assert_eq!(json(&out)["version"], 1);
    let list = dev.tern(&["call", "todo/alice", "list"]).unwrap();
    assert_eq!(json(&list), serde_json::json!(["milk"]));
    let err = dev.tern(&["rollback", "todo"]).unwrap_err();
    assert!(err.contains("no earlier version"), "{err}");
}

/// Keyed calls from several clients on two POPs, with a new version
/// deployed `--rollout now` in the middle: every acknowledged item is in
/// its list exactly once, nothing is applied twice, and the actors active
/// at the deploying POP moved to the new version. Bounded: 8 actors,
/// 4 clients, 40 calls each.
#[test]
fn upgrade_during_load_loses_nothing() {
    const ACTORS: usize = 8;
    const CLIENTS: usize = 4;
    const CALLS: usize = 40;
    let data = tempfile::tempdir().unwrap();
    let dev = Arc::new(DevCluster::start_pops(data.path(), 2));
    let (v1, v2) = (todo(&[]), todo(&["v2"]));
    dev.tern(&["deploy", "todo", v1.to_str().unwrap()]).unwrap();
    let rt = runtime();
    let acked: BTreeMap<String, Vec<String>> = rt.block_on(async {
        let halfway = Arc::new(tokio::sync::Barrier::new(CLIENTS + 1));
        let mut tasks = Vec::new();
        for c in 0..CLIENTS {
            let coords = if c % 2 == 0 {
                metro::PARIS
            } else {
                metro::NEW_YORK
            };
            let client = dev.client(coords);
            let halfway = halfway.clone();
            tasks.push(tokio::spawn(async move {
                let mut acked = Vec::new();
                for i in 0..CALLS {
                    if i == CALLS / 2 {
                        halfway.wait().await;
                    }
                    let id = format!("l{}", (c + i) % ACTORS);
                    let text = format!("c{c}-{i}");
                    let payload = serde_json::to_vec(&serde_json::json!({ "text": text })).unwrap();
                    if client
                        .call("todo", &id, "add", payload, Some(text.clone()))
                        .await
                        .is_ok()
                    {
                        acked.push((id, text));
                    }
                }
                acked
            }));
        }
        halfway.wait().await;
        let d = dev.clone();
        let v2 = v2.clone();
        let deployed = tokio::task::spawn_blocking(move || {
            d.tern(&["deploy", "todo", v2.to_str().unwrap(), "--rollout", "now"])
        })
        .await
        .unwrap()
        .expect("deploy v2 during the load");
        assert_eq!(json(&deployed)["version"], 2);
        let mut acked: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for t in tasks {
            for (id, text) in t.await.unwrap() {
                acked.entry(id).or_default().push(text);
            }
        }
        acked
    });
    let total: usize = acked.values().map(Vec::len).sum();
    assert!(
        total >= CLIENTS * CALLS * 9 / 10,
        "most calls succeed: {total}"
    );
    let mut lost = 0;
    let mut doubled = 0;
    for a in 0..ACTORS {
        let id = format!("l{a}");
        let got = json(&dev.tern(&["call", &format!("todo/{id}"), "list"]).unwrap());
        let items: Vec<String> = got
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect();
        let unique: BTreeSet<&String> = items.iter().collect();
        doubled += items.len() - unique.len();
        for t in acked.get(&id).into_iter().flatten() {
            if !unique.contains(t) {
                lost += 1;
            }
        }
        // Every actor answers the new method once touched.
        dev.tern(&["call", &format!("todo/{id}"), "count"])
            .expect("on version 2");
    }
    assert_eq!((lost, doubled), (0, 0), "lost and duplicated items");
    let v = json(&dev.tern(&["versions", "todo", "--json"]).unwrap());
    assert_eq!(v["versions"][1]["actors"], ACTORS, "{v}");
    assert!(v["failures"].as_array().unwrap().is_empty(), "{v}");
}
