//! Helpers for cluster tests: start real `tern` processes on loopback ports
//! chosen at run time, drive them through the CLI, kill them.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tern_runtime::client::{ClusterFile, PopInfo, TernClient};

/// How long a cluster may take to write its cluster file.
pub const STARTUP_MS_MAX: u64 = 60_000;

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// The `tern` binary next to this test's target directory. `scripts/test.sh`
/// builds it before running the tests.
pub fn tern_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/debug/deps/<test> -> target/debug/tern
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let bin = dir.join("tern");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build -p tern-runtime --bin tern` (scripts/test.sh does)",
        bin.display()
    );
    bin
}

/// The counter example's component, built once per test binary.
pub fn counter_wasm() -> &'static Path {
    static WASM: OnceLock<PathBuf> = OnceLock::new();
    WASM.get_or_init(|| {
        tern_runtime::build::build_guest(&workspace().join("examples/counter"), true)
            .expect("build examples/counter")
    })
}

/// Runs `tern ARGS --endpoint ENDPOINT`: stdout, or stderr on failure.
fn run_tern(args: &[&str], endpoint: &str) -> Result<String, String> {
    let out = Command::new(tern_bin())
        .args(args)
        .args(["--endpoint", endpoint])
        .output()
        .expect("run tern");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// A `tern dev` process on a data directory.
pub struct DevCluster {
    child: Option<Child>,
    data: PathBuf,
    /// The cluster file it wrote.
    pub cluster: ClusterFile,
}

impl DevCluster {
    /// Starts `tern dev --pops 1` (see [`DevCluster::start_pops`]).
    pub fn start(data: &Path) -> DevCluster {
        DevCluster::start_pops(data, 1)
    }

    /// Starts `tern dev --pops N --data DATA --base-port 0` and waits
    /// (bounded) for the cluster file it writes once every POP listens.
    pub fn start_pops(data: &Path, pops: usize) -> DevCluster {
        DevCluster::start_with(data, pops, &[])
    }

    /// Starts `tern dev` with extra arguments.
    pub fn start_with(data: &Path, pops: usize, extra: &[&str]) -> DevCluster {
        let file = data.join("cluster.json");
        let _ = std::fs::remove_file(&file);
        let log = std::fs::File::create(data.join("dev.log")).expect("log file");
        let mut child = Command::new(tern_bin())
            .args([
                "dev",
                "--base-port",
                "0",
                "--pops",
                &pops.to_string(),
                "--data",
            ])
            .arg(data)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn tern dev");
        let started = Instant::now();
        let cluster = loop {
            if let Ok(c) = ClusterFile::read(&file)
                && c.pid == child.id()
            {
                break c;
            }
            if let Some(status) = child.try_wait().expect("try_wait") {
                panic!(
                    "tern dev exited with {status}: {}",
                    std::fs::read_to_string(data.join("dev.log")).unwrap_or_default()
                );
            }
            assert!(
                started.elapsed() < Duration::from_millis(STARTUP_MS_MAX),
                "tern dev did not write {} within {STARTUP_MS_MAX} ms",
                file.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        DevCluster {
            child: Some(child),
            data: data.to_path_buf(),
            cluster,
        }
    }

    /// The first POP's endpoint.
    pub fn endpoint(&self) -> &str {
        &self.cluster.pops[0].endpoint
    }

    /// Runs `tern ARGS --endpoint E` against the first POP, returning
    /// stdout, or stderr on failure.
    pub fn tern(&self, args: &[&str]) -> Result<String, String> {
        run_tern(args, self.endpoint())
    }

    /// Runs `tern ARGS` against the POP named `pop`.
    pub fn tern_at(&self, pop: &str, args: &[&str]) -> Result<String, String> {
        run_tern(args, &self.pop(pop).endpoint)
    }

    /// The POP named `name`.
    pub fn pop(&self, name: &str) -> &PopInfo {
        self.cluster
            .pops
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no POP {name}"))
    }

    /// Sends `sig` to the POP named `name`.
    pub fn signal_pop(&self, name: &str, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pop(name).pid as i32), sig)
            .expect("signal POP");
    }

    /// `tern status --json` at the POP named `pop`.
    pub fn status(&self, pop: &str) -> serde_json::Value {
        let out = self.tern_at(pop, &["status", "--json"]).expect("status");
        serde_json::from_str(&out).expect("status is JSON")
    }

    /// Polls `cond` (bounded by `ms_max`) until it holds; panics with `what`.
    pub fn wait_until(&self, what: &str, ms_max: u64, mut cond: impl FnMut() -> bool) {
        let started = Instant::now();
        while !cond() {
            assert!(
                started.elapsed() < Duration::from_millis(ms_max),
                "timed out after {ms_max} ms waiting for {what}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A retrying client near `coords`.
    pub fn client(&self, coords: [f64; 2]) -> TernClient {
        TernClient::new(&self.cluster.pops, coords).expect("client")
    }

    /// Kills the process with SIGKILL and reaps it.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().expect("SIGKILL");
            c.wait().expect("wait");
        }
    }

    /// Stops the process with SIGTERM and waits for a clean exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .expect("SIGTERM");
        c.wait().expect("wait")
    }

    /// The data directory.
    pub fn data(&self) -> &Path {
        &self.data
    }
}

/// Metro coordinates of the POPs `tern dev` starts, and of nearby clients.
pub mod metro {
    /// Frankfurt POP.
    pub const FRA: [f64; 2] = [50.11, 8.68];
    /// Ashburn POP.
    pub const IAD: [f64; 2] = [39.04, -77.49];
    /// Tokyo POP.
    pub const NRT: [f64; 2] = [35.76, 140.39];
    /// A client in Paris (nearest: fra).
    pub const PARIS: [f64; 2] = [48.86, 2.35];
    /// A client in New York (nearest: iad).
    pub const NEW_YORK: [f64; 2] = [40.71, -74.0];
    /// A client in Seoul (nearest: nrt).
    pub const SEOUL: [f64; 2] = [37.57, 126.98];
}

/// A multi-threaded tokio runtime for a test.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

impl Drop for DevCluster {
    fn drop(&mut self) {
        self.kill9();
    }
}
