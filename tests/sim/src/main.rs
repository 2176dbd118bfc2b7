//! `tern-sim`: runs seeds of the deterministic cluster simulator and
//! checks each one.

use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand};
use tern_sim::{Components, Plant, SimConfig, Workload, engine, run_seed};

/// tern-sim: a deterministic simulator of a whole tern cluster.
#[derive(Parser)]
#[command(name = "tern-sim", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run seeds and check every one. Prints a progress bar on stderr and,
    /// last on stdout, one JSON summary. Exits 1 on a violation (under
    /// --plant: when none is found).
    Run {
        /// How many seeds.
        #[arg(long, default_value_t = 100)]
        seeds: u64,
        /// The first seed.
        #[arg(long, default_value_t = 0)]
        seed_start: u64,
        /// The workload: counter, bank or doom.
        #[arg(long, default_value = "counter")]
        workload: Workload,
        /// POPs.
        #[arg(long, default_value_t = 3)]
        pops: usize,
        /// Switch on a bug: skip-fence, serve-after-lease or
        /// ignore-idempotency.
        #[arg(long)]
        plant: Option<Plant>,
        /// Simulated seconds of load and faults per seed.
        #[arg(long, default_value_t = 30)]
        fault_secs: u64,
        /// Stop at the first violation.
        #[arg(long)]
        fail_fast: bool,
    },
    /// Compare placement policies (follow the caller, pinned, central,
    /// hash) on four workloads under a WAN latency model, and measure
    /// directory and store operations per call as actors grow. Writes the
    /// JSON report to --report and prints a JSON summary last on stdout.
    Placement {
        /// Smaller workloads and scale steps of 10k and 100k actors (a few
        /// minutes in a debug build); without it, 10k, 100k and 1M.
        #[arg(long)]
        quick: bool,
        /// The seed (the same seed gives the same report).
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Where to write the JSON report.
        #[arg(long)]
        report: std::path::PathBuf,
        /// Where to draw the latency CDFs (SVG).
        #[arg(long)]
        chart: Option<std::path::PathBuf>,
        /// Scale steps (actors), instead of the defaults.
        #[arg(long, value_delimiter = ',')]
        scale: Vec<u64>,
    },
}

/// Most actors one scale step may have.
const SCALE_ACTORS_MAX: u64 = 10_000_000;

fn placement(
    quick: bool,
    seed: u64,
    report: &std::path::Path,
    chart: Option<&std::path::Path>,
    scale: Vec<u64>,
) -> ExitCode {
    let steps = if !scale.is_empty() {
        scale
    } else if quick {
        vec![10_000, 100_000]
    } else {
        vec![10_000, 100_000, 1_000_000]
    };
    if let Some(bad) = steps.iter().find(|&&n| n == 0 || n > SCALE_ACTORS_MAX) {
        eprintln!(
            "error: --scale {bad}: each step must be between 1 and {SCALE_ACTORS_MAX} actors"
        );
        return ExitCode::from(2);
    }
    let size = if quick {
        tern_sim::placement::Size::QUICK
    } else {
        tern_sim::placement::Size::FULL
    };
    let bar = indicatif::ProgressBar::new(tern_sim::placement::steps(&steps));
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg:48} [{bar:30}] {pos}/{len} runs, eta {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let (r, summary) = match tern_sim::placement::run_all(size, quick, seed, &steps, &bar) {
        Ok(x) => x,
        Err(e) => {
            bar.finish_and_clear();
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    bar.finish_and_clear();
    let text = match serde_json::to_string_pretty(&r) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: cannot encode the report: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = std::fs::write(report, text + "\n") {
        eprintln!("error: cannot write {}: {e}", report.display());
        return ExitCode::FAILURE;
    }
    if let Some(c) = chart
        && let Err(e) = tern_sim::placement::chart(&r, c)
    {
        eprintln!("error: cannot draw {}: {e}", c.display());
        return ExitCode::FAILURE;
    }
    println!("{}", tern_sim::placement::table(&r));
    match serde_json::to_string(&summary) {
        Ok(s) => println!("{s}"),
        Err(e) => {
            eprintln!("error: cannot encode the summary: {e}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The runtime's own logs, off unless RUST_LOG asks for them (a seed's
    // event trace is what TERN_SIM_TRACE prints).
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("off")),
        )
        .with_writer(std::io::stderr)
        .without_time()
        .init();
    let (seeds, seed_start, workload, pops, plant, fault_secs, fail_fast) = match cli.cmd {
        Cmd::Placement {
            quick,
            seed,
            report,
            chart,
            scale,
        } => return placement(quick, seed, &report, chart.as_deref(), scale),
        Cmd::Run {
            seeds,
            seed_start,
            workload,
            pops,
            plant,
            fault_secs,
            fail_fast,
        } => (
            seeds, seed_start, workload, pops, plant, fault_secs, fail_fast,
        ),
    };
    if pops == 0 || pops > 16 {
        eprintln!("error: --pops must be between 1 and 16");
        return ExitCode::from(2);
    }
    if fault_secs == 0 || fault_secs > 3_600 {
        eprintln!("error: --fault-secs must be between 1 and 3600");
        return ExitCode::from(2);
    }
    let components = Components::new();
    if let Err(e) = components.get(workload) {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    let engine = match engine() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let cfg = SimConfig {
        pops,
        plant,
        fault_secs,
        ..SimConfig::for_workload(workload)
    };
    let bar = indicatif::ProgressBar::new(seeds);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg:24} [{bar:30}] {pos}/{len} seeds, {per_sec}, eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_message(format!("{} x{pops} POPs", workload.name()));
    let started = Instant::now();
    let (mut violations, mut first_failing, mut sim_ms, mut events) = (0u64, None, 0u64, 0u64);
    let mut first_hash = None;
    let mut ran = 0u64;
    for seed in seed_start..seed_start + seeds {
        ran += 1;
        let r = match run_seed(&cfg, seed, &engine, &components) {
            Ok(r) => r,
            Err(e) => {
                bar.suspend(|| eprintln!("error: seed {seed}: {e}"));
                return ExitCode::from(2);
            }
        };
        first_hash.get_or_insert_with(|| r.trace_hash.clone());
        sim_ms += r.sim_ms;
        events += r.events as u64;
        if std::env::var_os("TERN_SIM_TRACE").is_some() {
            eprintln!("== seed {seed}");
            for l in &r.trace_tail {
                eprintln!("{l}");
            }
        }
        if !r.violations.is_empty() {
            violations += 1;
            if first_failing.is_none() {
                first_failing = Some(seed);
                bar.suspend(|| {
                    eprintln!("seed {seed}: {} violation(s):", r.violations.len());
                    for v in r.violations.iter().take(10) {
                        eprintln!("  - {v}");
                    }
                    eprintln!("  last events:");
                    for l in &r.trace_tail {
                        eprintln!("    {l}");
                    }
                    eprintln!("  reproduce: {}", cfg.reproduce(seed));
                });
            }
            if fail_fast {
                bar.inc(1);
                break;
            }
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    let wall = started.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({
            "seeds": ran,
            "violations": violations,
            "first_failing_seed": first_failing,
            "sim_seconds": sim_ms as f64 / 1e3,
            "wall_seconds": wall,
            "events": events,
            "trace_hash": first_hash,
        })
    );
    let found = violations > 0;
    if found != plant.is_some() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
