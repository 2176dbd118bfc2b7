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

/// An in-process OTLP collector: every span exported to it, as
/// (trace id, service name, span name).
mod collector {
    use std::sync::{Arc, Mutex};

    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
        TraceService, TraceServiceServer,
    };
    use opentelemetry_proto::tonic::collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
    };
    use opentelemetry_proto::tonic::common::v1::any_value::Value;

    /// (trace id, service name, span name).
    pub type Spans = Arc<Mutex<Vec<(Vec<u8>, String, String)>>>;
    /// Every span event's name (tracing-opentelemetry puts a log line's
    /// message there).
    pub type Events = Arc<Mutex<Vec<String>>>;

    struct Collector(Spans, Events);

    #[tonic::async_trait]
    impl TraceService for Collector {
        async fn export(
            &self,
            req: tonic::Request<ExportTraceServiceRequest>,
        ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
            let mut got = self.0.lock().unwrap();
            for rs in req.into_inner().resource_spans {
                let service = rs
                    .resource
                    .iter()
                    .flat_map(|r| &r.attributes)
                    .find(|a| a.key == "service.name")
                    .and_then(|a| a.value.as_ref())
                    .and_then(|v| match &v.value {
                        Some(Value::StringValue(s)) => Some(s.clone()),
                        _ => None,
                    })
                    .unwrap_or_default();
                for ss in rs.scope_spans {
                    for s in ss.spans {
                        self.1
                            .lock()
                            .unwrap()
                            .extend(s.events.iter().map(|e| e.name.clone()));
                        got.push((s.trace_id, service.clone(), s.name));
                    }
                }
            }
            Ok(tonic::Response::new(ExportTraceServiceResponse {
                partial_success: None,
            }))
        }
    }

    /// Serves a collector on a loopback port; returns its URL and spans.
    pub async fn start() -> (String, Spans, Events) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let spans = Spans::default();
        let events = Events::default();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(Collector(
                    spans.clone(),
                    events.clone(),
                )))
                .serve_with_incoming(tern_proto::incoming(listener)),
        );
        (url, spans, events)
    }
}

/// A nested call forwarded from one POP to another yields one trace with
/// spans from both POPs: the W3C trace context travels in gRPC metadata.
#[test]
fn trace_spans_cross_pops() {
    use tern_tests::metro::*;
    let rt = runtime();
    let (url, spans, events) = rt.block_on(collector::start());
    let data = tempfile::tempdir().unwrap();
    let dev = DevCluster::start_with(data.path(), 2, &["--otlp-endpoint", &url]);
    let wasm = tern_tests::counter_wasm().to_str().unwrap();
    dev.tern(&["deploy", "fixed", wasm, "--follow-caller", "false"])
        .expect("deploy");
    rt.block_on(async {
        // b lives at iad, a at fra; a calls b.
        let ny = dev.client(NEW_YORK);
        let r = ny
            .call("fixed", "b", "get", Vec::new(), None)
            .await
            .unwrap();
        assert_eq!(r.reply.pop, "iad");
        let paris = dev.client(PARIS);
        let body = br#"{"type": "fixed", "id": "b", "method": "get"}"#.to_vec();
        let r = paris
            .call("fixed", "a", "call_other", body, None)
            .await
            .unwrap();
        assert_eq!(r.reply.pop, "fra");
    });
    // One trace must hold the call at fra, its turn, the nested call, its
    // forward, and the call, route and turn it caused at iad. The
    // exporters batch (every 5 s by default): wait, bounded.
    let want = [
        ("tern-pop-fra", "call"),
        ("tern-pop-fra", "turn"),
        ("tern-pop-fra", "nested call"),
        ("tern-pop-fra", "forward"),
        ("tern-pop-iad", "call"),
        ("tern-pop-iad", "route"),
        ("tern-pop-iad", "turn"),
    ];
    let started = Instant::now();
    loop {
        let got = spans.lock().unwrap().clone();
        let complete = got.iter().any(|(t, svc, name)| {
            svc == "tern-pop-fra"
                && name == "nested call"
                && want
                    .iter()
                    .all(|(ws, wn)| got.iter().any(|(u, s, n)| u == t && s == ws && n == wn))
        });
        if complete {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no trace holds all of {want:?}; spans: {got:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // The actor's log line is an event of its turn.
    let events = events.lock().unwrap().clone();
    assert!(
        events
            .iter()
            .any(|e| e.contains("call_other -> fixed/b.get")),
        "the guest's log line is not a span event: {events:?}"
    );
}

/// Runs headless Chromium on `url` (Debian's `chromium`; `.ci/run`
/// installs it): the DOM after the page's scripts ran for a few seconds
/// of virtual time, or a screenshot into `png`.
fn chromium(url: &str, png: Option<&std::path::Path>) -> String {
    let out_file = tempfile::NamedTempFile::new().unwrap();
    let mut cmd = std::process::Command::new("chromium");
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1100,1000",
        // The page holds an event stream open: stop loading after 3 s.
        "--timeout=3000",
    ]);
    match png {
        Some(p) => cmd.arg(format!("--screenshot={}", p.display())),
        None => cmd.arg("--dump-dom"),
    };
    let mut child = cmd
        .arg(url)
        .stdout(out_file.reopen().unwrap())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("run chromium (apt-get install chromium; .ci/run does)");
    // Bounded: a browser that hangs fails the test, it does not stall it.
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish within 60 s on {url}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "chromium failed on {url}: {status}");
    std::fs::read_to_string(out_file.path()).unwrap()
}

/// The live cluster page, in a real browser: after an actor followed its
/// caller to another POP and a POP was killed, the page shows that POP as
/// dead and the migration as an arc. The test saves a screenshot
/// (target/cluster-page.png).
#[test]
fn cluster_page_shows_killed_pop() {
    use tern_tests::metro::*;
    let data = tempfile::tempdir().unwrap();
    let dev = DevCluster::start_pops(data.path(), 3);
    let url = dev.cluster.page.clone().expect("tern dev serves the page");
    let wasm = tern_tests::counter_wasm().to_str().unwrap();
    dev.tern(&["deploy", "player", wasm]).expect("deploy");
    let rt = runtime();
    rt.block_on(async {
        let paris = dev.client(PARIS);
        let r = paris
            .call("player", "p1", "get", Vec::new(), None)
            .await
            .unwrap();
        assert_eq!(r.reply.pop, "fra");
        // Called from New York, it follows its caller to iad.
        let ny = dev.client(NEW_YORK);
        let mut at = String::new();
        for _ in 0..20 {
            at = ny
                .call("player", "p1", "get", Vec::new(), None)
                .await
                .unwrap()
                .reply
                .pop;
            if at == "iad" {
                break;
            }
        }
        assert_eq!(at, "iad", "the actor did not follow its caller");
    });
    // nrt stops dead (SIGSTOP: `tern dev`, which serves the page, would
    // restart a killed POP at once). Its lease lapses within 3 s.
    dev.signal_pop("nrt", Signal::SIGSTOP);
    let started = Instant::now();
    let dom = loop {
        let dom = chromium(&url, None);
        if dom.contains(r#"class="pop dead" data-pop="nrt""#) && dom.contains(r#"class="arc""#) {
            break dom;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the page does not show nrt dead and a migration arc: {dom}"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(dom.contains(r#"class="pop alive" data-pop="fra""#), "{dom}");
    assert!(dom.contains("player/p1: fra → iad"), "{dom}");
    let png = tern_tests::workspace().join("target/cluster-page.png");
    let _ = std::fs::remove_file(&png);
    chromium(&url, Some(&png));
    let size = std::fs::metadata(&png).map(|m| m.len()).unwrap_or(0);
    assert!(size > 10_000, "no screenshot at {}", png.display());
    // The inspector answers for the actor, where it is now.
    let inspected = chromium(&format!("{url}api/actor?actor=player/p1"), None);
    assert!(
        inspected.contains("\"pop\":\"iad\"") && inspected.contains("\"epoch\""),
        "{inspected}"
    );
    dev.signal_pop("nrt", Signal::SIGCONT);
}
