//! The compiled-code cache in the store: a POP that never ran a type loads
//! the code another POP compiled instead of compiling it; a damaged entry
//! is compiled again, never trusted.

mod common;

use common::*;
use tern_runtime::config::{Durability, Limits};
use tern_runtime::{Node, TernEngine};
use tern_storage::Store;

fn deploy(node: &Node) {
    node.deploy(
        "counter",
        counter_wasm(),
        tern_runtime::DeployOptions {
            durability: Durability::Turn,
            limits: Limits::default(),
            ..Default::default()
        },
    )
    .expect("deploy");
}

/// A POP's engine (a new process) keeping compiled code in `dir`.
fn engine_with_code_dir(dir: &tempfile::TempDir) -> TernEngine {
    TernEngine::new()
        .unwrap()
        .with_code_dir(dir.path())
        .unwrap()
}

/// The counter's code file in `dir` for `engine`'s configuration.
fn code_file(dir: &tempfile::TempDir, engine: &TernEngine) -> std::path::PathBuf {
    tern_runtime::codedir::CodeDir::open(dir.path())
        .unwrap()
        .file(&digest(), &engine.code_key())
}

fn digest() -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(counter_wasm()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_activation_loads_compiled_code() {
    let store = Store::memory();
    let first = TernEngine::new().unwrap();
    deploy(&Node::new("pop-a", store.clone(), first.clone()));
    assert_eq!(first.compiles(), 1, "the deploying POP compiles once");
    assert!(
        store
            .get_compiled(&digest(), &first.code_key())
            .unwrap()
            .is_some(),
        "and keeps the code in the store"
    );
    // Another POP (another engine, same configuration) runs the type.
    let second = TernEngine::new().unwrap();
    let node = Node::new("pop-b", store.clone(), second.clone());
    call(&node, "counter", "a", "incr", serde_json::json!({"by": 4}))
        .await
        .unwrap();
    assert_eq!(value(&node, "counter", "a").await, 4);
    assert_eq!(second.compiles(), 0, "it loaded the compiled code");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compiled_cache_survives_corruption() {
    let store = Store::memory();
    let first = TernEngine::new().unwrap();
    deploy(&Node::new("pop-a", store.clone(), first.clone()));
    let key = first.code_key();
    // The entry now names code that is not compiled code at all.
    store
        .put_compiled(&digest(), &key, b"\x7fELF not really compiled code")
        .unwrap();
    let second = TernEngine::new().unwrap();
    let node = Node::new("pop-b", store.clone(), second.clone());
    call(&node, "counter", "a", "incr", serde_json::json!({"by": 2}))
        .await
        .unwrap();
    assert_eq!(
        value(&node, "counter", "a").await,
        2,
        "the actor still answers"
    );
    assert_eq!(second.compiles(), 1, "the damaged entry was compiled again");
    // ... and replaced: a third POP loads it.
    let third = TernEngine::new().unwrap();
    let node = Node::new("pop-c", store.clone(), third.clone());
    assert_eq!(value(&node, "counter", "b").await, 0);
    assert_eq!(third.compiles(), 0, "the entry was replaced by good code");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_activation_maps_local_code() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::memory();
    let first = engine_with_code_dir(&dir);
    deploy(&Node::new("pop-a", store.clone(), first.clone()));
    assert_eq!(first.compiles(), 1);
    let file = code_file(&dir, &first);
    assert!(file.exists(), "the compiled code is kept on local disk");
    // The POP restarts (a new engine, same directory).
    let restarted = engine_with_code_dir(&dir);
    let node = Node::new("pop-a", store.clone(), restarted.clone());
    call(&node, "counter", "a", "incr", serde_json::json!({"by": 3}))
        .await
        .unwrap();
    assert_eq!(value(&node, "counter", "a").await, 3);
    assert_eq!(restarted.compiles(), 0);
    assert_eq!(restarted.local_loads(), 1, "it mapped the local file");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_local_code_is_not_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::memory();
    let first = engine_with_code_dir(&dir);
    deploy(&Node::new("pop-a", store.clone(), first.clone()));
    let file = code_file(&dir, &first);
    // One flipped byte in the middle of the machine code.
    let mut code = std::fs::read(&file).unwrap();
    let mid = code.len() / 2;
    code[mid] ^= 0x40;
    std::fs::write(&file, &code).unwrap();
    let second = engine_with_code_dir(&dir);
    let node = Node::new("pop-a", store.clone(), second.clone());
    call(&node, "counter", "a", "incr", serde_json::json!({"by": 5}))
        .await
        .unwrap();
    assert_eq!(value(&node, "counter", "a").await, 5, "the actor answers");
    assert_eq!(second.local_loads(), 0, "the damaged file was refused");
    assert_eq!(second.compiles(), 0, "the store's copy was loaded instead");
    // ... and written back whole: the next start maps it.
    let third = engine_with_code_dir(&dir);
    let node = Node::new("pop-a", store.clone(), third.clone());
    assert_eq!(value(&node, "counter", "b").await, 0);
    assert_eq!(third.local_loads(), 1);
    assert_eq!(third.compiles(), 0);
}
