//! The `tern` command line: build, run and call actors.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use tern_proto::actor as pb;
use tern_runtime::client::{ClusterFile, PopInfo, call_request, connect};
use tern_runtime::config::{Durability, Limits};
use tern_runtime::server::{durability_to_pb, limits_to_pb};
use tern_runtime::{Node, RuntimeError, TernEngine};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

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
    /// Run a local cluster on the embedded store, in the foreground.
    Dev {
        /// Number of POPs (one until the directory service lands).
        #[arg(long, default_value_t = 1)]
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
    /// Run one POP node.
    Pop {
        /// POP name.
        #[arg(long)]
        name: String,
        /// gRPC listen address (loopback by default).
        #[arg(long, default_value = "127.0.0.1:7700")]
        listen: SocketAddr,
        /// Store URL: `sqlite:PATH` or `memory`.
        #[arg(long)]
        store: String,
        /// Location as `LAT,LON`.
        #[arg(long, default_value = "0,0", allow_hyphen_values = true)]
        coords: String,
        /// Serve Prometheus metrics on this address.
        #[arg(long)]
        metrics_listen: Option<SocketAddr>,
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
        /// Allow restoring actors persisted by the previous code of this type.
        #[arg(long)]
        upgrade: bool,
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
struct LimitArgs {
    /// CPU budget per turn, ms (default 50).
    #[arg(long)]
    turn_cpu_ms_max: Option<u64>,
    /// Memory cap per actor, bytes (default 64 MiB).
    #[arg(long)]
    memory_bytes_max: Option<u64>,
    /// Largest payload, bytes (default 1 MiB).
    #[arg(long)]
    payload_bytes_max: Option<u64>,
    /// Mailbox depth (default 1024).
    #[arg(long)]
    mailbox_depth_max: Option<u64>,
    /// Idle time before eviction, ms (default 30000).
    #[arg(long)]
    idle_ms: Option<u64>,
}

impl LimitArgs {
    fn limits(&self) -> Limits {
        Limits {
            turn_cpu_ms_max: self.turn_cpu_ms_max.unwrap_or(0),
            memory_bytes_max: self.memory_bytes_max.unwrap_or(0),
            payload_bytes_max: self.payload_bytes_max.unwrap_or(0),
            mailbox_depth_max: self.mailbox_depth_max.unwrap_or(0),
            idle_ms: self.idle_ms.unwrap_or(0),
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
            let out = tern_runtime::build::build_guest(&path, !debug).map_err(|e| e.to_string())?;
            println!("{}", out.display());
            Ok(())
        }
        Cmd::Dev {
            pops,
            data,
            base_port,
            metrics_listen,
        } => dev(pops, &data, base_port, metrics_listen).await,
        Cmd::Pop {
            name,
            listen,
            store,
            coords,
            metrics_listen,
        } => {
            let _ = parse_coords(&coords)?;
            if let Some(addr) = metrics_listen {
                start_metrics(addr)?;
            }
            let store = tern_storage::Store::open(&store).map_err(|e| e.to_string())?;
            let node = Node::new(name, store, TernEngine::new().map_err(|e| e.to_string())?);
            let listener = TcpListener::bind(listen)
                .await
                .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
            serve(node, listener).await
        }
        Cmd::Deploy {
            r#type,
            file,
            durability,
            upgrade,
            limits,
            endpoint,
        } => {
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
                    })
                );
            } else {
                println!("POP {} ({})", s.pop, s.version);
                println!(
                    "  active actors: {}   turns: {}   commits: {}   store bytes written: {}",
                    s.active_actors, s.turns_total, s.commits_total, s.store_bytes_written
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
    let svc = tern_runtime::server::service(node.clone());
    tonic::transport::Server::builder()
        .add_service(svc)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown_signal())
        .await
        .map_err(|e| e.to_string())?;
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

async fn dev(
    pops: usize,
    data: &Path,
    base_port: u16,
    metrics_listen: Option<SocketAddr>,
) -> Result<(), String> {
    if pops != 1 {
        return Err(format!(
            "--pops {pops}: only one POP is supported until the directory service lands; use --pops 1"
        ));
    }
    std::fs::create_dir_all(data).map_err(|e| format!("cannot create {}: {e}", data.display()))?;
    if let Some(addr) = metrics_listen {
        start_metrics(addr)?;
    }
    let store_url = format!("sqlite:{}", data.join("tern.db").display());
    let store = tern_storage::Store::open(&store_url).map_err(|e| e.to_string())?;
    let (name, coords) = METROS[0];
    let node = Node::new(
        name,
        store,
        TernEngine::new().map_err(|e: RuntimeError| e.to_string())?,
    );
    let listener = TcpListener::bind(("127.0.0.1", base_port))
        .await
        .map_err(|e| format!("cannot listen on 127.0.0.1:{base_port}: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let cluster = ClusterFile {
        pid: std::process::id(),
        directory: None,
        pops: vec![PopInfo {
            name: name.to_string(),
            endpoint: format!("http://{addr}"),
            pid: std::process::id(),
            coords,
        }],
        metrics: metrics_listen.map(|a| format!("http://{a}/metrics")),
    };
    let path = data.join("cluster.json");
    cluster
        .write(&path)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    eprintln!(
        "tern dev: POP {name} at http://{addr}, store {store_url}; cluster file {}",
        path.display()
    );
    serve(node, listener).await
}
