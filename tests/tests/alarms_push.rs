//! Durable alarms and push across real process failures: `tern dev`
//! clusters on loopback ports chosen at run time, real SIGKILLs.
//!
//! The counter's alarm handler publishes one event per alarm on topic
//! `alarms` (`[id, tag, due_ms, delivered_ms, pop]`), so a subscriber sees
//! alarms fire without calling the actor (a call would activate it and
//! hide whether anything else woke it).

use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::{Value, json};
use tern_client::pb;
use tern_tests::metro::*;
use tern_tests::{DevCluster, call_json, counter_wasm, runtime};
use tokio_stream::StreamExt;

fn wasm() -> &'static str {
    counter_wasm().to_str().unwrap()
}

/// The next event of `events` within `secs` seconds.
async fn next_event(events: &mut tern_client::Events, secs: u64) -> pb::Event {
    tokio::time::timeout(Duration::from_secs(secs), events.next())
        .await
        .unwrap_or_else(|_| panic!("no event within {secs} s"))
        .expect("the subscription is open")
        .unwrap_or_else(|s| panic!("the subscription ended: {s:?}"))
}

/// An `alarms` event: (seq, id, tag, due_ms, delivered_ms, pop).
fn alarm_event(e: &pb::Event) -> (u64, u64, String, u64, u64, String) {
    let v: Value = serde_json::from_slice(&e.payload).expect("JSON event");
    (
        e.seq,
        v[0].as_u64().unwrap(),
        v[1].as_str().unwrap().to_string(),
        v[2].as_u64().unwrap(),
        v[3].as_u64().unwrap(),
        v[4].as_str().unwrap().to_string(),
    )
}

/// A repeating alarm keeps firing after the POP that ran its actor is
/// killed (and not restarted): a POP chosen among the live ones wakes the
/// actor once the dead POP's lease lapses. No alarm is lost or delivered
/// twice, and the subscriber (at another POP) sees every event once.
#[test]
fn alarm_fires_after_pop_kill() {
    let data = tempfile::tempdir().unwrap();
    let dev = DevCluster::start_pops(data.path(), 2);
    dev.tern(&["deploy", "timer", wasm()]).expect("deploy");
    let rt = runtime();
    rt.block_on(async {
        let near_fra = dev.client(PARIS);
        let set = call_json(&near_fra, "timer", "t1", "set_alarm", json!({"in_ms": 0, "tag": "repeat:300"})).await;
        assert!(set["id"].as_u64().is_some());
        let near_iad = dev.client(NEW_YORK);
        let mut events = near_iad.subscribe("timer", "t1", "alarms", 0);
        let mut seen = Vec::new();
        // A few firings at fra first.
        while seen.len() < 3 {
            seen.push(alarm_event(&next_event(&mut events, 20).await));
        }
        assert!(seen.iter().all(|e| e.5 == "fra"), "{seen:?}");
        // fra dies for good (its supervisor is stopped too).
        dev.supervisor(false);
        dev.signal_pop("fra", Signal::SIGKILL);
        let killed_at = seen.last().unwrap().4;
        let first_after = loop {
            let e = alarm_event(&next_event(&mut events, 60).await);
            seen.push(e.clone());
            if e.5 != "fra" {
                break e;
            }
        };
        for _ in 0..3 {
            seen.push(alarm_event(&next_event(&mut events, 20).await));
        }
        dev.supervisor(true);
        eprintln!(
            "first alarm after the kill: due {} ms after the last one at fra, delivered {} ms late at {}",
            first_after.3.saturating_sub(killed_at),
            first_after.4.saturating_sub(first_after.3),
            first_after.5
        );
        for w in seen.windows(2) {
            assert_eq!(w[1].0, w[0].0 + 1, "events in order, no gap, no duplicate: {seen:?}");
        }
        let mut ids: Vec<u64> = seen.iter().map(|e| e.1).collect();
        ids.dedup();
        assert_eq!(ids.len(), seen.len(), "an alarm was delivered twice: {seen:?}");
        // Each firing re-armed the next one 300 ms after its due time:
        // none was skipped.
        for w in seen.windows(2) {
            assert_eq!(w[1].3, w[0].3 + 300, "a tick was skipped: {seen:?}");
        }
    });
}

/// An alarm set before the whole cluster is killed fires after it comes
/// back, though nobody calls the actor: the restarted POPs find it in the
/// store's due index.
#[test]
fn alarm_survives_restart() {
    let data = tempfile::tempdir().unwrap();
    let mut dev = DevCluster::start(data.path());
    dev.tern(&["deploy", "timer", wasm()]).expect("deploy");
    let rt = runtime();
    let set = rt.block_on(async {
        call_json(
            &dev.client(PARIS),
            "timer",
            "r1",
            "set_alarm",
            json!({"in_ms": 1500, "tag": "once"}),
        )
        .await
    });
    dev.kill9();
    let dev = DevCluster::start(data.path());
    rt.block_on(async {
        let c = dev.client(PARIS);
        let mut events = c.subscribe("timer", "r1", "alarms", 0);
        let e = alarm_event(&next_event(&mut events, 60).await);
        assert_eq!(
            (e.1, e.2.as_str(), e.3),
            (
                set["id"].as_u64().unwrap(),
                "once",
                set["at_ms"].as_u64().unwrap()
            )
        );
        assert!(e.4 >= e.3, "an alarm never fires early");
        let fired = call_json(&c, "timer", "r1", "fired", json!(null)).await;
        assert_eq!(fired["fired"].as_array().unwrap().len(), 1, "{fired}");
    });
}

/// A subscriber at the POP running the actor loses that POP: it resumes at
/// another POP after its last event while the actor fails over and keeps
/// publishing. It sees every event exactly once, in order.
#[test]
fn push_resumes_without_gap_after_failover() {
    const ROUNDS: u64 = 30;
    let data = tempfile::tempdir().unwrap();
    let dev = DevCluster::start_pops(data.path(), 2);
    dev.tern(&["deploy", "feed", wasm()]).expect("deploy");
    let rt = runtime();
    rt.block_on(async {
        let writer = dev.client(PARIS);
        let reader = dev.client(PARIS);
        let mut events = reader.subscribe("feed", "f1", "state", 0);
        let mut seqs = Vec::new();
        let mut published = 0;
        for round in 0..ROUNDS {
            if round == ROUNDS / 3 {
                dev.supervisor(false);
                dev.signal_pop("fra", Signal::SIGKILL);
            }
            let key = format!("round-{round}");
            writer
                .call(
                    "feed",
                    "f1",
                    "publish",
                    serde_json::to_vec(
                        &json!({"topic": "state", "n": 2, "prefix": format!("r{round}-")}),
                    )
                    .unwrap(),
                    Some(key),
                )
                .await
                .expect("publish, retried across the failover");
            published += 2;
            while (seqs.len() as u64) < published {
                let e = next_event(&mut events, 60).await;
                seqs.push((e.seq, String::from_utf8(e.payload).unwrap()));
            }
        }
        dev.supervisor(true);
        let expected: Vec<(u64, String)> = (0..ROUNDS)
            .flat_map(|r| (0..2).map(move |i| format!("r{r}-{i}")))
            .enumerate()
            .map(|(i, p)| (i as u64 + 1, p))
            .collect();
        assert_eq!(seqs, expected, "every event once, in order");
    });
}

/// A POP stopped with SIGTERM ends its subscriptions with UNAVAILABLE,
/// naming the seq to resume after, instead of holding its shutdown open.
#[test]
fn pop_shutdown_ends_subscriptions() {
    let data = tempfile::tempdir().unwrap();
    let mut dev = DevCluster::start(data.path());
    dev.tern(&["deploy", "feed", wasm()]).expect("deploy");
    let rt = runtime();
    let mut stream = rt.block_on(async {
        let c = dev.client(PARIS);
        call_json(&c, "feed", "s", "publish", json!({"topic": "t", "n": 2})).await;
        let mut raw = dev.connect("fra").await;
        let mut s = raw
            .subscribe(pb::SubscribeRequest {
                r#type: "feed".into(),
                id: "s".into(),
                topic: "t".into(),
                resume_after: 0,
            })
            .await
            .expect("subscribe")
            .into_inner();
        for seq in 1..=2 {
            let e = s.message().await.expect("an event").expect("open");
            assert_eq!(e.seq, seq);
        }
        s
    });
    let status = dev.terminate();
    assert!(status.success(), "tern dev exited with {status}");
    let end = rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(30), stream.message())
            .await
            .expect("the stream ends")
    });
    let s = end.expect_err("the stream ends with a status");
    assert_eq!(s.code(), tonic::Code::Unavailable, "{s:?}");
    assert!(
        s.message().contains("shutting down") && s.message().contains("resume_after=2"),
        "{s:?}"
    );
}
