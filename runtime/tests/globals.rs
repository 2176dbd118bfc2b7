//! Instance state beyond linear memory (invariant 4 for components built
//! by other toolchains): mutable globals of every core instance are saved
//! with the memory pages and written back before the first turn of a
//! restore; what cannot be saved is refused at deploy with a message that
//! says what.

mod common;

use common::*;
use proptest::prelude::*;
use tern_runtime::config::{Durability, Limits};
use tern_runtime::{CallRequest, RuntimeError};
use tern_storage::Store;

/// The tern:actor world's types instance and export types, shared by the
/// test components.
const WORLD_TYPES: &str = r#"
  (type $types-instance (instance
    (type $kind (enum "not-found" "invalid-argument" "failed-precondition" "resource-exhausted" "unavailable" "aborted" "internal"))
    (export "error-kind" (type $ek (eq $kind)))
    (type $err (record (field "kind" $ek) (field "message" string)))
    (export "actor-error" (type (eq $err)))
  ))
  (import "tern:actor/types@0.1.0" (instance $types (type $types-instance)))
  (alias export $types "actor-error" (type $actor-error))
  (type $handle-t (func (param "method" string) (param "payload" (list u8)) (result (result (list u8) (error $actor-error)))))
  (type $save-t (func (result (result (list u8) (error $actor-error)))))
  (type $load-t (func (param "state" (list u8)) (result (result (error $actor-error)))))
"#;

/// The exports of a core instance `$i` lifted as the tern:actor world.
const WORLD_EXPORTS: &str = r#"
  (alias core export $i "mem" (core memory $mem))
  (alias core export $i "realloc" (core func $realloc))
  (alias core export $i "handle" (core func $handle-core))
  (alias core export $i "save" (core func $save-core))
  (alias core export $i "load" (core func $load-core))
  (func $handle (type $handle-t) (canon lift (core func $handle-core) (memory $mem) (realloc $realloc)))
  (func $save (type $save-t) (canon lift (core func $save-core) (memory $mem) (realloc $realloc)))
  (func $load (type $load-t) (canon lift (core func $load-core) (memory $mem) (realloc $realloc)))
  (export "handle" (func $handle))
  (export "save" (func $save))
  (export "load" (func $load))
"#;

/// A core module whose state lives in five mutable globals (i32, i64,
/// f32, f64 and a bump allocator's heap pointer) as much as in memory,
/// like an interpreter's. `handle` updates them from the payload and
/// answers with their values (24 bytes) plus the bytes at the previous
/// reply, which only a restored heap pointer keeps in place.
const STATEFUL_MODULE: &str = r#"
  (core module $m
    (memory (export "mem") 1)
    (global $count (mut i32) (i32.const 0))
    (global $sum (mut i64) (i64.const 7))
    (global $half (mut f32) (f32.const 0))
    (global $growth (mut f64) (f64.const 1))
    (global $heap (mut i32) (i32.const 4096))
    (global $last (mut i32) (i32.const 0))
    (func $realloc (export "realloc") (param i32 i32 i32 i32) (result i32)
      (local $p i32)
      (local.set $p (i32.and (i32.add (global.get $heap) (i32.const 7)) (i32.const -8)))
      (global.set $heap (i32.add (local.get $p) (local.get 3)))
      (if (i32.gt_u (global.get $heap) (i32.mul (memory.size) (i32.const 65536)))
        (then (drop (memory.grow (i32.const 1)))))
      (local.get $p))
    (func (export "handle") (param $mp i32) (param $ml i32) (param $pp i32) (param $pl i32) (result i32)
      (local $out i32) (local $ret i32) (local $i i32)
      (global.set $count (i32.add (global.get $count) (i32.const 1)))
      (global.set $sum (i64.add (i64.mul (global.get $sum) (i64.const 31))
                                (i64.extend_i32_u (i32.add (local.get $pl) (i32.shl (local.get $ml) (i32.const 8))))))
      (block $done (loop $bytes
        (br_if $done (i32.ge_u (local.get $i) (local.get $pl)))
        (global.set $sum (i64.add (global.get $sum) (i64.load8_u (i32.add (local.get $pp) (local.get $i)))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $bytes)))
      (global.set $half (f32.add (global.get $half) (f32.const 0.5)))
      (global.set $growth (f64.add (f64.mul (global.get $growth) (f64.const 1.25)) (f64.convert_i32_u (local.get $pl))))
      (local.set $out (call $realloc (i32.const 0) (i32.const 0) (i32.const 8) (i32.const 32)))
      (i32.store (local.get $out) (global.get $count))
      (f32.store offset=4 (local.get $out) (global.get $half))
      (i64.store offset=8 (local.get $out) (global.get $sum))
      (f64.store offset=16 (local.get $out) (global.get $growth))
      ;; The first 8 bytes of the previous reply: wrong if the heap pointer
      ;; was not restored and this reply overwrote it.
      (if (global.get $last)
        (then (i64.store offset=24 (local.get $out) (i64.load (global.get $last)))))
      (global.set $last (local.get $out))
      (local.set $ret (call $realloc (i32.const 0) (i32.const 0) (i32.const 4) (i32.const 16)))
      (i32.store8 (local.get $ret) (i32.const 0))
      (i32.store offset=4 (local.get $ret) (local.get $out))
      (i32.store offset=8 (local.get $ret) (i32.const 32))
      (local.get $ret))
    (func (export "save") (result i32)
      (i32.store8 (i32.const 64) (i32.const 0))
      (i32.store (i32.const 68) (i32.const 0))
      (i32.store (i32.const 72) (i32.const 0))
      (i32.const 64))
    (func (export "load") (param i32 i32) (result i32)
      (i32.store8 (i32.const 64) (i32.const 0))
      (i32.const 64))
  )
  (core instance $i (instantiate $m))
"#;

fn component(core: &str) -> Vec<u8> {
    wat::parse_str(format!("(component {WORLD_TYPES} {core} {WORLD_EXPORTS})"))
        .expect("the test component parses")
}

fn stateful() -> &'static [u8] {
    static WASM: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    WASM.get_or_init(|| component(STATEFUL_MODULE))
}

fn node_with(store: Store, wasm: &[u8], durability: Durability) -> tern_runtime::Node {
    let node = tern_runtime::Node::new("test-pop", store, engine());
    node.deploy(
        "g",
        wasm,
        tern_runtime::DeployOptions {
            durability,
            limits: Limits::default(),
            ..Default::default()
        },
    )
    .expect("deploy the stateful component");
    node
}

async fn raw_call(node: &tern_runtime::Node, id: &str, payload: Vec<u8>) -> Vec<u8> {
    node.call(CallRequest {
        actor_type: "g".into(),
        id: id.into(),
        method: "step".into(),
        payload,
        idempotency_key: None,
    })
    .await
    .expect("call")
    .payload
}

#[derive(Debug, Clone)]
enum Op {
    Step(Vec<u8>),
    Evict,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => proptest::collection::vec(any::<u8>(), 0..300).prop_map(Op::Step),
        1 => Just(Op::Evict),
    ]
}

fn check(ops: Vec<Op>, durability: Durability, case: u64) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let node = node_with(Store::memory(), stateful(), durability);
        let steady = format!("steady-{case}");
        let bumpy = format!("bumpy-{case}");
        for op in &ops {
            match op {
                Op::Step(p) => {
                    let a = raw_call(&node, &steady, p.clone()).await;
                    let b = raw_call(&node, &bumpy, p.clone()).await;
                    assert_eq!(a, b, "replies differ (globals or heap not restored)");
                }
                Op::Evict => {
                    node.evict("g", &bumpy).await;
                }
            }
        }
        node.evict("g", &bumpy).await;
        let a = raw_call(&node, &steady, b"last".to_vec()).await;
        let b = raw_call(&node, &bumpy, b"last".to_vec()).await;
        assert_eq!(a, b, "replies differ after the last restore");
        let (ma, ga) = node.instance_state("g", &steady).await.unwrap();
        let (mb, gb) = node.instance_state("g", &bumpy).await.unwrap();
        assert_eq!(ga.len(), 6, "every mutable global is captured");
        assert_eq!(ga, gb, "globals differ");
        assert_eq!(ma, mb, "memories differ");
    });
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    #[test]
    fn restore_is_faithful_with_globals(ops in proptest::collection::vec(op(), 1..30), seed in any::<u64>()) {
        check(ops, Durability::Turn, seed);
    }

    #[test]
    fn restore_is_faithful_with_globals_in_idle_durability(ops in proptest::collection::vec(op(), 1..20), seed in any::<u64>()) {
        check(ops, Durability::Idle, seed);
    }
}

/// A turn that changes only globals (no memory page) is still committed:
/// after eviction the restored actor continues from the new values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn globals_only_change_is_persisted() {
    let store = Store::memory();
    let node = node_with(store.clone(), stateful(), Durability::Turn);
    let first = raw_call(&node, "a", vec![]).await;
    node.evict("g", "a").await;
    let again = node_with(store, stateful(), Durability::Turn);
    let second = raw_call(&again, "a", vec![]).await;
    assert_eq!(u32::from_le_bytes(first[..4].try_into().unwrap()), 1);
    assert_eq!(
        u32::from_le_bytes(second[..4].try_into().unwrap()),
        2,
        "the count (a global) survived the restore on another node"
    );
    assert_eq!(&second[24..32], &first[..8], "the heap pointer survived");
}

/// Components whose state tern cannot capture are refused at deploy, with
/// a message that names what and why; nothing is deployed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uncapturable_component_refused_clearly() {
    let cases: [(&str, String, &str); 4] = [
        (
            "a mutable v128 global",
            STATEFUL_MODULE.replace(
                "(global $last (mut i32) (i32.const 0))",
                "(global $last (mut i32) (i32.const 0)) (global $vec (mut v128) (v128.const i64x2 0 0))",
            ),
            "v128",
        ),
        (
            "a mutable reference global",
            STATEFUL_MODULE.replace(
                "(global $last (mut i32) (i32.const 0))",
                "(global $last (mut i32) (i32.const 0)) (global $r (mut funcref) (ref.null func))",
            ),
            "reference",
        ),
        (
            "a table mutated at run time",
            STATEFUL_MODULE.replace(
                "(global $last (mut i32) (i32.const 0))",
                "(global $last (mut i32) (i32.const 0)) (table $t 1 funcref) (func (table.set $t (i32.const 0) (ref.null func)))",
            ),
            "table.set",
        ),
        (
            "a nested component with a core module",
            format!(
                "{STATEFUL_MODULE} (component $inner (core module $n (global (mut i32) (i32.const 0))))"
            ),
            "nested component",
        ),
    ];
    for (what, core, needle) in cases {
        let wasm = component(&core);
        let store = Store::memory();
        let node = tern_runtime::Node::new("test-pop", store.clone(), engine());
        match node.deploy("bad", &wasm, tern_runtime::DeployOptions::default()) {
            Err(RuntimeError::ComponentRejected(m)) => {
                assert!(m.contains(needle), "{what}: the message names it: {m}")
            }
            other => panic!("{what}: expected a clear refusal, got {other:?}"),
        }
        assert_eq!(
            store.get_type("bad").unwrap(),
            None,
            "{what}: nothing deployed"
        );
    }
}

/// A Rust component (one `__stack_pointer` per module) is instrumented too,
/// and its restore is unchanged: the counter keeps its value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_component_globals_are_captured() {
    let store = Store::memory();
    let node = node_with_counter(store, "counter", Durability::Turn, Limits::default());
    call(&node, "counter", "c", "incr", serde_json::json!({"by": 3}))
        .await
        .unwrap();
    let (_, globals) = node.instance_state("counter", "c").await.unwrap();
    assert!(!globals.is_empty(), "the shadow stack pointer is captured");
    node.evict("counter", "c").await;
    assert_eq!(value(&node, "counter", "c").await, 3);
}
