//! The POP core's bounds and failure handling, in process: limits with
//! maximums, POP budgets with LRU eviction, panic safety, guest stdio, and
//! the idempotency contract.

mod common;

use std::time::Duration;

use common::{call, counter_wasm, engine, value};
use serde_json::json;
use tern_runtime::config::{Durability, LIMITS_MAX, Limits};
use tern_runtime::{CallRequest, DeployOptions, ErrorKind, Node, NodeConfig};
use tern_storage::Store;

fn node_with(cfg: NodeConfig, limits: Limits) -> Node {
    let node = Node::builder("test-pop", Store::memory(), engine())
        .config(cfg)
        .start()
        .expect("node");
    node.deploy(
        "counter",
        counter_wasm(),
        DeployOptions {
            limits,
            ..Default::default()
        },
    )
    .expect("deploy");
    node
}

fn keyed(method: &str, payload: serde_json::Value, key: &str) -> CallRequest {
    let mut r = CallRequest::new(
        "counter",
        "k",
        method,
        serde_json::to_vec(&payload).unwrap(),
    );
    r.idempotency_key = Some(key.to_string());
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absurd_limits_refused() {
    let node = Node::new("p", Store::memory(), engine());
    let cases = [
        (
            "mailbox_depth_max",
            Limits {
                mailbox_depth_max: u64::MAX,
                ..Limits::default()
            },
        ),
        (
            "turn_cpu_ms_max",
            Limits {
                turn_cpu_ms_max: LIMITS_MAX.turn_cpu_ms_max + 1,
                ..Limits::default()
            },
        ),
        (
            "memory_bytes_max",
            Limits {
                memory_bytes_max: u64::MAX,
                ..Limits::default()
            },
        ),
        (
            "payload_bytes_max",
            Limits {
                payload_bytes_max: 1 << 40,
                ..Limits::default()
            },
        ),
        (
            "idempotency_keys_max",
            Limits {
                idempotency_keys_max: 1 << 40,
                ..Limits::default()
            },
        ),
    ];
    for (name, limits) in cases {
        let err = node
            .deploy(
                "counter",
                counter_wasm(),
                DeployOptions {
                    limits,
                    ..Default::default()
                },
            )
            .expect_err(name);
        assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{name}: {err}");
        assert!(err.to_string().contains(name), "{name}: {err}");
    }
    // Nothing was deployed by the refused attempts.
    let err = call(&node, "counter", "a", "get", json!(null))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    // The maximums themselves are accepted.
    node.deploy(
        "counter",
        counter_wasm(),
        DeployOptions {
            limits: LIMITS_MAX,
            ..Default::default()
        },
    )
    .expect("the documented maximums deploy");
    assert_eq!(value(&node, "counter", "a").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pop_memory_budget_evicts_idle_actors() {
    // Each counter holds about 1.2 MiB of memory after `grow {mb: 1}`,
    // and the POP accounts twice that (instance + baseline). A 12 MiB
    // budget holds a few, never all ten.
    let budget: u64 = 12 << 20;
    let node = node_with(
        NodeConfig {
            resident_bytes_max: budget,
            ..NodeConfig::default()
        },
        Limits::default(),
    );
    let mut peak = 0;
    for i in 0..10 {
        let id = format!("a{i}");
        call(&node, "counter", &id, "incr", json!({"by": i + 1}))
            .await
            .unwrap();
        call(&node, "counter", &id, "grow", json!({"mb": 1}))
            .await
            .unwrap();
        peak = peak.max(node.active_actors());
    }
    // Shedding runs in the background after a turn; wait (bounded) for it.
    let started = std::time::Instant::now();
    while node.resident_bytes() > budget {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "resident {} stayed over the budget {budget}",
            node.resident_bytes()
        );
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        node.active_actors() < 10,
        "idle actors were evicted (active: {})",
        node.active_actors()
    );
    // Evicted actors were persisted: every value is intact.
    for i in 0..10 {
        assert_eq!(value(&node, "counter", &format!("a{i}")).await, i + 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pop_activation_budget_refuses_when_all_busy() {
    // One activation at most: `a` is busy in a turn that calls `b`, so `b`
    // cannot be activated and nothing can be evicted.
    let node = node_with(
        NodeConfig {
            activations_max: 1,
            ..NodeConfig::default()
        },
        Limits::default(),
    );
    let err = call(
        &node,
        "counter",
        "a",
        "call_other",
        json!({"type": "counter", "id": "b", "method": "get"}),
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string().contains("activations_max = 1"),
        "the error names the budget: {err}"
    );
    // With `a` idle again, `b` gets its place (a is evicted, persisted).
    call(&node, "counter", "a", "incr", json!({"by": 5}))
        .await
        .unwrap();
    assert_eq!(value(&node, "counter", "b").await, 0);
    assert_eq!(node.active_actors(), 1);
    assert_eq!(value(&node, "counter", "a").await, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actor_task_panic_does_not_wedge_actor() {
    let node = node_with(NodeConfig::default(), Limits::default());
    call(&node, "counter", "p", "incr", json!({"by": 3}))
        .await
        .unwrap();
    assert!(node.inject_panic("counter", "p"), "the actor is active");
    // Calls queued behind the panic fail with INTERNAL or, if they arrive
    // after it, reactivate the actor; none hangs.
    let mut calls = Vec::new();
    for _ in 0..4 {
        let n = node.clone();
        calls.push(tokio::spawn(async move {
            call(&n, "counter", "p", "incr", json!({"by": 1})).await
        }));
    }
    let mut applied = 0;
    for c in calls {
        let r = tokio::time::timeout(Duration::from_secs(30), c)
            .await
            .expect("a call to a panicked actor must not hang")
            .unwrap();
        match r {
            Ok(_) => applied += 1,
            Err(e) => assert_eq!(e.kind(), ErrorKind::Internal, "{e}"),
        }
    }
    // The next call reactivates the actor from the store.
    assert_eq!(value(&node, "counter", "p").await, 3 + applied);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_stdio_is_not_a_crash() {
    let node = node_with(NodeConfig::default(), Limits::default());
    call(&node, "counter", "s", "incr", json!({"by": 2}))
        .await
        .unwrap();
    for _ in 0..3 {
        let err = call(&node, "counter", "s", "print", json!(null))
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("stdout") && err.to_string().contains("rolled back"),
            "a clear error: {err}"
        );
    }
    // The POP and the actor are fine, and the printing turns left nothing.
    assert_eq!(value(&node, "counter", "s").await, 2);
    call(&node, "counter", "s", "incr", json!({"by": 1}))
        .await
        .unwrap();
    assert_eq!(value(&node, "counter", "s").await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_many_keys_applied_once() {
    let node = node_with(NodeConfig::default(), Limits::default());
    let first = node
        .call(keyed("incr", json!({"by": 1}), "op-0"))
        .await
        .unwrap();
    for i in 1..=1_000 {
        node.call(keyed("incr", json!({"by": 1}), &format!("op-{i}")))
            .await
            .unwrap();
    }
    assert_eq!(value(&node, "counter", "k").await, 1_001);
    // A retry of the first call, 1,000 keyed calls later: not applied again,
    // and it gets the first reply.
    let again = node
        .call(keyed("incr", json!({"by": 1}), "op-0"))
        .await
        .unwrap();
    assert_eq!(again.payload, first.payload);
    assert_eq!(value(&node, "counter", "k").await, 1_001);
    // Also after the actor is evicted and restored from the store.
    assert!(node.evict("counter", "k").await);
    node.call(keyed("incr", json!({"by": 1}), "op-0"))
        .await
        .unwrap();
    node.call(keyed("incr", json!({"by": 1}), "op-500"))
        .await
        .unwrap();
    assert_eq!(value(&node, "counter", "k").await, 1_001);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unavailable_turn_rolls_back_and_its_retry_runs_again() {
    // `k` adds 1, then calls `gate`, which answers `unavailable` until its
    // own counter reaches 1. The caller is told to retry: the addition must
    // be rolled back and the answer not cached under the key, so that the
    // retry, once `gate` opens, does the whole turn exactly once.
    let node = node_with(NodeConfig::default(), Limits::default());
    let body = json!({
        "type": "counter", "id": "gate", "method": "unavailable_below",
        "payload": {"min": 1}, "by": 1
    });
    let err = node
        .call(keyed("call_other", body.clone(), "xfer-1"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    assert_eq!(value(&node, "counter", "k").await, 0, "rolled back");
    call(&node, "counter", "gate", "incr", json!({"by": 1}))
        .await
        .unwrap();
    let out = node
        .call(keyed("call_other", body.clone(), "xfer-1"))
        .await
        .expect("the retry runs the turn again, and now it succeeds");
    let v: serde_json::Value = serde_json::from_slice(&out.payload).unwrap();
    assert_eq!(v["value"], 1, "gate's reply");
    assert_eq!(value(&node, "counter", "k").await, 1);
    // Once done, the key holds: a third send is not applied again.
    node.call(keyed("call_other", body, "xfer-1"))
        .await
        .unwrap();
    assert_eq!(value(&node, "counter", "k").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_key_different_payload_refused() {
    let node = node_with(NodeConfig::default(), Limits::default());
    node.call(keyed("incr", json!({"by": 1}), "pay-1"))
        .await
        .unwrap();
    let err = node
        .call(keyed("incr", json!({"by": 100}), "pay-1"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
    assert!(err.to_string().contains("pay-1"), "names the key: {err}");
    let err = node
        .call(keyed("get", json!({"by": 1}), "pay-1"))
        .await
        .unwrap_err();
    assert_eq!(
        err.kind(),
        ErrorKind::InvalidArgument,
        "another method: {err}"
    );
    assert_eq!(value(&node, "counter", "k").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_bounded_per_actor_oldest_first() {
    let node = node_with(
        NodeConfig::default(),
        Limits {
            idempotency_keys_max: 8,
            ..Limits::default()
        },
    );
    for i in 0..20 {
        node.call(keyed("incr", json!({"by": 1}), &format!("k{i}")))
            .await
            .unwrap();
    }
    // The newest 8 are remembered; the oldest were forgotten (documented).
    node.call(keyed("incr", json!({"by": 1}), "k19"))
        .await
        .unwrap();
    assert_eq!(value(&node, "counter", "k").await, 20);
    node.call(keyed("incr", json!({"by": 1}), "k0"))
        .await
        .unwrap();
    assert_eq!(value(&node, "counter", "k").await, 21);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durability_idle_keeps_pending_records_bounded() {
    let node = Node::new("p", Store::memory(), engine());
    node.deploy(
        "counter",
        counter_wasm(),
        DeployOptions {
            durability: Durability::Idle,
            limits: Limits {
                idempotency_keys_max: 16,
                ..Limits::default()
            },
            ..Default::default()
        },
    )
    .unwrap();
    for i in 0..200 {
        node.call(keyed("incr", json!({"by": 1}), &format!("k{i}")))
            .await
            .unwrap();
    }
    assert!(node.evict("counter", "k").await);
    assert_eq!(value(&node, "counter", "k").await, 200);
    node.call(keyed("incr", json!({"by": 1}), "k199"))
        .await
        .unwrap();
    assert_eq!(value(&node, "counter", "k").await, 200);
}
