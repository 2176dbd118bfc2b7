//! Security checks of the real `tern` binary, named after what they stop.

use std::process::Command;

use tern_tests::tern_bin;

/// Without TLS, a POP or directory that listens beyond loopback would take
/// orders from anyone on the network: it refuses to start, unless told
/// `--insecure`, and then says so loudly. (The README's example; the
/// refusal comes before anything is bound.)
#[test]
fn open_listen_without_tls_refused() {
    for args in [
        vec![
            "pop",
            "--name",
            "p",
            "--store",
            "memory",
            "--listen",
            "0.0.0.0:7700",
        ],
        vec!["directory", "--store", "memory", "--listen", "0.0.0.0:0"],
    ] {
        let out = Command::new(tern_bin())
            .args(&args)
            .output()
            .expect("run tern");
        assert!(!out.status.success(), "{args:?} started");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("refusing to start") && err.contains("--insecure"),
            "{args:?}: {err}"
        );
    }
}

/// The CLI refuses an oversized component before sending it, with the
/// limit in the message (nothing needs to listen at the endpoint).
#[test]
fn oversized_component_refused_by_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("big.wasm");
    std::fs::write(&file, vec![0u8; 2048]).unwrap();
    let out = Command::new(tern_bin())
        .args(["deploy", "big"])
        .arg(&file)
        .args([
            "--component-bytes-max",
            "1024",
            "--endpoint",
            "http://127.0.0.1:9",
        ])
        .output()
        .expect("run tern");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("2048 bytes") && err.contains("1024 bytes"),
        "{err}"
    );
}

/// A raw gRPC client (no CLI check) sending a component over the POP's
/// limit, yet under the gRPC message limit, gets RESOURCE_EXHAUSTED that
/// names the limit, not a transport error; one with no size limit of its
/// own sending more than the gRPC message limit gets OUT_OF_RANGE naming
/// both sizes.
#[test]
fn oversized_component_over_grpc_refused_clearly() {
    use tern_client::pb;
    let data = tempfile::tempdir().unwrap();
    let dev = tern_tests::DevCluster::start_pops(data.path(), 1);
    let endpoint = dev.endpoint().to_string();
    let rt = tern_tests::runtime();
    rt.block_on(async {
        let mut client = tern_client::connect(&endpoint).await.expect("connect");
        let deploy = |len: usize| pb::DeployRequest {
            r#type: "big".into(),
            component: vec![0u8; len],
            ..Default::default()
        };
        let over_pop = tern_proto::COMPONENT_BYTES_MAX_DEFAULT + 1;
        let err = client
            .deploy(deploy(over_pop))
            .await
            .expect_err("over component_bytes_max");
        assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
        assert!(
            err.message().contains("component_bytes_max"),
            "{}",
            err.message()
        );
        // A client with no size limit of its own, sending more than the
        // server's gRPC message limit.
        let ch = tonic::transport::Endpoint::from_shared(endpoint.clone())
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut raw = pb::actor_service_client::ActorServiceClient::new(ch)
            .max_encoding_message_size(usize::MAX);
        let err = raw
            .deploy(deploy(tern_proto::GRPC_MESSAGE_BYTES_MAX + 1))
            .await
            .expect_err("over the gRPC message limit");
        assert_eq!(err.code(), tonic::Code::OutOfRange, "{err:?}");
        assert!(
            err.message().contains("too large") && err.message().contains("67108864"),
            "{}",
            err.message()
        );
    });
}
