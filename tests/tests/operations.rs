//! Operating tern: standard probes and tools work against real `tern`
//! processes.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tern_tests::{DevCluster, channel_as, runtime};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

async fn status(ch: tonic::transport::Channel, service: &str) -> ServingStatus {
    let r = HealthClient::new(ch)
        .check(HealthCheckRequest {
            service: service.to_string(),
        })
        .await
        .unwrap_or_else(|s| panic!("health check of {service:?}: {s:?}"));
    r.into_inner().status()
}

async fn services(ch: tonic::transport::Channel) -> Vec<String> {
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = ServerReflectionClient::new(ch)
        .server_reflection_info(tokio_stream::once(req))
        .await
        .expect("reflection")
        .into_inner();
    let reply = stream
        .message()
        .await
        .expect("a reply")
        .expect("one message");
    match reply.message_response {
        Some(MessageResponse::ListServicesResponse(l)) => {
            l.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("not a service list: {other:?}"),
    }
}

/// Every POP and directory serves `grpc.health.v1` and server reflection.
/// A POP says NOT_SERVING while it holds no lease (every directory frozen)
/// and SERVING again once it has one.
#[test]
fn health_and_reflection_served() {
    let data = tempfile::tempdir().unwrap();
    let dev = DevCluster::start(data.path());
    let tls = data.path().join("tls");
    let rt = runtime();
    let _in_rt = rt.enter();
    let pop = channel_as(&dev.pop("fra").endpoint, &tls, &tls, None);
    rt.block_on(async {
        assert_eq!(status(pop.clone(), "").await, ServingStatus::Serving);
        assert_eq!(
            status(pop.clone(), "tern.actor.v1.ActorService").await,
            ServingStatus::Serving
        );
        let listed = services(pop.clone()).await;
        for s in ["tern.actor.v1.ActorService", "grpc.health.v1.Health"] {
            assert!(listed.iter().any(|l| l == s), "{s} not in {listed:?}");
        }
        for d in &dev.cluster.directories {
            let ch = channel_as(&d.endpoint, &tls, &tls, Some("pop-fra"));
            assert_eq!(status(ch.clone(), "").await, ServingStatus::Serving);
            let listed = services(ch).await;
            assert!(
                listed
                    .iter()
                    .any(|l| l == "tern.directory.v1.DirectoryService"),
                "{listed:?}"
            );
        }
    });
    // Freeze every directory (and the supervisor, so nothing restarts):
    // the POP's lease lapses.
    dev.supervisor(false);
    for d in &dev.cluster.directories {
        DevCluster::signal(d.pid, Signal::SIGSTOP);
    }
    let wait_for = |want: ServingStatus, what: &str| {
        let started = Instant::now();
        loop {
            let got = rt.block_on(status(pop.clone(), ""));
            if got == want {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "{what}: still {got:?} after 30 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    wait_for(ServingStatus::NotServing, "a POP without a lease says so");
    for d in &dev.cluster.directories {
        DevCluster::signal(d.pid, Signal::SIGCONT);
    }
    dev.supervisor(true);
    wait_for(
        ServingStatus::Serving,
        "the POP serves again once it has a lease",
    );
}

/// `tern logs TYPE/ID` shows what an actor logged, asked at a POP where it
/// never ran: every live POP is asked and the lines merged.
#[test]
fn tern_logs_shows_an_actors_lines_wherever_it_ran() {
    let data = tempfile::tempdir().unwrap();
    let dev = DevCluster::start_pops(data.path(), 2);
    let wasm = tern_tests::counter_wasm().to_str().unwrap();
    dev.tern_at("fra", &["deploy", "counter", wasm])
        .expect("deploy");
    dev.tern_at(
        "fra",
        &[
            "call",
            "counter/a",
            "call_other",
            r#"{"type": "counter", "id": "b", "method": "get"}"#,
        ],
    )
    .expect("call_other logs a line");
    let out = dev.tern_at("iad", &["logs", "counter/a"]).expect("logs");
    assert!(
        out.contains("call_other -> counter/b.get") && out.contains(" fra "),
        "the line and the POP it was logged at: {out}"
    );
    let none = dev
        .tern_at("iad", &["logs", "counter/nobody"])
        .expect("logs");
    assert!(none.is_empty(), "{none}");
    let err = dev.tern_at("iad", &["logs", "no-slash"]).unwrap_err();
    assert!(err.contains("TYPE/ID"), "{err}");
}
