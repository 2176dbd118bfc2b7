//! Atomic turns, limits and clear errors (invariants 3 and 6), in process.

mod common;

use common::*;
use serde_json::json;
use tern_runtime::config::{Durability, Limits};
use tern_runtime::{CallRequest, RuntimeError};
use tern_storage::Store;

fn limits() -> Limits {
    Limits::default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trap_rolls_back_turn() {
    let node = node_with_counter(Store::memory(), "counter", Durability::Turn, limits());
    call(&node, "counter", "t", "incr", json!({"by": 5}))
        .await
        .unwrap();
    let err = call(&node, "counter", "t", "incr_then_panic", json!({"by": 10}))
        .await
        .unwrap_err();
    assert!(matches!(err, RuntimeError::Trap { .. }), "{err:?}");
    assert_eq!(err.kind(), tern_runtime::ErrorKind::Aborted);
    assert!(err.to_string().contains("rolled back"), "{err}");
    assert_eq!(
        value(&node, "counter", "t").await,
        5,
        "the trapped turn's change was kept"
    );
    call(&node, "counter", "t", "incr", json!({"by": 1}))
        .await
        .unwrap();
    assert_eq!(
        value(&node, "counter", "t").await,
        6,
        "the actor is usable after a trap"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trap_rolls_back_turn_in_idle_durability() {
    let node = node_with_counter(Store::memory(), "counter", Durability::Idle, limits());
    call(&node, "counter", "t", "incr", json!({"by": 2}))
        .await
        .unwrap();
    let err = call(&node, "counter", "t", "incr_then_panic", json!({"by": 10}))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), tern_runtime::ErrorKind::Aborted, "{err}");
    assert_eq!(value(&node, "counter", "t").await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runaway_loop_hits_cpu_budget() {
    let l = Limits {
        turn_cpu_ms_max: 20,
        ..limits()
    };
    let node = node_with_counter(Store::memory(), "counter", Durability::Turn, l);
    call(&node, "counter", "r", "incr", json!({"by": 3}))
        .await
        .unwrap();
    let err = call(&node, "counter", "r", "spin", json!(null))
        .await
        .unwrap_err();
    assert!(matches!(err, RuntimeError::CpuBudget { .. }), "{err:?}");
    assert_eq!(err.kind(), tern_runtime::ErrorKind::ResourceExhausted);
    assert!(err.to_string().contains("turn_cpu_ms_max = 20 ms"), "{err}");
    assert_eq!(
        value(&node, "counter", "r").await,
        3,
        "spin's increment was kept"
    );
    call(&node, "counter", "r", "incr", json!({"by": 1}))
        .await
        .unwrap();
    assert_eq!(value(&node, "counter", "r").await, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_bomb_hits_cap() {
    let l = Limits {
        memory_bytes_max: 8 << 20,
        ..limits()
    };
    let node = node_with_counter(Store::memory(), "counter", Durability::Turn, l);
    call(&node, "counter", "m", "incr", json!({"by": 7}))
        .await
        .unwrap();
    call(&node, "counter", "m", "grow", json!({"mb": 2}))
        .await
        .unwrap();
    let err = call(&node, "counter", "m", "grow", json!({"mb": 64}))
        .await
        .unwrap_err();
    assert!(matches!(err, RuntimeError::MemoryCap { .. }), "{err:?}");
    assert_eq!(err.kind(), tern_runtime::ErrorKind::ResourceExhausted);
    assert!(
        err.to_string().contains("memory_bytes_max = 8388608"),
        "{err}"
    );
    assert_eq!(value(&node, "counter", "m").await, 7);
    // The memory it held before the bomb is still there.
    let held = call(&node, "counter", "m", "grow", json!({"mb": 1}))
        .await
        .unwrap();
    assert_eq!(held["held_mb"], 3, "{held}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_component_rejected() {
    let node = tern_runtime::Node::new("test-pop", Store::memory(), engine());
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "garbage",
            b"definitely not wasm".to_vec(),
            "not a WebAssembly binary",
        ),
        (
            "core module",
            b"\0asm\x01\0\0\0".to_vec(),
            "core WebAssembly module, not a component",
        ),
        (
            "truncated component",
            counter_wasm()[..counter_wasm().len() / 2].to_vec(),
            "invalid component",
        ),
    ];
    for (what, bytes, needle) in cases {
        let err = node
            .deploy(
                "bad",
                &bytes,
                tern_runtime::DeployOptions {
                    durability: Durability::Turn,
                    limits: limits(),
                    ..Default::default()
                },
            )
            .unwrap_err();
        assert_eq!(
            err.kind(),
            tern_runtime::ErrorKind::InvalidArgument,
            "{what}: {err}"
        );
        assert!(err.to_string().contains(needle), "{what}: {err}");
    }
    // Nothing was stored: the type stays unknown.
    let err = call(&node, "bad", "x", "get", json!(null))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), tern_runtime::ErrorKind::NotFound, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_payload_rejected() {
    let l = Limits {
        payload_bytes_max: 1024,
        ..limits()
    };
    let node = node_with_counter(Store::memory(), "counter", Durability::Turn, l);
    let err = node
        .call(CallRequest {
            actor_type: "counter".into(),
            id: "p".into(),
            method: "echo".into(),
            payload: vec![7; 2048],
            idempotency_key: None,
        })
        .await
        .unwrap_err();
    assert!(
        matches!(err, RuntimeError::PayloadTooLarge { .. }),
        "{err:?}"
    );
    assert_eq!(err.kind(), tern_runtime::ErrorKind::ResourceExhausted);
    assert!(
        err.to_string().contains("payload_bytes_max = 1024"),
        "{err}"
    );
    let ok = node
        .call(CallRequest {
            actor_type: "counter".into(),
            id: "p".into(),
            method: "echo".into(),
            payload: vec![7; 1000],
            idempotency_key: None,
        })
        .await
        .unwrap();
    assert_eq!(ok.payload, vec![7; 1000]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_method_is_not_found() {
    let node = node_with_counter(Store::memory(), "counter", Durability::Turn, limits());
    let err = call(&node, "counter", "u", "no_such_method", json!(null))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), tern_runtime::ErrorKind::NotFound, "{err}");
    assert!(err.to_string().contains("no_such_method"), "{err}");
    let err = call(&node, "nosuchtype", "u", "get", json!(null))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), tern_runtime::ErrorKind::NotFound, "{err}");
    assert!(err.to_string().contains("tern deploy nosuchtype"), "{err}");
    let err = call(&node, "counter", "u", "incr", json!({"by": "three"}))
        .await
        .unwrap_err();
    assert_eq!(
        err.kind(),
        tern_runtime::ErrorKind::InvalidArgument,
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_snapshot_detected() {
    let store = Store::memory();
    // A POP that keeps no memory of evicted actors: the restore reads the
    // store.
    let node = counter_pop(store.clone(), "test-pop", false, Durability::Turn, limits());
    call(&node, "counter", "c", "incr", json!({"by": 41}))
        .await
        .unwrap();
    assert!(node.evict("counter", "c").await);
    // Flip one byte in every stored page image of the actor.
    let prefix = tern_storage::keys::page_prefix("counter/c");
    let flipped = store
        .kv()
        .transact(|tx| {
            let pages = tx.get_prefix(&prefix)?;
            for (k, v) in &pages {
                let mut v = v.clone();
                let i = v.len() / 2;
                v[i] ^= 0x5a;
                tx.set(k, &v);
            }
            Ok(pages.len())
        })
        .unwrap();
    assert!(flipped > 0, "no page was stored");
    let err = call(&node, "counter", "c", "get", json!(null))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), tern_runtime::ErrorKind::DataLoss, "{err}");
    assert!(err.to_string().contains("corrupt"), "{err}");
}

/// An attacker (or a bad restore) that writes one actor's valid page rows
/// over another's must not make the second actor answer with the first's
/// state: a page's checksum is bound to its actor, page and version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swapped_snapshot_pages_detected() {
    let store = Store::memory();
    let node = counter_pop(store.clone(), "test-pop", false, Durability::Turn, limits());
    for (id, by) in [("a", 41), ("b", 7)] {
        call(&node, "counter", id, "incr", json!({"by": by}))
            .await
            .unwrap();
        assert!(node.evict("counter", id).await);
    }
    let (pa, pb) = (
        tern_storage::keys::page_prefix("counter/a"),
        tern_storage::keys::page_prefix("counter/b"),
    );
    let swapped = store
        .kv()
        .transact(|tx| {
            let a = tx.get_prefix(&pa)?;
            let b = tx.get_prefix(&pb)?;
            assert_eq!(a.len(), b.len(), "same history, same pages");
            // Same memories, page indices and versions: pair them in order.
            for ((ka, _), (_, vb)) in a.iter().zip(&b) {
                tx.set(ka, vb);
            }
            Ok(a.len())
        })
        .unwrap();
    assert!(swapped > 0, "no page was stored");
    let err = call(&node, "counter", "a", "get", json!(null))
        .await
        .expect_err("counter/a must not answer with counter/b's state");
    assert_eq!(err.kind(), tern_runtime::ErrorKind::DataLoss, "{err}");
    assert!(err.to_string().contains("moved here"), "{err}");
    // The untouched actor is fine.
    assert_eq!(value(&node, "counter", "b").await, 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_epoch_commit_refused() {
    let store = Store::memory();
    let node = node_with_counter(store.clone(), "counter", Durability::Turn, limits());
    call(&node, "counter", "z", "incr", json!({"by": 1}))
        .await
        .unwrap();
    // Another POP takes the actor over (as after a lease lapse).
    let rec = store
        .claim("counter/z", "other-pop", 0, &|_| true)
        .expect("take over");
    assert_eq!(rec.epoch, 2);
    // This node still holds its old activation; its commit must be refused.
    let err = call(&node, "counter", "z", "incr", json!({"by": 100}))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), tern_runtime::ErrorKind::Unavailable, "{err}");
    let snap = store.load_snapshot("counter/z").unwrap().unwrap();
    assert_eq!(snap.epoch, 1, "the zombie's commit landed");
    // And the new owner sees only the state committed under epoch 1. (It
    // registers under the same POP name: the old node must be gone, or its
    // heartbeat would register again and void the new one.)
    node.shutdown().await;
    drop(node);
    let other = node_with_counter(store.clone(), "counter", Durability::Turn, limits());
    store.release("counter/z", 2).unwrap();
    let got = call_retrying(&other, "counter", "z", "get", json!(null))
        .await
        .unwrap();
    assert_eq!(got["value"], 1);
}

/// The simulator found this (seed 9, before its store faults were added):
/// a POP whose clocks stood still still believed in its lease and answered
/// reads from a superseded activation. A turn that commits nothing now
/// confirms its epoch with a store read first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_from_superseded_activation_refused() {
    let store = Store::memory();
    let node = node_with_counter(store.clone(), "counter", Durability::Turn, limits());
    call(&node, "counter", "r", "incr", json!({"by": 1}))
        .await
        .unwrap();
    store
        .claim("counter/r", "other-pop", 0, &|_| true)
        .expect("take over");
    // The old activation is still in memory, its lease fine by its own
    // clock; a read (which commits nothing) must still be refused.
    let err = call(&node, "counter", "r", "get", json!(null))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), tern_runtime::ErrorKind::Unavailable, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_writes_only_dirty_pages() {
    let store = Store::memory();
    let node = node_with_counter(store.clone(), "counter", Durability::Turn, limits());
    call(&node, "counter", "d", "grow", json!({"mb": 4}))
        .await
        .unwrap();
    call(&node, "counter", "d", "incr", json!({"by": 1}))
        .await
        .unwrap();
    let images = node.memory_images("counter", "d").await.unwrap();
    let mem_bytes: usize = images.iter().map(Vec::len).sum();
    assert!(mem_bytes >= 4 << 20, "memory is only {mem_bytes} bytes");
    let before = store.stats();
    call(&node, "counter", "d", "incr", json!({"by": 1}))
        .await
        .unwrap();
    let written = store.stats().since(&before).bytes_written;
    eprintln!("one incr on a {mem_bytes}-byte memory wrote {written} bytes");
    let page = tern_storage::PAGE_SIZE as u64;
    // About one page plus the manifest: the turn dirties its stack, data
    // and a heap page, which compress to a few KB together.
    assert!(
        written <= page + 16 * 1024,
        "a one-value turn wrote {written} bytes for a {mem_bytes}-byte memory"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nested_call_wait_is_not_charged_to_caller_budget() {
    let fast = Limits {
        turn_cpu_ms_max: 20,
        ..limits()
    };
    let slow = Limits {
        turn_cpu_ms_max: 150,
        ..limits()
    };
    let node = node_with_counter(Store::memory(), "fast", Durability::Turn, fast);
    node.deploy(
        "slow",
        counter_wasm(),
        tern_runtime::DeployOptions {
            durability: Durability::Turn,
            limits: slow,
            ..Default::default()
        },
    )
    .unwrap();
    // fast/a waits ~150 ms on slow/b, which then runs out of its own budget.
    let err = call(
        &node,
        "fast",
        "a",
        "call_other",
        json!({"type": "slow", "id": "b", "method": "spin"}),
    )
    .await
    .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("slow/b.spin ran past its CPU budget of turn_cpu_ms_max = 150 ms"),
        "{msg}"
    );
    assert!(
        !msg.contains("fast/a.call_other ran past"),
        "the caller was charged for waiting: {msg}"
    );
    assert_eq!(
        err.kind(),
        tern_runtime::ErrorKind::ResourceExhausted,
        "{err}"
    );
}
