//! Cluster tests with several POPs: real `tern dev` processes (a directory
//! and POPs) on loopback ports chosen at run time, real signals.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::{Value, json};
use tern_client::TernClient;
use tern_tests::metro::*;
use tern_tests::{DevCluster, counter_wasm, runtime};

fn wasm() -> &'static str {
    counter_wasm().to_str().unwrap()
}

fn body(v: Value) -> Vec<u8> {
    serde_json::to_vec(&v).unwrap()
}

fn parse(b: &[u8]) -> Value {
    serde_json::from_slice(b).expect("reply is JSON")
}

/// One acknowledged `tick`.
#[derive(Debug, Clone)]
struct Ack {
    value: u64,
    epoch: u64,
    pop: String,
}

async fn tick(
    c: &TernClient,
    ty: &str,
    id: &str,
    key: Option<String>,
) -> Result<Ack, tonic::Status> {
    let r = c.call(ty, id, "tick", body(json!({"by": 1})), key).await?;
    let v = parse(&r.reply.payload);
    assert_eq!(
        v["epoch"].as_u64(),
        Some(r.reply.epoch),
        "actor and runtime disagree on the epoch"
    );
    assert_eq!(v["pop"], r.reply.pop.as_str());
    Ok(Ack {
        value: v["value"].as_u64().unwrap(),
        epoch: r.reply.epoch,
        pop: r.reply.pop,
    })
}

/// Ticks through `c` until the reply comes from POP `pop` (the actor has
/// followed its caller there), at most 20 times (the follow window is 16
/// calls); returns every ack.
async fn tick_until_at(c: &TernClient, ty: &str, id: &str, pop: &str) -> Vec<Ack> {
    let mut acks = Vec::new();
    for _ in 0..20 {
        let a = tick(c, ty, id, None).await.unwrap();
        let arrived = a.pop == pop;
        acks.push(a);
        if arrived {
            break;
        }
    }
    acks
}

async fn history(c: &TernClient, ty: &str, id: &str) -> Vec<(u64, u64)> {
    let r = c
        .call(ty, id, "history", Vec::new(), None)
        .await
        .expect("history");
    serde_json::from_value(parse(&r.reply.payload)["entries"].clone()).unwrap()
}

async fn value(c: &TernClient, ty: &str, id: &str) -> u64 {
    let r = c.call(ty, id, "get", Vec::new(), None).await.expect("get");
    parse(&r.reply.payload)["value"].as_u64().unwrap()
}

/// Checks one actor's audit: acknowledged turns are all present, each once,
/// epochs never go back, and each epoch ran at one POP only.
fn audit(actor: &str, acks: &[Ack], hist: &[(u64, u64)], final_value: u64) {
    assert_eq!(
        final_value,
        acks.len() as u64,
        "{actor}: {} acknowledged ticks but the counter is {final_value}",
        acks.len()
    );
    let mut values: Vec<u64> = acks.iter().map(|a| a.value).collect();
    values.sort_unstable();
    values.dedup();
    assert_eq!(
        values.len(),
        acks.len(),
        "{actor}: two acknowledged turns saw the same state"
    );
    let mut pop_of_epoch: HashMap<u64, &str> = HashMap::new();
    for a in acks {
        let p = pop_of_epoch.entry(a.epoch).or_insert(&a.pop);
        assert_eq!(*p, a.pop, "{actor}: epoch {} ran at two POPs", a.epoch);
        assert!(
            hist.contains(&(a.epoch, a.value)),
            "{actor}: acknowledged turn {a:?} is missing from the actor's history"
        );
    }
    for w in hist.windows(2) {
        assert!(
            w[0].0 <= w[1].0,
            "{actor}: epochs went back in its history: {w:?}"
        );
        assert_eq!(
            w[0].1 + 1,
            w[1].1,
            "{actor}: history skips or repeats a turn: {w:?}"
        );
    }
}

#[test]
fn actor_follows_moving_caller() {
    let data = tempfile::tempdir().unwrap();
    let dev = DevCluster::start_pops(data.path(), 3);
    dev.tern(&["deploy", "player", wasm()]).expect("deploy");
    let rt = runtime();
    rt.block_on(async {
        let paris = dev.client(PARIS);
        let mut acks = Vec::new();
        for _ in 0..3 {
            let a = tick(&paris, "player", "alice", None).await.unwrap();
            assert_eq!(a.pop, "fra", "a Paris player starts at Frankfurt");
            acks.push(a);
        }
        // The player travels to Seoul: its calls now come through Tokyo.
        let seoul = dev.client(SEOUL);
        acks.extend(tick_until_at(&seoul, "player", "alice", "nrt").await);
        assert_eq!(
            acks.last().unwrap().pop,
            "nrt",
            "the actor did not follow its caller: {acks:?}"
        );
        let hist = history(&seoul, "player", "alice").await;
        let v = value(&seoul, "player", "alice").await;
        audit("player/alice", &acks, &hist, v);
    });
    let status = dev.status("nrt");
    let migrations = status["migrations"].as_array().unwrap();
    assert!(
        migrations
            .iter()
            .any(|m| m["actor"] == "player/alice" && m["from"] == "fra" && m["to"] == "nrt"),
        "migration not recorded: {status}"
    );
    let nrt = status["pops"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "nrt")
        .unwrap()
        .clone();
    assert!(nrt["actors"].as_u64().unwrap() >= 1, "{status}");
}

#[test]
fn retried_call_applied_once() {
    let data = tempfile::tempdir().unwrap();
    let dev = DevCluster::start_pops(data.path(), 2);
    dev.tern(&["deploy", "acct", wasm(), "--follow-caller", "false"])
        .expect("deploy");
    let rt = runtime();
    rt.block_on(async {
        let paris = dev.client(PARIS);
        let ny = dev.client(NEW_YORK);
        let first = tick(&paris, "acct", "r", Some("op-1".into()))
            .await
            .unwrap();
        let again = tick(&paris, "acct", "r", Some("op-1".into()))
            .await
            .unwrap();
        let elsewhere = tick(&ny, "acct", "r", Some("op-1".into())).await.unwrap();
        assert_eq!((first.value, again.value, elsewhere.value), (1, 1, 1));
        assert_eq!(
            value(&ny, "acct", "r").await,
            1,
            "a retried call was applied twice"
        );
        // Now across a crash of the POP that ran it.
        let second = tick(&paris, "acct", "r", Some("op-2".into()))
            .await
            .unwrap();
        assert_eq!((second.value, second.pop.as_str()), (2, "fra"));
        dev.signal_pop("fra", Signal::SIGKILL);
        let retried = tick(&ny, "acct", "r", Some("op-2".into())).await.unwrap();
        assert_eq!(
            retried.value, 2,
            "the retry after the crash was applied again"
        );
        // The replayed reply names the activation that ran the call.
        assert_eq!((retried.pop.as_str(), retried.epoch), ("fra", second.epoch));
        let next = tick(&ny, "acct", "r", None).await.unwrap();
        assert_eq!(next.value, 3);
        assert_eq!(next.pop, "iad");
        assert!(next.epoch > second.epoch);
    });
}

#[test]
fn call_cycle_fails_fast() {
    let data = tempfile::tempdir().unwrap();
    let dev = DevCluster::start_pops(data.path(), 2);
    dev.tern(&["deploy", "cyc", wasm(), "--follow-caller", "false"])
        .expect("deploy");
    let rt = runtime();
    rt.block_on(async {
        let paris = dev.client(PARIS);
        let ny = dev.client(NEW_YORK);
        // a lives at fra, b at iad.
        assert_eq!(
            paris
                .call("cyc", "a", "get", Vec::new(), None)
                .await
                .unwrap()
                .reply
                .pop,
            "fra"
        );
        assert_eq!(
            ny.call("cyc", "b", "get", Vec::new(), None)
                .await
                .unwrap()
                .reply
                .pop,
            "iad"
        );
        let nested = json!({
            "type": "cyc", "id": "b", "method": "call_other",
            "payload": {"type": "cyc", "id": "a", "method": "get"}
        });
        let err = paris
            .call("cyc", "a", "call_other", body(nested), None)
            .await
            .expect_err("a cycle must fail");
        assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
        assert!(
            err.message()
                .contains("call cycle: cyc/a -> cyc/b -> cyc/a"),
            "the error must name the chain: {}",
            err.message()
        );
        // Both actors are still usable.
        assert_eq!(value(&paris, "cyc", "a").await, 0);
        assert_eq!(value(&ny, "cyc", "b").await, 0);
    });
}

#[test]
fn zombie_pop_cannot_commit() {
    let data = tempfile::tempdir().unwrap();
    let dev = DevCluster::start_pops(data.path(), 2);
    dev.tern(&["deploy", "acct", wasm(), "--follow-caller", "false"])
        .expect("deploy");
    let rt = runtime();
    rt.block_on(async {
        let paris = dev.client(PARIS);
        let ny = dev.client(NEW_YORK);
        let mut acks = Vec::new();
        for _ in 0..3 {
            acks.push(tick(&paris, "acct", "z", None).await.unwrap());
        }
        assert!(acks.iter().all(|a| a.pop == "fra"));
        let zombie_epoch = acks[0].epoch;
        dev.signal_pop("fra", Signal::SIGSTOP);
        dev.wait_until("the directory to declare fra dead", 20_000, || {
            dev.status("iad")["pops"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["name"] == "fra" && p["alive"] == false)
        });
        for _ in 0..3 {
            let a = tick(&ny, "acct", "z", None).await.unwrap();
            assert_eq!(a.pop, "iad");
            assert!(a.epoch > zombie_epoch);
            acks.push(a);
        }
        dev.signal_pop("fra", Signal::SIGCONT);
        // Drive the zombie directly, without retries: whatever it answers,
        // it must not commit at its old epoch.
        let mut zombie = dev.connect("fra").await;
        for _ in 0..5 {
            let r = zombie
                .call(tern_client::call_request(
                    "acct",
                    "z",
                    "tick",
                    body(json!({"by": 1})),
                ))
                .await;
            match r {
                Ok(r) => {
                    let r = r.into_inner();
                    assert!(
                        r.epoch > zombie_epoch,
                        "the zombie ran a turn at its old epoch"
                    );
                    let v = parse(&r.payload);
                    acks.push(Ack {
                        value: v["value"].as_u64().unwrap(),
                        epoch: r.epoch,
                        pop: r.pop,
                    });
                }
                Err(s) => assert_eq!(s.code(), tonic::Code::Unavailable, "{s:?}"),
            }
        }
        let hist = history(&ny, "acct", "z").await;
        let v = value(&ny, "acct", "z").await;
        audit("acct/z", &acks, &hist, v);
        assert!(
            hist.iter().filter(|h| h.0 == zombie_epoch).count() == 3,
            "only the 3 turns before the pause ran at the zombie's epoch: {hist:?}"
        );
    });
}

#[test]
fn single_activation_survives_pop_kill() {
    const ACTORS: usize = 12;
    const ROUNDS: usize = 15;
    let data = tempfile::tempdir().unwrap();
    let dev = DevCluster::start_pops(data.path(), 3);
    dev.tern(&["deploy", "acct", wasm()]).expect("deploy");
    let rt = runtime();
    let done = Arc::new(AtomicUsize::new(0));
    let acks: BTreeMap<String, Vec<Ack>> = rt.block_on(async {
        // Each actor starts at the POP of one client, so every POP holds
        // some when the kill comes.
        let mut warm: Vec<(String, Ack)> = Vec::new();
        let clients: Vec<TernClient> = [PARIS, NEW_YORK, SEOUL]
            .into_iter()
            .map(|c| dev.client(c))
            .collect();
        for a in 0..ACTORS {
            let id = format!("a{a}");
            warm.push((
                id.clone(),
                tick(&clients[a % 3], "acct", &id, None).await.unwrap(),
            ));
        }
        let mut tasks = Vec::new();
        for (c, coords) in [PARIS, NEW_YORK, SEOUL].into_iter().enumerate() {
            let client = dev.client(coords);
            let done = done.clone();
            tasks.push(tokio::spawn(async move {
                let mut acks: Vec<(String, Ack)> = Vec::new();
                for round in 0..ROUNDS {
                    for a in 0..ACTORS {
                        let id = format!("a{a}");
                        let key = format!("c{c}-{id}-r{round}");
                        let ack = tick(&client, "acct", &id, Some(key.clone()))
                            .await
                            .unwrap_or_else(|e| panic!("{key} failed after retries: {e:?}"));
                        acks.push((id, ack));
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                }
                acks
            }));
        }
        // Kill a POP a third of the way through.
        let total = 3 * ACTORS * ROUNDS;
        let killer = {
            let done = done.clone();
            tokio::task::spawn_blocking(move || {
                let started = std::time::Instant::now();
                while done.load(Ordering::Relaxed) < total / 3 {
                    assert!(started.elapsed() < Duration::from_secs(120), "load stalled");
                    std::thread::sleep(Duration::from_millis(10));
                }
            })
        };
        killer.await.unwrap();
        dev.signal_pop("iad", Signal::SIGKILL);
        let mut by_actor: BTreeMap<String, Vec<Ack>> = BTreeMap::new();
        for (id, ack) in warm {
            by_actor.entry(id).or_default().push(ack);
        }
        for t in tasks {
            for (id, ack) in t.await.unwrap() {
                by_actor.entry(id).or_default().push(ack);
            }
        }
        by_actor
    });
    assert_eq!(done.load(Ordering::Relaxed), 3 * ACTORS * ROUNDS);
    assert_eq!(
        acks.values().map(Vec::len).sum::<usize>(),
        3 * ACTORS * ROUNDS + ACTORS
    );
    rt.block_on(async {
        let paris = dev.client(PARIS);
        for (id, acks) in &acks {
            let hist = history(&paris, "acct", id).await;
            let v = value(&paris, "acct", id).await;
            audit(&format!("acct/{id}"), acks, &hist, v);
        }
    });
    // The kill must have hit actors that were active at iad, and they must
    // have carried on elsewhere with a higher epoch.
    let failed_over: Vec<&String> = acks
        .iter()
        .filter(|(_, v)| {
            let last_iad = v.iter().filter(|a| a.pop == "iad").map(|a| a.epoch).max();
            last_iad.is_some_and(|e| v.iter().any(|a| a.pop != "iad" && a.epoch > e))
        })
        .map(|(k, _)| k)
        .collect();
    let mut per_pop: BTreeMap<&str, usize> = BTreeMap::new();
    for a in acks.values().flatten() {
        *per_pop.entry(a.pop.as_str()).or_default() += 1;
    }
    eprintln!("acks per POP: {per_pop:?}; actors that failed over from iad: {failed_over:?}");
    assert!(
        !failed_over.is_empty(),
        "no actor was active at the killed POP"
    );
}

/// With a single directory process, SIGKILL it: `tern dev` restarts it on
/// the same address and store, and it lost nothing (every record is in the
/// store).
#[test]
fn directory_restart_loses_nothing() {
    let data = tempfile::tempdir().unwrap();
    let mut dev = DevCluster::start_with(data.path(), 2, &["--directories", "1"]);
    assert_eq!(dev.cluster.directories.len(), 1);
    dev.tern(&["deploy", "player", wasm()]).expect("deploy");
    let rt = runtime();
    let mut acks = Vec::new();
    rt.block_on(async {
        // Make one migration happen so there is one to lose.
        let paris = dev.client(PARIS);
        let ny = dev.client(NEW_YORK);
        acks.push(tick(&paris, "player", "bob", None).await.unwrap());
        acks.extend(tick_until_at(&ny, "player", "bob", "iad").await);
        assert_eq!(acks.last().unwrap().pop, "iad", "{acks:?}");
    });
    let before = dev.status("fra");
    assert_eq!(
        before["migrations"].as_array().unwrap().len(),
        1,
        "{before}"
    );
    let old = dev.cluster.directories[0].clone();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(old.pid as i32), Signal::SIGKILL).unwrap();
    let started = std::time::Instant::now();
    while dev.cluster.directories[0].pid == old.pid {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "tern dev did not restart the directory"
        );
        std::thread::sleep(Duration::from_millis(50));
        dev.refresh();
    }
    assert_eq!(dev.cluster.directories[0].endpoint, old.endpoint);
    dev.wait_until("both POPs alive at the new directory", 30_000, || {
        let s = dev.status("fra");
        let pops = s["pops"].as_array().cloned().unwrap_or_default();
        pops.len() == 2 && pops.iter().all(|p| p["alive"] == true)
    });
    let after = dev.status("fra");
    assert_eq!(
        after["migrations"], before["migrations"],
        "migrations were lost"
    );
    rt.block_on(async {
        let ny = dev.client(NEW_YORK);
        acks.push(tick(&ny, "player", "bob", None).await.unwrap());
        let hist = history(&ny, "player", "bob").await;
        let v = value(&ny, "player", "bob").await;
        audit("player/bob", &acks, &hist, v);
    });
}
