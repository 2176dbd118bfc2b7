//! Helpers for cluster tests: start real `tern` processes on loopback ports
//! chosen at run time, drive them through the CLI, kill them.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tern_client::{Client, ClusterFile, Credentials, PopInfo, TernClient};
use tern_proto::directory::directory_service_client::DirectoryServiceClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

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
        "{} is missing: run `cargo build -p tern-cli --bin tern` (scripts/test.sh does)",
        bin.display()
    );
    bin
}

/// `target/debug/doom-lobby`, next to `tern` (`cargo test --workspace`
/// builds it).
pub fn doom_lobby_bin() -> PathBuf {
    let bin = tern_bin().with_file_name("doom-lobby");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build -p doom-lobby` (`cargo test --workspace` builds it)",
        bin.display()
    );
    bin
}

/// The counter example's component, built once per test binary.
pub fn counter_wasm() -> &'static Path {
    static WASM: OnceLock<PathBuf> = OnceLock::new();
    WASM.get_or_init(|| {
        tern_cli::build::build_guest(&workspace().join("examples/counter"), true)
            .expect("build examples/counter")
    })
}

/// Runs `tern ARGS --endpoint ENDPOINT --data DATA` (the data directory
/// gives the CLI the cluster's CA and admin token): stdout, or stderr on
/// failure.
fn run_tern(args: &[&str], endpoint: &str, data: &Path) -> Result<String, String> {
    let out = Command::new(tern_bin())
        .args(args)
        .args(["--endpoint", endpoint])
        .arg("--data")
        .arg(data)
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
        run_tern(args, self.endpoint(), &self.data)
    }

    /// Runs `tern ARGS` against the POP named `pop`.
    pub fn tern_at(&self, pop: &str, args: &[&str]) -> Result<String, String> {
        run_tern(args, &self.pop(pop).endpoint, &self.data)
    }

    /// The POP named `name`.
    pub fn pop(&self, name: &str) -> &PopInfo {
        self.cluster
            .pops
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no POP {name}"))
    }

    /// Reads the cluster file again (the supervisor rewrites it when it
    /// restarts a child).
    pub fn refresh(&mut self) {
        let file = self.data.join("cluster.json");
        self.cluster = ClusterFile::read(&file).expect("cluster file");
    }

    /// Sends `sig` to process `pid` (a directory's or a POP's).
    pub fn signal(pid: u32, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig).expect("signal");
    }

    /// Stops (`SIGSTOP`) or resumes (`SIGCONT`) `tern dev` itself, so that
    /// its supervisor restarts nothing meanwhile; its children run on.
    pub fn supervisor(&self, run: bool) {
        let pid = self.child.as_ref().expect("running").id();
        let sig = if run {
            nix::sys::signal::Signal::SIGCONT
        } else {
            nix::sys::signal::Signal::SIGSTOP
        };
        DevCluster::signal(pid, sig);
    }

    /// A directory client for directory `i` presenting POP `pop`'s
    /// certificate.
    pub async fn directory_as_pop(&self, i: usize, pop: &str) -> DirectoryServiceClient<Channel> {
        let tls = self.data.join("tls");
        directory_as(
            &self.cluster.directories[i].endpoint,
            &tls,
            &tls,
            Some(&format!("pop-{pop}")),
        )
        .await
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

    /// The cluster's CA and admin token (none with `--insecure`).
    pub fn creds(&self) -> Credentials {
        Credentials::of_cluster(&self.cluster).expect("cluster credentials")
    }

    /// A raw ActorService client of the POP named `pop`, with the admin
    /// token.
    pub async fn connect(&self, pop: &str) -> Client {
        tern_client::connect(&self.pop(pop).endpoint, &self.creds())
            .await
            .expect("connect")
    }

    /// A retrying client near `coords`, with the admin token.
    pub fn client(&self, coords: [f64; 2]) -> TernClient {
        TernClient::new(&self.cluster.pops, coords, &self.creds()).expect("client")
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

/// A directory client presenting the certificate `<stem>.pem` from
/// `tls_dir` (a POP's, or a misbehaving POP's), or none, trusting the CA in
/// `ca_dir`.
pub async fn directory_as(
    url: &str,
    ca_dir: &Path,
    tls_dir: &Path,
    stem: Option<&str>,
) -> DirectoryServiceClient<Channel> {
    DirectoryServiceClient::new(channel_as(url, ca_dir, tls_dir, stem))
}

/// A lazy TLS channel to `url` trusting `ca_dir/ca.pem`, presenting the
/// certificate `tls_dir/<stem>.pem` if a stem is given.
pub fn channel_as(url: &str, ca_dir: &Path, tls_dir: &Path, stem: Option<&str>) -> Channel {
    let ca = std::fs::read(ca_dir.join("ca.pem")).expect("ca.pem");
    let mut cfg = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
    if let Some(stem) = stem {
        cfg = cfg.identity(Identity::from_pem(
            std::fs::read(tls_dir.join(format!("{stem}.pem"))).expect("certificate"),
            std::fs::read(tls_dir.join(format!("{stem}.key"))).expect("key"),
        ));
    }
    tern_proto::endpoint_tls(url, Some(&cfg))
        .expect("URL")
        .timeout(Duration::from_secs(10))
        .connect_lazy()
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

/// A child process a test started by hand, SIGKILLed (and reaped) when the
/// test ends, however it ends.
pub struct KillOnDrop<'a>(pub &'a mut std::process::Child);

impl Drop for KillOnDrop<'_> {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The `p`-th percentile (0..=100) of `v` (sorted in place); 0 if empty.
pub fn percentile(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[((s.len() as f64 - 1.0) * p / 100.0).round() as usize]
}

/// What [`storm`] saw.
#[derive(Debug, Default)]
pub struct StormReport {
    /// Spinning turns the CPU budget stopped.
    pub spins: usize,
    /// Latencies of the unrelated actor's calls, ms.
    pub calm_ms: Vec<f64>,
    /// Errors the unrelated actor's calls got.
    pub calm_errors: Vec<String>,
    /// Calls (of either kind) that failed because the POP lost its lease.
    pub lease_errors: usize,
}

/// Pause between the unrelated actor's calls, ms.
const CALM_PACE_MS: u64 = 20;

/// A CPU storm against the POP `client` talks to (type `counter` deployed):
/// `spinners` concurrent callers each call `spin` on their own actor, and
/// re-send at once when the 50 ms budget stops it; meanwhile an unrelated
/// actor (`counter/calm`) is called every [`CALM_PACE_MS`] and its latency
/// recorded. Bounded by `duration`. With `spinners = 0` it measures the
/// baseline.
pub async fn storm(client: Client, spinners: usize, duration: std::time::Duration) -> StormReport {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tern_client::call_request;
    // Activate everything first, so the storm measures turns, not restores.
    let mut c = client.clone();
    c.call(call_request("counter", "calm", "get", Vec::new()))
        .await
        .expect("calm actor");
    let deadline = tokio::time::Instant::now() + duration;
    let spins = Arc::new(AtomicUsize::new(0));
    let lease_errors = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for i in 0..spinners {
        let mut c = client.clone();
        let (spins, lease_errors) = (spins.clone(), lease_errors.clone());
        tasks.push(tokio::spawn(async move {
            let id = format!("spin-{i}");
            while tokio::time::Instant::now() < deadline {
                match c
                    .call(call_request("counter", &id, "spin", Vec::new()))
                    .await
                {
                    Err(s) if s.message().contains("CPU budget") => {
                        spins.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(s) if s.message().contains("lease") => {
                        lease_errors.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {}
                }
            }
        }));
    }
    let mut report = StormReport::default();
    let mut c = client.clone();
    while tokio::time::Instant::now() < deadline {
        let started = Instant::now();
        match c
            .call(call_request("counter", "calm", "get", Vec::new()))
            .await
        {
            Ok(_) => report.calm_ms.push(started.elapsed().as_secs_f64() * 1e3),
            Err(s) => {
                if s.message().contains("lease") {
                    lease_errors.fetch_add(1, Ordering::Relaxed);
                }
                report
                    .calm_errors
                    .push(format!("{:?}: {}", s.code(), s.message()));
            }
        }
        tokio::time::sleep(Duration::from_millis(CALM_PACE_MS)).await;
    }
    for t in tasks {
        t.await.expect("spinner task");
    }
    report.spins = spins.load(Ordering::Relaxed);
    report.lease_errors = lease_errors.load(Ordering::Relaxed);
    report
}

/// Calls `ty/id.method` with a JSON payload through `c` and decodes the
/// JSON reply; panics, naming the call, if it fails.
pub async fn call_json(
    c: &TernClient,
    ty: &str,
    id: &str,
    method: &str,
    v: serde_json::Value,
) -> serde_json::Value {
    let r = c
        .call(ty, id, method, serde_json::to_vec(&v).unwrap(), None)
        .await
        .unwrap_or_else(|e| panic!("{ty}/{id}.{method}: {e:?}"));
    serde_json::from_slice(&r.reply.payload).expect("JSON reply")
}
