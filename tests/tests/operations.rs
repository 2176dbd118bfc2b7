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

/// The live cluster page, in a real browser, during a doom-lobby run: the
/// load test SIGKILLs a POP (`tern dev --restart never` leaves it dead),
/// and the page shows that POP as dead and the actors taken over from it
/// as arcs.
/// The test saves a screenshot (target/cluster-page.png); nothing the
/// players were told was done is lost.
#[test]
fn cluster_page_shows_killed_pop() {
    let data = tempfile::tempdir().unwrap();
    let dev = DevCluster::start_with(data.path(), 3, &["--restart", "never"]);
    let url = dev.cluster.page.clone().expect("tern dev serves the page");
    let report = data.path().join("report.json");
    let out = data.path().join("loadtest.out");
    let mut child = std::process::Command::new(tern_tests::doom_lobby_bin())
        .args([
            "loadtest",
            "--players",
            "24",
            "--duration",
            "30",
            "--kill-pops",
            "1",
        ])
        .arg("--cluster")
        .arg(data.path().join("cluster.json"))
        .arg("--report")
        .arg(&report)
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(data.path().join("loadtest.err")).unwrap())
        .spawn()
        .expect("start doom-lobby");
    let load = tern_tests::KillOnDrop(&mut child);
    let log = || {
        std::fs::read_to_string(data.path().join("loadtest.err")).unwrap_or_default()
            + &std::fs::read_to_string(&out).unwrap_or_default()
    };
    // Polled (bounded) until the page shows a dead POP and an arc, while
    // the players play.
    let started = Instant::now();
    let (dom, dead) = loop {
        let dom = chromium(&url, None);
        let dead = ["fra", "iad", "nrt"]
            .into_iter()
            .find(|p| dom.contains(&format!(r#"class="pop dead" data-pop="{p}""#)));
        // An actor taken over from the dead POP is listed (and drawn).
        if let Some(dead) = dead
            && dom.contains(r#"class="arc""#)
            && dom.contains(&format!(": {dead} → "))
        {
            break (dom, dead);
        }
        if let Some(status) = load.0.try_wait().unwrap() {
            panic!(
                "doom-lobby ended ({status}) before the page showed a dead POP and an arc:\n{}\n{dom}",
                log()
            );
        }
        assert!(
            started.elapsed() < Duration::from_secs(240),
            "the page does not show a dead POP and an actor moved off it: {dom}\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    let png = tern_tests::workspace().join("target/cluster-page.png");
    let _ = std::fs::remove_file(&png);
    chromium(&url, Some(&png));
    let size = std::fs::metadata(&png).map(|m| m.len()).unwrap_or(0);
    assert!(size > 10_000, "no screenshot at {}", png.display());
    // Exactly one POP is dead, and the others live.
    let alive = ["fra", "iad", "nrt"]
        .into_iter()
        .filter(|p| dom.contains(&format!(r#"class="pop alive" data-pop="{p}""#)))
        .count();
    assert_eq!(alive, 2, "{dom}");
    // The inspector answers for an actor the page drew moving.
    let moved = dom
        .split(r#"class="arc""#)
        .nth(1)
        .and_then(|r| r.split(r#"data-actor=""#).nth(1))
        .and_then(|r| r.split('"').next())
        .expect("an arc names its actor")
        .to_string();
    let inspected = chromium(&format!("{url}api/actor?actor={moved}"), None);
    assert!(
        inspected.contains(&format!("\"actor\":\"{moved}\"")),
        "{inspected}"
    );
    // The run ends (bounded), with the POP the page showed dead the one it
    // killed, and nothing lost.
    let started = Instant::now();
    let status = loop {
        if let Some(s) = load.0.try_wait().unwrap() {
            break s;
        }
        if started.elapsed() > Duration::from_secs(300) {
            panic!("doom-lobby did not finish:\n{}", log());
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let text = std::fs::read_to_string(&report).unwrap_or_else(|e| {
        panic!(
            "no report ({e}); doom-lobby exited with {status}:\n{}",
            log()
        )
    });
    let r: serde_json::Value = serde_json::from_str(&text).expect("report is JSON");
    assert_eq!(r["killed_pops"][0]["pop"], dead, "{text}");
    assert_eq!(r["lost_updates"], 0, "{text}");
    assert_eq!(r["duplicate_applies"], 0, "{text}");
    assert!(
        status.success(),
        "doom-lobby exited with {status}:\n{}",
        log()
    );
}

/// `tern pop --http` serves the same page: a POP added to a running
/// cluster by hand, with its own certificate, shows every POP of the
/// cluster (learned from the directory) and inspects actors at the others.
#[test]
fn pop_serves_cluster_page() {
    let data = tempfile::tempdir().unwrap();
    let dev = DevCluster::start_pops(data.path(), 2);
    let wasm = tern_tests::counter_wasm().to_str().unwrap();
    dev.tern(&["deploy", "counter", wasm]).expect("deploy");
    dev.tern_at("iad", &["call", "counter/c1", "incr", "{\"by\": 5}"])
        .expect("call at iad");
    let tls = data.path().join("tls");
    let certs = std::process::Command::new(tern_tests::tern_bin())
        .args(["certs", "--pop", "ams", "--dir"])
        .arg(&tls)
        .output()
        .unwrap();
    assert!(certs.status.success(), "{certs:?}");
    // Without a certificate it cannot read the others: refused, saying so.
    let refused = std::process::Command::new(tern_tests::tern_bin())
        .args([
            "pop",
            "--name",
            "ams",
            "--store",
            "memory",
            "--http",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("--tls-dir"),
        "{refused:?}"
    );
    let ready = data.path().join("ams.json");
    let dirs: Vec<String> = dev
        .cluster
        .directories
        .iter()
        .map(|d| d.endpoint.clone())
        .collect();
    let mut pop = std::process::Command::new(tern_tests::tern_bin())
        .args(["pop", "--name", "ams", "--listen", "127.0.0.1:0"])
        .args(["--http", "127.0.0.1:0", "--coords", "52.37,4.90"])
        .arg("--directory")
        .arg(dirs.join(","))
        .arg("--store")
        .arg(format!("sqlite:{}", data.path().join("tern.db").display()))
        .arg("--page-key-file")
        .arg(data.path().join("page.key"))
        .arg("--tls-dir")
        .arg(&tls)
        .arg("--ready-file")
        .arg(&ready)
        .stderr(std::fs::File::create(data.path().join("pop-ams.err")).unwrap())
        .spawn()
        .unwrap();
    let _guard = tern_tests::KillOnDrop(&mut pop);
    let mut page = None;
    dev.wait_until("ams to listen", 60_000, || {
        page = std::fs::read_to_string(&ready)
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|r| r["page"].as_str().map(str::to_string));
        page.is_some()
    });
    let url = page.unwrap();
    let started = Instant::now();
    let dom = loop {
        let dom = chromium(&url, None);
        if ["fra", "iad", "ams"]
            .into_iter()
            .all(|p| dom.contains(&format!(r#"class="pop alive" data-pop="{p}""#)))
        {
            break dom;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the POP's page does not show the cluster's POPs alive: {dom}\n{}",
            std::fs::read_to_string(data.path().join("pop-ams.err")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(dom.contains("counter/c1"), "{dom}");
    let inspected = chromium(&format!("{url}api/actor?actor=counter/c1"), None);
    assert!(
        inspected.contains("\"pop\":\"iad\"") && inspected.contains("\"epoch\""),
        "{inspected}"
    );
}
