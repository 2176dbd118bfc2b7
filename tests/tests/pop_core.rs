//! The POP core under hostile load, with real `tern` processes: a CPU storm
//! must not starve other actors or cost the lease, a frozen owner must not
//! hang its callers, and a cold burst must not queue behind connection
//! setup.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tern_client::{call_request, connect};
use tern_tests::{DevCluster, counter_wasm, percentile, runtime, storm};

fn wasm() -> &'static str {
    counter_wasm().to_str().unwrap()
}

/// These tests measure latency on a 2-core machine: they run one at a time
/// (each starts its own cluster).
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner())
}

#[test]
fn cpu_storm_does_not_starve_other_actors() {
    let _serial = one_at_a_time();
    let data = tempfile::tempdir().unwrap();
    let dev = DevCluster::start_pops(data.path(), 1);
    dev.tern(&["deploy", "counter", wasm()]).expect("deploy");
    let rt = runtime();
    let report =
        rt.block_on(async { storm(dev.connect("fra").await, 64, Duration::from_secs(10)).await });
    let p50 = percentile(&report.calm_ms, 50.0);
    let p99 = percentile(&report.calm_ms, 99.0);
    eprintln!(
        "storm: {} spinner turns stopped by the budget; unrelated actor: {} calls, p50 {p50:.1} ms, p99 {p99:.1} ms",
        report.spins,
        report.calm_ms.len()
    );
    assert!(report.spins >= 64, "the storm ran ({} spins)", report.spins);
    assert!(report.calm_ms.len() >= 20, "the unrelated actor answered");
    assert_eq!(report.lease_errors, 0, "no call saw a lost lease");
    assert!(report.calm_errors.is_empty(), "{:?}", report.calm_errors);
    // "Within a few turn budgets": the budget is 50 ms.
    assert!(
        p99 < 4.0 * 50.0,
        "the unrelated actor's p99 was {p99:.1} ms during the storm"
    );
    let s = dev.status("fra");
    assert_eq!(s["lease_ok"], true, "{s}");
    let log = std::fs::read_to_string(data.path().join("pop-fra.log")).unwrap();
    assert!(
        !log.contains("lease lapsed") && !log.contains("lease ended"),
        "the POP lost its lease during the storm"
    );
}

#[test]
fn frozen_owner_does_not_hang_callers() {
    let _serial = one_at_a_time();
    let data = tempfile::tempdir().unwrap();
    let dev = DevCluster::start_pops(data.path(), 2);
    dev.tern(&["deploy", "acct", wasm(), "--follow-caller", "false"])
        .expect("deploy");
    let rt = runtime();
    rt.block_on(async {
        let mut fra = dev.connect("fra").await;
        let r = fra
            .call(call_request("acct", "f", "incr", b"{\"by\":1}".to_vec()))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.pop, "fra");
        let mut acked = 1u64;
        dev.signal_pop("fra", Signal::SIGSTOP);
        let frozen = Instant::now();
        // Calls through iad, unkeyed and without client retries: some sent
        // at once (before the lease lapses), some after it lapsed.
        let iad = dev.pop("iad").endpoint.clone();
        let creds = dev.creds();
        let mut calls = Vec::new();
        for i in 0..8u64 {
            let iad = iad.clone();
            let creds = creds.clone();
            calls.push(tokio::spawn(async move {
                if i >= 4 {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
                let mut c = connect(&iad, &creds).await.unwrap();
                let mut req =
                    tonic::Request::new(call_request("acct", "f", "incr", b"{\"by\":1}".to_vec()));
                req.set_timeout(Duration::from_secs(15));
                let r = c.call(req).await;
                (r.map(|r| r.into_inner()), frozen.elapsed())
            }));
        }
        for c in calls {
            let (r, took) = c.await.unwrap();
            let r = r.unwrap_or_else(|s| panic!("a call through iad failed: {s:?}"));
            assert_eq!(r.pop, "iad", "the actor's new activation answered");
            assert!(
                took < Duration::from_secs(12),
                "answered {took:?} after the freeze: callers must not wait for the owner to wake"
            );
            acked += 1;
        }
        // Keep fra frozen for 20 s in all, then wake it: it must not apply
        // anything it still holds.
        let left = Duration::from_secs(20).saturating_sub(frozen.elapsed());
        tokio::time::sleep(left).await;
        dev.signal_pop("fra", Signal::SIGCONT);
        dev.wait_until("fra to register again", 20_000, || {
            dev.status("iad")["pops"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["name"] == "fra" && p["alive"] == true)
        });
        let mut c = dev.connect("iad").await;
        let v = c
            .call(call_request("acct", "f", "get", Vec::new()))
            .await
            .unwrap()
            .into_inner();
        let v: serde_json::Value = serde_json::from_slice(&v.payload).unwrap();
        assert_eq!(
            v["value"].as_u64(),
            Some(acked),
            "the final value equals the acknowledged calls"
        );
    });
}

#[test]
fn cold_burst_is_not_serialized() {
    let _serial = one_at_a_time();
    const BURST: usize = 60;
    let data = tempfile::tempdir().unwrap();
    let dev = DevCluster::start_pops(data.path(), 2);
    dev.tern(&["deploy", "acct", wasm(), "--follow-caller", "false"])
        .expect("deploy");
    let rt = runtime();
    rt.block_on(async {
        let mut fra = dev.connect("fra").await;
        fra.call(call_request("acct", "b", "get", Vec::new()))
            .await
            .unwrap();
        let iad = dev.connect("iad").await;
        let burst = || {
            let iad = iad.clone();
            async move {
                let ok = Arc::new(AtomicUsize::new(0));
                let started = Instant::now();
                let mut calls = Vec::new();
                for _ in 0..BURST {
                    let mut c = iad.clone();
                    let ok = ok.clone();
                    calls.push(tokio::spawn(async move {
                        let r = c
                            .call(call_request("acct", "b", "incr", b"{\"by\":1}".to_vec()))
                            .await
                            .unwrap()
                            .into_inner();
                        assert_eq!(r.pop, "fra", "forwarded to the owner");
                        ok.fetch_add(1, Ordering::Relaxed);
                    }));
                }
                for c in calls {
                    c.await.unwrap();
                }
                assert_eq!(ok.load(Ordering::Relaxed), BURST);
                started.elapsed()
            }
        };
        let cold = burst().await;
        let warm = burst().await;
        eprintln!("burst of {BURST} forwarded calls: cold {cold:?}, warm {warm:?}");
        assert!(
            cold <= warm * 10 + Duration::from_millis(100),
            "the cold burst took {cold:?}, more than 10x the warm one ({warm:?})"
        );
    });
}
