//! Alarms and push on real `tern` processes (see BENCHMARKS.md):
//!
//! 1. alarm lateness: `ALARMS` actors each set one alarm about 2 s ahead,
//!    once while they stay active and once while they are evicted before
//!    it is due (woken by a POP's sweeper); lateness is delivery time minus
//!    due time, as the actor's alarm handler reports it in its event;
//! 2. publish-to-receive: a client publishes through `publish` calls
//!    carrying their send time, and subscribers at the actor's POP and at
//!    another POP time each event's arrival; the baseline is the `publish`
//!    call's own round trip, measured in the same run;
//! 3. subscribers held: `SUBSCRIBERS` subscriptions to one POP, and its
//!    resident memory (VmRSS) before and after.
//!
//! Run: `cargo build --release -p tern-cli --bin tern &&
//! cargo bench -p tern-tests --bench push`. Counts and waits are bounded;
//! everything runs on loopback.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tern_client::{Events, TernClient};
use tern_tests::metro::*;
use tern_tests::{DevCluster, call_json, counter_wasm, percentile, runtime};
use tokio_stream::StreamExt;

const ALARMS: usize = 200;
const EVENTS: usize = 500;
const SUBSCRIBERS: usize = 2_000;
const TOPICS: usize = 20;
/// Streams per client connection (HTTP/2 servers cap concurrent streams
/// per connection; 200 by default).
const STREAMS_PER_CLIENT: usize = 100;

fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// VmRSS of process `pid`, bytes.
fn rss(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let kb: u64 = s
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .expect("VmRSS");
    kb * 1024
}

async fn next(events: &mut Events) -> tern_client::pb::Event {
    tokio::time::timeout(Duration::from_secs(60), events.next())
        .await
        .expect("an event within 60 s")
        .expect("open")
        .expect("an event")
}

fn row(what: &str, v: &[f64], baseline: Option<(&str, &[f64])>) {
    let (p50, p99) = (percentile(v, 50.0), percentile(v, 99.0));
    match baseline {
        Some((name, b)) => {
            let (b50, b99) = (percentile(b, 50.0), percentile(b, 99.0));
            println!(
                "| {what} | p50 {p50:.1} ms, p99 {p99:.1} ms | {name}: p50 {b50:.1} ms, p99 {b99:.1} ms | {:.2}x / {:.2}x |",
                p50 / b50.max(0.001),
                p99 / b99.max(0.001)
            );
        }
        None => println!("| {what} | p50 {p50:.1} ms, p99 {p99:.1} ms | | |"),
    }
}

fn main() {
    let data = tempfile::tempdir().unwrap();
    let dev = DevCluster::start_pops(data.path(), 2);
    let wasm = counter_wasm().to_str().unwrap();
    dev.tern(&["deploy", "timer", wasm]).unwrap();
    dev.tern(&["deploy", "sleeper", wasm, "--idle-ms", "300"])
        .unwrap();
    dev.tern(&["deploy", "feed", wasm, "--follow-caller", "false"])
        .unwrap();
    let rt = runtime();
    println!("| benchmark | tern | baseline | ratio |");
    println!("|---|---|---|---|");
    let mut summary = serde_json::Map::new();
    rt.block_on(async {
        // 1. Alarm lateness.
        for (ty, label) in [("timer", "active"), ("sleeper", "hibernated")] {
            let c = dev.client(PARIS);
            let readers: Vec<TernClient> = (0..ALARMS.div_ceil(STREAMS_PER_CLIENT))
                .map(|_| dev.client(PARIS))
                .collect();
            let mut subs = Vec::new();
            for i in 0..ALARMS {
                subs.push(readers[i / STREAMS_PER_CLIENT].subscribe(ty, &format!("a{i}"), "alarms", 0));
            }
            for i in 0..ALARMS {
                call_json(&c, ty, &format!("a{i}"), "set_alarm", json!({"in_ms": 2000 + (i % 50) * 10, "tag": label})).await;
            }
            let mut late = Vec::new();
            for s in &mut subs {
                let e = next(s).await;
                let v: Value = serde_json::from_slice(&e.payload).unwrap();
                late.push(v[3].as_u64().unwrap().saturating_sub(v[2].as_u64().unwrap()) as f64);
            }
            row(&format!("alarm lateness, {label} actors ({ALARMS} alarms)"), &late, None);
            summary.insert(
                format!("alarm_late_{label}_ms"),
                json!({"p50": percentile(&late, 50.0), "p99": percentile(&late, 99.0)}),
            );
        }

        // 2. Publish-to-receive.
        let writer = dev.client(PARIS);
        call_json(&writer, "feed", "f", "get", json!(null)).await;
        let mut local = dev.client(PARIS).subscribe("feed", "f", "t", 0);
        let mut remote = dev.client(NEW_YORK).subscribe("feed", "f", "t", 0);
        let (mut at_local, mut at_remote, mut rtt) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..EVENTS {
            let sent = wall_ms();
            let t = Instant::now();
            call_json(&writer, "feed", "f", "publish", json!({"topic": "t", "n": 1, "prefix": format!("{sent}:")})).await;
            rtt.push(t.elapsed().as_secs_f64() * 1e3);
            for (s, out) in [(&mut local, &mut at_local), (&mut remote, &mut at_remote)] {
                let e = next(s).await;
                let p = String::from_utf8(e.payload).unwrap();
                let sent: u64 = p.split(':').next().unwrap().parse().unwrap();
                out.push(wall_ms().saturating_sub(sent) as f64);
            }
        }
        row("publish to receive, subscriber at the actor's POP", &at_local, Some(("the publish call", &rtt)));
        row("publish to receive, subscriber at another POP", &at_remote, Some(("the publish call", &rtt)));
        summary.insert("push_latency_local_ms".into(), json!({"p50": percentile(&at_local, 50.0), "p99": percentile(&at_local, 99.0)}));
        summary.insert("push_latency_remote_ms".into(), json!({"p50": percentile(&at_remote, 50.0), "p99": percentile(&at_remote, 99.0)}));

        // 3. Subscribers held by one POP.
        let pid = dev.pop("fra").pid;
        let c = dev.client(PARIS);
        for t in 0..TOPICS {
            call_json(&c, "feed", &format!("h{t}"), "get", json!(null)).await;
        }
        let readers: Vec<TernClient> = (0..SUBSCRIBERS.div_ceil(STREAMS_PER_CLIENT))
            .map(|_| dev.client(PARIS))
            .collect();
        let before = rss(pid);
        let mut held = Vec::new();
        for i in 0..SUBSCRIBERS {
            held.push(readers[i / STREAMS_PER_CLIENT].subscribe("feed", &format!("h{}", i % TOPICS), "t", 0));
        }
        // Every subscription is open once one event reaches each.
        for t in 0..TOPICS {
            call_json(&c, "feed", &format!("h{t}"), "publish", json!({"topic": "t", "n": 1})).await;
        }
        for s in &mut held {
            next(s).await;
        }
        let after = rss(pid);
        let per = after.saturating_sub(before) as f64 / SUBSCRIBERS as f64;
        println!(
            "| subscribers held by one POP | {SUBSCRIBERS} on {TOPICS} topics: {:.1} MiB more resident, {:.1} KiB per subscriber | | |",
            after.saturating_sub(before) as f64 / (1 << 20) as f64,
            per / 1024.0
        );
        summary.insert("subscribers".into(), json!(SUBSCRIBERS));
        summary.insert("bytes_per_subscriber".into(), json!(per.round()));
        drop(held);
    });
    println!("{}", Value::Object(summary));
}
