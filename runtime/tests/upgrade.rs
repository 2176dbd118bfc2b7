//! Changing an actor's code: versions and state transfer (`save` in the
//! old code, `load` in the new), in process, with the `todo` example in
//! its versions (cargo features).

mod common;

use std::sync::OnceLock;

use common::*;
use serde_json::json;
use tern_runtime::config::Rollout;
use tern_runtime::{DeployOptions, ErrorKind, Node};
use tern_storage::Store;

/// The todo example built with `features` (each build cached per test
/// binary).
/// Components built so far, by their features.
type Builds = parking_lot::Mutex<Vec<(String, Vec<u8>)>>;

fn todo(features: &'static [&'static str]) -> Vec<u8> {
    static BUILDS: OnceLock<Builds> = OnceLock::new();
    let builds = BUILDS.get_or_init(Default::default);
    let key = features.join(",");
    if let Some((_, b)) = builds.lock().iter().find(|(k, _)| *k == key) {
        return b.clone();
    }
    let path =
        tern_cli::build::build_guest_with(&workspace().join("examples/todo"), true, features)
            .expect("build examples/todo");
    let bytes = std::fs::read(path).expect("read todo.wasm");
    builds.lock().push((key, bytes.clone()));
    bytes
}

/// Deploys with an idle time far longer than any test, so that which
/// actors are active depends on the test's steps, not on how long a guest
/// build or a compile took.
fn deploy(node: &Node, ty: &str, wasm: &[u8], rollout: Rollout) -> tern_runtime::node::DeployInfo {
    node.deploy(
        ty,
        wasm,
        DeployOptions {
            rollout,
            limits: tern_runtime::Limits {
                idle_ms: 3_600_000,
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .expect("deploy")
}

/// The todo type's versions as (version, actors on it, current).
fn versions(node: &Node) -> Vec<(u64, u64, bool)> {
    node.versions("todo")
        .unwrap()
        .versions
        .iter()
        .map(|v| (v.version, v.actors, v.current))
        .collect()
}

async fn add(node: &Node, id: &str, text: &str) {
    call(node, "todo", id, "add", json!({ "text": text }))
        .await
        .expect("add");
}

async fn list(node: &Node, id: &str) -> serde_json::Value {
    call(node, "todo", id, "list", serde_json::Value::Null)
        .await
        .expect("list")
}

/// The issue's scenario: an actor gains a method and is redeployed. Its
/// active actors (rolled out now) and its evicted ones (lazily) keep their
/// state and answer the new method; deploying the same file again is
/// harmless.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redeploy_new_method_keeps_state() {
    let node = Node::new("test-pop", Store::memory(), engine());
    let v1 = deploy(&node, "todo", &todo(&[]), Rollout::Lazy);
    assert_eq!(v1.version, 1);
    add(&node, "active", "milk").await;
    add(&node, "active", "eggs").await;
    add(&node, "evicted", "bread").await;
    assert!(node.evict("todo", "evicted").await);
    let err = call(&node, "todo", "active", "count", serde_json::Value::Null)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");

    let v2 = deploy(&node, "todo", &todo(&["v2"]), Rollout::Now);
    assert_eq!(v2.version, 2);
    assert!(
        v2.plan.contains("version 2 replaces the current code"),
        "{}",
        v2.plan
    );
    let o = node.rollout_now("todo", |_, _| {}).await.unwrap();
    assert_eq!((o.moved, o.failed), (1, 0));
    let c = call(&node, "todo", "active", "count", serde_json::Value::Null)
        .await
        .expect("the new method answers");
    assert_eq!(c, json!({"items": 2, "done": 0}));
    assert_eq!(list(&node, "active").await, json!(["milk", "eggs"]));
    let c = call(&node, "todo", "evicted", "finish", json!({"index": 0}))
        .await
        .expect("a lazily upgraded actor answers the new method");
    assert_eq!(c, json!({"items": 1, "done": 1}));
    // The upgraded state persists under the new code.
    assert!(node.evict("todo", "evicted").await);
    assert_eq!(list(&node, "evicted").await, json!(["bread"]));
    // The same file again: no new version, nothing moves.
    let again = deploy(&node, "todo", &todo(&["v2"]), Rollout::Lazy);
    assert_eq!(again.version, 2);
    assert!(again.plan.contains("no actor moves"), "{}", again.plan);
}

/// A field added with a default starts at its default for old actors, and
/// its changes persist across evictions under the new version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn field_added_with_default_upgrades() {
    let store = Store::memory();
    let node = Node::new("test-pop", store.clone(), engine());
    deploy(&node, "todo", &todo(&[]), Rollout::Lazy);
    for t in ["a", "b", "c"] {
        add(&node, "f", t).await;
    }
    assert!(node.evict("todo", "f").await);
    deploy(&node, "todo", &todo(&["v2"]), Rollout::Lazy);
    let c = call(&node, "todo", "f", "count", serde_json::Value::Null)
        .await
        .unwrap();
    assert_eq!(
        c,
        json!({"items": 3, "done": 0}),
        "done starts at its default"
    );
    call(&node, "todo", "f", "finish", json!({"index": 2}))
        .await
        .unwrap();
    assert!(node.evict("todo", "f").await);
    // A fresh node on the same store: the actor restores on version 2.
    let node2 = Node::new("test-pop-2", store, engine());
    let c = call(&node2, "todo", "f", "count", serde_json::Value::Null)
        .await
        .unwrap();
    assert_eq!(c, json!({"items": 3, "done": 1}));
}

/// When the new code cannot read the old state (an incompatible change
/// without a migrate function), the actor stays on its version with its
/// state, the failure is recorded with serde's reason, new actors start on
/// the new version, and a later version with a migrate function moves the
/// actor on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_load_keeps_old_version() {
    let store = Store::memory();
    let node = Node::new("test-pop", store.clone(), engine());
    deploy(&node, "todo", &todo(&[]), Rollout::Lazy);
    add(&node, "old", "milk").await;
    deploy(&node, "todo", &todo(&["broken"]), Rollout::Now);
    let o = node.rollout_now("todo", |_, _| {}).await.unwrap();
    assert_eq!(
        (o.moved, o.failed),
        (1, 1),
        "the rollout reports the failure"
    );
    assert_eq!(
        list(&node, "old").await,
        json!(["milk"]),
        "the actor kept its state on version 1"
    );
    add(&node, "old", "eggs").await;
    assert_eq!(list(&node, "old").await, json!(["milk", "eggs"]));
    let failures = store.list_upgrade_failures("todo").unwrap();
    assert_eq!(failures.len(), 1, "{failures:?}");
    let (actor, f) = &failures[0];
    assert_eq!(actor, "todo/old");
    assert_eq!((f.from_version, f.to_version), (1, 2));
    assert!(f.error.contains("does not fit"), "{}", f.error);
    // A new actor starts on the new version.
    add(&node, "new", "tea").await;
    assert_eq!(list(&node, "new").await, json!(["tea"]));
    // Version 3 bridges the change with a migrate function.
    deploy(&node, "todo", &todo(&["migrate"]), Rollout::Now);
    node.rollout_now("todo", |_, _| {}).await.unwrap();
    assert_eq!(list(&node, "old").await, json!(["milk", "eggs"]));
    assert!(
        store
            .list_upgrade_failures("todo")
            .unwrap()
            .iter()
            .all(|(a, _)| a != "todo/old"),
        "the failure is cleared once the actor moved"
    );
}

/// A memory image never runs under other code: a snapshot whose code is
/// not a version of the type is refused with FAILED_PRECONDITION, and an
/// actor whose type gets entirely different code moves by state transfer
/// (the new code starts from what it could read, not from the old bytes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_memory_never_restored_into_other_code() {
    let store = Store::memory();
    let node = Node::new("test-pop", store.clone(), engine());
    deploy(&node, "todo", &todo(&[]), Rollout::Lazy);
    // A snapshot for todo/r written by code the type never ran.
    let e = store
        .claim("todo/r", "elsewhere", 1, &|_| true)
        .unwrap()
        .epoch;
    store
        .commit_snapshot(&tern_storage::CommitRequest {
            actor: "todo/r".into(),
            epoch: e,
            expected_head_seq: 0,
            meta: tern_storage::SnapshotMeta {
                component_digest: "ab".repeat(32),
                engine_version: tern_runtime::engine::ENGINE_VERSION.into(),
                globals: Vec::new(),
            },
            memories: vec![tern_storage::MemoryDelta {
                len_bytes: 2 * tern_storage::PAGE_SIZE as u64,
                changed_pages: vec![(0, vec![7u8; tern_storage::PAGE_SIZE])],
            }],
            extra: Vec::new(),
            ..Default::default()
        })
        .unwrap();
    store.release("todo/r", e).unwrap();
    let err = call(&node, "todo", "r", "list", serde_json::Value::Null)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::FailedPrecondition);
    assert!(err.to_string().contains("never restored"), "{err}");
    // The next node registers under the same POP name: this one must be
    // gone, or its heartbeat would register again and void the next one.
    node.shutdown().await;
    drop(node);

    // The counter's code, then the todo's, as versions of one type.
    let node = node_with_counter(
        store.clone(),
        "thing",
        Default::default(),
        Default::default(),
    );
    call_retrying(&node, "thing", "x", "incr", json!({"by": 41}))
        .await
        .unwrap();
    assert!(node.evict("thing", "x").await);
    deploy(&node, "thing", &todo(&[]), Rollout::Lazy);
    let got = call_retrying(&node, "thing", "x", "list", serde_json::Value::Null)
        .await
        .expect("the todo code runs on what it could read");
    assert_eq!(got, json!([]), "no counter bytes reached the todo code");
}

/// A rollback puts the type back on its previous version: an actor that
/// was upgraded gets the state it had before the upgrade (what it did
/// since is dropped, as promised), one created on the new version moves
/// back by state transfer, and the old code answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_restores_previous_version() {
    let store = Store::memory();
    let node = Node::new("test-pop", store.clone(), engine());
    deploy(&node, "todo", &todo(&[]), Rollout::Lazy);
    add(&node, "up", "milk").await;
    deploy(&node, "todo", &todo(&["v2"]), Rollout::Now);
    node.rollout_now("todo", |_, _| {}).await.unwrap();
    call(&node, "todo", "up", "finish", json!({"index": 0}))
        .await
        .expect("on version 2");
    add(&node, "up", "after the upgrade").await;
    add(&node, "born", "tea").await;
    assert_eq!(versions(&node), [(1, 0, false), (2, 2, true)]);

    let (now, plan) = node.rollback("todo").unwrap();
    assert_eq!(now, 1);
    assert!(
        plan.contains("get back the state they had before"),
        "{plan}"
    );
    node.rollout_now("todo", |_, _| {}).await.unwrap();
    assert_eq!(
        list(&node, "up").await,
        json!(["milk"]),
        "the state from before the upgrade"
    );
    let err = call(&node, "todo", "up", "count", serde_json::Value::Null)
        .await
        .unwrap_err();
    assert_eq!(
        err.kind(),
        ErrorKind::NotFound,
        "version 1 code answers: {err}"
    );
    assert_eq!(list(&node, "born").await, json!(["tea"]));
    assert_eq!(versions(&node), [(1, 2, true), (2, 0, false)]);
    // Nothing earlier than version 1.
    let err = node.rollback("todo").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::FailedPrecondition, "{err}");
    // After the rollback the current code is version 1's: deploying it
    // again only changes its settings; version 2's code again is a new
    // version, 3.
    let again = deploy(&node, "todo", &todo(&[]), Rollout::Lazy);
    assert_eq!(again.version, 1, "{}", again.plan);
    assert!(again.plan.contains("no actor moves"), "{}", again.plan);
    let v3 = deploy(&node, "todo", &todo(&["v2"]), Rollout::Lazy);
    assert_eq!(v3.version, 3, "{}", v3.plan);
}
