//! Faithful restore (invariant 4): an actor evicted and restored at random
//! points ends in exactly the state, memory bytes included, of one that was
//! never interrupted.

mod common;

use common::*;
use proptest::prelude::*;
use serde_json::json;
use tern_runtime::config::{Durability, Limits};
use tern_storage::Store;

#[derive(Debug, Clone)]
enum Op {
    Put {
        key: u8,
        len: usize,
        fill: u8,
    },
    Remove {
        key: u8,
    },
    Incr {
        by: u8,
    },
    /// Evict the interrupted actor (persist, release, drop the instance).
    Evict,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..24, 0usize..40_000, any::<u8>()).prop_map(|(key, len, fill)| Op::Put { key, len, fill }),
        2 => (0u8..24).prop_map(|key| Op::Remove { key }),
        1 => any::<u8>().prop_map(|by| Op::Incr { by }),
        2 => Just(Op::Evict),
    ]
}

async fn apply(node: &tern_runtime::Node, ty: &str, id: &str, op: &Op) {
    match op {
        Op::Put { key, len, fill } => {
            call(
                node,
                ty,
                id,
                "put",
                json!({"key": format!("k{key}"), "len": len, "fill": fill}),
            )
            .await
            .unwrap();
        }
        Op::Remove { key } => {
            call(node, ty, id, "remove", json!({"key": format!("k{key}")}))
                .await
                .unwrap();
        }
        Op::Incr { by } => {
            call(node, ty, id, "incr", json!({"by": by})).await.unwrap();
        }
        Op::Evict => {}
    }
}

/// `keep`: the POP keeps evicted actors' memory, so reactivations after
/// an eviction move it back in (issue 14); else every one reads the store.
fn check(ops: Vec<Op>, durability: Durability, case: u64, keep: bool) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = Store::memory();
        let node = counter_pop(store, "test-pop", keep, durability, Limits::default());
        let steady = format!("steady-{case}");
        let bumpy = format!("bumpy-{case}");
        for op in &ops {
            apply(&node, "counter", &steady, op).await;
            if matches!(op, Op::Evict) {
                node.evict("counter", &bumpy).await;
            } else {
                apply(&node, "counter", &bumpy, op).await;
            }
        }
        // One last eviction so the final state is read back from the store.
        node.evict("counter", &bumpy).await;
        let a = call(&node, "counter", &steady, "digest", json!(null))
            .await
            .unwrap();
        let b = call(&node, "counter", &bumpy, "digest", json!(null))
            .await
            .unwrap();
        assert_eq!(a, b, "observable state differs");
        let ma = node.memory_images("counter", &steady).await.unwrap();
        let mb = node.memory_images("counter", &bumpy).await.unwrap();
        assert_eq!(ma.len(), mb.len(), "memory count differs");
        for (i, (x, y)) in ma.iter().zip(&mb).enumerate() {
            assert_eq!(x.len(), y.len(), "memory {i} length differs");
            if let Some(at) = x.iter().zip(y.iter()).position(|(p, q)| p != q) {
                panic!("memory {i} differs first at byte {at}");
            }
        }
    });
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    #[test]
    fn restore_is_faithful(ops in proptest::collection::vec(op(), 1..40), seed in any::<u64>()) {
        check(ops, Durability::Turn, seed, true);
    }

    #[test]
    fn restore_from_the_store_is_faithful(ops in proptest::collection::vec(op(), 1..40), seed in any::<u64>()) {
        check(ops, Durability::Turn, seed, false);
    }

    #[test]
    fn restore_is_faithful_in_idle_durability(ops in proptest::collection::vec(op(), 1..25), seed in any::<u64>()) {
        check(ops, Durability::Idle, seed, true);
    }
}

/// A turn that changes a few bytes of a page commits a patch of that page
/// (a `pg/` side record), not the page; the restored actor is the same.
#[test]
fn small_turns_commit_page_patches() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = Store::memory();
        let node = node_with_counter(
            store.clone(),
            "counter",
            Durability::Turn,
            Limits::default(),
        );
        call(&node, "counter", "p", "incr", json!({"by": 1}))
            .await
            .unwrap();
        let before = store.stats().bytes_written;
        call(&node, "counter", "p", "incr", json!({"by": 2}))
            .await
            .unwrap();
        let small_turn = store.stats().bytes_written - before;
        let snap = store.load_snapshot("counter/p").unwrap().unwrap();
        let patches = snap
            .extra
            .iter()
            .filter(|(n, _)| n.starts_with("pg/"))
            .count();
        assert!(patches > 0, "the second turn was committed as page patches");
        assert!(
            small_turn < 8 * 1024,
            "a small turn writes patches, not 64 KiB pages: {small_turn} bytes"
        );
        let live = node.memory_images("counter", "p").await.unwrap();
        node.evict("counter", "p").await;
        // Restored (patches applied) without running a turn: the same bytes.
        let restored = node.memory_images("counter", "p").await.unwrap();
        assert!(
            restored == live,
            "the restored memory differs from the live one"
        );
        assert_eq!(value(&node, "counter", "p").await, 3);
    });
}

/// Issue 14: a POP keeps an evicted actor's memory and moves it back in
/// when the actor returns, but only while the store's head is the very
/// snapshot it holds. Here the actor runs at another POP in between: the
/// kept memory is stale, dropped, and the actor is read from the store,
/// so no update made elsewhere is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_memory_is_never_used_once_the_actor_ran_elsewhere() {
    let store = Store::memory();
    let a = counter_pop(
        store.clone(),
        "pop-a",
        true,
        Durability::Turn,
        Limits::default(),
    );
    let b = counter_pop(store, "pop-b", true, Durability::Turn, Limits::default());
    // Grown past the write-tracking threshold, so the kept memory is
    // large and tracked.
    call(&a, "counter", "x", "grow", json!({"mb": 2}))
        .await
        .unwrap();
    call(&a, "counter", "x", "incr", json!({"by": 3}))
        .await
        .unwrap();
    assert!(a.evict("counter", "x").await);
    let s = a.status().await;
    assert_eq!(s.hibernated.0, 1, "A keeps the evicted actor's memory");
    assert!(s.hibernated.1 > 2 << 20, "{:?}", s.hibernated);

    // Back at A, nothing happened in between: the kept memory is used.
    assert_eq!(value(&a, "counter", "x").await, 3);
    let s = a.status().await;
    assert_eq!(s.restores_kept, (1, 0));
    assert_eq!(s.hibernated.0, 0, "an entry serves one activation");
    call(&a, "counter", "x", "incr", json!({"by": 1}))
        .await
        .unwrap();
    assert!(a.evict("counter", "x").await);

    // The actor moves to B and changes there.
    call(&b, "counter", "x", "incr", json!({"by": 10}))
        .await
        .unwrap();
    assert!(b.evict("counter", "x").await);

    // A's kept memory (value 4) is stale: the store's head is B's.
    assert_eq!(value(&a, "counter", "x").await, 14, "B's update is kept");
    assert_eq!(a.status().await.restores_kept, (1, 1));
    // The images match what the store holds, byte for byte.
    let kept_path = a.memory_images("counter", "x").await.unwrap();
    assert!(a.evict("counter", "x").await);
    assert_eq!(value(&a, "counter", "x").await, 14);
    assert_eq!(a.status().await.restores_kept, (2, 1));
    assert_eq!(
        a.memory_images("counter", "x").await.unwrap(),
        kept_path,
        "restored from kept memory, the bytes are the same"
    );
}

/// A turn after a restore from kept memory traps: it rolls back to the
/// kept state, and the next turn and eviction carry on from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trap_after_a_restore_from_kept_memory_rolls_back() {
    let store = Store::memory();
    let a = counter_pop(
        store.clone(),
        "pop-a",
        true,
        Durability::Idle,
        Limits::default(),
    );
    call(&a, "counter", "t", "incr", json!({"by": 5}))
        .await
        .unwrap();
    assert!(a.evict("counter", "t").await);
    let err = call(&a, "counter", "t", "incr_then_panic", json!({"by": 100})).await;
    assert!(err.is_err(), "the trap is an error");
    assert_eq!(a.status().await.restores_kept.0, 1);
    assert_eq!(value(&a, "counter", "t").await, 5);
    call(&a, "counter", "t", "incr", json!({"by": 1}))
        .await
        .unwrap();
    assert!(a.evict("counter", "t").await);
    let fresh = counter_pop(store, "pop-b", false, Durability::Idle, Limits::default());
    assert_eq!(value(&fresh, "counter", "t").await, 6, "the store has it");
}
