//! Shared helpers for the runtime's in-process tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use tern_runtime::config::{Durability, Limits};
use tern_runtime::{CallRequest, Node, RuntimeError, TernEngine};
use tern_storage::Store;

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The counter example, built once per test binary.
pub fn counter_wasm() -> &'static [u8] {
    static WASM: OnceLock<Vec<u8>> = OnceLock::new();
    WASM.get_or_init(|| {
        let path = tern_cli::build::build_guest(&workspace().join("examples/counter"), true)
            .expect("build examples/counter");
        std::fs::read(path).expect("read counter.wasm")
    })
}

/// One engine per test binary (it owns a ticker thread).
pub fn engine() -> TernEngine {
    static ENGINE: OnceLock<TernEngine> = OnceLock::new();
    ENGINE
        .get_or_init(|| TernEngine::new().expect("engine"))
        .clone()
}

/// A node over `store` with `counter` deployed as type `ty`.
pub fn node_with_counter(store: Store, ty: &str, durability: Durability, limits: Limits) -> Node {
    counter_node(
        Node::new("test-pop", store, engine()),
        ty,
        durability,
        limits,
    )
}

/// [`node_with_counter`] for a POP named `pop` that keeps no memory of
/// evicted actors, so every activation reads the store (restore and
/// corruption tests), unless `keep`.
pub fn counter_pop(
    store: Store,
    pop: &str,
    keep: bool,
    durability: Durability,
    limits: Limits,
) -> Node {
    let cfg = tern_runtime::node::NodeConfig {
        hibernated_bytes_max: if keep {
            tern_runtime::node::NodeConfig::default().hibernated_bytes_max
        } else {
            0
        },
        ..Default::default()
    };
    let node = Node::builder(pop, store, engine())
        .config(cfg)
        .start()
        .expect("an in-process directory registers its POP");
    counter_node(node, "counter", durability, limits)
}

fn counter_node(node: Node, ty: &str, durability: Durability, limits: Limits) -> Node {
    node.deploy(
        ty,
        counter_wasm(),
        tern_runtime::DeployOptions {
            durability,
            limits,
            ..Default::default()
        },
    )
    .expect("deploy counter");
    node
}

/// Calls `ty/id.method(json)`, returning the parsed JSON reply.
pub async fn call(
    node: &Node,
    ty: &str,
    id: &str,
    method: &str,
    json: serde_json::Value,
) -> Result<serde_json::Value, RuntimeError> {
    let payload = if json.is_null() {
        Vec::new()
    } else {
        serde_json::to_vec(&json).unwrap()
    };
    let out = node
        .call(CallRequest {
            actor_type: ty.into(),
            id: id.into(),
            method: method.into(),
            payload,
            idempotency_key: None,
        })
        .await?;
    Ok(serde_json::from_slice(&out.payload).expect("reply is JSON"))
}

/// The counter's value.
pub async fn value(node: &Node, ty: &str, id: &str) -> u64 {
    call(node, ty, id, "get", serde_json::Value::Null)
        .await
        .expect("get")["value"]
        .as_u64()
        .expect("value is a number")
}

/// [`call`], retried (at most 5 times) while it answers UNAVAILABLE, as
/// the contract tells callers to: a deploy compiles on the test's runtime
/// threads, and on a loaded machine that can hold up the POP's heartbeat
/// past its lease, so the POP registers again and its calls in flight are
/// told to retry.
pub async fn call_retrying(
    node: &Node,
    ty: &str,
    id: &str,
    method: &str,
    json: serde_json::Value,
) -> Result<serde_json::Value, RuntimeError> {
    let mut attempts = 0;
    loop {
        match call(node, ty, id, method, json.clone()).await {
            Err(e) if e.kind() == tern_runtime::ErrorKind::Unavailable && attempts < 5 => {
                attempts += 1;
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            other => return other,
        }
    }
}
