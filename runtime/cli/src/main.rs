//! The `tern` command line: build, run and call actors.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use tern_client::{ClusterFile, PopInfo, call_request, connect};
use tern_proto::actor as pb;
use tern_runtime::config::Placement;
use tern_runtime::config::{Durability, Limits};
use tern_runtime::grpc::{
    DirectoryLink, GrpcPeers, durability_to_pb, limits_to_pb, placement_to_pb,
};
use tern_runtime::{Node, NodeConfig, TernEngine};
use tokio::net::TcpListener;

/// tern: durable virtual actors on WebAssembly.
#[derive(Parser)]
#[command(name = "tern", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build a guest crate into a component; prints the .wasm path last.
    Build {
        /// The guest crate's directory.
        path: PathBuf,
        /// Build without optimisations.
        #[arg(long)]
        debug: bool,
    },
    /// Run a local cluster on the embedded store, in the foreground: a
    /// directory and N POP processes on loopback.
    Dev {
        /// Number of POPs (at metro coordinates: Frankfurt, Ashburn, Tokyo,
        /// São Paulo, Sydney).
        #[arg(long, default_value_t = 3)]
        pops: usize,
        /// Data directory: the store file and cluster.json.
        #[arg(long, default_value = ".tern")]
        data: PathBuf,
        /// First gRPC port; 0 picks free ports.
        #[arg(long, default_value_t = 7700)]
        base_port: u16,
        /// Serve Prometheus metrics on this address.
        #[arg(long)]
        metrics_listen: Option<SocketAddr>,
    },
    /// Run the directory service.
    Directory {
        /// gRPC listen address.
        #[arg(long, default_value = "127.0.0.1:7600")]
        listen: SocketAddr,
        /// Store URL: `sqlite:PATH`, `memory`, or `fdb:CLUSTER_FILE` (built with `--features tern-storage/fdb`).
        #[arg(long)]
        store: String,
        /// POP lease, ms.
        #[arg(long, default_value_t = 3_000)]
        lease_ms: u64,
        /// POP heartbeat interval, ms.
        #[arg(long, default_value_t = 1_000)]
        heartbeat_ms: u64,
        /// Write `{"endpoint", "pid"}` here once listening.
        #[arg(long)]
        ready_file: Option<PathBuf>,
        /// Allow listening on a non-loopback address without TLS (anyone
        /// who reaches it can register POPs and claim actors): only for
        /// experiments on a trusted network.
        #[arg(long)]
        insecure: bool,
    },
    /// Run one POP node.
    Pop {
        /// POP name.
        #[arg(long)]
        name: String,
        /// Directory service URL; without it the POP runs alone.
        #[arg(long)]
        directory: Option<String>,
        /// Write `{"endpoint", "pid"}` here once listening.
        #[arg(long)]
        ready_file: Option<PathBuf>,
        /// gRPC listen address (loopback by default).
        #[arg(long, default_value = "127.0.0.1:7700")]
        listen: SocketAddr,
        /// Store URL: `sqlite:PATH`, `memory`, or `fdb:CLUSTER_FILE` (built with `--features tern-storage/fdb`).
        #[arg(long)]
        store: String,
        /// Location as `LAT,LON`.
        #[arg(long, default_value = "0,0", allow_hyphen_values = true)]
        coords: String,
        /// Serve Prometheus metrics on this address.
        #[arg(long)]
        metrics_listen: Option<SocketAddr>,
        #[command(flatten)]
        budgets: BudgetArgs,
        /// Allow listening on a non-loopback address without TLS (anyone
        /// who reaches it can deploy and call any actor): only for
        /// experiments on a trusted network.
        #[arg(long)]
        insecure: bool,
    },
    /// Deploy a component as an actor type.
    Deploy {
        /// Actor type name.
        r#type: String,
        /// The component (.wasm).
        file: PathBuf,
        /// When turns reach the store.
        #[arg(long, value_enum, default_value_t = Durability::Turn)]
        durability: Durability,
        /// Refuse, before sending, a component larger than this many bytes
        /// (the POP's own --component-bytes-max decides in the end).
        #[arg(long, default_value_t = tern_proto::COMPONENT_BYTES_MAX_DEFAULT)]
        component_bytes_max: usize,
        /// Allow restoring actors persisted by the previous code of this type.
        #[arg(long)]
        upgrade: bool,
        /// Actors move to the POP their callers use (per-user actors);
        /// `false` keeps them where they are (shared actors).
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        follow_caller: bool,
        /// Calls in the follow window (default 8).
        #[arg(long)]
        follow_window: Option<u32>,
        /// Percent of the window that must come through one POP (default 75).
        #[arg(long)]
        follow_share_pct: Option<u32>,
        /// An actor idle this long moves on the next call from elsewhere (default 2000).
        #[arg(long)]
        follow_idle_ms: Option<u64>,
        #[command(flatten)]
        limits: LimitArgs,
        #[command(flatten)]
        endpoint: EndpointArgs,
    },
    /// Call an actor; prints the JSON reply on stdout.
    Call {
        /// The actor, as TYPE/ID.
        actor: String,
        /// The method.
        method: String,
        /// The JSON payload (default: none).
        json: Option<String>,
        #[command(flatten)]
        endpoint: EndpointArgs,
    },
    /// Show a POP's state.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        endpoint: EndpointArgs,
    },
}

#[derive(Args)]
struct BudgetArgs {
    /// Most activations on this POP (default: sized from memory).
    #[arg(long)]
    activations_max: Option<usize>,
    /// Budget of resident actor memory on this POP, bytes (default: half
    /// the machine's memory).
    #[arg(long)]
    resident_bytes_max: Option<u64>,
    /// Guest turns run at once (default: one per core).
    #[arg(long)]
    turn_slots: Option<usize>,
    /// Largest component a deploy may carry, bytes.
    #[arg(long, default_value_t = tern_proto::COMPONENT_BYTES_MAX_DEFAULT)]
    component_bytes_max: usize,
}

impl BudgetArgs {
    fn config(&self) -> Result<NodeConfig, String> {
        let d = NodeConfig::default();
        let cfg = NodeConfig {
            activations_max: self.activations_max.unwrap_or(d.activations_max),
            resident_bytes_max: self.resident_bytes_max.unwrap_or(d.resident_bytes_max),
            turn_slots: self.turn_slots.unwrap_or(d.turn_slots),
            component_bytes_max: self.component_bytes_max,
            ..d
        };
        let component_ceiling =
            tern_proto::GRPC_MESSAGE_BYTES_MAX - tern_proto::DEPLOY_OVERHEAD_BYTES_MAX;
        if cfg.component_bytes_max == 0 || cfg.component_bytes_max > component_ceiling {
            return Err(format!(
                "--component-bytes-max must be between 1 and {component_ceiling} (the gRPC message limit less room for the request)"
            ));
        }
        if cfg.activations_max == 0 || cfg.resident_bytes_max == 0 || cfg.turn_slots == 0 {
            return Err(
                "--activations-max, --resident-bytes-max and --turn-slots must be positive".into(),
            );
        }
        if cfg.turn_slots > tern_runtime::turnpool::TURN_SLOTS_MAX {
            return Err(format!(
                "--turn-slots must be at most {}",
                tern_runtime::turnpool::TURN_SLOTS_MAX
            ));
        }
        Ok(cfg)
    }
}

#[derive(Args)]
struct LimitArgs {
    /// CPU budget per turn, ms (default 50, at most 10000).
    #[arg(long)]
    turn_cpu_ms_max: Option<u64>,
    /// Memory cap per actor, bytes (default 64 MiB, at most 4 GiB).
    #[arg(long)]
    memory_bytes_max: Option<u64>,
    /// Largest payload, bytes (default 1 MiB, at most 16 MiB).
    #[arg(long)]
    payload_bytes_max: Option<u64>,
    /// Mailbox depth (default 1024, at most 65536).
    #[arg(long)]
    mailbox_depth_max: Option<u64>,
    /// Idle time before eviction, ms (default 30000, at most 86400000).
    #[arg(long)]
    idle_ms: Option<u64>,
    /// How long idempotency keys are remembered, ms (default 86400000 = 24 h,
    /// at most 30 days).
    #[arg(long)]
    idempotency_ms: Option<u64>,
    /// Most idempotency keys remembered per actor; the oldest are forgotten
    /// first (default 4096, at most 16384).
    #[arg(long)]
    idempotency_keys_max: Option<u64>,
}

impl LimitArgs {
    fn limits(&self) -> Limits {
        Limits {
            turn_cpu_ms_max: self.turn_cpu_ms_max.unwrap_or(0),
            memory_bytes_max: self.memory_bytes_max.unwrap_or(0),
            payload_bytes_max: self.payload_bytes_max.unwrap_or(0),
            mailbox_depth_max: self.mailbox_depth_max.unwrap_or(0),
            idle_ms: self.idle_ms.unwrap_or(0),
            idempotency_ms: self.idempotency_ms.unwrap_or(0),
            idempotency_keys_max: self.idempotency_keys_max.unwrap_or(0),
        }
        .or_defaults()
    }
}

#[derive(Args)]
struct EndpointArgs {
    /// POP endpoint; default: the first POP in ./.tern/cluster.json.
    #[arg(long, env = "TERN_ENDPOINT")]
    endpoint: Option<String>,
}

impl EndpointArgs {
    fn resolve(&self) -> Result<String, String> {
        if let Some(e) = &self.endpoint {
            return Ok(e.clone());
        }
        let path = Path::new(".tern/cluster.json");
        let cluster = ClusterFile::read(path).map_err(|e| {
            format!(
                "no --endpoint given and cannot read {}: {e}; start a cluster with `tern dev` or pass --endpoint",
                path.display()
            )
        })?;
        cluster
            .pops
            .first()
            .map(|p| p.endpoint.clone())
            .ok_or_else(|| format!("{} lists no POPs", path.display()))
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn status_error(s: tonic::Status) -> String {
    format!("{:?}: {}", s.code(), s.message())
}

async fn run(cli: Cli) -> Result<(), String> {
    match cli.cmd {
        Cmd::Build { path, debug } => {
            let out = tern_cli::build::build_guest(&path, !debug).map_err(|e| e.to_string())?;
            println!("{}", out.display());
            Ok(())
        }
        Cmd::Dev {
            pops,
            data,
            base_port,
            metrics_listen,
        } => dev(pops, &data, base_port, metrics_listen).await,
        Cmd::Directory {
            listen,
            store,
            lease_ms,
            heartbeat_ms,
            ready_file,
            insecure,
        } => {
            die_with_parent();
            check_listen("the directory", listen, insecure)?;
            let store = tern_storage::Store::open(&store).map_err(|e| e.to_string())?;
            let listener = TcpListener::bind(listen)
                .await
                .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
            let addr = listener.local_addr().map_err(|e| e.to_string())?;
            write_ready(ready_file.as_deref(), &format!("http://{addr}"))?;
            tracing::info!(%addr, "serving DirectoryService");
            let cfg = tern_directory::server::DirectoryConfig {
                lease_ms,
                heartbeat_ms,
                ..Default::default()
            };
            tern_directory::server::serve(listener, store, cfg, shutdown_signal())
                .await
                .map_err(|e| e.to_string())
        }
        Cmd::Pop {
            name,
            directory,
            ready_file,
            listen,
            store,
            coords,
            metrics_listen,
            budgets,
            insecure,
        } => {
            die_with_parent();
            check_listen("the POP", listen, insecure)?;
            if let Some(addr) = metrics_listen {
                check_listen("the metrics endpoint", addr, insecure)?;
            }
            let coords = parse_coords(&coords)?;
            let cfg = budgets.config()?;
            if let Some(addr) = metrics_listen {
                start_metrics(addr)?;
            }
            let store = tern_storage::Store::open(&store).map_err(|e| e.to_string())?;
            let engine = TernEngine::new().map_err(|e| e.to_string())?;
            let listener = TcpListener::bind(listen)
                .await
                .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
            let endpoint = format!(
                "http://{}",
                listener.local_addr().map_err(|e| e.to_string())?
            );
            let builder = Node::builder(name.clone(), store, engine).config(cfg);
            let node = match directory {
                Some(url) => {
                    let link = DirectoryLink::connect(&url, &name, &endpoint, coords)
                        .await
                        .map_err(|e| e.to_string())?;
                    link.spawn_watch();
                    builder.directory(link).peers(GrpcPeers::new(&name)).start()
                }
                None => builder.start(),
            }
            .map_err(|e| e.to_string())?;
            write_ready(ready_file.as_deref(), &endpoint)?;
            serve(node, listener).await
        }
        Cmd::Deploy {
            r#type,
            file,
            durability,
            upgrade,
            component_bytes_max,
            follow_caller,
            follow_window,
            follow_share_pct,
            follow_idle_ms,
            limits,
            endpoint,
        } => {
            let d = Placement::default();
            let placement = Placement {
                follow_caller,
                window: follow_window.unwrap_or(d.window),
                share_pct: follow_share_pct.unwrap_or(d.share_pct),
                idle_move_ms: follow_idle_ms.unwrap_or(d.idle_move_ms),
            };
            let size = std::fs::metadata(&file)
                .map_err(|e| format!("cannot read {}: {e}", file.display()))?
                .len();
            if size > component_bytes_max as u64 {
                return Err(format!(
                    "{} is {size} bytes, over the component limit of {component_bytes_max} bytes; shrink it (a release build without debug info) or, if the POP allows more (tern pop --component-bytes-max), pass --component-bytes-max",
                    file.display()
                ));
            }
            let component =
                std::fs::read(&file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
            let mut client = connect(&endpoint.resolve()?)
                .await
                .map_err(|e| e.to_string())?;
            let reply = client
                .deploy(pb::DeployRequest {
                    r#type: r#type.clone(),
                    component,
                    durability: durability_to_pb(durability) as i32,
                    limits: Some(limits_to_pb(limits.limits())),
                    upgrade,
                    placement: Some(placement_to_pb(placement)),
                })
                .await
                .map_err(status_error)?
                .into_inner();
            println!(
                "{}",
                serde_json::json!({"type": r#type, "digest": reply.digest, "bytes": reply.component_bytes})
            );
            Ok(())
        }
        Cmd::Call {
            actor,
            method,
            json,
            endpoint,
        } => {
            let (ty, id) = actor.split_once('/').ok_or_else(|| {
                format!("actor `{actor}` must be written TYPE/ID, e.g. counter/a")
            })?;
            let payload = match json {
                Some(j) => {
                    serde_json::from_str::<serde_json::Value>(&j)
                        .map_err(|e| format!("payload is not valid JSON: {e}"))?;
                    j.into_bytes()
                }
                None => Vec::new(),
            };
            let mut client = connect(&endpoint.resolve()?)
                .await
                .map_err(|e| e.to_string())?;
            let reply = client
                .call(call_request(ty, id, &method, payload))
                .await
                .map_err(status_error)?
                .into_inner();
            println!("{}", String::from_utf8_lossy(&reply.payload));
            Ok(())
        }
        Cmd::Status { json, endpoint } => {
            let mut client = connect(&endpoint.resolve()?)
                .await
                .map_err(|e| e.to_string())?;
            let s = client
                .status(pb::StatusRequest {})
                .await
                .map_err(status_error)?
                .into_inner();
            if json {
                let types: Vec<_> = s
                    .types
                    .iter()
                    .map(|t| serde_json::json!({"type": t.r#type, "digest": t.digest}))
                    .collect();
                println!(
                    "{}",
                    serde_json::json!({
                        "pop": s.pop, "version": s.version, "active_actors": s.active_actors,
                        "actors": s.actors, "types": types, "turns_total": s.turns_total,
                        "commits_total": s.commits_total, "store_bytes_written": s.store_bytes_written,
                        "lease_ok": s.lease_ok, "resident_bytes": s.resident_bytes,
                        "resident_bytes_max": s.resident_bytes_max, "activations_max": s.activations_max,
                        "pops": s.pops.iter().map(|p| serde_json::json!({
                            "name": p.name, "endpoint": p.endpoint, "alive": p.alive,
                            "lease_age_ms": p.lease_age_ms, "actors": p.actors,
                        })).collect::<Vec<_>>(),
                        "migrations": s.migrations.iter().map(|m| serde_json::json!({
                            "actor": m.actor, "from": m.from_pop, "to": m.to_pop,
                            "at_ms": m.at_ms, "duration_ms": m.duration_ms,
                        })).collect::<Vec<_>>(),
                    })
                );
            } else {
                println!("POP {} ({})", s.pop, s.version);
                println!(
                    "  active actors: {} of {}   resident: {} of {} bytes   lease: {}",
                    s.active_actors,
                    s.activations_max,
                    s.resident_bytes,
                    s.resident_bytes_max,
                    if s.lease_ok { "current" } else { "LAPSED" }
                );
                println!(
                    "  turns: {}   commits: {}   store bytes written: {}",
                    s.turns_total, s.commits_total, s.store_bytes_written
                );
                for t in &s.types {
                    println!(
                        "  type {:<16} {}",
                        t.r#type,
                        &t.digest[..12.min(t.digest.len())]
                    );
                }
                for a in &s.actors {
                    println!("  actor {a}");
                }
                if !s.pops.is_empty() {
                    println!("cluster:");
                    for p in &s.pops {
                        println!(
                            "  POP {:<5} {:<5} lease age {:>5} ms  actors {:>5}  {}",
                            p.name,
                            if p.alive { "alive" } else { "DEAD" },
                            p.lease_age_ms,
                            p.actors,
                            p.endpoint
                        );
                    }
                }
                if !s.migrations.is_empty() {
                    println!("migrations (newest first):");
                    for m in &s.migrations {
                        println!(
                            "  {} {} -> {} in {} ms ({})",
                            m.actor, m.from_pop, m.to_pop, m.duration_ms, m.reason
                        );
                    }
                }
            }
            Ok(())
        }
    }
}

fn parse_coords(s: &str) -> Result<[f64; 2], String> {
    let (a, b) = s
        .split_once(',')
        .ok_or_else(|| format!("coords `{s}` must be LAT,LON"))?;
    let lat: f64 = a
        .trim()
        .parse()
        .map_err(|_| format!("bad latitude `{a}`"))?;
    let lon: f64 = b
        .trim()
        .parse()
        .map_err(|_| format!("bad longitude `{b}`"))?;
    if !(-90.0..=90.0).contains(&lat) || !(-180.0..=180.0).contains(&lon) {
        return Err(format!("coords `{s}` out of range"));
    }
    Ok([lat, lon])
}

/// Refuses a listen address other than loopback: tern has no transport
/// security yet, so anyone who reached such a port could act as a POP or
/// a client. `--insecure` allows it, loudly.
fn check_listen(what: &str, addr: SocketAddr, insecure: bool) -> Result<(), String> {
    if addr.ip().is_loopback() {
        return Ok(());
    }
    if !insecure {
        return Err(format!(
            "refusing to start {what} on {addr}: it would accept unauthenticated, unencrypted connections from the network. Listen on 127.0.0.1, or pass --insecure for an experiment on a network you trust"
        ));
    }
    tracing::warn!(
        %addr,
        "INSECURE: {what} listens on a non-loopback address without TLS or authentication; anyone who reaches it can act as a POP or a client"
    );
    eprintln!(
        "WARNING: {what} listens on {addr} with --insecure: no TLS, no authentication. Do not use this in front of real players."
    );
    Ok(())
}

fn start_metrics(addr: SocketAddr) -> Result<(), String> {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(addr)
        .install()
        .map_err(|e| format!("cannot serve metrics on {addr}: {e}"))
}

/// Serves `node` until Ctrl-C or SIGTERM, then persists every actor.
async fn serve(node: Node, listener: TcpListener) -> Result<(), String> {
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    tracing::info!(pop = node.name(), %addr, "serving ActorService");
    tern_runtime::grpc::serve(node.clone(), listener, shutdown_signal()).await?;
    tracing::info!("shutting down: persisting actors");
    node.shutdown().await;
    Ok(())
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// Metro locations for local POPs.
const METROS: &[(&str, [f64; 2])] = &[
    ("fra", [50.11, 8.68]),
    ("iad", [39.04, -77.49]),
    ("nrt", [35.76, 140.39]),
    ("gru", [-23.43, -46.47]),
    ("syd", [-33.94, 151.18]),
];

/// Exits this process when its parent dies (children of `tern dev`), so a
/// SIGKILL of `tern dev` takes the whole local cluster down.
fn die_with_parent() {
    let Ok(parent) = std::env::var("TERN_PARENT_PID") else {
        return;
    };
    if let Err(e) = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL) {
        tracing::warn!(error = %e, "cannot tie this process to its parent");
    }
    // The parent may have died before the call above.
    if nix::unistd::getppid().as_raw().to_string() != parent {
        std::process::exit(1);
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Ready {
    endpoint: String,
    pid: u32,
}

fn write_ready(path: Option<&Path>, endpoint: &str) -> Result<(), String> {
    let Some(path) = path else { return Ok(()) };
    let tmp = path.with_extension("tmp");
    let body = serde_json::to_vec(&Ready {
        endpoint: endpoint.to_string(),
        pid: std::process::id(),
    })
    .map_err(|e| e.to_string())?;
    std::fs::write(&tmp, body)
        .and_then(|_| std::fs::rename(&tmp, path))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// Longest time `tern dev` waits for a child to listen.
const CHILD_STARTUP_MS_MAX: u64 = 60_000;

/// Spawns `tern ARGS` as a child of `tern dev` and waits (bounded) for its
/// ready file.
async fn spawn_child(
    args: &[String],
    ready: &Path,
    log: &Path,
) -> Result<(tokio::process::Child, Ready), String> {
    let _ = std::fs::remove_file(ready);
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let log_file = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
    let mut child = tokio::process::Command::new(exe)
        .args(args)
        .arg("--ready-file")
        .arg(ready)
        .env("TERN_PARENT_PID", std::process::id().to_string())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log_file)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start `tern {}`: {e}", args[0]))?;
    let deadline =
        tokio::time::Instant::now() + std::time::Duration::from_millis(CHILD_STARTUP_MS_MAX);
    loop {
        if let Ok(text) = std::fs::read_to_string(ready)
            && let Ok(r) = serde_json::from_str::<Ready>(&text)
        {
            return Ok((child, r));
        }
        if let Ok(Some(status)) = child.try_wait() {
            let log = std::fs::read_to_string(log).unwrap_or_default();
            return Err(format!("`tern {}` exited with {status}:\n{log}", args[0]));
        }
        if tokio::time::Instant::now() > deadline {
            return Err(format!(
                "`tern {}` did not start within {CHILD_STARTUP_MS_MAX} ms",
                args[0]
            ));
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

fn sigterm(child: &tokio::process::Child) {
    if let Some(pid) = child.id() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
}

async fn dev(
    pops: usize,
    data: &Path,
    base_port: u16,
    metrics_listen: Option<SocketAddr>,
) -> Result<(), String> {
    if pops == 0 || pops > METROS.len() {
        return Err(format!("--pops must be between 1 and {}", METROS.len()));
    }
    let run = data.join("run");
    std::fs::create_dir_all(&run).map_err(|e| format!("cannot create {}: {e}", run.display()))?;
    let store_url = format!("sqlite:{}", data.join("tern.db").display());
    let port = |i: u16| if base_port == 0 { 0 } else { base_port + i };
    let bar = indicatif::ProgressBar::new(pops as u64 + 1);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg:28} [{bar:20}] {pos}/{len}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_message("starting directory");
    let (directory, dready) = spawn_child(
        &[
            "directory".into(),
            "--listen".into(),
            format!("127.0.0.1:{}", port(0)),
            "--store".into(),
            store_url.clone(),
        ],
        &run.join("directory.json"),
        &data.join("directory.log"),
    )
    .await?;
    bar.inc(1);
    let mut children = Vec::new();
    let mut infos = Vec::new();
    for (i, (name, coords)) in METROS.iter().take(pops).enumerate() {
        bar.set_message(format!("starting POP {name}"));
        let mut args = vec![
            "pop".into(),
            "--name".into(),
            name.to_string(),
            "--coords".into(),
            format!("{},{}", coords[0], coords[1]),
            "--listen".into(),
            format!("127.0.0.1:{}", port(1 + i as u16)),
            "--directory".into(),
            dready.endpoint.clone(),
            "--store".into(),
            store_url.clone(),
        ];
        if let Some(m) = metrics_listen {
            args.push("--metrics-listen".into());
            args.push(SocketAddr::new(m.ip(), m.port() + i as u16).to_string());
        }
        let (child, ready) = spawn_child(
            &args,
            &run.join(format!("pop-{name}.json")),
            &data.join(format!("pop-{name}.log")),
        )
        .await?;
        infos.push(PopInfo {
            name: name.to_string(),
            endpoint: ready.endpoint,
            pid: ready.pid,
            coords: *coords,
        });
        children.push(child);
        bar.inc(1);
    }
    bar.finish_and_clear();
    let cluster = ClusterFile {
        pid: std::process::id(),
        directory: Some(dready.endpoint.clone()),
        directory_pid: Some(dready.pid),
        pops: infos.clone(),
        metrics: metrics_listen.map(|a| format!("http://{a}/metrics")),
    };
    let path = data.join("cluster.json");
    cluster
        .write(&path)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    eprintln!(
        "tern dev: directory {} ; store {store_url}",
        dready.endpoint
    );
    for p in &infos {
        eprintln!(
            "  POP {} at {} ({:.2}, {:.2})",
            p.name, p.endpoint, p.coords[0], p.coords[1]
        );
    }
    eprintln!("cluster file {}; Ctrl-C stops everything", path.display());
    shutdown_signal().await;
    eprintln!("tern dev: stopping POPs (persisting actors), then the directory");
    for c in &children {
        sigterm(c);
    }
    for mut c in children {
        let _ = c.wait().await;
    }
    let mut directory = directory;
    sigterm(&directory);
    let _ = directory.wait().await;
    let _ = std::fs::remove_file(&path);
    Ok(())
}
