//! Core benchmarks, each reported as a ratio against a baseline measured in
//! the same run (see BENCHMARKS.md):
//!
//! 1. warm in-process calls through the node (mailbox, turn, dirty-page scan)
//!    against calling the same export directly through wasmtime, and against
//!    the same direct call handed to a turn thread and back;
//! 2. warm calls that write memory on 1 and 16 MiB actors, with write
//!    tracking against comparing the whole memory (a child process with
//!    `TERN_WRITE_TRACKING=off`);
//! 3. cold activation of 128 KiB, 1 MiB and 16 MiB actors against a fresh
//!    instantiation plus a memcpy of the same bytes: at the POP that
//!    evicted the actor (its memory kept, see `hibernate`), and from the
//!    embedded store (sqlite) at a POP that keeps nothing; and where it goes
//!    by the runtime's own spans;
//! 4. durable turns per second on sqlite (`turn` durability, group commit)
//!    against non-durable (`idle`) turns;
//! 5. a type's first activation at a POP, compiled code from the store or
//!    local disk against compiling;
//! 6. warm gRPC calls against a plain tonic echo service and one that makes
//!    the same turn-thread hop.
//!
//! Run: `cargo bench -p tern-runtime --bench core`. Counts are bounded; the
//! whole run takes about a minute.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tern_runtime::config::{Durability, Limits};
use tern_runtime::instance::{ActorCaller, ActorInstance, InstanceParams};
use tern_runtime::{CallRequest, Node, TernEngine};
use tern_storage::Store;

const WARM_CALLS: usize = 200_000;
const DIRECT_CALLS: usize = 200_000;
const COLD_ROUNDS: usize = 30;
const TURN_ACTORS: usize = 64;
const TURNS_PER_ACTOR: usize = 200;
const GROWN_ACTORS: usize = 4;
const GROWN_CALLS: usize = 2_000;

struct NoCalls;
impl ActorCaller for NoCalls {
    fn call_blocking(
        &self,
        _: tern_runtime::instance::NestedCall<'_>,
    ) -> tern_runtime::Result<Vec<u8>> {
        Err(tern_runtime::RuntimeError::InvalidArgument(
            "no calls in benches".into(),
        ))
    }
}

fn req(id: &str, method: &str, payload: &str) -> CallRequest {
    CallRequest {
        actor_type: "counter".into(),
        id: id.into(),
        method: method.into(),
        payload: payload.as_bytes().to_vec(),
        idempotency_key: None,
    }
}

/// A `get` turn with no key and no deadline.
fn get_turn() -> tern_runtime::instance::TurnInput<'static> {
    tern_runtime::instance::TurnInput {
        chain: Vec::new(),
        method: "get",
        payload: b"",
        idempotency_key: None,
        deadline: None,
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let wasm_path = tern_cli::build::build_guest(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/counter"),
        true,
    )
    .expect("build counter");
    let wasm = std::fs::read(wasm_path).unwrap();
    let engine = TernEngine::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let _guard = rt.enter();

    // The baseline of the write-tracking rows: the same calls in a child
    // process started with TERN_WRITE_TRACKING=off (tracking is chosen once
    // per process). It prints one rate per size.
    if std::env::args().any(|a| a == "tracking-child") {
        for mb in [1, 16] {
            println!("{}", warm_grown(&rt, dir.path(), &engine, &wasm, mb));
        }
        return;
    }

    // `cargo bench -p tern-runtime --bench core -- grpc cold` runs only the
    // sections whose names contain a word given (warm, tracking, cold,
    // durable, first, grpc); the JSON line needs them all.
    let words: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let want =
        |section: &str| words.is_empty() || words.iter().any(|w| section.contains(w.as_str()));
    println!("| benchmark | tern | baseline | ratio |");
    println!("|---|---|---|---|");

    // 1. Warm calls.
    let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&wasm));
    let prep = engine.prepare(&digest, &wasm).unwrap();
    let params = InstanceParams {
        actor_type: "counter".into(),
        actor_id: "direct".into(),
        limits: bench_limits(),
        pop: "bench".into(),
        epoch: 1,
        caller: Arc::new(NoCalls),
        world: tern_runtime::clock::World::default(),
        meter: tern_runtime::engine::CpuMeter::Epoch,
    };
    let (mut warm, mut direct) = (f64::NAN, f64::NAN);
    if want("warm") {
        let mut inst = ActorInstance::new(engine.engine(), &prep, &params, &[]).unwrap();
        let t = Instant::now();
        for _ in 0..DIRECT_CALLS {
            inst.call(get_turn(), &params.limits).unwrap().unwrap();
        }
        direct = DIRECT_CALLS as f64 / t.elapsed().as_secs_f64();

        let (_, node) = counter_pop(dir.path(), "warm", &engine, &wasm, Durability::Idle);
        // Callers spread over a few actors, as a POP would see.
        warm = rt.block_on(call_rate(&node, "w", 8, WARM_CALLS / 8, "get", ""));
        println!(
            "| warm in-process calls/s (8 actors, idle durability) vs direct wasmtime calls/s | {warm:.0} | {direct:.0} | {:.2} |",
            warm / direct
        );
        // The floor issue 11 sets: guest code runs on turn threads, never on
        // the tokio workers, so each call hands a job to a turn thread and
        // its result back. The same direct call through the same pool,
        // from the same 8 callers, with nothing else of a turn.
        let pool = tern_runtime::turnpool::TurnPool::new(tern_runtime::turnpool::default_slots());
        let hopped = rt.block_on(async {
            let callers = 8;
            let t = Instant::now();
            let mut tasks = Vec::new();
            for _ in 0..callers {
                let pool = pool.clone();
                let mut inst =
                    Some(ActorInstance::new(engine.engine(), &prep, &params, &[]).unwrap());
                let limits = params.limits;
                tasks.push(tokio::spawn(async move {
                    for _ in 0..WARM_CALLS / callers {
                        let mut i = inst.take().unwrap();
                        let (i, _) = pool
                            .run(0, 0, move || {
                                i.call(get_turn(), &limits).unwrap().unwrap();
                                i
                            })
                            .await
                            .unwrap();
                        inst = Some(i);
                    }
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
            WARM_CALLS as f64 / t.elapsed().as_secs_f64()
        });
        println!(
            "| direct wasmtime calls/s handed to a turn thread and back (the hop issue 11 requires; 8 callers) vs direct | {hopped:.0} | {direct:.0} | {:.2} |",
            hopped / direct
        );
        println!(
            "| warm in-process calls/s vs the same hop with a direct call in it | {warm:.0} | {hopped:.0} | {:.2} |",
            warm / hopped
        );
    }

    // 2. Warm calls that write memory, on grown actors: write tracking
    // against comparing the whole memory after each turn.
    if want("tracking") {
        if tern_runtime::writetrack::tracker().is_none() {
            println!(
                "| write tracking | unavailable here (or TERN_WRITE_TRACKING=off): rows skipped | | |"
            );
        } else {
            let child = std::process::Command::new(std::env::current_exe().unwrap())
                .args(["--bench", "tracking-child"])
                .env("TERN_WRITE_TRACKING", "off")
                .stderr(std::process::Stdio::inherit())
                .output()
                .unwrap();
            assert!(child.status.success(), "the whole-comparison run failed");
            let whole: Vec<f64> = String::from_utf8_lossy(&child.stdout)
                .lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect();
            assert_eq!(whole.len(), 2, "the child prints a rate per size");
            for (mb, whole) in [1u64, 16].into_iter().zip(whole) {
                let tracked = warm_grown(&rt, dir.path(), &engine, &wasm, mb);
                println!(
                    "| warm `incr` calls/s on {GROWN_ACTORS} actors of {mb} MiB: write tracking vs comparing the whole memory (same binary, TERN_WRITE_TRACKING=off) | {tracked:.0} | {whole:.0} | {:.2} |",
                    tracked / whole
                );
            }
        }
    }

    // 3. Cold activation from sqlite.
    let mut cold_figures: Vec<(&str, bool, f64, f64)> = Vec::new();
    let sizes = match want("cold") {
        true => &[("128 KiB", 0u64), ("1 MiB", 1), ("16 MiB", 16)][..],
        false => &[],
    };
    for (label, mb, keep) in sizes
        .iter()
        .flat_map(|&(l, mb)| [(l, mb, true), (l, mb, false)])
    {
        // Idle durability: the timed first call does not also commit.
        let (store, node) = counter_pop_with(
            dir.path(),
            &format!("cold{mb}-{keep}"),
            &engine,
            &wasm,
            Durability::Idle,
            tern_runtime::node::NodeConfig {
                hibernated_bytes_max: if keep { 1 << 30 } else { 0 },
                ..Default::default()
            },
        );
        let (cold, mem_bytes) = rt.block_on(async {
            let id = "cold";
            if mb > 0 {
                node.call(req(id, "grow", &format!("{{\"mb\": {mb}}}")))
                    .await
                    .unwrap();
            } else {
                node.call(req(id, "get", "")).await.unwrap();
            }
            let images = node.memory_images("counter", id).await.unwrap();
            let mem_bytes: usize = images.iter().map(Vec::len).sum();
            let mut total = Duration::ZERO;
            for _ in 0..COLD_ROUNDS {
                node.evict("counter", id).await;
                let t = Instant::now();
                node.call(req(id, "get", "")).await.unwrap();
                total += t.elapsed();
            }
            (total / COLD_ROUNDS as u32, mem_bytes)
        });
        // Baseline: a fresh instantiation at the same size, a memcpy of the
        // same bytes, and the same call.
        let images = rt.block_on(node.memory_images("counter", "cold")).unwrap();
        let lens: Vec<usize> = images.iter().map(Vec::len).collect();
        let mut floor = Duration::ZERO;
        for _ in 0..COLD_ROUNDS {
            let t = Instant::now();
            let mut inst = ActorInstance::new(engine.engine(), &prep, &params, &lens).unwrap();
            inst.write_memories(&images).unwrap();
            inst.call(get_turn(), &params.limits).unwrap().unwrap();
            floor += t.elapsed();
            drop(inst);
        }
        let floor = floor / COLD_ROUNDS as u32;
        cold_figures.push((
            label,
            keep,
            cold.as_secs_f64() / floor.as_secs_f64(),
            cold.as_secs_f64() * 1e3,
        ));
        let how = match keep {
            true => "at the POP that evicted it (its memory kept)",
            false => "from sqlite (a POP that keeps no memory)",
        };
        println!(
            "| cold activation {how}, {label} actor ({:.2} MiB memory) | {:.3} ms | {:.3} ms | {:.2} |",
            mem_bytes as f64 / (1 << 20) as f64,
            cold.as_secs_f64() * 1e3,
            floor.as_secs_f64() * 1e3,
            cold.as_secs_f64() / floor.as_secs_f64()
        );
        if keep {
            continue;
        }
        // Restore alone: read and check the snapshot from the store, apply
        // its page patches, then instantiate and copy it in (no claim: that
        // is the directory's part of an activation).
        let mut restore = Duration::ZERO;
        let mut load = Duration::ZERO;
        for _ in 0..COLD_ROUNDS {
            let t = Instant::now();
            let snap = store.load_snapshot("counter/cold").unwrap().unwrap();
            load += t.elapsed();
            // The images with their page patches applied, as a restore
            // does.
            let baseline = tern_runtime::snapshot::Baseline::from_snapshot(
                "counter/cold",
                snap.memories,
                snap.meta.globals.clone(),
                &snap.extra,
            )
            .unwrap();
            let mut inst =
                ActorInstance::new(engine.engine(), &prep, &params, &baseline.lens()).unwrap();
            inst.write_memories(baseline.images()).unwrap();
            inst.call(get_turn(), &params.limits).unwrap().unwrap();
            restore += t.elapsed();
        }
        let restore = restore / COLD_ROUNDS as u32;
        let load = load / COLD_ROUNDS as u32;
        println!(
            "| restore alone from sqlite, {label} actor (of which reading the snapshot: {:.3} ms) | {:.3} ms | {:.3} ms | {:.2} |",
            load.as_secs_f64() * 1e3,
            restore.as_secs_f64() * 1e3,
            floor.as_secs_f64() * 1e3,
            restore.as_secs_f64() / floor.as_secs_f64()
        );
    }

    // 4. Durable vs non-durable turns on sqlite.
    let mut rates = [f64::NAN, f64::NAN];
    let durabilities = match want("durable") {
        true => &[Durability::Turn, Durability::Idle][..],
        false => &[],
    };
    for (i, &durability) in durabilities.iter().enumerate() {
        let (_, node) = counter_pop(
            dir.path(),
            &format!("turns-{durability:?}"),
            &engine,
            &wasm,
            durability,
        );
        rates[i] = rt.block_on(call_rate(
            &node,
            "t",
            TURN_ACTORS,
            TURNS_PER_ACTOR,
            "incr",
            "{\"by\": 1}",
        ));
        rt.block_on(node.shutdown());
    }
    if want("durable") {
        println!(
            "| durable turns/s on sqlite ({TURN_ACTORS} actors, group commit) vs non-durable | {:.0} | {:.0} | {:.2} |",
            rates[0],
            rates[1],
            rates[0] / rates[1]
        );
    }

    // 5. A type's first activation at a POP that never ran it: with the
    // compiled code in the store (a new engine loads it), against a new
    // engine that compiles it first.
    let mut cached = f64::NAN;
    if want("first") {
        // A new engine, so the code is compiled (and kept in this store) here.
        let (store, _deployer) = counter_pop(
            dir.path(),
            "first",
            &TernEngine::new().unwrap(),
            &wasm,
            Durability::Idle,
        );
        let code_dir = dir.path().join("code");
        let first = |compile_first: bool, local: bool, round: usize| {
            let fresh = TernEngine::new().unwrap();
            let fresh = match local {
                true => fresh.with_code_dir(&code_dir).unwrap(),
                false => fresh,
            };
            let node = Node::new(format!("pop-{round}"), store.clone(), fresh.clone());
            let t = Instant::now();
            if compile_first {
                use sha2::Digest;
                let digest = hex::encode(sha2::Sha256::digest(&wasm));
                fresh.prepare(&digest, &wasm).unwrap();
            }
            rt.block_on(node.call(req(&format!("first-{round}"), "get", "")))
                .unwrap();
            let ms = t.elapsed().as_secs_f64() * 1e3;
            assert_eq!(fresh.compiles(), u64::from(compile_first));
            let mapped = fresh.local_loads();
            rt.block_on(node.shutdown());
            (ms, mapped)
        };
        let rounds = 3;
        cached = (0..rounds).map(|r| first(false, false, r).0).sum::<f64>() / rounds as f64;
        let compiled: f64 = (0..rounds)
            .map(|r| first(true, false, 10 + r).0)
            .sum::<f64>()
            / rounds as f64;
        // The local code directory: filled by one start, mapped by the next.
        assert_eq!(first(false, true, 20).1, 0);
        let local: f64 = (0..rounds)
            .map(|r| {
                let (ms, mapped) = first(false, true, 30 + r);
                assert_eq!(mapped, 1, "the code was mapped from local disk");
                ms
            })
            .sum::<f64>()
            / rounds as f64;
        println!(
            "| a type's first activation at a new POP: compiled code from the store vs compiling it | {cached:.1} ms | {compiled:.1} ms | {:.2} |",
            cached / compiled
        );
        println!(
            "| a type's first activation after a POP restart: compiled code mapped from local disk vs compiling it | {local:.1} ms | {compiled:.1} ms | {:.2} |",
            local / compiled
        );
    }
    // 6. Warm gRPC calls: a POP's ActorService (the counter's `get`, idle
    // durability, 8 actors) against a tonic service of the same proto that
    // answers every call with its payload, with the same client.
    let (mut tern_rate, mut echo_rate) = (f64::NAN, f64::NAN);
    if want("grpc") {
        let (_, grpc_node) = counter_pop(dir.path(), "grpc", &engine, &wasm, Durability::Idle);
        (tern_rate, echo_rate) = rt.block_on(async {
            let tern_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let tern_addr = tern_listener.local_addr().unwrap();
            tokio::spawn(tern_runtime::grpc::server::serve(
                grpc_node.clone(),
                tern_listener,
                Default::default(),
                std::future::pending(),
            ));
            let echo_addr = echo::start().await;
            let tern_rate = grpc_rate(tern_addr).await;
            let echo_rate = grpc_rate(echo_addr).await;
            let hop_addr = echo::start_hopping().await;
            let hop_rate = grpc_rate(hop_addr).await;
            println!(
                "| a tonic echo service that hands each call to a turn thread and back (issue 11's hop) vs the plain echo | {hop_rate:.0} | {echo_rate:.0} | {:.2} |",
                hop_rate / echo_rate
            );
            println!(
                "| warm gRPC calls/s vs the echo with that hop | {tern_rate:.0} | {hop_rate:.0} | {:.2} |",
                tern_rate / hop_rate
            );
            (tern_rate, echo_rate)
        });
        println!(
            "| warm gRPC calls/s (8 actors, 8 callers on one channel) vs a tonic echo service of the same proto | {tern_rate:.0} | {echo_rate:.0} | {:.2} |",
            tern_rate / echo_rate
        );
    }
    // Where a cold activation's time goes, by the runtime's own spans:
    // last, because it installs a process-wide subscriber (timing spans
    // costs, so no other row runs under it).
    if want("cold") {
        let timer = spantime::Timer::default();
        tracing::subscriber::set_global_default(timer.subscriber()).unwrap();
        for (label, mb, keep) in [
            ("1 MiB", 1u64, true),
            ("1 MiB", 1, false),
            ("16 MiB", 16, true),
            ("16 MiB", 16, false),
        ] {
            let (_, node) = counter_pop_with(
                dir.path(),
                &format!("spans{mb}-{keep}"),
                &engine,
                &wasm,
                Durability::Idle,
                tern_runtime::node::NodeConfig {
                    hibernated_bytes_max: if keep { 1 << 30 } else { 0 },
                    ..Default::default()
                },
            );
            let how = match keep {
                true => "its memory kept",
                false => "from sqlite",
            };
            rt.block_on(async {
                let id = "cold";
                node.call(req(id, "grow", &format!("{{\"mb\": {mb}}}")))
                    .await
                    .unwrap();
                timer.take();
                for _ in 0..COLD_ROUNDS {
                    node.evict("counter", id).await;
                    node.call(req(id, "get", "")).await.unwrap();
                }
            });
            let spans = timer.take();
            let ms = |name: &str| {
                spans
                    .get(name)
                    .map_or(0.0, |d| d.as_secs_f64() * 1e3 / COLD_ROUNDS as f64)
            };
            println!(
                "| where a cold activation of the {label} actor goes, {how} (its spans timed, ms each) | route {:.3} = claim {:.3} + restore {:.3} (with its wait for a turn thread) + first turn {:.3} + the rest {:.3} | | |",
                ms("route"),
                ms("claim"),
                ms("restore"),
                ms("turn"),
                ms("route") - ms("claim") - ms("restore") - ms("turn"),
            );
        }
    }
    if !words.is_empty() {
        return;
    }
    let cold = |label: &str, keep: bool, pick: fn(&(&str, bool, f64, f64)) -> f64| {
        cold_figures
            .iter()
            .find(|c| c.0 == label && c.1 == keep)
            .map(pick)
            .unwrap_or(f64::NAN)
    };
    // The line issue 14 asks for. `cold_*` are the activations a POP does
    // when an actor returns to it (its memory kept); `*_store` those at a
    // POP that reads the whole snapshot from sqlite.
    println!(
        "{{\"warm_call_ratio\":{:.3},\"cold_1mib_ratio\":{:.2},\"cold_16mib_ms\":{:.2},\"cold_1mib_ratio_store\":{:.2},\"cold_16mib_ms_store\":{:.2},\"durable_turns_per_s\":{:.0},\"first_activation_ms\":{cached:.1},\"grpc_vs_echo_ratio\":{:.3}}}",
        warm / direct,
        cold("1 MiB", true, |c| c.2),
        cold("16 MiB", true, |c| c.3),
        cold("1 MiB", false, |c| c.2),
        cold("16 MiB", false, |c| c.3),
        rates[0],
        tern_rate / echo_rate,
    );
}

/// Warm calls/s on `GROWN_ACTORS` counters grown to `mb` MiB, one caller
/// each; every call is an `incr`, so every turn writes memory.
fn warm_grown(
    rt: &tokio::runtime::Runtime,
    dir: &Path,
    engine: &TernEngine,
    wasm: &[u8],
    mb: u64,
) -> f64 {
    let (_, node) = counter_pop(dir, &format!("grown{mb}"), engine, wasm, Durability::Idle);
    rt.block_on(async {
        for c in 0..GROWN_ACTORS {
            node.call(req(&format!("g{c}"), "grow", &format!("{{\"mb\": {mb}}}")))
                .await
                .unwrap();
        }
        call_rate(
            &node,
            "g",
            GROWN_ACTORS,
            GROWN_CALLS / GROWN_ACTORS,
            "incr",
            "{\"by\": 1}",
        )
        .await
    })
}

/// Calls/s through `node`: one caller per actor `{prefix}0..{prefix}{actors}`
/// of the counter, each making `per_actor` calls of `method` after one
/// untimed call that activates it.
async fn call_rate(
    node: &Node,
    prefix: &str,
    actors: usize,
    per_actor: usize,
    method: &'static str,
    payload: &'static str,
) -> f64 {
    for a in 0..actors {
        node.call(req(&format!("{prefix}{a}"), method, payload))
            .await
            .unwrap();
    }
    let t = Instant::now();
    let mut tasks = Vec::new();
    for a in 0..actors {
        let node = node.clone();
        let id = format!("{prefix}{a}");
        tasks.push(tokio::spawn(async move {
            for _ in 0..per_actor {
                node.call(req(&id, method, payload)).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    (actors * per_actor) as f64 / t.elapsed().as_secs_f64()
}

/// A node over a new sqlite store `NAME.db` in `dir`, with the counter
/// deployed at `durability`.
fn counter_pop(
    dir: &Path,
    name: &str,
    engine: &TernEngine,
    wasm: &[u8],
    durability: Durability,
) -> (Store, Node) {
    counter_pop_with(dir, name, engine, wasm, durability, Default::default())
}

/// The default limits, but a turn budget of a second: the budget counts
/// wall time, and the setup turns that grow an actor by 16 MiB took over
/// the default 50 ms when the machine was busy. What a turn costs does
/// not depend on its budget.
fn bench_limits() -> Limits {
    Limits {
        turn_cpu_ms_max: 1_000,
        ..Limits::default()
    }
}

/// [`counter_pop`] with the POP's budgets `cfg`.
fn counter_pop_with(
    dir: &Path,
    name: &str,
    engine: &TernEngine,
    wasm: &[u8],
    durability: Durability,
    cfg: tern_runtime::node::NodeConfig,
) -> (Store, Node) {
    let store = Store::open(&format!(
        "sqlite:{}",
        dir.join(format!("{name}.db")).display()
    ))
    .unwrap();
    let node = Node::builder("bench", store.clone(), engine.clone())
        .config(cfg)
        .start()
        .unwrap();
    node.deploy(
        "counter",
        wasm,
        tern_runtime::DeployOptions {
            durability,
            limits: bench_limits(),
            ..Default::default()
        },
    )
    .unwrap();
    (store, node)
}

const GRPC_CALLS: usize = 20_000;
const GRPC_CALLERS: usize = 8;

/// Calls/s of `get` calls from [`GRPC_CALLERS`] tasks sharing one channel
/// to `addr`, after a warm-up call per actor.
async fn grpc_rate(addr: std::net::SocketAddr) -> f64 {
    use tern_proto::actor::actor_service_client::ActorServiceClient;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .tcp_nodelay(true)
        .connect()
        .await
        .unwrap();
    let pb_req = |c: usize| tern_proto::actor::CallRequest {
        r#type: "counter".into(),
        id: format!("g{c}"),
        method: "get".into(),
        ..Default::default()
    };
    for c in 0..GRPC_CALLERS {
        ActorServiceClient::new(channel.clone())
            .call(pb_req(c))
            .await
            .unwrap();
    }
    let t = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..GRPC_CALLERS {
        let mut client = ActorServiceClient::new(channel.clone());
        let req = pb_req(c);
        tasks.push(tokio::spawn(async move {
            for _ in 0..GRPC_CALLS / GRPC_CALLERS {
                client.call(req.clone()).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    GRPC_CALLS as f64 / t.elapsed().as_secs_f64()
}

/// The baseline of the gRPC row: tern's proto, served by tonic, answering
/// every call with its own payload.
mod echo {
    use tern_proto::actor as pb;
    use tern_proto::actor::actor_service_server::{ActorService, ActorServiceServer};
    use tonic::{Request, Response, Status};

    /// Answers every call with its payload; with a pool, from a job run
    /// on a turn thread.
    struct Echo(Option<tern_runtime::turnpool::TurnPool>);

    fn no<T>() -> Result<Response<T>, Status> {
        Err(Status::unimplemented("echo only answers Call"))
    }

    #[tonic::async_trait]
    impl ActorService for Echo {
        async fn call(
            &self,
            req: Request<pb::CallRequest>,
        ) -> Result<Response<pb::CallReply>, Status> {
            let mut payload = req.into_inner().payload;
            if let Some(pool) = &self.0 {
                (payload, _) = pool
                    .run(0, 0, move || payload)
                    .await
                    .map_err(|p| Status::internal(p.0))?;
            }
            Ok(Response::new(pb::CallReply {
                payload,
                pop: "echo".into(),
                epoch: 1,
            }))
        }
        async fn deploy(
            &self,
            _: Request<pb::DeployRequest>,
        ) -> Result<Response<pb::DeployReply>, Status> {
            no()
        }
        async fn status(
            &self,
            _: Request<pb::StatusRequest>,
        ) -> Result<Response<pb::StatusReply>, Status> {
            no()
        }
        async fn rollback(
            &self,
            _: Request<pb::RollbackRequest>,
        ) -> Result<Response<pb::RollbackReply>, Status> {
            no()
        }
        async fn versions(
            &self,
            _: Request<pb::VersionsRequest>,
        ) -> Result<Response<pb::VersionsReply>, Status> {
            no()
        }
        async fn rollout_now(
            &self,
            _: Request<pb::RolloutNowRequest>,
        ) -> Result<Response<pb::RolloutNowReply>, Status> {
            no()
        }
        async fn create_token(
            &self,
            _: Request<pb::CreateTokenRequest>,
        ) -> Result<Response<pb::CreateTokenReply>, Status> {
            no()
        }
        async fn list_tokens(
            &self,
            _: Request<pb::ListTokensRequest>,
        ) -> Result<Response<pb::ListTokensReply>, Status> {
            no()
        }
        async fn revoke_token(
            &self,
            _: Request<pb::RevokeTokenRequest>,
        ) -> Result<Response<pb::RevokeTokenReply>, Status> {
            no()
        }
        async fn inspect(
            &self,
            _: Request<pb::InspectRequest>,
        ) -> Result<Response<pb::InspectReply>, Status> {
            no()
        }
        async fn logs(
            &self,
            _: Request<pb::LogsRequest>,
        ) -> Result<Response<pb::LogsReply>, Status> {
            no()
        }
        type SubscribeStream = tokio_stream::Empty<Result<pb::Event, Status>>;
        async fn subscribe(
            &self,
            _: Request<pb::SubscribeRequest>,
        ) -> Result<Response<Self::SubscribeStream>, Status> {
            no()
        }
    }
    /// Serves `echo` on a loopback port; returns its address.
    /// Serves the echo service on a loopback port; returns its address.
    async fn serve(echo: Echo) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .tcp_nodelay(true)
                .add_service(ActorServiceServer::new(echo))
                .serve_with_incoming(tern_proto::incoming(listener)),
        );
        addr
    }

    /// Serves the plain echo on a loopback port; returns its address.
    pub async fn start() -> std::net::SocketAddr {
        serve(Echo(None)).await
    }

    /// Serves an echo whose every answer comes from a turn thread.
    pub async fn start_hopping() -> std::net::SocketAddr {
        let slots = tern_runtime::turnpool::default_slots();
        serve(Echo(Some(tern_runtime::turnpool::TurnPool::new(slots)))).await
    }
}

/// Wall time per span name, from a span's creation to its close.
mod spantime {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use tracing::span;
    use tracing_subscriber::layer::{Context, SubscriberExt};
    use tracing_subscriber::registry::LookupSpan;

    #[derive(Clone, Default)]
    pub struct Timer(Arc<Mutex<HashMap<&'static str, Duration>>>);

    struct Started(Instant);

    impl Timer {
        /// A subscriber that records every span's life into this timer.
        pub fn subscriber(&self) -> impl tracing::Subscriber + Send + Sync {
            tracing_subscriber::registry()
                .with(self.clone())
                .with(tracing_subscriber::filter::LevelFilter::DEBUG)
        }

        /// The totals so far, by span name.
        pub fn take(&self) -> HashMap<&'static str, Duration> {
            std::mem::take(&mut self.0.lock().unwrap())
        }
    }

    impl<S: tracing::Subscriber + for<'a> LookupSpan<'a>> tracing_subscriber::Layer<S> for Timer {
        fn on_new_span(&self, _: &span::Attributes<'_>, id: &span::Id, ctx: Context<'_, S>) {
            if let Some(s) = ctx.span(id) {
                s.extensions_mut().insert(Started(Instant::now()));
            }
        }

        fn on_close(&self, id: span::Id, ctx: Context<'_, S>) {
            if let Some(s) = ctx.span(&id)
                && let Some(Started(t)) = s.extensions().get::<Started>()
            {
                *self.0.lock().unwrap().entry(s.name()).or_default() += t.elapsed();
            }
        }
    }
}
