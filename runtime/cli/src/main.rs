//! The `tern` command line: build, run and call actors.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use std::sync::Arc;

use clap::{Args, Parser, Subcommand};

mod supervise;
use tern_cli::certs;
use tern_client::{
    Client, ClusterFile, Credentials, DirectoryInfo, PopInfo, call_request, connect,
};
use tern_proto::actor as pb;
use tern_proto::tls::{Tls, TlsFiles};
use tern_runtime::auth::{Scope, Tokens};
use tern_runtime::config::{Durability, Limits};
use tern_runtime::config::{Placement, Rollout};
use tern_runtime::grpc::{
    DirectoryLink, GrpcPeers, Security, durability_to_pb, limits_to_pb, placement_to_pb,
};
use tern_runtime::{Node, NodeConfig, TernEngine};
use tokio::net::TcpListener;

/// tern: durable virtual actors on WebAssembly.
#[derive(Parser)]
#[command(name = "tern", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
    /// Write logs to this file instead of stderr: plain text, appended,
    /// rotated past 8 MiB (3 old files kept). `tern dev` gives its
    /// directories and POPs DATA/<name>.log.
    #[arg(long, global = true)]
    log_file: Option<PathBuf>,
    /// Export OpenTelemetry traces over OTLP/gRPC to this collector
    /// (`http://127.0.0.1:4317`). Spans: route, forward, claim, restore,
    /// turn (the actor's log lines are its events), nested call, commit;
    /// the W3C `traceparent` travels in gRPC metadata between clients,
    /// POPs and directories. `tern dev` passes it to its children.
    #[arg(long, global = true, env = "TERN_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Make a new actor crate NAME (a directory of that name, or --dir):
    /// Cargo.toml depending on the SDK and serde, a counter to start from,
    /// and a unit test. `tern build DIR` builds it as it stands.
    New {
        /// The crate's name.
        name: String,
        /// Where to put it (default: ./NAME); must not exist or be empty.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Use the SDK from this `actor-sdk` directory (default: the one of
        /// the checkout this tern was built from).
        #[arg(long, conflicts_with = "sdk_git")]
        sdk_path: Option<PathBuf>,
        /// Use the SDK from this git repository instead.
        #[arg(long)]
        sdk_git: Option<String>,
    },
    /// Build an actor into a component: a Rust crate (cargo), a Python
    /// actor (app.py; componentize-py) or a JavaScript actor (package.json;
    /// componentize-js). Prints the .wasm path last.
    Build {
        /// The actor's directory.
        path: PathBuf,
        /// Build without optimisations.
        #[arg(long)]
        debug: bool,
        /// Cargo features of the guest crate (another version of the code;
        /// each set builds into its own directory).
        #[arg(long, value_delimiter = ',')]
        features: Vec<String>,
    },
    /// Run a local cluster on the embedded store, in the foreground: M
    /// directory and N POP processes on loopback, restarted if they die
    /// (unless --restart never).
    Dev(DevArgs),
    /// Make TLS certificates for a cluster: a CA (unless DIR has one), the
    /// directory's, and one per POP (common name `pop:<name>`).
    Certs {
        /// Where to write them (existing files are kept).
        #[arg(long)]
        dir: PathBuf,
        /// POP names (repeat, or separate with commas).
        #[arg(long = "pop", value_delimiter = ',')]
        pops: Vec<String>,
        /// Extra host names or IP addresses the certificates are valid
        /// for, besides localhost and 127.0.0.1.
        #[arg(long = "san", value_delimiter = ',')]
        sans: Vec<String>,
    },
    /// Make, list and revoke client tokens.
    Token {
        #[command(subcommand)]
        cmd: TokenCmd,
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
        /// Certificates (`tern certs`): ca.pem, directory.pem and
        /// directory.key. With them, only POPs with a certificate from that
        /// CA may connect, and each acts only under its own name (mTLS).
        #[arg(long)]
        tls_dir: Option<PathBuf>,
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
        /// Directory service URL; repeat it (or separate with commas) for a
        /// cluster with several directory processes: the POP uses whichever
        /// answers. Without it the POP runs alone.
        #[arg(long = "directory", value_delimiter = ',')]
        directories: Vec<String>,
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
        /// Serve the live cluster page on this address (HTTP; port 0 picks
        /// one). It reads the other POPs with this POP's certificate, so it
        /// needs --tls-dir (or --insecure), and listens on loopback unless
        /// --insecure: reach it through an SSH tunnel or a proxy that
        /// authenticates. Its URL is logged and written to --ready-file.
        #[arg(long)]
        http: Option<SocketAddr>,
        #[command(flatten)]
        budgets: BudgetArgs,
        /// Certificates (`tern certs`): ca.pem, pop-NAME.pem and
        /// pop-NAME.key. The POP serves TLS, proves its name to the
        /// directory and other POPs, and trusts forwarded calls only from
        /// POPs with a certificate from that CA. Needed with --directory.
        #[arg(long)]
        tls_dir: Option<PathBuf>,
        /// Seal actor snapshot pages at rest with the key in this file (64
        /// hex digits, e.g. from `openssl rand -hex 32`); every POP of a
        /// cluster needs the same file.
        #[arg(long)]
        page_key_file: Option<PathBuf>,
        /// Keep compiled code on local disk here, mapped on the next
        /// activation of a type instead of fetched from the store. Default:
        /// `PATH.code` beside a `sqlite:PATH` store, none otherwise.
        #[arg(long)]
        code_cache: Option<PathBuf>,
        /// Serve without client tokens (anyone who reaches the POP can
        /// deploy and call any actor, and forge forwarded calls), and allow
        /// a non-loopback listen address without TLS: only for experiments.
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
        /// When actors persisted by an older version of the type move to
        /// this one (by state transfer: the old code's save, the new code's
        /// load): at their next activation, or now (the active ones, at
        /// every live POP).
        #[arg(long, value_enum, default_value_t = Rollout::Lazy)]
        rollout: Rollout,
        /// Actors move to the POP their callers use (per-user actors);
        /// `false` keeps them where they are (shared actors).
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        follow_caller: bool,
        /// Calls in the follow window (default 16).
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
    /// Put a type back on its previous version: actors upgraded to the
    /// current version get back the state they had before the upgrade.
    Rollback {
        /// Actor type name.
        r#type: String,
        /// Move the active actors (at every live POP) now, not at their
        /// next activation.
        #[arg(long, value_enum, default_value_t = Rollout::Lazy)]
        rollout: Rollout,
        #[command(flatten)]
        endpoint: EndpointArgs,
    },
    /// A type's versions, how many actors are on each, and the actors whose
    /// upgrade failed, with why.
    Versions {
        /// Actor type name.
        r#type: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
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
        /// Apply the call at most once: a retry with the same key gets the
        /// first call's reply (1 to 256 bytes).
        #[arg(long)]
        idempotency_key: Option<String>,
        #[command(flatten)]
        endpoint: EndpointArgs,
    },
    /// Follow the events an actor publishes on a topic: one JSON line per
    /// event, `{"seq": N, "payload": ...}` (the payload as JSON when it is
    /// JSON, else as a string). Any POP serves it; the actor need not be
    /// active. Ends after --count events, after --timeout-s, or on Ctrl-C.
    Subscribe {
        /// The actor, as TYPE/ID.
        actor: String,
        /// The topic.
        topic: String,
        /// Start after this seq (0: every event still kept).
        #[arg(long, default_value_t = 0)]
        resume_after: u64,
        /// Stop after this many events.
        #[arg(long)]
        count: Option<u64>,
        /// Stop after this many seconds (default: never).
        #[arg(long)]
        timeout_s: Option<u64>,
        #[command(flatten)]
        endpoint: EndpointArgs,
    },
    /// Show an actor's recent log lines (what it logged through the SDK),
    /// wherever it ran: every live POP is asked for the lines it kept
    /// (the newest 200 per actor) and they are merged by time.
    Logs {
        /// The actor, as TYPE/ID.
        actor: String,
        /// Show at most this many (the newest).
        #[arg(long, default_value_t = 50)]
        limit: u32,
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

#[derive(Subcommand)]
enum TokenCmd {
    /// Make a token; prints it on stdout, the only time it is shown.
    Create {
        /// What it may do: call, deploy, admin (repeat, or separate with
        /// commas).
        #[arg(long = "scope", required = true, value_delimiter = ',')]
        scopes: Vec<String>,
        /// Limit `call` and `deploy` to these actor types (default: all).
        #[arg(long = "types", value_delimiter = ',')]
        types: Vec<String>,
        /// A note for people: who or what the token is for.
        #[arg(long, default_value = "")]
        label: String,
        /// Write the token straight into this store instead of asking a
        /// POP (to make a cluster's first admin token): `sqlite:PATH` or
        /// `fdb:CLUSTER_FILE`.
        #[arg(long)]
        store: Option<String>,
        #[command(flatten)]
        endpoint: EndpointArgs,
    },
    /// List tokens (ids, scopes, types, labels; never secrets).
    List {
        #[command(flatten)]
        endpoint: EndpointArgs,
    },
    /// Revoke a token by id: it stops working at once at the POP asked,
    /// within seconds at the others.
    Revoke {
        /// The token's id (the 16 hex digits after `tern_`).
        id: String,
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
    /// Memory kept for evicted actors, so that one coming back to this POP
    /// skips reading its pages from the store, bytes; 0 keeps none
    /// (default: a quarter of the resident budget, at most 1 GiB).
    #[arg(long)]
    hibernated_bytes_max: Option<u64>,
    /// How long an evicted actor's memory is kept, ms.
    #[arg(long, default_value_t = 300_000)]
    hibernated_ms: u64,
}

impl BudgetArgs {
    fn config(&self) -> Result<NodeConfig, String> {
        let d = NodeConfig::default();
        let cfg = NodeConfig {
            activations_max: self.activations_max.unwrap_or(d.activations_max),
            resident_bytes_max: self.resident_bytes_max.unwrap_or(d.resident_bytes_max),
            turn_slots: self.turn_slots.unwrap_or(d.turn_slots),
            component_bytes_max: self.component_bytes_max,
            hibernated_bytes_max: self.hibernated_bytes_max.unwrap_or(
                tern_runtime::node::hibernated_bytes_default(
                    self.resident_bytes_max.unwrap_or(d.resident_bytes_max),
                ),
            ),
            hibernated_ms: self.hibernated_ms,
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
    /// POP endpoint; default: the first POP in DATA/cluster.json.
    #[arg(long, env = "TERN_ENDPOINT")]
    endpoint: Option<String>,
    /// A `tern dev` data directory: its cluster.json, tls/ca.pem and
    /// admin.token are the defaults for the other options (default: the
    /// first `.tern` holding a cluster.json in the current directory or
    /// one of its parents, the way cargo finds Cargo.toml).
    #[arg(long, env = "TERN_DATA")]
    data: Option<PathBuf>,
    /// Bearer token (default: DATA/admin.token, if there is one).
    #[arg(long, env = "TERN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The cluster CA certificate, for https:// POPs (default:
    /// DATA/tls/ca.pem, if there is one).
    #[arg(long, env = "TERN_CA")]
    ca: Option<PathBuf>,
}

/// The first `.tern` directory holding a `cluster.json` in `from` or one
/// of its ancestors; `Err` lists every place looked at.
fn find_data_dir(from: &Path) -> Result<PathBuf, Vec<PathBuf>> {
    let mut looked = Vec::new();
    for dir in from.ancestors() {
        let candidate = dir.join(".tern");
        if candidate.join("cluster.json").is_file() {
            return Ok(candidate);
        }
        looked.push(candidate);
    }
    Err(looked)
}

/// An endpoint as typed: `host:port` means `http://host:port`.
fn endpoint_url(e: &str) -> String {
    if e.contains("://") {
        e.to_string()
    } else {
        format!("http://{e}")
    }
}

impl EndpointArgs {
    /// The data directory: `--data`, else the nearest `.tern` upward.
    fn data_dir(&self) -> Result<PathBuf, Vec<PathBuf>> {
        match &self.data {
            Some(d) => Ok(d.clone()),
            None => {
                let cwd = std::env::current_dir().map_err(|_| Vec::new())?;
                find_data_dir(&cwd)
            }
        }
    }

    fn resolve(&self) -> Result<(String, Credentials), String> {
        let data = self.data_dir();
        let endpoint = match (&self.endpoint, &data) {
            (Some(e), _) => endpoint_url(e),
            (None, Err(looked)) => {
                let places: Vec<String> = looked.iter().map(|p| p.display().to_string()).collect();
                return Err(format!(
                    "no --endpoint given and no .tern/cluster.json found (looked in {}); start a cluster with `tern dev`, or pass --endpoint or --data",
                    places.join(", ")
                ));
            }
            (None, Ok(data)) => {
                let path = data.join("cluster.json");
                let cluster = ClusterFile::read(&path).map_err(|e| {
                    format!(
                        "no --endpoint given and cannot read {}: {e}; start a cluster with `tern dev` or pass --endpoint",
                        path.display()
                    )
                })?;
                cluster
                    .pops
                    .first()
                    .map(|p| p.endpoint.clone())
                    .ok_or_else(|| format!("{} lists no POPs", path.display()))?
            }
        };
        let data = data.ok();
        let in_data = |rel: &str| data.as_ref().map(|d| d.join(rel)).filter(|p| p.exists());
        let ca = self.ca.clone().or_else(|| in_data("tls/ca.pem"));
        let ca_pem = ca.as_deref().map(tern_proto::tls::read_pem).transpose()?;
        let token = match &self.token {
            Some(t) => Some(t.trim().to_string()),
            None => in_data("admin.token")
                .map(|f| tern_client::read_token_file(&f))
                .transpose()
                .map_err(|e| e.to_string())?,
        };
        Ok((
            endpoint,
            Credentials {
                ca_pem,
                token,
                identity: None,
            },
        ))
    }

    async fn connect(&self) -> Result<Client, String> {
        let (endpoint, creds) = self.resolve()?;
        connect(&endpoint, &creds).await.map_err(|e| e.to_string())
    }

    /// [`EndpointArgs::connect`] with the deploy deadline.
    async fn connect_for_deploy(&self) -> Result<Client, String> {
        let (endpoint, creds) = self.resolve()?;
        tern_client::connect_with_deadline(
            &endpoint,
            &creds,
            std::time::Duration::from_millis(tern_client::DEPLOY_MS_MAX),
        )
        .await
        .map_err(|e| e.to_string())
    }
}

/// The name a process reports its spans under.
fn service_name(cmd: &Cmd) -> String {
    match cmd {
        Cmd::Pop { name, .. } => format!("tern-pop-{name}"),
        Cmd::Directory { .. } => "tern-directory".into(),
        Cmd::Dev(_) => "tern-dev".into(),
        _ => "tern-cli".into(),
    }
}

/// Sets up logs (stderr or `--log-file`) and, with `--otlp-endpoint`,
/// trace export. Must run inside the tokio runtime (the exporter's gRPC
/// channel lives on it). Returns the tracer provider, to flush at exit.
fn init_logging(
    log_file: Option<&Path>,
    otlp: Option<&str>,
    service: String,
) -> Result<Option<opentelemetry_sdk::trace::SdkTracerProvider>, String> {
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let fmt = match log_file {
        Some(path) => {
            let log = tern_cli::logfile::RotatingLog::open(path)
                .map_err(|e| format!("cannot open the log file {}: {e}", path.display()))?;
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(std::sync::Mutex::new(log))
                .boxed()
        }
        None => {
            // Colour only for a person at a terminal.
            let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
            tracing_subscriber::fmt::layer()
                .with_ansi(ansi)
                .with_writer(std::io::stderr)
                .boxed()
        }
    };
    let registry = tracing_subscriber::registry().with(fmt.with_filter(filter));
    let Some(url) = otlp else {
        registry.init();
        return Ok(None);
    };
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_otlp::WithExportConfig as _;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(url)
        .with_timeout(std::time::Duration::from_secs(5))
        .build()
        .map_err(|e| format!("--otlp-endpoint {url}: {e}"))?;
    // Spans leave at least every second (the SDK's default is 5 s).
    let batch = opentelemetry_sdk::trace::BatchSpanProcessor::builder(exporter)
        .with_batch_config(
            opentelemetry_sdk::trace::BatchConfigBuilder::default()
                .with_scheduled_delay(std::time::Duration::from_secs(1))
                .build(),
        )
        .build();
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_span_processor(batch)
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(service)
                .build(),
        )
        .build();
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    let otel = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("tern"))
        .with_filter(tracing_subscriber::filter::Targets::new().with_targets([
            ("tern", tracing::Level::DEBUG),
            ("tern_runtime", tracing::Level::DEBUG),
            ("tern_directory", tracing::Level::DEBUG),
        ]));
    registry.with(otel).init();
    Ok(Some(provider))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
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
    let tracer = {
        let _in_rt = rt.enter();
        match init_logging(
            cli.log_file.as_deref(),
            cli.otlp_endpoint.as_deref(),
            service_name(&cli.cmd),
        ) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        }
    };
    let code = match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    };
    if let Some(t) = tracer {
        // Flush the spans still batched (bounded by the exporter's timeout).
        let _in_rt = rt.enter();
        if let Err(e) = t.shutdown() {
            eprintln!("warning: could not flush traces: {e}");
        }
    }
    code
}

/// A status as the CLI prints it: the code as gRPC names it (the README's
/// error table uses the same names), then the message.
fn status_error(s: tonic::Status) -> String {
    format!("{}: {}", code_name(s.code()), s.message())
}

/// gRPC's canonical name of `code` (`NOT_FOUND`, ...).
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code as C;
    match code {
        C::Ok => "OK",
        C::Cancelled => "CANCELLED",
        C::Unknown => "UNKNOWN",
        C::InvalidArgument => "INVALID_ARGUMENT",
        C::DeadlineExceeded => "DEADLINE_EXCEEDED",
        C::NotFound => "NOT_FOUND",
        C::AlreadyExists => "ALREADY_EXISTS",
        C::PermissionDenied => "PERMISSION_DENIED",
        C::ResourceExhausted => "RESOURCE_EXHAUSTED",
        C::FailedPrecondition => "FAILED_PRECONDITION",
        C::Aborted => "ABORTED",
        C::OutOfRange => "OUT_OF_RANGE",
        C::Unimplemented => "UNIMPLEMENTED",
        C::Internal => "INTERNAL",
        C::Unavailable => "UNAVAILABLE",
        C::DataLoss => "DATA_LOSS",
        C::Unauthenticated => "UNAUTHENTICATED",
    }
}

async fn run(cli: Cli) -> Result<(), String> {
    let otlp = cli.otlp_endpoint.clone();
    match cli.cmd {
        Cmd::Build {
            path,
            debug,
            features,
        } => {
            let features: Vec<&str> = features.iter().map(String::as_str).collect();
            let out =
                tern_cli::lang::build_actor(&path, !debug, &features).map_err(|e| e.to_string())?;
            println!("{}", out.display());
            Ok(())
        }
        Cmd::Dev(args) => dev(args, otlp).await,
        Cmd::New {
            name,
            dir,
            sdk_path,
            sdk_git,
        } => {
            use tern_cli::scaffold::{Sdk, default_sdk, scaffold};
            let sdk = match (sdk_path, sdk_git) {
                (Some(p), _) => Sdk::Path(
                    std::fs::canonicalize(&p)
                        .map_err(|e| format!("--sdk-path {}: {e}", p.display()))?,
                ),
                (None, Some(url)) => Sdk::Git(url),
                (None, None) => default_sdk().ok_or(
                    "this tern was not built from a checkout that is still here: give --sdk-path DIR (a tern checkout's actor-sdk) or --sdk-git URL",
                )?,
            };
            let dir = dir.unwrap_or_else(|| PathBuf::from(&name));
            let files = scaffold(&dir, &name, &sdk)?;
            for f in files {
                eprintln!("created {}", f.display());
            }
            println!("{}", dir.display());
            eprintln!(
                "next: tern build {}   (then tern deploy TYPE <the .wasm it prints>)",
                dir.display()
            );
            Ok(())
        }
        Cmd::Certs { dir, pops, sans } => {
            let c = certs::generate(&dir, &pops, &sans)?;
            println!("CA          {}", c.ca.display());
            println!("directory   {}", c.directory.cert.display());
            for (name, f) in &c.pops {
                println!("POP {name:<7} {}", f.cert.display());
            }
            Ok(())
        }
        Cmd::Token { cmd } => token(cmd).await,
        Cmd::Directory {
            listen,
            store,
            lease_ms,
            heartbeat_ms,
            ready_file,
            tls_dir,
            insecure,
        } => {
            die_with_parent();
            let tls = tls_dir
                .map(|d| Tls::load(&TlsFiles::in_dir(&d, certs::DIRECTORY_STEM)))
                .transpose()?;
            check_listen("the directory", listen, tls.is_some(), insecure)?;
            if tls.is_none() {
                tracing::warn!(
                    "the directory runs without --tls-dir: any process that reaches its port can act as any POP"
                );
            }
            let store = tern_storage::Store::open(&store).map_err(|e| e.to_string())?;
            let listener = TcpListener::bind(listen)
                .await
                .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
            let addr = listener.local_addr().map_err(|e| e.to_string())?;
            let scheme = if tls.is_some() { "https" } else { "http" };
            supervise::write_ready(ready_file.as_deref(), &format!("{scheme}://{addr}"), None)?;
            tracing::info!(%addr, "serving DirectoryService");
            let cfg = tern_directory::server::DirectoryConfig {
                lease_ms,
                heartbeat_ms,
                ..Default::default()
            };
            tern_directory::server::serve(listener, store, cfg, tls, shutdown_signal())
                .await
                .map_err(|e| e.to_string())
        }
        Cmd::Pop {
            name,
            directories,
            ready_file,
            listen,
            store,
            coords,
            metrics_listen,
            http,
            budgets,
            tls_dir,
            page_key_file,
            code_cache,
            insecure,
        } => {
            die_with_parent();
            let page_key = page_key_file
                .map(|f| tern_storage::PageKey::from_file(&f))
                .transpose()
                .map_err(|e| e.to_string())?;
            let tls = tls_dir
                .map(|d| Tls::load(&TlsFiles::in_dir(&d, &certs::pop_stem(&name))))
                .transpose()?;
            if !directories.is_empty() && tls.is_none() && !insecure {
                return Err(
                    "a POP in a cluster needs --tls-dir: POPs and the directory prove who they are with certificates (`tern certs`). Pass --insecure to run a cluster without them"
                        .into(),
                );
            }
            check_listen("the POP", listen, tls.is_some(), insecure)?;
            if let Some(addr) = metrics_listen {
                check_listen("the metrics endpoint", addr, false, insecure)?;
            }
            if let Some(addr) = http {
                check_listen("the cluster page", addr, false, insecure)?;
                if tls.is_none() && !insecure {
                    return Err(
                        "--http: the cluster page reads the POPs with this POP's certificate; give it --tls-dir (or --insecure)"
                            .into(),
                    );
                }
            }
            if insecure {
                tracing::warn!(
                    "INSECURE: this POP checks no tokens; anyone who reaches it can deploy, call any actor and forge forwarded calls"
                );
                eprintln!(
                    "WARNING: POP {name} runs with --insecure: no client authentication. Do not use this in front of real players."
                );
            }
            let coords = parse_coords(&coords)?;
            let cfg = budgets.config()?;
            if let Some(addr) = metrics_listen {
                start_metrics(addr)?;
            }
            let store_url = store;
            let mut store = tern_storage::Store::open(&store_url).map_err(|e| e.to_string())?;
            if let Some(k) = page_key {
                tracing::info!(key = %k.id_hex(), "snapshot pages are sealed at rest");
                store = store.with_page_key(k);
            }
            let mut engine = TernEngine::new().map_err(|e| e.to_string())?;
            let code_cache = code_cache.or_else(|| {
                store_url
                    .strip_prefix("sqlite:")
                    .map(|p| PathBuf::from(format!("{p}.code")))
            });
            if let Some(dir) = code_cache {
                engine = engine.with_code_dir(dir).map_err(|e| e.to_string())?;
            }
            let listener = TcpListener::bind(listen)
                .await
                .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
            let endpoint = format!(
                "{}://{}",
                if tls.is_some() { "https" } else { "http" },
                listener.local_addr().map_err(|e| e.to_string())?
            );
            let tokens = (!insecure).then(|| Arc::new(Tokens::new(store.clone())));
            let client_tls = tls.as_ref().map(Tls::client);
            let directory_tls = tls.as_ref().map(Tls::directory_client);
            let builder = Node::builder(name.clone(), store, engine).config(cfg);
            let node = match directories.is_empty() {
                false => {
                    let link = DirectoryLink::connect(
                        &directories,
                        &name,
                        &endpoint,
                        coords,
                        directory_tls.as_ref(),
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                    link.spawn_watch();
                    builder
                        .directory(link)
                        .peers(GrpcPeers::new(&name, client_tls))
                        .start()
                }
                true => builder.start(),
            }
            .map_err(|e| e.to_string())?;
            let page = match http {
                Some(addr) => {
                    let creds = tls.as_ref().map(Credentials::of_pop).unwrap_or_default();
                    Some(serve_page(addr, vec![(name.clone(), endpoint.clone())], creds).await?)
                }
                None => None,
            };
            supervise::write_ready(ready_file.as_deref(), &endpoint, page.as_deref())?;
            serve(node, listener, Security { tls, tokens }).await
        }
        Cmd::Deploy {
            r#type,
            file,
            durability,
            rollout,
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
            let mut client = endpoint.connect_for_deploy().await?;
            let request = pb::DeployRequest {
                r#type: r#type.clone(),
                component,
                durability: durability_to_pb(durability) as i32,
                limits: Some(limits_to_pb(limits.limits())),
                placement: Some(placement_to_pb(placement)),
                rollout: rollout_pb(rollout) as i32,
                dry_run: true,
            };
            // Say what will happen before doing it.
            let plan = client
                .deploy(request.clone())
                .await
                .map_err(status_error)?
                .into_inner();
            eprintln!("{}", plan.plan);
            let spinner = (rollout == Rollout::Now).then(|| {
                let s = indicatif::ProgressBar::new_spinner();
                s.set_message(format!("deploying {} and moving its active actors", r#type));
                s.enable_steady_tick(std::time::Duration::from_millis(100));
                s
            });
            let reply = client
                .deploy(pb::DeployRequest {
                    dry_run: false,
                    ..request
                })
                .await
                .map_err(status_error);
            if let Some(s) = spinner {
                s.finish_and_clear();
            }
            let reply = reply?.into_inner();
            if rollout == Rollout::Now {
                eprintln!(
                    "{} active actors reactivated on version {}; {} failed to upgrade and stay on their version{}",
                    reply.rolled_now,
                    reply.version,
                    reply.upgrade_failures,
                    if reply.upgrade_failures > 0 {
                        format!(" (tern versions {} says why)", r#type)
                    } else {
                        String::new()
                    }
                );
            }
            println!(
                "{}",
                serde_json::json!({"type": r#type, "digest": reply.digest, "bytes": reply.component_bytes,
                    "version": reply.version, "rolled_now": reply.rolled_now,
                    "upgrade_failures": reply.upgrade_failures})
            );
            Ok(())
        }
        Cmd::Call {
            actor,
            method,
            json,
            idempotency_key,
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
            let mut client = endpoint.connect().await?;
            let mut req = call_request(ty, id, &method, payload);
            req.idempotency_key = idempotency_key.unwrap_or_default();
            let reply = client.call(req).await.map_err(status_error)?.into_inner();
            println!("{}", String::from_utf8_lossy(&reply.payload));
            Ok(())
        }
        Cmd::Logs {
            actor,
            limit,
            endpoint,
        } => {
            let (ty, id) = actor.split_once('/').ok_or_else(|| {
                format!("actor `{actor}` must be written TYPE/ID, e.g. counter/a")
            })?;
            let (first, creds) = endpoint.resolve()?;
            let mut client = connect(&first, &creds).await.map_err(|e| e.to_string())?;
            let s = client
                .status(pb::StatusRequest {})
                .await
                .map_err(status_error)?
                .into_inner();
            let mut pops: Vec<(String, String)> = s
                .pops
                .iter()
                .filter(|p| p.alive)
                .map(|p| (p.name.clone(), p.endpoint.clone()))
                .collect();
            if pops.is_empty() {
                pops.push((s.pop.clone(), first.clone()));
            }
            let mut lines = Vec::new();
            for (name, ep) in &pops {
                let got = async {
                    let mut c = connect(ep, &creds).await.map_err(|e| e.to_string())?;
                    c.logs(pb::LogsRequest {
                        r#type: ty.to_string(),
                        id: id.to_string(),
                        limit,
                    })
                    .await
                    .map_err(status_error)
                }
                .await;
                match got {
                    Ok(r) => {
                        let r = r.into_inner();
                        lines.extend(r.lines.into_iter().map(|l| (l, r.pop.clone())));
                    }
                    Err(e) => eprintln!("warning: POP {name} did not answer: {e}"),
                }
            }
            lines.sort_by_key(|(l, _)| l.at_ms);
            let skip = lines.len().saturating_sub(limit as usize);
            if lines.is_empty() {
                eprintln!("no log lines of {actor} are kept at any live POP");
            }
            for (l, pop) in lines.into_iter().skip(skip) {
                let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(l.at_ms);
                println!(
                    "{} {:5} {pop} {}",
                    humantime::format_rfc3339_millis(at),
                    l.level,
                    l.message
                );
            }
            Ok(())
        }
        Cmd::Subscribe {
            actor,
            topic,
            resume_after,
            count,
            timeout_s,
            endpoint,
        } => {
            let (ty, id) = actor.split_once('/').ok_or_else(|| {
                format!("actor `{actor}` must be written TYPE/ID, e.g. counter/a")
            })?;
            let mut client = endpoint.connect().await?;
            let follow = async {
                let mut stream = client
                    .subscribe(pb::SubscribeRequest {
                        r#type: ty.to_string(),
                        id: id.to_string(),
                        topic: topic.clone(),
                        resume_after,
                    })
                    .await
                    .map_err(status_error)?
                    .into_inner();
                let mut seen = 0;
                while count.is_none_or(|c| seen < c) {
                    let Some(ev) = stream.message().await.map_err(status_error)? else {
                        break;
                    };
                    let payload = serde_json::from_slice::<serde_json::Value>(&ev.payload)
                        .unwrap_or_else(|_| {
                            serde_json::Value::String(
                                String::from_utf8_lossy(&ev.payload).into_owned(),
                            )
                        });
                    println!("{}", serde_json::json!({"seq": ev.seq, "payload": payload}));
                    seen += 1;
                }
                Ok::<(), String>(())
            };
            match timeout_s {
                Some(s) => tokio::time::timeout(std::time::Duration::from_secs(s), follow)
                    .await
                    .map_err(|_| format!("no more events within {s} s"))?,
                None => follow.await,
            }
        }
        Cmd::Rollback {
            r#type,
            rollout,
            endpoint,
        } => {
            let mut c = endpoint.connect().await?;
            let r = c
                .rollback(pb::RollbackRequest {
                    r#type: r#type.clone(),
                    rollout: rollout_pb(rollout) as i32,
                })
                .await
                .map_err(status_error)?
                .into_inner();
            eprintln!("{}", r.plan);
            println!(
                "{}",
                serde_json::json!({"type": r#type, "version": r.version, "rolled_now": r.rolled_now,
                    "upgrade_failures": r.upgrade_failures})
            );
            Ok(())
        }
        Cmd::Versions {
            r#type,
            json,
            endpoint,
        } => {
            let mut c = endpoint.connect().await?;
            let r = c
                .versions(pb::VersionsRequest {
                    r#type: r#type.clone(),
                })
                .await
                .map_err(status_error)?
                .into_inner();
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "type": r#type,
                        "versions": r.versions.iter().map(|v| serde_json::json!({
                            "version": v.version, "digest": v.digest, "current": v.current,
                            "actors": v.actors, "deployed_at_ms": v.deployed_at_ms,
                        })).collect::<Vec<_>>(),
                        "failures": r.failures.iter().map(|f| serde_json::json!({
                            "actor": f.actor, "from": f.from_version, "to": f.to_version, "error": f.error,
                        })).collect::<Vec<_>>(),
                        "actors_counted": r.actors_counted,
                        "truncated": r.truncated,
                    })
                );
            } else {
                for v in &r.versions {
                    println!(
                        "version {:<4} {} {:>7} actors  {}",
                        v.version,
                        &v.digest[..12.min(v.digest.len())],
                        v.actors,
                        if v.current { "(current)" } else { "" }
                    );
                }
                if r.truncated {
                    println!("(counted the first {} actors only)", r.actors_counted);
                }
                for f in &r.failures {
                    println!(
                        "upgrade failed: {} stays on version {} (to {}): {}",
                        f.actor, f.from_version, f.to_version, f.error
                    );
                }
            }
            Ok(())
        }
        Cmd::Status { json, endpoint } => {
            let mut client = endpoint.connect().await?;
            let s = client
                .status(pb::StatusRequest {})
                .await
                .map_err(status_error)?
                .into_inner();
            if json {
                let types: Vec<_> = s
                    .types
                    .iter()
                    .map(|t| {
                        let active: std::collections::BTreeMap<String, u64> = t
                            .active_by_version
                            .iter()
                            .map(|(v, n)| (v.to_string(), *n))
                            .collect();
                        serde_json::json!({"type": t.r#type, "digest": t.digest,
                        "version": t.version, "upgrade_failures": t.upgrade_failures,
                        "active_by_version": active})
                    })
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
                    let mut active: Vec<_> = t.active_by_version.iter().collect();
                    active.sort();
                    let active = active
                        .iter()
                        .map(|(v, n)| format!("v{v}: {n}"))
                        .collect::<Vec<_>>()
                        .join(", ");
                    println!(
                        "  type {:<16} version {:<3} {}  active here [{active}]{}",
                        t.r#type,
                        t.version,
                        &t.digest[..12.min(t.digest.len())],
                        if t.upgrade_failures > 0 {
                            format!(
                                "  {} actors failed to upgrade (tern versions {})",
                                t.upgrade_failures, t.r#type
                            )
                        } else {
                            String::new()
                        }
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

fn rollout_pb(r: Rollout) -> pb::Rollout {
    match r {
        Rollout::Lazy => pb::Rollout::Lazy,
        Rollout::Now => pb::Rollout::Now,
    }
}

fn token_json(id: &str, scopes: &[String], types: &[String], label: &str) -> serde_json::Value {
    serde_json::json!({"id": id, "scopes": scopes, "types": types, "label": label})
}

/// `tern token ...`.
async fn token(cmd: TokenCmd) -> Result<(), String> {
    match cmd {
        TokenCmd::Create {
            scopes,
            types,
            label,
            store,
            endpoint,
        } => {
            let (token, info) = match store {
                Some(url) => {
                    let parsed = scopes
                        .iter()
                        .map(|s| s.parse::<Scope>())
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|e| e.to_string())?;
                    let store = tern_storage::Store::open(&url).map_err(|e| e.to_string())?;
                    let new = Tokens::new(store)
                        .create(&parsed, &types, &label)
                        .map_err(|e| e.to_string())?;
                    let g = &new.grant;
                    let scopes: Vec<String> = g.scopes.iter().map(|s| s.to_string()).collect();
                    let types: Vec<String> = g.types.iter().cloned().collect();
                    (
                        new.token.clone(),
                        token_json(&g.id, &scopes, &types, &g.label),
                    )
                }
                None => {
                    let mut c = endpoint.connect().await?;
                    let r = c
                        .create_token(pb::CreateTokenRequest {
                            scopes,
                            types,
                            label,
                        })
                        .await
                        .map_err(status_error)?
                        .into_inner();
                    let i = r.info.unwrap_or_default();
                    (r.token, token_json(&i.id, &i.scopes, &i.types, &i.label))
                }
            };
            println!("{token}");
            eprintln!("created {info}; keep the token: it is not shown again");
            Ok(())
        }
        TokenCmd::List { endpoint } => {
            let mut c = endpoint.connect().await?;
            let r = c
                .list_tokens(pb::ListTokensRequest {})
                .await
                .map_err(status_error)?
                .into_inner();
            for t in r.tokens {
                println!("{}", token_json(&t.id, &t.scopes, &t.types, &t.label));
            }
            Ok(())
        }
        TokenCmd::Revoke { id, endpoint } => {
            let mut c = endpoint.connect().await?;
            let r = c
                .revoke_token(pb::RevokeTokenRequest { id: id.clone() })
                .await
                .map_err(status_error)?
                .into_inner();
            if !r.revoked {
                return Err(format!("no token has id {id}"));
            }
            eprintln!("revoked token {id}");
            Ok(())
        }
    }
}

/// The admin token of a `tern dev` cluster in `path`: kept if it still
/// works against `store_url`, else made anew.
fn ensure_admin_token(store_url: &str, path: &Path) -> Result<(), String> {
    let store = tern_storage::Store::open(store_url).map_err(|e| e.to_string())?;
    let tokens = Tokens::new(store);
    if path.exists()
        && let Ok(t) = tern_client::read_token_file(path)
        && tokens.verify(&t).is_ok()
    {
        return Ok(());
    }
    let new = tokens
        .create(&[Scope::Admin], &[], "tern dev admin")
        .map_err(|e| e.to_string())?;
    certs::write_private(path, format!("{}\n", new.token).as_bytes())
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

/// Refuses a listen address other than loopback without TLS: anyone who
/// reached such a port could act as a POP or a client, and read what
/// passes. `--insecure` allows it, loudly.
fn check_listen(what: &str, addr: SocketAddr, tls: bool, insecure: bool) -> Result<(), String> {
    if addr.ip().is_loopback() || (tls && !insecure) {
        return Ok(());
    }
    if !insecure {
        return Err(format!(
            "refusing to start {what} on {addr}: it would accept unauthenticated, unencrypted connections from the network. Give it certificates with --tls-dir (`tern certs`), listen on 127.0.0.1, or pass --insecure for an experiment on a network you trust"
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

/// Serves the cluster page on `addr` (in the background, for as long as
/// the process runs), starting from the POPs `seed`; returns its URL.
async fn serve_page(
    addr: SocketAddr,
    seed: Vec<(String, String)>,
    creds: Credentials,
) -> Result<String, String> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot serve the cluster page on {addr}: {e}"))?;
    let url = format!(
        "http://{}/",
        listener.local_addr().map_err(|e| e.to_string())?
    );
    tracing::info!(%url, "serving the cluster page");
    tokio::spawn(async move {
        if let Err(e) = tern_cli::page::serve(listener, seed, creds).await {
            tracing::warn!(error = %e, "the cluster page stopped");
        }
    });
    Ok(url)
}

fn start_metrics(addr: SocketAddr) -> Result<(), String> {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(addr)
        .install()
        .map_err(|e| format!("cannot serve metrics on {addr}: {e}"))
}

/// Serves `node` until Ctrl-C or SIGTERM, then persists every actor.
async fn serve(node: Node, listener: TcpListener, security: Security) -> Result<(), String> {
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    tracing::info!(
        pop = node.name(),
        %addr,
        tls = security.tls.is_some(),
        tokens = security.tokens.is_some(),
        "serving ActorService"
    );
    // Open subscriptions would keep the server draining forever: end them
    // (each subscriber is told to resume elsewhere) once the signal comes.
    let closer = node.clone();
    let shutdown = async move {
        shutdown_signal().await;
        closer.close_subscriptions();
    };
    tern_runtime::grpc::serve(node.clone(), listener, security, shutdown).await?;
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

/// What `tern dev` was asked for.
#[derive(Args)]
struct DevArgs {
    /// Number of POPs (at metro coordinates: Frankfurt, Ashburn, Tokyo,
    /// São Paulo, Sydney).
    #[arg(long, default_value_t = 3)]
    pops: usize,
    /// Number of directory processes (over the one store; POPs use
    /// whichever answers, so losing one loses nothing).
    #[arg(long, default_value_t = 2)]
    directories: usize,
    /// Data directory: the store file and cluster.json.
    #[arg(long, default_value = ".tern")]
    data: PathBuf,
    /// First gRPC port (directories first, then POPs); 0 picks free
    /// ports.
    #[arg(long, default_value_t = 7700)]
    base_port: u16,
    /// Serve Prometheus metrics on this address.
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
    /// Serve the live cluster page here (loopback only: it reads with the
    /// admin token); its URL is printed and written to cluster.json.
    #[arg(long, default_value = "127.0.0.1:0")]
    page_listen: SocketAddr,
    /// Whether a directory or POP that dies is started again (with
    /// backoff). `never` leaves it dead: for watching a failover, or a
    /// chaos experiment.
    #[arg(long, value_enum, default_value_t = Restart::Always)]
    restart: Restart,
    /// No TLS and no tokens: anyone who reaches a port may act as a
    /// POP or a client (the pre-security behaviour, for experiments).
    #[arg(long)]
    insecure: bool,
}

/// `tern dev --restart`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Restart {
    /// Restart a child that died, with backoff.
    Always,
    /// Leave it dead.
    Never,
}

/// Most directory processes `tern dev` starts.
const DEV_DIRECTORIES_MAX: usize = 5;

/// How often `tern dev` checks on its children.
const SUPERVISE_EVERY_MS: u64 = 200;

fn write_cluster_file(
    path: &Path,
    base: &ClusterFile,
    dirs: &[supervise::Proc],
    pops: &[(supervise::Proc, [f64; 2])],
) -> Result<(), String> {
    let mut c = base.clone();
    c.directories = dirs
        .iter()
        .map(|d| DirectoryInfo {
            endpoint: d.endpoint.clone(),
            pid: d.pid,
        })
        .collect();
    c.directory = dirs.first().map(|d| d.endpoint.clone());
    c.directory_pid = dirs.first().map(|d| d.pid);
    c.pops = pops
        .iter()
        .map(|(p, coords)| PopInfo {
            name: p.what().trim_start_matches("POP ").to_string(),
            endpoint: p.endpoint.clone(),
            pid: p.pid,
            coords: *coords,
        })
        .collect();
    c.write(path)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// Takes `DATA/dev.lock` (an exclusive lock the OS drops when the process
/// dies, however it dies) and writes our PID in it. A second `tern dev` on
/// the same data directory is refused, naming the running one's PID:
/// otherwise it would truncate the first cluster's logs, overwrite its
/// cluster.json, and its POPs (same names, new incarnations) would void
/// the first cluster's activations.
fn lock_data_dir(data: &Path) -> Result<std::fs::File, String> {
    use std::io::{Read, Seek, Write};
    let path = data.join("dev.lock");
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    match f.try_lock() {
        Ok(()) => {
            let pid = std::process::id();
            f.set_len(0)
                .and_then(|()| f.rewind())
                .and_then(|()| writeln!(f, "{pid}"))
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            Ok(f)
        }
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut text = String::new();
            let _ = f.read_to_string(&mut text);
            let pid = text.trim();
            let pid = if pid.is_empty() { "unknown" } else { pid };
            Err(format!(
                "another `tern dev` (PID {pid}) is running on {}; stop it first (kill {pid}), or give this one another --data",
                data.display()
            ))
        }
        Err(std::fs::TryLockError::Error(e)) => Err(format!("cannot lock {}: {e}", path.display())),
    }
}

async fn dev(a: DevArgs, otlp: Option<String>) -> Result<(), String> {
    let DevArgs {
        pops,
        directories,
        ref data,
        base_port,
        metrics_listen,
        page_listen,
        restart,
        insecure,
    } = a;
    if pops == 0 || pops > METROS.len() {
        return Err(format!("--pops must be between 1 and {}", METROS.len()));
    }
    if directories == 0 || directories > DEV_DIRECTORIES_MAX {
        return Err(format!(
            "--directories must be between 1 and {DEV_DIRECTORIES_MAX}"
        ));
    }
    let run = data.join("run");
    std::fs::create_dir_all(&run).map_err(|e| format!("cannot create {}: {e}", run.display()))?;
    let data = &std::fs::canonicalize(data)
        .map_err(|e| format!("cannot resolve {}: {e}", data.display()))?;
    // Before anything in the directory is touched: one `tern dev` per
    // data directory.
    let _lock = lock_data_dir(data)?;
    let store_url = format!("sqlite:{}", data.join("tern.db").display());
    let tls_dir = data.join("tls");
    let token_file = data.join("admin.token");
    // Flags every child gets: security, and where traces go.
    let mut secure_args: Vec<String> = Vec::new();
    if let Some(url) = &otlp {
        secure_args.push("--otlp-endpoint".into());
        secure_args.push(url.clone());
    }
    if insecure {
        secure_args.push("--insecure".into());
        eprintln!(
            "WARNING: tern dev --insecure: no TLS and no tokens; anyone who reaches these ports can act as a POP or a client"
        );
    } else {
        let names: Vec<String> = METROS
            .iter()
            .take(pops)
            .map(|(n, _)| n.to_string())
            .collect();
        certs::generate(&tls_dir, &names, &[])?;
        ensure_admin_token(&store_url, &token_file)?;
        secure_args.push("--tls-dir".into());
        secure_args.push(tls_dir.display().to_string());
    }
    // Snapshot pages are sealed at rest unless --insecure; the key stays
    // with the data directory (without it the actors' state cannot be read).
    let page_key = data.join("page.key");
    let mut pop_args: Vec<String> = Vec::new();
    if !insecure {
        if !page_key.exists() {
            certs::write_private(
                &page_key,
                format!("{}\n", tern_storage::PageKey::generate_hex()).as_bytes(),
            )?;
        }
        pop_args.push("--page-key-file".into());
        pop_args.push(page_key.display().to_string());
    }
    let port = |i: usize| {
        if base_port == 0 {
            0
        } else {
            base_port + i as u16
        }
    };
    let bar = indicatif::ProgressBar::new((pops + directories) as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg:28} [{bar:20}] {pos}/{len}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut dirs = Vec::new();
    for i in 0..directories {
        let n = i + 1;
        bar.set_message(format!("starting directory {n}"));
        let spec = supervise::Spec {
            what: format!("directory {n}"),
            args: [
                "directory".to_string(),
                "--listen".into(),
                format!("127.0.0.1:{}", port(i)),
                "--store".into(),
                store_url.clone(),
            ]
            .into_iter()
            .chain(secure_args.iter().cloned())
            .collect(),
            ready: run.join(format!("directory-{n}.json")),
            log: data.join(format!("directory-{n}.log")),
            restart: restart == Restart::Always,
        };
        dirs.push(supervise::Proc::start(spec).await?);
        bar.inc(1);
    }
    let dir_urls = dirs
        .iter()
        .map(|d| d.endpoint.clone())
        .collect::<Vec<_>>()
        .join(",");
    let mut procs = Vec::new();
    for (i, (name, coords)) in METROS.iter().take(pops).enumerate() {
        bar.set_message(format!("starting POP {name}"));
        let mut args = vec![
            "pop".into(),
            "--name".into(),
            name.to_string(),
            "--coords".into(),
            format!("{},{}", coords[0], coords[1]),
            "--listen".into(),
            format!("127.0.0.1:{}", port(directories + i)),
            "--directory".into(),
            dir_urls.clone(),
            "--store".into(),
            store_url.clone(),
        ];
        args.extend(secure_args.iter().cloned());
        args.extend(pop_args.iter().cloned());
        if let Some(m) = metrics_listen {
            args.push("--metrics-listen".into());
            args.push(SocketAddr::new(m.ip(), m.port() + i as u16).to_string());
        }
        let log = data.join(format!("pop-{name}.log"));
        let spec = supervise::Spec {
            what: format!("POP {name}"),
            args,
            ready: run.join(format!("pop-{name}.json")),
            log,
            restart: restart == Restart::Always,
        };
        procs.push((supervise::Proc::start(spec).await?, *coords));
        bar.inc(1);
    }
    bar.finish_and_clear();
    let base = ClusterFile {
        pid: std::process::id(),
        directory: None,
        directory_pid: None,
        directories: Vec::new(),
        pops: Vec::new(),
        metrics: metrics_listen.map(|a| format!("http://{a}/metrics")),
        ca: (!insecure).then(|| tls_dir.join("ca.pem")),
        token_file: (!insecure).then(|| token_file.clone()),
        page: None,
    };
    if !page_listen.ip().is_loopback() {
        return Err(format!(
            "--page-listen {page_listen}: the page reads with the admin token, so it listens on loopback only"
        ));
    }
    let creds = Credentials::of_cluster(&base).map_err(|e| e.to_string())?;
    let page_pops: Vec<(String, String)> = procs
        .iter()
        .zip(METROS)
        .map(|((p, _), (name, _))| (name.to_string(), p.endpoint.clone()))
        .collect();
    let page_url = serve_page(page_listen, page_pops, creds).await?;
    let base = ClusterFile {
        page: Some(page_url.clone()),
        ..base
    };
    let path = data.join("cluster.json");
    write_cluster_file(&path, &base, &dirs, &procs)?;
    eprintln!("tern dev: cluster page at {page_url}");
    for d in &dirs {
        eprintln!("tern dev: {} at {}", d.what(), d.endpoint);
    }
    eprintln!("  store {store_url}");
    for (p, coords) in &procs {
        eprintln!(
            "  {} at {} ({:.2}, {:.2})",
            p.what(),
            p.endpoint,
            coords[0],
            coords[1]
        );
    }
    if !insecure {
        eprintln!(
            "  TLS certificates in {}; admin token in {} (the tern CLI uses both by default); snapshot pages sealed with {}",
            tls_dir.display(),
            token_file.display(),
            page_key.display()
        );
    }
    eprintln!(
        "cluster file {}; a directory or POP that dies is restarted; Ctrl-C stops everything",
        path.display()
    );
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(SUPERVISE_EVERY_MS));
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tick.tick() => {
                let now = tokio::time::Instant::now();
                let mut changed = false;
                for d in dirs.iter_mut() {
                    changed |= d.check(now);
                }
                for (p, _) in procs.iter_mut() {
                    changed |= p.check(now);
                }
                if changed && let Err(e) = write_cluster_file(&path, &base, &dirs, &procs) {
                    tracing::warn!(error = %e, "cannot update the cluster file");
                }
            }
        }
    }
    eprintln!("tern dev: stopping POPs (persisting actors), then the directories");
    futures::future::join_all(procs.iter_mut().map(|(p, _)| p.stop())).await;
    futures::future::join_all(dirs.iter_mut().map(|d| d.stop())).await;
    let _ = std::fs::remove_file(&path);
    Ok(())
}
