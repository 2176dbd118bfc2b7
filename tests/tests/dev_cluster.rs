//! Cluster tests on `tern dev` with one POP: real processes, real signals.

use serde_json::Value;
use tern_tests::{DevCluster, counter_wasm};

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON: {s}: {e}"))
}

#[test]
fn counter_survives_process_restart() {
    let data = tempfile::tempdir().unwrap();
    let mut dev = DevCluster::start(data.path());
    let wasm = counter_wasm().to_str().unwrap();
    dev.tern(&["deploy", "counter", wasm]).expect("deploy");
    let mut sum = 0;
    for by in [3, 5, 9] {
        let out = dev
            .tern(&[
                "call",
                "counter/alice",
                "incr",
                &format!("{{\"by\": {by}}}"),
            ])
            .expect("incr");
        sum += by;
        assert_eq!(json(&out)["value"], sum, "reply to incr {by}");
    }
    dev.kill9();
    let dev = DevCluster::start(data.path());
    let out = dev.tern(&["call", "counter/alice", "get"]).expect("get");
    assert_eq!(
        json(&out)["value"],
        sum,
        "acknowledged increments were lost"
    );
    // The POP's log is plain text, kept across the restart.
    let log = std::fs::read_to_string(data.path().join("pop-fra.log")).unwrap();
    assert!(!log.contains('\x1b'), "ANSI codes in the log file");
    assert!(
        log.matches("serving ActorService").count() >= 2,
        "the restarted cluster appended to the log: {log}"
    );
}

#[test]
fn idle_actor_persisted_on_clean_shutdown() {
    let data = tempfile::tempdir().unwrap();
    let mut dev = DevCluster::start(data.path());
    let wasm = counter_wasm().to_str().unwrap();
    dev.tern(&["deploy", "lazy", wasm, "--durability", "idle"])
        .expect("deploy");
    dev.tern(&["call", "lazy/bob", "incr", "{\"by\": 4}"])
        .expect("incr");
    let status = dev.terminate();
    assert!(status.success(), "tern dev exited with {status}");
    let dev = DevCluster::start(data.path());
    let out = dev.tern(&["call", "lazy/bob", "get"]).expect("get");
    assert_eq!(json(&out)["value"], 4);
}

#[test]
fn cli_errors_are_clear() {
    let data = tempfile::tempdir().unwrap();
    let dev = DevCluster::start(data.path());
    let err = dev.tern(&["call", "nosuch/x", "get"]).unwrap_err();
    assert!(
        err.contains("NOT_FOUND") && err.contains("tern deploy nosuch"),
        "{err}"
    );
    let err = dev.tern(&["call", "no-slash", "get"]).unwrap_err();
    assert!(err.contains("TYPE/ID"), "{err}");
    let err = dev.tern(&["call", "a/b", "get", "{not json"]).unwrap_err();
    assert!(err.contains("not valid JSON"), "{err}");
    let bogus = data.path().join("bogus.wasm");
    std::fs::write(&bogus, b"nope").unwrap();
    let err = dev
        .tern(&["deploy", "bad", bogus.to_str().unwrap()])
        .unwrap_err();
    assert!(
        err.contains("INVALID_ARGUMENT") && err.contains("not a WebAssembly binary"),
        "{err}"
    );
    // `--idempotency-key`: a retry gets the first reply, applied once.
    let wasm = counter_wasm().to_str().unwrap();
    dev.tern(&["deploy", "counter", wasm]).expect("deploy");
    for _ in 0..2 {
        let out = dev
            .tern(&[
                "call",
                "counter/k",
                "incr",
                "{\"by\": 5}",
                "--idempotency-key",
                "k-1",
            ])
            .expect("incr");
        assert_eq!(json(&out)["value"], 5, "applied once");
    }
    // An endpoint without a scheme is taken as http:// (this cluster
    // speaks TLS, so the plain-text attempt fails as a transport error,
    // not as a malformed endpoint).
    let hostport = dev.endpoint().trim_start_matches("https://").to_string();
    let out = std::process::Command::new(tern_tests::tern_bin())
        .args([
            "call",
            "counter/k",
            "get",
            "--endpoint",
            &hostport,
            "--data",
        ])
        .arg(data.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("bad endpoint"), "{err}");
    let status = dev.tern(&["status", "--json"]).expect("status");
    assert_eq!(json(&status)["pop"], "fra");
}

#[test]
fn metrics_are_scrapeable() {
    use std::io::{Read, Write};
    // A free port, chosen at run time.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let data = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{port}");
    let dev = DevCluster::start_with(data.path(), 1, &["--metrics-listen", &listen]);
    assert_eq!(
        dev.cluster.metrics.as_deref(),
        Some(format!("http://{listen}/metrics").as_str())
    );
    dev.tern(&["deploy", "counter", counter_wasm().to_str().unwrap()])
        .expect("deploy");
    dev.tern(&["call", "counter/m", "incr", "{\"by\": 1}"])
        .expect("incr");
    let mut s = std::net::TcpStream::connect(&listen).expect("metrics listener");
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    assert!(
        body.starts_with("HTTP/1.1 200") || body.starts_with("HTTP/1.0 200"),
        "{body}"
    );
    assert!(body.contains("tern_turns_total"), "{body}");
    assert!(body.contains("tern_commits_total"), "{body}");
}

/// Bad counts are refused before anything starts, with the allowed range.
#[test]
fn dev_refuses_bad_directory_counts() {
    let data = tempfile::tempdir().unwrap();
    for n in ["0", "6"] {
        let out = std::process::Command::new(tern_tests::tern_bin())
            .args(["dev", "--directories", n, "--base-port", "0", "--data"])
            .arg(data.path())
            .output()
            .unwrap();
        assert!(!out.status.success(), "--directories {n} accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("--directories must be between 1 and 5"),
            "{err}"
        );
    }
    let out = std::process::Command::new(tern_tests::tern_bin())
        .args(["pop", "--name", "p", "--store", "memory", "--insecure"])
        .args(["--directory", &vec!["http://127.0.0.1:1"; 17].join(",")])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("between 1 and 16 directory endpoints, got 17"),
        "{err}"
    );
}

/// A second `tern dev` on a data directory in use is refused, naming the
/// running one's PID, and touches nothing: the first cluster's file, logs
/// and POPs carry on.
#[test]
fn second_dev_on_same_data_refused() {
    let data = tempfile::tempdir().unwrap();
    let dev = DevCluster::start(data.path());
    let before = std::fs::read_to_string(data.path().join("cluster.json")).unwrap();
    let out = std::process::Command::new(tern_tests::tern_bin())
        .args(["dev", "--base-port", "0", "--pops", "1", "--data"])
        .arg(data.path())
        .output()
        .expect("run a second tern dev");
    assert!(!out.status.success(), "the second tern dev was accepted");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("PID {}", dev.cluster.pid)),
        "the refusal names the running cluster's PID: {err}"
    );
    assert_eq!(
        std::fs::read_to_string(data.path().join("cluster.json")).unwrap(),
        before,
        "the first cluster's file was rewritten"
    );
    let wasm = counter_wasm().to_str().unwrap();
    dev.tern(&["deploy", "counter", wasm]).expect("deploy");
    let out = dev
        .tern(&["call", "counter/a", "incr", "{\"by\": 2}"])
        .expect("the first cluster still serves");
    assert_eq!(json(&out)["value"], 2);
}

/// With no --endpoint or --data, the CLI finds `.tern/cluster.json` in a
/// parent directory (as cargo finds Cargo.toml), and says where it looked
/// when there is none.
#[test]
fn endpoint_found_from_subdirectory() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("game/.tern");
    std::fs::create_dir_all(&data).unwrap();
    let dev = DevCluster::start(&data);
    let wasm = counter_wasm().to_str().unwrap();
    dev.tern(&["deploy", "counter", wasm]).expect("deploy");
    let deep = root.path().join("game/src/actors");
    std::fs::create_dir_all(&deep).unwrap();
    let tern = |dir: &std::path::Path, args: &[&str]| {
        std::process::Command::new(tern_tests::tern_bin())
            .args(args)
            .current_dir(dir)
            .env_remove("TERN_DATA")
            .env_remove("TERN_ENDPOINT")
            .env_remove("TERN_TOKEN")
            .env_remove("TERN_CA")
            .output()
            .expect("run tern")
    };
    let out = tern(&deep, &["call", "counter/sub", "incr", "{\"by\": 3}"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(json(&String::from_utf8_lossy(&out.stdout))["value"], 3);
    // Outside any project: a clear error naming the places looked at.
    let elsewhere = tempfile::tempdir().unwrap();
    let out = tern(elsewhere.path(), &["call", "counter/sub", "get"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no .tern/cluster.json found")
            && err.contains(&elsewhere.path().join(".tern").display().to_string()),
        "{err}"
    );
}

/// `tern dev` supervises its children: a directory (or a POP) killed with
/// SIGKILL is restarted on its address, the restart is logged, and calls
/// go on routing.
#[test]
fn dev_restarts_crashed_directory() {
    use nix::sys::signal::Signal;
    let data = tempfile::tempdir().unwrap();
    let mut dev = DevCluster::start_with(data.path(), 1, &["--directories", "1"]);
    let wasm = counter_wasm().to_str().unwrap();
    dev.tern(&["deploy", "counter", wasm]).expect("deploy");
    for (what, pid) in [
        ("directory", dev.cluster.directories[0].pid),
        ("POP", dev.cluster.pops[0].pid),
    ] {
        DevCluster::signal(pid, Signal::SIGKILL);
        let started = std::time::Instant::now();
        loop {
            dev.refresh();
            let now = if what == "POP" {
                dev.cluster.pops[0].pid
            } else {
                dev.cluster.directories[0].pid
            };
            if now != pid {
                break;
            }
            assert!(
                started.elapsed() < std::time::Duration::from_secs(60),
                "tern dev did not restart the {what}"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        dev.wait_until("calls route again", 30_000, || {
            dev.tern(&["call", "counter/r", "incr", "{\"by\": 1}"])
                .is_ok()
        });
    }
    let log = std::fs::read_to_string(data.path().join("dev.log")).unwrap();
    assert!(
        log.matches("child restarted").count() >= 2,
        "each restart is logged: {log}"
    );
}

/// `tern new NAME` makes a crate outside any workspace that `tern build`
/// builds as it stands, and that deploys and answers.
#[test]
fn tern_new_scaffolds_buildable_actor() {
    let root = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(tern_tests::tern_bin())
            .args(args)
            .current_dir(root.path())
            // Reuse the workspace's guest builds of the same dependencies.
            .env(
                "TERN_GUEST_TARGET_DIR",
                tern_tests::workspace().join("target/guest"),
            )
            .output()
            .expect("run tern");
        assert!(
            out.status.success(),
            "tern {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let dir = run(&["new", "my-actor"]);
    assert_eq!(dir, "my-actor");
    let manifest = std::fs::read_to_string(root.path().join("my-actor/Cargo.toml")).unwrap();
    assert!(
        manifest.contains("tern-actor-sdk") && manifest.contains("serde"),
        "{manifest}"
    );
    // The README shows this Cargo.toml, line for line (but the SDK's path).
    let readme = std::fs::read_to_string(tern_tests::workspace().join("README.md")).unwrap();
    let start = readme.find("```toml").expect("README shows the Cargo.toml") + 7;
    let block = &readme[start..start + readme[start..].find("```").unwrap()];
    for line in block.lines().filter(|l| !l.trim().is_empty()) {
        if line.starts_with("tern-actor-sdk = { path") {
            continue;
        }
        assert!(
            manifest.lines().any(|m| m == line),
            "README line {line:?} is not in the scaffold: {manifest}"
        );
    }
    // A second `tern new` into the same place is refused.
    let again = std::process::Command::new(tern_tests::tern_bin())
        .args(["new", "my-actor"])
        .current_dir(root.path())
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("not empty"));
    let built = run(&["build", "my-actor"]);
    let wasm = built.lines().last().expect("the .wasm path").to_string();
    assert!(wasm.ends_with(".wasm"), "{built}");
    let data = tempfile::tempdir().unwrap();
    let dev = DevCluster::start(data.path());
    dev.tern(&["deploy", "mine", &wasm]).expect("deploy");
    let out = dev
        .tern(&["call", "mine/x", "incr", "{\"by\": 7}"])
        .expect("call");
    assert_eq!(json(&out)["value"], 7);
}

/// SIGTERM to `tern dev`'s whole process group (what Ctrl-C does) stops
/// the cluster in order: POPs persist and release their actors before the
/// directories go, so no release fails and an `idle` actor's state is kept.
#[test]
fn group_sigterm_stops_the_cluster_in_order() {
    use std::os::unix::process::CommandExt;
    let data = tempfile::tempdir().unwrap();
    let file = data.path().join("cluster.json");
    let mut child = std::process::Command::new(tern_tests::tern_bin())
        .args(["dev", "--base-port", "0", "--pops", "2", "--data"])
        .arg(data.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(data.path().join("dev.log")).unwrap())
        .process_group(0)
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while !tern_client::ClusterFile::read(&file).is_ok_and(|c| c.pid == child.id()) {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "no cluster file"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let cluster = tern_client::ClusterFile::read(&file).unwrap();
    let endpoint = cluster.pops[0].endpoint.clone();
    let tern = |args: &[&str]| {
        let out = std::process::Command::new(tern_tests::tern_bin())
            .args(args)
            .args(["--endpoint", &endpoint, "--data"])
            .arg(data.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let wasm = counter_wasm().to_str().unwrap();
    tern(&["deploy", "lazy", wasm, "--durability", "idle"]);
    tern(&["call", "lazy/g", "incr", "{\"by\": 4}"]);
    nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "tern dev exited with {status}");
    for name in ["fra", "iad"] {
        let log = std::fs::read_to_string(data.path().join(format!("pop-{name}.log"))).unwrap();
        assert!(!log.contains("release failed"), "pop {name}: {log}");
    }
    let dev = DevCluster::start(data.path());
    let out = dev.tern(&["call", "lazy/g", "get"]).expect("get");
    assert_eq!(json(&out)["value"], 4, "the idle actor was persisted");
}
