//! What a deployed component may reach, and what a deploy may carry:
//! each test is named after the attack it stops.

mod common;

use common::{counter_wasm, engine};
use tern_runtime::{DeployOptions, ErrorKind, Node, NodeConfig};
use tern_storage::Store;

fn node(cfg: NodeConfig) -> Node {
    Node::builder("sec-pop", Store::memory(), engine())
        .config(cfg)
        .start()
        .expect("node")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn component_importing_sockets_refused() {
    let node = node(NodeConfig::default());
    // A component that asks for the network and the file system (the
    // instances are empty: the names alone are what deploy judges).
    let wasm = wat::parse_str(
        r#"(component
            (import "wasi:sockets/tcp@0.2.0" (instance))
            (import "wasi:filesystem/types@0.2.0" (instance))
            (import "wasi:cli/stdout@0.2.0" (instance))
        )"#,
    )
    .expect("valid component text");
    let err = node
        .deploy("spy", &wasm, DeployOptions::default())
        .expect_err("a component importing sockets must be refused");
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
    let msg = err.to_string();
    assert!(msg.contains("wasi:sockets/tcp@0.2.0"), "{msg}");
    assert!(msg.contains("wasi:filesystem/types@0.2.0"), "{msg}");
    assert!(
        !msg.contains("imports wasi:cli/stdout"),
        "stdout is provided: {msg}"
    );
    // Nothing was stored.
    assert!(node.store().get_type("spy").unwrap().is_none());
    // The real actors still deploy: their imports are all provided.
    node.deploy("counter", counter_wasm(), DeployOptions::default())
        .expect("counter deploys");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_component_refused_clearly() {
    let limit = 1 << 20;
    let node = node(NodeConfig {
        component_bytes_max: limit,
        ..NodeConfig::default()
    });
    let mut big = counter_wasm().to_vec();
    big.resize(limit + 1, 0);
    let err = node
        .deploy("big", &big, DeployOptions::default())
        .expect_err("over the limit");
    assert_eq!(err.kind(), ErrorKind::ResourceExhausted, "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("component_bytes_max") && msg.contains(&limit.to_string()),
        "names the limit: {msg}"
    );
    assert!(node.store().get_type("big").unwrap().is_none());
}
