//! No single point of failure: `tern dev` runs two directory processes
//! over one store, POPs use whichever answers, and a POP outlives every
//! directory for as long as its lease lasts. Real processes, real signals.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use tern_client::call_request;
use tern_proto::directory as dpb;
use tern_tests::metro::*;
use tern_tests::{DevCluster, counter_wasm, runtime, tern_bin};
use tonic::Code;

fn deploy(dev: &DevCluster) {
    dev.tern(&["deploy", "counter", counter_wasm().to_str().unwrap()])
        .expect("deploy");
}

fn value(payload: &[u8]) -> u64 {
    let v: serde_json::Value = serde_json::from_slice(payload).expect("JSON reply");
    v["value"].as_u64().expect("a value")
}

/// Every POP's incarnation, as directory `i` lists them (asked as fra).
async fn incarnations(dev: &DevCluster, i: usize) -> BTreeMap<String, u64> {
    dev.directory_as_pop(i, "fra")
        .await
        .list_pops(dpb::ListPopsRequest {})
        .await
        .expect("list POPs")
        .into_inner()
        .pops
        .into_iter()
        .map(|p| (p.name, p.incarnation))
        .collect()
}

/// 2 directories, 3 POPs, clients near each POP incrementing counters with
/// idempotency keys, a new counter every few calls (so calls keep needing
/// claims) and every one also read from a POP far away (a lookup and a
/// forward). The first directory (the one every POP uses first) is
/// SIGKILLed early and stays dead (`tern dev` is stopped, so it restarts
/// nothing) for longer than a lease: no POP loses its lease (none
/// registers again), every call succeeds (retries included), and every
/// acknowledged increment is there exactly once.
#[test]
fn directory_kill_loses_no_lease() {
    first_directory_fails_under_load(Signal::SIGKILL);
}

/// The same with the first directory frozen (SIGSTOP) instead: requests
/// to it get no answer at all, so the POPs must give up on it within a
/// third of the lease and go to the other one.
#[test]
fn directory_freeze_loses_no_lease() {
    first_directory_fails_under_load(Signal::SIGSTOP);
}

fn first_directory_fails_under_load(how: Signal) {
    let data = tempfile::tempdir().unwrap();
    let dev = DevCluster::start_pops(data.path(), 3);
    assert_eq!(dev.cluster.directories.len(), 2, "tern dev runs two");
    assert_eq!(
        dev.cluster.directory.as_deref(),
        Some(dev.cluster.directories[0].endpoint.as_str()),
        "`directory` stays the first endpoint"
    );
    deploy(&dev);
    let rt = runtime();
    let before = rt.block_on(incarnations(&dev, 1));
    assert_eq!(before.len(), 3, "{before:?}");
    // Load for a lease and a half past the kill.
    const LOAD_MS: u64 = 6_000;
    const KILL_AT_MS: u64 = 1_000;
    const CALLS_PER_ACTOR: u64 = 4;
    let victim = dev.cluster.directories[0].pid;
    let results = rt.block_on(async {
        let started = tokio::time::Instant::now();
        let mut tasks = Vec::new();
        for (i, (near, far)) in [(PARIS, SEOUL), (NEW_YORK, PARIS), (SEOUL, NEW_YORK)]
            .into_iter()
            .enumerate()
        {
            let (c, far) = (dev.client(near), dev.client(far));
            tasks.push(tokio::spawn(async move {
                let mut acked: BTreeMap<String, u64> = BTreeMap::new();
                let mut errors = Vec::new();
                let mut slowest_ms = 0u128;
                let mut n = 0u64;
                while started.elapsed() < Duration::from_millis(LOAD_MS) {
                    let id = format!("c{i}-{}", n / CALLS_PER_ACTOR);
                    let key = Some(format!("{id}-{n}"));
                    let t = std::time::Instant::now();
                    let r = c
                        .call("counter", &id, "incr", b"{\"by\":1}".to_vec(), key)
                        .await;
                    slowest_ms = slowest_ms.max(t.elapsed().as_millis());
                    match r {
                        Ok(_) => *acked.entry(id.clone()).or_default() += 1,
                        Err(e) => {
                            errors.push(format!("incr {id}: {:?}: {}", e.code(), e.message()))
                        }
                    }
                    if let Err(e) = far.call("counter", &id, "get", Vec::new(), None).await {
                        errors.push(format!("get {id}: {:?}: {}", e.code(), e.message()));
                    }
                    n += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                eprintln!(
                    "client {i}: {n} increments and {n} remote reads, slowest increment {slowest_ms} ms, {} failed",
                    errors.len()
                );
                (acked, errors)
            }));
        }
        tokio::time::sleep(Duration::from_millis(KILL_AT_MS)).await;
        dev.supervisor(false);
        DevCluster::signal(victim, how);
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.expect("client task"));
        }
        out
    });
    let mut all = BTreeMap::new();
    for (acked, errors) in &results {
        assert!(errors.is_empty(), "calls failed: {errors:?}");
        all.extend(acked.clone());
    }
    assert!(
        all.len() >= 6,
        "the load claimed new actors throughout: {all:?}"
    );
    // The second directory saw no POP register again: no lease was lost.
    let after = rt.block_on(incarnations(&dev, 1));
    assert_eq!(after, before, "a POP lost its lease and registered again");
    for p in ["fra", "iad", "nrt"] {
        assert_eq!(dev.status(p)["lease_ok"], true, "{p}");
    }
    rt.block_on(async {
        let c = dev.client(PARIS);
        for (id, acked) in &all {
            let r = c
                .call("counter", id, "get", Vec::new(), None)
                .await
                .expect("get");
            assert_eq!(value(&r.reply.payload), *acked, "{id}: lost or doubled");
        }
    });
    if how == Signal::SIGSTOP {
        DevCluster::signal(victim, Signal::SIGCONT);
    }
    dev.supervisor(true);
}

/// Two claimant POPs (c1, c2, with certificates from the cluster's CA)
/// claim the same actors concurrently, each through both directory
/// processes, and release some of what they win: every epoch of every
/// actor has exactly one winner, an actor passes to the other claimant
/// only after its holder released it, and a refused claim names the other
/// POP.
#[test]
fn concurrent_claims_through_two_directories_grant_one() {
    let data = tempfile::tempdir().unwrap();
    let dev = DevCluster::start_pops(data.path(), 1);
    let tls = data.path().join("tls");
    let out = std::process::Command::new(tern_bin())
        .args(["certs", "--pop", "c1,c2", "--dir"])
        .arg(&tls)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    const ACTORS: usize = 8;
    const ROUNDS: usize = 40;
    let rt = runtime();
    let (grants, released) = rt.block_on(async {
        let mut incs = BTreeMap::new();
        for (pop, dir) in [("c1", 0), ("c2", 1)] {
            let r = dev
                .directory_as_pop(dir, pop)
                .await
                .register(dpb::RegisterRequest {
                    name: pop.into(),
                    endpoint: "https://127.0.0.1:9".into(),
                    lat: 0.0,
                    lon: 0.0,
                })
                .await
                .expect("register")
                .into_inner();
            incs.insert(pop, r.incarnation);
        }
        let grants = Arc::new(std::sync::Mutex::new(Vec::new()));
        let released = Arc::new(std::sync::Mutex::new(BTreeSet::new()));
        let mut tasks = Vec::new();
        for pop in ["c1", "c2"] {
            for dir in 0..2 {
                let mut d = dev.directory_as_pop(dir, pop).await;
                let inc = incs[pop];
                let grants = grants.clone();
                let released = released.clone();
                tasks.push(tokio::spawn(async move {
                    for round in 0..ROUNDS {
                        let actor = format!("counter/race-{}", round % ACTORS);
                        // Keep the lease while racing.
                        if round % 10 == 0 {
                            let hb = d
                                .heartbeat(dpb::HeartbeatRequest {
                                    name: pop.into(),
                                    incarnation: inc,
                                })
                                .await
                                .expect("heartbeat")
                                .into_inner();
                            assert!(hb.alive, "{pop} kept its lease");
                        }
                        let r = d
                            .claim(dpb::ClaimRequest {
                                actor: actor.clone(),
                                pop: pop.into(),
                                incarnation: inc,
                                request_token: 0,
                            })
                            .await
                            .expect("claim")
                            .into_inner();
                        match r.outcome.expect("an outcome") {
                            dpb::claim_reply::Outcome::Granted(g) => {
                                grants.lock().unwrap().push((
                                    actor.clone(),
                                    g.epoch,
                                    pop.to_string(),
                                ));
                                if round % 2 == 0 {
                                    // The same POP's other task may have
                                    // claimed it again since (a new epoch):
                                    // then this release is fenced.
                                    let r = d
                                        .release(dpb::ReleaseRequest {
                                            actor: actor.clone(),
                                            epoch: g.epoch,
                                        })
                                        .await;
                                    if r.is_ok() {
                                        released.lock().unwrap().insert((actor, g.epoch));
                                    }
                                    if let Err(e) = r {
                                        assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
                                        assert!(e.message().contains("fenced"), "{e:?}");
                                    }
                                }
                            }
                            dpb::claim_reply::Outcome::Held(h) => {
                                assert_ne!(h.pop, pop, "{actor}: refused by its own holding");
                            }
                        }
                    }
                }));
            }
        }
        for t in tasks {
            t.await.expect("claimant");
        }
        let grants = Arc::try_unwrap(grants).unwrap().into_inner().unwrap();
        let released = Arc::try_unwrap(released).unwrap().into_inner().unwrap();
        (grants, released)
    });
    let v = tern_directory::audit::takeovers_without_release(&grants, &released);
    assert!(v.is_empty(), "{v:?}");
    let by: BTreeSet<&str> = grants.iter().map(|g| g.2.as_str()).collect();
    assert_eq!(by.len(), 2, "both claimants won some: {grants:?}");
}

/// With every directory SIGKILLed (and `tern dev` stopped, so none comes
/// back yet), the actors a POP holds keep answering for as long as its
/// lease lasts, and a call that needs a claim fails at once with
/// UNAVAILABLE naming the cause. Once the directories are back, new
/// actors activate again, without restarting any POP.
#[test]
fn pops_serve_held_actors_while_directories_down() {
    let data = tempfile::tempdir().unwrap();
    let mut dev = DevCluster::start_pops(data.path(), 2);
    deploy(&dev);
    let pops_before: Vec<u32> = dev.cluster.pops.iter().map(|p| p.pid).collect();
    let rt = runtime();
    rt.block_on(async {
        let mut fra = dev.connect("fra").await;
        let incr = || call_request("counter", "held", "incr", b"{\"by\":1}".to_vec());
        let r = fra.call(incr()).await.expect("activate").into_inner();
        assert_eq!(r.pop, "fra");
        dev.supervisor(false);
        for d in &dev.cluster.directories {
            DevCluster::signal(d.pid, Signal::SIGKILL);
        }
        for n in 2..=6 {
            let r = fra
                .call(incr())
                .await
                .expect("a held actor answers while every directory is down")
                .into_inner();
            assert_eq!(value(&r.payload), n);
        }
        let e = fra
            .call(call_request(
                "counter",
                "new",
                "incr",
                b"{\"by\":1}".to_vec(),
            ))
            .await
            .expect_err("a claim needs a directory");
        assert_eq!(e.code(), Code::Unavailable, "{e:?}");
        assert!(
            e.message().contains("no directory answered"),
            "the cause is named: {e:?}"
        );
        dev.supervisor(true);
    });
    let killed: Vec<u32> = dev.cluster.directories.iter().map(|d| d.pid).collect();
    wait_for_new_directories(&mut dev, &killed);
    rt.block_on(async {
        assert_eq!(incr_until_served(&dev, "fra", "new").await, 1);
        let r = dev
            .connect("fra")
            .await
            .call(call_request("counter", "held", "get", Vec::new()))
            .await
            .expect("get")
            .into_inner();
        assert_eq!(value(&r.payload), 6, "nothing lost");
    });
    dev.refresh();
    let pops_after: Vec<u32> = dev.cluster.pops.iter().map(|p| p.pid).collect();
    assert_eq!(pops_after, pops_before, "no POP was restarted");
}

/// Waits (bounded) until the supervisor has restarted every directory
/// whose process id is in `killed`, and says so in its log.
fn wait_for_new_directories(dev: &mut DevCluster, killed: &[u32]) {
    let started = std::time::Instant::now();
    loop {
        dev.refresh();
        let log = std::fs::read_to_string(dev.data().join("dev.log")).unwrap_or_default();
        if dev
            .cluster
            .directories
            .iter()
            .all(|d| !killed.contains(&d.pid))
            && log.contains("child restarted")
        {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the supervisor did not restart the directories: {:?}\n{log}",
            dev.cluster.directories
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Calls `incr` on `counter/<id>` at POP `pop` until it succeeds (bounded):
/// the POP has a lease and reaches a directory again.
async fn incr_until_served(dev: &DevCluster, pop: &str, id: &str) -> u64 {
    let mut c = dev.connect(pop).await;
    let started = std::time::Instant::now();
    loop {
        match c
            .call(call_request("counter", id, "incr", b"{\"by\":1}".to_vec()))
            .await
        {
            Ok(r) => return value(&r.into_inner().payload),
            Err(e) => assert!(
                started.elapsed() < Duration::from_secs(30),
                "{pop} did not serve {id} again: {e:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The supervisor restarts a directory that died, on its address, and it
/// serves; with every directory down for longer than a lease, POPs lose
/// their leases, and once the directories are back they register again
/// and serve every actor, with nothing lost and no POP restarted.
#[test]
fn directory_restart_resumes_service() {
    let data = tempfile::tempdir().unwrap();
    let mut dev = DevCluster::start_pops(data.path(), 2);
    deploy(&dev);
    let pops_before: Vec<u32> = dev.cluster.pops.iter().map(|p| p.pid).collect();
    let rt = runtime();
    assert_eq!(rt.block_on(incr_until_served(&dev, "fra", "kept")), 1);
    // One directory dies; the supervisor brings it back where it was.
    let second = dev.cluster.directories[1].clone();
    DevCluster::signal(second.pid, Signal::SIGKILL);
    wait_for_new_directories(&mut dev, &[second.pid]);
    assert_eq!(dev.cluster.directories[1].endpoint, second.endpoint);
    let listed = rt.block_on(incarnations(&dev, 1));
    assert_eq!(
        listed.len(),
        2,
        "the restarted directory serves: {listed:?}"
    );
    // Every directory dies, for longer than a lease.
    dev.supervisor(false);
    let killed: Vec<u32> = dev.cluster.directories.iter().map(|d| d.pid).collect();
    for pid in &killed {
        DevCluster::signal(*pid, Signal::SIGKILL);
    }
    dev.wait_until("fra's lease to lapse", 30_000, || {
        dev.status("fra")["lease_ok"] == false
    });
    dev.supervisor(true);
    wait_for_new_directories(&mut dev, &killed);
    rt.block_on(async {
        assert_eq!(
            incr_until_served(&dev, "fra", "kept").await,
            2,
            "nothing lost"
        );
        assert_eq!(incr_until_served(&dev, "iad", "fresh").await, 1);
    });
    dev.refresh();
    let pops_after: Vec<u32> = dev.cluster.pops.iter().map(|p| p.pid).collect();
    assert_eq!(pops_after, pops_before, "no POP was restarted");
}
