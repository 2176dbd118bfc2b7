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
    let Cmd::Run {
        seeds,
        seed_start,
        workload,
        pops,
        plant,
        fault_secs,
        fail_fast,
    } = cli.cmd;
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
