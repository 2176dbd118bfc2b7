//! The `counter` workload: clients record call ids on a few `counter`
//! actors (`apply`), keyed and not, read them back (`applied`), and now
//! and then run a turn that burns its whole CPU budget (`spin`).
//!
//! Checked: every acknowledged keyed call is in the final state exactly
//! once and at the position its acknowledgement named; every acknowledged
//! unkeyed call at least once; nothing that was never sent; acknowledged
//! counts are unique and rise with epochs; reads are linearizable (a read
//! sees every call acknowledged before it was sent); a call sent after
//! another was acknowledged lands after it; a `spin` never returns.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::Mutex;
use rand::Rng;
use tern_runtime::CallRequest;

use crate::{Caller, Load, Shared, SimConfig, final_call};

/// One call a client sent.
#[derive(Debug, Clone)]
struct Sent {
    id: u64,
    actor: String,
    keyed: bool,
    sent_ms: u64,
}

/// One acknowledged call.
#[derive(Debug, Clone)]
struct Ack {
    id: u64,
    actor: String,
    count: u64,
    epoch: u64,
    acked_ms: u64,
}

/// One read (`applied`) a client got an answer to.
#[derive(Debug, Clone)]
struct Read {
    actor: String,
    sent_ms: u64,
    ids: Vec<u64>,
    pop: String,
}

#[derive(Default)]
struct Record {
    sent: Vec<Sent>,
    acks: Vec<Ack>,
    reads: Vec<Read>,
}

/// The workload.
pub(crate) struct Counter {
    cfg: SimConfig,
    rec: Mutex<Record>,
}

impl Counter {
    pub(crate) fn new(cfg: &SimConfig) -> Counter {
        Counter {
            cfg: cfg.clone(),
            rec: Mutex::new(Record::default()),
        }
    }
}

fn ids_of(payload: &[u8]) -> Option<Vec<u64>> {
    let v: serde_json::Value = serde_json::from_slice(payload).ok()?;
    Some(
        v["ids"]
            .as_array()?
            .iter()
            .filter_map(|x| x.as_u64())
            .collect(),
    )
}

#[async_trait]
impl Load for Counter {
    fn types(&self) -> &'static [&'static str] {
        &["counter"]
    }

    async fn client(self: Arc<Self>, shared: Arc<Shared>, cid: usize) {
        let cfg = &self.cfg;
        let mut caller = Caller::new(&shared, format!("c{cid}"), cid);
        for n in 0..cfg.calls_per_client {
            let (actor_no, keyed, read, slow) = shared.draw(|r| {
                (
                    r.random_range(0..cfg.actors),
                    r.random_bool(0.7),
                    r.random_bool(0.3),
                    r.random_bool(0.03),
                )
            });
            tokio::time::sleep(shared.think(cfg, cfg.calls_per_client)).await;
            let actor = format!("a{actor_no}");
            if slow {
                // A turn that burns its whole CPU budget: it must roll back
                // and leave the actor as it was.
                let req = CallRequest::new("counter", &actor, "spin", Vec::new());
                if let Ok(out) = caller.once(&shared, req).await {
                    shared.anomaly(format!(
                        "spin on counter/{actor} returned at {} instead of hitting its CPU budget",
                        out.pop
                    ));
                }
                continue;
            }
            if read {
                let sent_ms = shared.now_ms();
                let req = CallRequest::new("counter", &actor, "applied", Vec::new());
                if let Ok(out) = caller.once(&shared, req).await {
                    self.rec.lock().reads.push(Read {
                        actor: actor.clone(),
                        sent_ms,
                        ids: ids_of(&out.payload).unwrap_or_default(),
                        pop: out.pop,
                    });
                }
                continue;
            }
            let id = (cid as u64) << 32 | n as u64;
            let payload = serde_json::to_vec(&serde_json::json!({ "id": id })).expect("json");
            let mut req = CallRequest::new("counter", &actor, "apply", payload);
            if keyed {
                req.idempotency_key = Some(format!("c{cid}-{n}"));
            }
            let sent_ms = shared.now_ms();
            self.rec.lock().sent.push(Sent {
                id,
                actor: actor.clone(),
                keyed,
                sent_ms,
            });
            shared.event(format!("c{cid} send #{id:x} counter/{actor} keyed={keyed}"));
            if let Ok(out) = caller.call(&shared, req, true).await {
                let count = serde_json::from_slice::<serde_json::Value>(&out.payload)
                    .ok()
                    .and_then(|v| v["count"].as_u64())
                    .unwrap_or(0);
                shared.event(format!("c{cid} ack #{id:x} count={count}"));
                self.rec.lock().acks.push(Ack {
                    id,
                    actor: actor.clone(),
                    count,
                    epoch: out.epoch,
                    acked_ms: shared.now_ms(),
                });
            }
        }
    }

    async fn finish(&self, shared: &Arc<Shared>, healed_ms: u64) -> Vec<String> {
        let mut finals = BTreeMap::new();
        let mut v = Vec::new();
        for a in 0..self.cfg.actors {
            let actor = format!("a{a}");
            let req = CallRequest::new("counter", &actor, "applied", Vec::new());
            let got = final_call(shared, req, healed_ms, &mut v).await;
            if let Some(out) = got {
                match ids_of(&out.payload) {
                    Some(ids) => {
                        finals.insert(actor, ids);
                    }
                    None => v.push(format!("counter/{actor}: `applied` answered garbage")),
                }
            }
        }
        v.extend(check(&self.rec.lock(), &finals));
        v
    }
}

/// The checker. `finals` maps each actor to the ids it applied, in order.
fn check(rec: &Record, finals: &BTreeMap<String, Vec<u64>>) -> Vec<String> {
    let mut v = Vec::new();
    let sent: BTreeMap<u64, &Sent> = rec.sent.iter().map(|s| (s.id, s)).collect();
    for (actor, ids) in finals {
        let mut seen: BTreeMap<u64, usize> = BTreeMap::new();
        for id in ids {
            *seen.entry(*id).or_default() += 1;
        }
        for (id, n) in &seen {
            match sent.get(id) {
                None => v.push(format!(
                    "counter/{actor} applied #{id:x}, which was never sent"
                )),
                Some(s) if s.actor != *actor => v.push(format!(
                    "counter/{actor} applied #{id:x}, which was sent to counter/{}",
                    s.actor
                )),
                Some(s) if s.keyed && *n > 1 => v.push(format!(
                    "counter/{actor} applied keyed call #{id:x} {n} times"
                )),
                _ => {}
            }
        }
        let acks: Vec<&Ack> = rec.acks.iter().filter(|a| a.actor == *actor).collect();
        for a in &acks {
            let n = seen.get(&a.id).copied().unwrap_or(0);
            if n == 0 {
                v.push(format!(
                    "counter/{actor} lost acknowledged call #{:x}",
                    a.id
                ));
            }
            // The acked count is the id's position in the final state.
            let pos = ids.iter().position(|x| *x == a.id).map(|p| p as u64 + 1);
            let keyed = sent.get(&a.id).is_some_and(|s| s.keyed);
            if keyed && pos != Some(a.count) {
                v.push(format!(
                    "counter/{actor}: keyed call #{:x} was acknowledged as #{} but sits at {:?} in the final state (a lost or forked update)",
                    a.id, a.count, pos
                ));
            }
        }
        // Acknowledged counts are unique, and epochs never go back as
        // counts rise: no two activations committed in overlapping epochs.
        let mut by_count: Vec<&&Ack> = acks.iter().collect();
        by_count.sort_by_key(|a| (a.count, a.acked_ms));
        for w in by_count.windows(2) {
            if w[0].count == w[1].count && w[0].id != w[1].id {
                v.push(format!(
                    "counter/{actor}: calls #{:x} and #{:x} were both acknowledged as #{}",
                    w[0].id, w[1].id, w[0].count
                ));
            }
            if w[1].epoch < w[0].epoch {
                v.push(format!(
                    "counter/{actor}: #{} ran at epoch {} after #{} at epoch {} (overlapping activations)",
                    w[1].count, w[1].epoch, w[0].count, w[0].epoch
                ));
            }
        }
        // Reads are linearizable: a read sees every call acknowledged
        // before it was sent, and only calls that were sent.
        for r in rec.reads.iter().filter(|r| r.actor == *actor) {
            let got: BTreeSet<u64> = r.ids.iter().copied().collect();
            for a in acks.iter().filter(|a| a.acked_ms < r.sent_ms) {
                if !got.contains(&a.id) {
                    v.push(format!(
                        "counter/{actor}: a read sent at {} ms (answered by {}) misses #{:x}, acknowledged at {} ms (a stale read)",
                        r.sent_ms, r.pop, a.id, a.acked_ms
                    ));
                }
            }
            for id in &got {
                if !sent.contains_key(id) {
                    v.push(format!(
                        "counter/{actor}: a read saw #{id:x}, which was never sent"
                    ));
                }
            }
        }
        // Real-time order: a call sent after another was acknowledged
        // lands after it.
        for a in &acks {
            for b in &acks {
                let b_sent = sent.get(&b.id).map_or(0, |s| s.sent_ms);
                if a.acked_ms < b_sent && a.count >= b.count {
                    v.push(format!(
                        "counter/{actor}: #{:x} (acked as #{}) was sent after #{:x} (acked as #{}) was acknowledged, yet landed first",
                        b.id, b.count, a.id, a.count
                    ));
                }
            }
        }
    }
    v
}
