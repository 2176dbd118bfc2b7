//! Cluster benchmarks on real `tern` processes (see BENCHMARKS.md):
//!
//! 1. a forwarded call (client -> POP P -> owner Q) against a direct call at
//!    the owning POP;
//! 2. migration of a 128 KiB and a 1 MiB actor to its caller's POP, against
//!    a forwarded call of the same actor;
//! 3. failover: from SIGKILL of a POP to the first successful call of each
//!    of its actors at another POP, against the lease (3 s) + 1 s target.
//!
//! Run: `cargo build --release -p tern-cli --bin tern &&
//! cargo bench -p tern-tests --bench cluster`. Counts are bounded.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tern_tests::metro::*;
use tern_tests::{DevCluster, counter_wasm, runtime};

const CALLS: usize = 2_000;
const MIGRATIONS: usize = 10;

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    let data = tempfile::tempdir().unwrap();
    let dev = DevCluster::start_pops(data.path(), 3);
    let wasm = counter_wasm().to_str().unwrap();
    dev.tern(&["deploy", "fixed", wasm, "--follow-caller", "false"])
        .unwrap();
    dev.tern(&[
        "deploy",
        "mover",
        wasm,
        "--follow-idle-ms",
        "50",
        "--durability",
        "turn",
    ])
    .unwrap();
    let rt = runtime();
    println!("| benchmark | tern | baseline | ratio |");
    println!("|---|---|---|---|");

    // 1. Forwarded vs direct.
    rt.block_on(async {
        let paris = dev.client(PARIS);
        let ny = dev.client(NEW_YORK);
        paris.call("fixed", "f", "get", Vec::new(), None).await.unwrap();
        let mut direct = Vec::new();
        for _ in 0..CALLS {
            let t = Instant::now();
            let r = paris.call("fixed", "f", "get", Vec::new(), None).await.unwrap();
            direct.push(t.elapsed());
            assert_eq!(r.via, "fra");
        }
        let mut fwd = Vec::new();
        for _ in 0..CALLS {
            let t = Instant::now();
            let r = ny.call("fixed", "f", "get", Vec::new(), None).await.unwrap();
            fwd.push(t.elapsed());
            assert_eq!((r.via.as_str(), r.reply.pop.as_str()), ("iad", "fra"));
        }
        let (d50, f50) = (percentile(&mut direct, 0.5), percentile(&mut fwd, 0.5));
        let (d99, f99) = (percentile(&mut direct, 0.99), percentile(&mut fwd, 0.99));
        println!(
            "| forwarded call p50 (iad -> fra) vs direct at fra, {CALLS} sequential `get` | {:.3} ms | {:.3} ms | {:.2} |",
            f50.as_secs_f64() * 1e3,
            d50.as_secs_f64() * 1e3,
            f50.as_secs_f64() / d50.as_secs_f64()
        );
        println!(
            "| forwarded call p99 vs direct p99 | {:.3} ms | {:.3} ms | {:.2} |",
            f99.as_secs_f64() * 1e3,
            d99.as_secs_f64() * 1e3,
            f99.as_secs_f64() / d99.as_secs_f64()
        );
    });

    // 2. Migration of 128 KiB and 1 MiB actors (idle > 50 ms moves at once).
    for (label, mb) in [("128 KiB", 0u32), ("1 MiB", 1)] {
        rt.block_on(async {
            let clients = [dev.client(PARIS), dev.client(NEW_YORK)];
            let id = format!("m{mb}");
            if mb > 0 {
                let body = format!("{{\"mb\": {mb}}}").into_bytes();
                clients[0].call("mover", &id, "grow", body, None).await.unwrap();
            } else {
                clients[0].call("mover", &id, "get", Vec::new(), None).await.unwrap();
            }
            let mut moves = Vec::new();
            let mut stays = Vec::new();
            for i in 0..MIGRATIONS {
                let c = &clients[(i + 1) % 2];
                // Idle long enough for the idle rule (50 ms).
                tokio::time::sleep(Duration::from_millis(80)).await;
                let t = Instant::now();
                let r = c.call("mover", &id, "get", Vec::new(), None).await.unwrap();
                moves.push(t.elapsed());
                assert_eq!(r.reply.pop, r.via, "the actor did not move to its caller");
                // A second call right away runs where it now is: the
                // baseline for a call that does not move.
                let t = Instant::now();
                c.call("mover", &id, "get", Vec::new(), None).await.unwrap();
                stays.push(t.elapsed());
            }
            let (m, s) = (percentile(&mut moves, 0.5), percentile(&mut stays, 0.5));
            println!(
                "| migration of a {label} actor (call that moves it) p50 vs a call that does not | {:.2} ms | {:.3} ms | {:.1} |",
                m.as_secs_f64() * 1e3,
                s.as_secs_f64() * 1e3,
                m.as_secs_f64() / s.as_secs_f64()
            );
        });
    }

    // 3. Failover: actors at iad, SIGKILL iad, call them through fra.
    rt.block_on(async {
        let ny = dev.client(NEW_YORK);
        let paris = dev.client(PARIS);
        let ids: Vec<String> = (0..6).map(|i| format!("fo{i}")).collect();
        for id in &ids {
            let r = ny.call("fixed", id, "get", Vec::new(), None).await.unwrap();
            assert_eq!(r.reply.pop, "iad");
        }
        dev.signal_pop("iad", Signal::SIGKILL);
        let killed = Instant::now();
        // Sequential: the time until the last one answers is the worst.
        for id in &ids {
            paris.call("fixed", id, "get", Vec::new(), None).await.unwrap();
        }
        let worst = killed.elapsed();
        println!(
            "| failover: SIGKILL of a POP to the last of its 6 actors answering elsewhere | {:.0} ms | 4000 ms (lease 3 s + 1 s target) | {:.2} |",
            worst.as_secs_f64() * 1e3,
            worst.as_secs_f64() / 4.0
        );
    });
}
