//! `doom-lobby`: simulated players from Paris, New York and Seoul play
//! matchmade deathmatches on a tern cluster while a POP is SIGKILLed and one
//! player travels; then every acknowledged action is audited against the
//! actors. See `examples/doom-lobby/README.md`.

mod cluster;
mod sim;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use serde::Serialize;

use crate::cluster::Cluster;
use crate::sim::{AuditResult, METROS, Plan, Shared, Travel};

/// doom-lobby: matchmaking, per-player and match state on tern, with POP
/// kills mid-session.
#[derive(Parser)]
#[command(name = "doom-lobby", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// The demo: 24 players for about a minute on a local 3-POP cluster, one
    /// POP SIGKILLed, one player travelling; a summary table at the end.
    /// Exits non-zero if anything was lost or applied twice.
    Demo {
        /// Players.
        #[arg(long, default_value_t = 24)]
        players: usize,
        /// Seconds of play.
        #[arg(long, default_value_t = 60)]
        duration: u64,
        /// Write the JSON report here too.
        #[arg(long)]
        report: Option<PathBuf>,
        #[command(flatten)]
        common: Common,
    },
    /// The same workload sized by flags; writes a JSON report.
    Loadtest {
        /// Players.
        #[arg(long, default_value_t = 24)]
        players: usize,
        /// Seconds of play.
        #[arg(long, default_value_t = 20)]
        duration: u64,
        /// POPs to SIGKILL during play (at most all but one).
        #[arg(long, default_value_t = 1)]
        kill_pops: usize,
        /// Deploy a second version of the actors' code (built with feature
        /// `v2`: players count actions since the upgrade) with `--rollout
        /// now` at this fraction of the play time, e.g. 0.5.
        #[arg(long)]
        upgrade_at: Option<f64>,
        /// Where to write the JSON report.
        #[arg(long)]
        report: PathBuf,
        #[command(flatten)]
        common: Common,
    },
}

#[derive(Args)]
struct Common {
    /// Use the running cluster described by this cluster.json (as written
    /// by `tern dev`) instead of starting one.
    #[arg(long)]
    cluster: Option<PathBuf>,
    /// The `tern` binary (default: next to this one, else built with cargo).
    #[arg(long)]
    tern: Option<PathBuf>,
    /// The actors' component (default: built from examples/doom-lobby/actors).
    #[arg(long)]
    wasm: Option<PathBuf>,
    /// Keep the data directory of the cluster we start (its logs).
    #[arg(long)]
    keep_data: bool,
    /// No travelling player.
    #[arg(long)]
    no_travel: bool,
}

/// Latency figures, ms.
#[derive(Serialize, Debug, Clone, Copy, Default)]
struct Lat {
    p50: f64,
    p99: f64,
    max: f64,
    calls: usize,
}

fn lat_of(v: &mut [u64]) -> Lat {
    if v.is_empty() {
        return Lat::default();
    }
    v.sort_unstable();
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize] as f64 / 1000.0;
    Lat {
        p50: at(0.50),
        p99: at(0.99),
        max: at(1.0),
        calls: v.len(),
    }
}

#[derive(Serialize)]
struct LatencyReport {
    p50: f64,
    p99: f64,
    per_pop: BTreeMap<String, Lat>,
    /// By `type.method`.
    per_method: BTreeMap<String, Lat>,
}

#[derive(Serialize)]
struct KilledPop {
    pop: String,
    at_s: f64,
}

/// The JSON report.
#[derive(Serialize)]
struct Report {
    players: usize,
    duration_s: f64,
    pops: Vec<String>,
    killed_pops: Vec<KilledPop>,
    matches_completed: u64,
    calls_ok: u64,
    calls_retried: u64,
    calls_failed: u64,
    calls_per_s: f64,
    actions_acked: u64,
    inputs_acked: u64,
    lost_updates: u64,
    duplicate_applies: u64,
    audit: AuditResult,
    latency_ms: LatencyReport,
    failover_ms_max: u64,
    failover_actors: usize,
    player_gap_ms_max: u64,
    /// Match events received by subscription (each subscriber counts).
    push_events: u64,
    /// Events a subscriber missed: must be 0, POP kills included.
    push_gaps: u64,
    /// Events a subscriber got twice: must be 0.
    push_duplicates: u64,
    /// Subscriptions that ended with an error.
    push_errors: u64,
    /// Publish (the match's turn) to receive (the player), ms.
    push_latency_ms: Lat,
    /// How late the alarms driving match ticks fired, ms.
    alarm_late_ms: Lat,
    migrations: usize,
    migrations_list: Vec<String>,
    /// With `--upgrade-at`: when the second version was deployed, s.
    upgrade_at_s: Option<f64>,
    /// Active actors the rollout moved to the second version at once.
    upgraded_actors: u64,
    /// Actors (of any run on this cluster) whose latest snapshot the
    /// newest version wrote.
    actors_on_new_version: u64,
    /// Actors of this run whose upgrade failed, with why.
    upgrade_failures: Vec<String>,
    traveller: Option<Travel>,
    slow_calls: Vec<String>,
    errors: Vec<String>,
    ok: bool,
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
    let (plan, common, report_path, demo) = match cli.cmd {
        Cmd::Demo {
            players,
            duration,
            report,
            common,
        } => (
            Plan {
                players,
                duration: Duration::from_secs(duration),
                kill_pops: 1,
                travel: !common.no_travel,
                upgrade_at: None,
            },
            common,
            report,
            true,
        ),
        Cmd::Loadtest {
            players,
            duration,
            kill_pops,
            upgrade_at,
            report,
            common,
        } => (
            Plan {
                players,
                duration: Duration::from_secs(duration),
                kill_pops,
                travel: !common.no_travel,
                upgrade_at,
            },
            common,
            Some(report),
            false,
        ),
    };
    match rt.block_on(run(plan, &common, report_path.as_deref(), demo)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the workload; `Ok(false)` if the audit failed.
async fn run(plan: Plan, common: &Common, report_path: Option<&Path>, demo: bool) -> Result<bool> {
    if plan.players == 0 {
        bail!("--players must be at least 1");
    }
    if plan.duration.is_zero() || plan.duration > Duration::from_secs(3600) {
        bail!("--duration must be 1..=3600 seconds");
    }
    let mut cluster = match &common.cluster {
        Some(path) => Cluster::attach(path)?,
        None => {
            let tern = cluster::tern_bin(common.tern.as_deref())?;
            eprintln!("starting a local cluster: tern dev --pops 3 ...");
            let c = tokio::task::block_in_place(|| Cluster::start(&tern, 3, common.keep_data))?;
            eprintln!(
                "  {} (data {})",
                c.file
                    .pops
                    .iter()
                    .map(|p| format!("{} {}", p.name, p.endpoint))
                    .collect::<Vec<_>>()
                    .join(", "),
                c.data.display()
            );
            c
        }
    };
    if let Some(f) = plan.upgrade_at
        && !(0.0..1.0).contains(&f)
    {
        bail!("--upgrade-at {f} must be a fraction of the play time, in [0, 1)");
    }
    if plan.kill_pops >= cluster.file.pops.len() {
        bail!(
            "--kill-pops {} would leave no POP of {}",
            plan.kill_pops,
            cluster.file.pops.len()
        );
    }
    let result = session(&plan, common, &cluster, report_path, demo).await;
    if cluster.owned() {
        eprintln!("stopping the local cluster (SIGTERM)");
        if let Err(e) = tokio::task::block_in_place(|| cluster.stop()) {
            eprintln!("warning: {e:#}");
        }
    }
    result
}

async fn session(
    plan: &Plan,
    common: &Common,
    cluster: &Cluster,
    report_path: Option<&Path>,
    demo: bool,
) -> Result<bool> {
    let wasm = match &common.wasm {
        Some(p) => p.clone(),
        None => {
            eprintln!("building the actors (examples/doom-lobby/actors) ...");
            let tern = cluster::tern_bin(common.tern.as_deref())?;
            tokio::task::block_in_place(|| cluster::build_actors(&tern))?
        }
    };
    let component = std::fs::read(&wasm).with_context(|| format!("reading {}", wasm.display()))?;
    // The second version, built before play so the upgrade is only a deploy.
    let v2 = match plan.upgrade_at {
        Some(_) => {
            eprintln!("building the second version of the actors (feature v2) ...");
            let tern = cluster::tern_bin(common.tern.as_deref())?;
            let p = tokio::task::block_in_place(|| cluster::build_actors_with(&tern, &["v2"]))?;
            Some(std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?)
        }
        None => None,
    };
    let endpoint = cluster.file.pops[0].endpoint.clone();
    let admin = cluster.admin()?;
    cluster::deploy(&endpoint, &admin, &component).await?;
    let creds = cluster::players(&endpoint, &admin).await?;
    if creds.token.is_some() {
        eprintln!(
            "players call with a token limited to scope `call` on player, matchmaker and match"
        );
    }
    eprintln!(
        "deployed player (follows its caller), matchmaker and match ({} KiB component)",
        component.len() / 1024
    );
    let run_tag = format!("{:04x}", (std::process::id() ^ now_ms() as u32) & 0xffff);
    warm_up(&cluster.file.pops, &creds, &run_tag).await;
    let specs = sim::specs(plan.players, &run_tag);
    let sh = Shared::new(
        cluster.file.pops.clone(),
        creds,
        run_tag.clone(),
        plan.duration,
    );
    eprintln!(
        "{} players (Paris, New York, Seoul) for {} s; run tag {run_tag}",
        plan.players,
        plan.duration.as_secs()
    );
    let tasks = sim::spawn_players(&sh, &specs);

    // Chaos: POP kills and the traveller, on a schedule.
    let traveller = specs
        .iter()
        .find(|s| s.metro.city == METROS[0].city)
        .cloned();
    let order = sim::kill_order(&cluster.file.pops, METROS[0].coords, METROS[2].coords);
    let mut schedule: Vec<(f64, Option<String>)> = sim::kill_times(plan.kill_pops)
        .into_iter()
        .zip(order.into_iter().map(Some))
        .collect();
    if plan.travel && traveller.is_some() {
        schedule.push((0.5, None));
    }
    schedule.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut killed: Vec<KilledPop> = Vec::new();
    let mut upgrade: Option<tokio::task::JoinHandle<(f64, Result<u64>)>> = None;
    let bar = progress_bar(plan.duration);
    let mut next = 0;
    let mut shown_events = 0;
    while Instant::now() < sh.deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let frac = sh.started.elapsed().as_secs_f64() / plan.duration.as_secs_f64();
        if let (Some(at), Some(code)) = (plan.upgrade_at, &v2)
            && upgrade.is_none()
            && frac >= at
        {
            let (endpoint, admin, code) = (endpoint.clone(), admin.clone(), code.clone());
            let at_s = sh.secs();
            sh.events.lock().push(format!(
                "{at_s:>5.1}s deploying version 2 of the actors, --rollout now"
            ));
            upgrade = Some(tokio::spawn(async move {
                (at_s, cluster::upgrade(&endpoint, &admin, &code).await)
            }));
        }
        while next < schedule.len() && frac >= schedule[next].0 {
            match &schedule[next].1 {
                Some(pop) => {
                    let at = Instant::now();
                    cluster.kill_pop(pop)?;
                    sh.killed(pop, at);
                    killed.push(KilledPop {
                        pop: pop.clone(),
                        at_s: sh.secs(),
                    });
                }
                None => {
                    if let Some(t) = &traveller {
                        sh.send_traveller(t.idx, METROS[2]);
                    }
                }
            }
            next += 1;
        }
        let events = sh.events.lock().clone();
        for e in &events[shown_events..] {
            bar.println(e);
        }
        shown_events = events.len();
        bar.set_position(sh.started.elapsed().as_millis() as u64);
        bar.set_message(live(&sh));
    }
    bar.set_message(format!("{} | stopping", live(&sh)));
    sh.stop();
    let mut tallies = Vec::new();
    for t in tasks {
        tallies.push(t.await.context("a player task panicked")?);
    }
    let play_s = sh.started.elapsed().as_secs_f64();
    bar.finish_and_clear();
    for e in &sh.events.lock()[shown_events..] {
        eprintln!("{e}");
    }
    let live_endpoints: Vec<String> = cluster
        .file
        .pops
        .iter()
        .filter(|p| !killed.iter().any(|k| k.pop == p.name))
        .map(|p| p.endpoint.clone())
        .collect();
    let (upgrade_at_s, upgraded_actors) = match upgrade {
        Some(t) => {
            let (at, r) = t.await.context("the upgrade task panicked")?;
            (Some(at), r.context("deploying version 2 mid-run")?)
        }
        None => (None, 0),
    };
    let (actors_on_new_version, upgrade_failures) = match upgrade_at_s {
        Some(_) => cluster::upgrade_outcome(&live_endpoints[0], &admin, &run_tag).await?,
        None => (0, Vec::new()),
    };
    let migrations: Vec<String> = cluster::migrations(&live_endpoints, &admin)
        .await
        .unwrap_or_default()
        .into_iter()
        .filter(|(a, _, _)| a.ends_with(&run_tag))
        .map(|(a, f, t)| format!("{a}: {f} -> {t}"))
        .collect();

    eprintln!("auditing {} players and their matches ...", tallies.len());
    let audit = sim::audit(&sh, &tallies).await;
    let c = &sh.counters;
    let mut lats = sh.latencies();
    let mut all: Vec<u64> = lats.values().flatten().copied().collect();
    let overall = lat_of(&mut all);
    let per_pop: BTreeMap<String, Lat> = lats
        .iter_mut()
        .map(|(p, v)| (p.clone(), lat_of(v)))
        .collect();
    let per_method: BTreeMap<String, Lat> = sh
        .method_latencies()
        .iter_mut()
        .map(|(m, v)| (m.clone(), lat_of(v)))
        .collect();
    let (failover_ms_max, failover_actors, _) = sh.failover();
    let calls_ok = c.calls_ok.load(Relaxed);
    let matches_completed = c.matches_completed.load(Relaxed);
    let mut errors: Vec<String> = tallies.iter().flat_map(|t| t.errors.clone()).collect();
    errors.truncate(10);
    let push_gaps = c.push_gaps.load(Relaxed);
    let push_duplicates = c.push_duplicates.load(Relaxed);
    let push_latency_ms = lat_of(&mut sh.push_latency_us.lock());
    // Lateness is recorded in ms; `lat_of` takes µs.
    let mut late: Vec<u64> = sh
        .alarm_late_ms
        .lock()
        .values()
        .map(|ms| ms * 1000)
        .collect();
    let alarm_late_ms = lat_of(&mut late);
    let ok = audit.lost_updates == 0
        && push_gaps == 0
        && push_duplicates == 0
        && audit.duplicate_applies == 0
        && audit.phantom_applies == 0
        && audit.unaudited_actors == 0
        && upgrade_failures.is_empty()
        && matches_completed > 0;
    let report = Report {
        players: plan.players,
        duration_s: play_s,
        pops: cluster.file.pops.iter().map(|p| p.name.clone()).collect(),
        killed_pops: killed,
        matches_completed,
        calls_ok,
        calls_retried: c.calls_retried.load(Relaxed),
        calls_failed: c.calls_failed.load(Relaxed),
        calls_per_s: calls_ok as f64 / play_s,
        actions_acked: c.actions_acked.load(Relaxed),
        inputs_acked: c.inputs_acked.load(Relaxed),
        lost_updates: audit.lost_updates,
        duplicate_applies: audit.duplicate_applies,
        latency_ms: LatencyReport {
            p50: overall.p50,
            p99: overall.p99,
            per_pop,
            per_method,
        },
        failover_ms_max,
        failover_actors,
        player_gap_ms_max: tallies.iter().map(|t| t.gap_ms_max).max().unwrap_or(0),
        push_events: c.push_events.load(Relaxed),
        push_gaps,
        push_duplicates,
        push_errors: c.push_errors.load(Relaxed),
        push_latency_ms,
        alarm_late_ms,
        migrations: migrations.len(),
        migrations_list: migrations,
        upgrade_at_s,
        upgraded_actors,
        actors_on_new_version,
        upgrade_failures,
        traveller: sh.travel.lock().clone(),
        audit,
        slow_calls: sh.slow_calls.lock().clone(),
        errors,
        ok,
    };
    let text = serde_json::to_string_pretty(&report)?;
    if let Some(p) = report_path {
        std::fs::write(p, &text).with_context(|| format!("writing {}", p.display()))?;
    }
    print_summary(&report, demo);
    if let Some(p) = report_path {
        println!("report: {}", p.display());
    }
    Ok(ok)
}

/// Activates one actor of each type at each POP, so every POP has compiled
/// the component before the clock starts (the first activation of a type at
/// a POP compiles it, which takes seconds).
async fn warm_up(pops: &[tern_client::PopInfo], creds: &tern_client::Credentials, run: &str) {
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for p in pops {
        for ty in ["player", "matchmaker", "match"] {
            let pops = pops.to_vec();
            let creds = creds.clone();
            let id = format!("warmup-{}-{run}", p.name);
            let coords = p.coords;
            tasks.push(tokio::spawn(async move {
                let client = tern_client::TernClient::new(&pops, coords, &creds).ok()?;
                client
                    .call(ty, &id, "state", Vec::new(), None)
                    .await
                    .ok()
                    .map(|_| ())
            }));
        }
    }
    let mut ok = 0;
    let n = tasks.len();
    for t in tasks {
        if let Ok(Some(())) = t.await {
            ok += 1;
        }
    }
    eprintln!(
        "warmed up {ok}/{n} actor types at the POPs in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
}

/// Wall-clock ms since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn progress_bar(d: Duration) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(d.as_millis() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {elapsed:>4} [{bar:24}] {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

fn live(sh: &Arc<Shared>) -> String {
    let c = &sh.counters;
    format!(
        "playing {:>3} | matches {:>3} | calls {:>6} ok {:>4} retried {:>3} failed | acts {:>5} inputs {:>6}",
        c.playing.load(Relaxed),
        c.matches_completed.load(Relaxed),
        c.calls_ok.load(Relaxed),
        c.calls_retried.load(Relaxed),
        c.calls_failed.load(Relaxed),
        c.actions_acked.load(Relaxed),
        c.inputs_acked.load(Relaxed),
    )
}

fn print_summary(r: &Report, demo: bool) {
    let title = if demo {
        "doom-lobby demo"
    } else {
        "doom-lobby loadtest"
    };
    let row = |k: &str, v: String| println!("  {k:<26} {v}");
    println!();
    println!(
        "{title}: {} players, {:.0} s, POPs {}",
        r.players,
        r.duration_s,
        r.pops.join(", ")
    );
    println!("  {}", "-".repeat(60));
    for k in &r.killed_pops {
        row(
            "POP killed (SIGKILL)",
            format!("{} at {:.1} s", k.pop, k.at_s),
        );
    }
    if let Some(t) = &r.traveller {
        row(
            "traveller",
            format!(
                "{}: {} -> {}, actor {} -> {} {}",
                t.player,
                t.from_city,
                t.to_city,
                t.from_pop,
                t.to_pop,
                match t.followed_after_ms {
                    Some(ms) => format!("(followed in {ms} ms)"),
                    None => "(did NOT follow)".into(),
                }
            ),
        );
    }
    row("matches completed", r.matches_completed.to_string());
    row(
        "calls ok / retried / failed",
        format!("{} / {} / {}", r.calls_ok, r.calls_retried, r.calls_failed),
    );
    row("calls per second", format!("{:.0}", r.calls_per_s));
    row(
        "actions / inputs acked",
        format!("{} / {}", r.actions_acked, r.inputs_acked),
    );
    row(
        "latency p50 / p99",
        format!("{:.1} / {:.1} ms", r.latency_ms.p50, r.latency_ms.p99),
    );
    let by_pop = r
        .latency_ms
        .per_pop
        .iter()
        .map(|(p, l)| (format!("via {p}"), l));
    let by_method = r.latency_ms.per_method.iter().map(|(m, l)| (m.clone(), l));
    for (what, l) in by_pop.chain(by_method) {
        row(
            &format!("  {what}"),
            format!(
                "p50 {:.1} ms, p99 {:.1} ms ({} calls)",
                l.p50, l.p99, l.calls
            ),
        );
    }
    row(
        "failover max",
        format!(
            "{} ms ({} actors moved off killed POPs)",
            r.failover_ms_max, r.failover_actors
        ),
    );
    row(
        "longest gap for a player",
        format!("{} ms", r.player_gap_ms_max),
    );
    row(
        "push: events / gaps / duplicates",
        format!(
            "{} / {} / {} ({} subscriptions ended in error)",
            r.push_events, r.push_gaps, r.push_duplicates, r.push_errors
        ),
    );
    row(
        "push latency p50 / p99",
        format!(
            "{:.1} / {:.1} ms",
            r.push_latency_ms.p50, r.push_latency_ms.p99
        ),
    );
    row(
        "alarm lateness p50 / p99",
        format!("{:.1} / {:.1} ms", r.alarm_late_ms.p50, r.alarm_late_ms.p99),
    );
    row("migrations", r.migrations.to_string());
    if let Some(at) = r.upgrade_at_s {
        row(
            "upgrade to version 2",
            format!(
                "at {at:.1} s: {} active actors moved at once, {} actors on it now, {} failures",
                r.upgraded_actors,
                r.actors_on_new_version,
                r.upgrade_failures.len()
            ),
        );
    }
    row(
        "audit: checked",
        format!("{} acknowledged actions and inputs", r.audit.checked),
    );
    row("audit: lost updates", r.lost_updates.to_string());
    row("audit: duplicate applies", r.duplicate_applies.to_string());
    row(
        "audit: unacked but applied",
        format!("{} (calls that failed; allowed)", r.audit.applied_unacked),
    );
    if r.audit.phantom_applies + r.audit.unaudited_actors + r.audit.result_mismatches > 0 {
        row(
            "audit: other",
            format!(
                "{} phantom, {} unaudited actors, {} result mismatches",
                r.audit.phantom_applies, r.audit.unaudited_actors, r.audit.result_mismatches
            ),
        );
    }
    if !r.errors.is_empty() {
        println!("  first errors:");
        for e in &r.errors {
            println!("    {e}");
        }
    }
    println!("  {}", "-".repeat(60));
    if r.ok {
        println!("  OK: nothing lost, nothing applied twice");
    } else if r.matches_completed == 0 {
        println!("  FAILED: no match completed");
    } else {
        println!("  FAILED: the audit found lost or duplicated updates");
    }
}
