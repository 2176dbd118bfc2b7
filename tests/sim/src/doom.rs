//! The `doom` workload: simulated players drive doom-lobby's actors
//! (`examples/doom-lobby/actors`, deployed as `player`, `matchmaker` and
//! `match`). Each player joins, picks up and uses items (`act`), queues
//! at the region's matchmaker, and plays the matches it is put in
//! (`input`, then `tick` until its results are delivered). Keyed calls
//! carry idempotency keys; nested calls (matchmaker to match and
//! players, match to players) are made idempotent by the actors.
//!
//! Checked after the faults heal, as the load test's audit does: every
//! acknowledged `act` and `input` is applied exactly once, none is
//! applied twice, nothing is applied that was never sent, every match a
//! player saw deliver its results is in the player's stats, and no match
//! result is in a player's history twice.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use doom_lobby_actors::game::{InputAudit, InputReply, MatchState};
use doom_lobby_actors::matchmaker::Ticket;
use doom_lobby_actors::player::{Audit, ITEMS, PlayerState};
use parking_lot::Mutex;
use rand::Rng;
use serde::de::DeserializeOwned;
use tern_runtime::CallRequest;

use crate::{Caller, Load, Shared, SimConfig, final_call};

/// The one region's matchmaker.
const REGION: &str = "eu";
/// Matchmaking polls per round before the player gives up and leaves.
const POLLS_MAX: u32 = 40;
/// Poll interval, ms.
const POLL_MS: u64 = 250;
/// Inputs one player sends in a match, at most.
const INPUTS_MAX: u32 = 25;
/// Interval between inputs, ms.
const INPUT_MS: u64 = 200;
/// Ticks a player waits for a finished match to deliver its results.
const REPORT_POLLS_MAX: u32 = 20;

/// What one player saw.
#[derive(Default, Clone)]
struct Tally {
    /// `act` ids acknowledged, and sent without an answer.
    acts_acked: Vec<u64>,
    acts_unknown: Vec<u64>,
    /// Per match: `input` ids acknowledged as applied, and unanswered.
    inputs_acked: BTreeMap<String, Vec<u64>>,
    inputs_unknown: BTreeMap<String, Vec<u64>>,
    /// Matches it saw end with every result delivered.
    matches_done: BTreeSet<String>,
}

/// Per match, per player: the inputs acknowledged and those unanswered.
type InputTally = BTreeMap<String, BTreeMap<String, (Vec<u64>, Vec<u64>)>>;

/// The workload.
pub(crate) struct Doom {
    cfg: SimConfig,
    tallies: Mutex<BTreeMap<usize, Tally>>,
}

impl Doom {
    pub(crate) fn new(cfg: &SimConfig) -> Doom {
        Doom {
            cfg: cfg.clone(),
            tallies: Mutex::new(BTreeMap::new()),
        }
    }
}

fn player(cid: usize) -> String {
    format!("pl{cid}")
}

fn request(
    ty: &str,
    id: &str,
    method: &str,
    body: serde_json::Value,
    key: Option<String>,
) -> CallRequest {
    let mut req = CallRequest::new(ty, id, method, serde_json::to_vec(&body).expect("json"));
    req.idempotency_key = key;
    req
}

fn decode<T: DeserializeOwned>(shared: &Shared, what: &str, payload: &[u8]) -> Option<T> {
    match serde_json::from_slice(payload) {
        Ok(t) => Some(t),
        Err(e) => {
            shared.anomaly(format!(
                "{what} answered something that does not decode: {e}"
            ));
            None
        }
    }
}

/// One player's session.
struct Session {
    cid: usize,
    name: String,
    caller: Caller,
    tally: Tally,
    next_id: u64,
}

impl Session {
    fn id(&mut self) -> u64 {
        self.next_id += 1;
        (self.cid as u64) << 32 | self.next_id
    }

    async fn act(&mut self, shared: &Arc<Shared>) {
        let (kind, item) = shared.draw(|r| {
            (
                ["pickup", "use", "emote"][r.random_range(0..3)],
                ITEMS[r.random_range(0..ITEMS.len())],
            )
        });
        let id = self.id();
        let body = serde_json::json!({"action_id": id, "kind": kind, "item": item});
        let req = request(
            "player",
            &self.name,
            "act",
            body,
            Some(format!("{}:act:{id}", self.name)),
        );
        match self.caller.call(shared, req, true).await {
            Ok(_) => self.tally.acts_acked.push(id),
            Err(_) => self.tally.acts_unknown.push(id),
        }
    }

    /// Queues; the match, if one formed in time.
    async fn queue(&mut self, shared: &Arc<Shared>, round: usize) -> Option<String> {
        let who = serde_json::json!({"player": self.name});
        let body = serde_json::json!({"player": self.name, "rating": 1000});
        let key = Some(format!("{}:enqueue:{round}", self.name));
        let req = request("matchmaker", REGION, "enqueue", body, key);
        let out = self.caller.call(shared, req, true).await.ok()?;
        let mut ticket: Ticket = decode(shared, "enqueue", &out.payload)?;
        for _ in 0..POLLS_MAX {
            if let Some(m) = ticket.match_id.take() {
                return Some(m);
            }
            if shared.draw(|r| r.random_bool(0.2)) {
                self.act(shared).await;
            }
            tokio::time::sleep(Duration::from_millis(POLL_MS)).await;
            let req = request("matchmaker", REGION, "poll", who.clone(), None);
            if let Ok(out) = self.caller.call(shared, req, false).await {
                ticket = decode(shared, "poll", &out.payload)?;
                if ticket.match_id.is_none() && !ticket.queued {
                    return None;
                }
            }
        }
        let req = request("matchmaker", REGION, "leave", who, None);
        let _ = self.caller.call(shared, req, false).await;
        None
    }

    async fn play(&mut self, shared: &Arc<Shared>, m: &str) {
        let mut ended = false;
        let mut pending = usize::MAX;
        for _ in 0..INPUTS_MAX {
            tokio::time::sleep(Duration::from_millis(INPUT_MS)).await;
            let (kind, dir) = shared.draw(|r| {
                (
                    if r.random_bool(0.5) { "fire" } else { "move" },
                    ["n", "s", "e", "w"][r.random_range(0..4)],
                )
            });
            let id = self.id();
            let body =
                serde_json::json!({"player": self.name, "action_id": id, "kind": kind, "dir": dir});
            let key = Some(format!("{}:input:{id}", self.name));
            let req = request("match", m, "input", body, key);
            match self.caller.call(shared, req, true).await {
                Ok(out) => {
                    let Some(r) = decode::<InputReply>(shared, "input", &out.payload) else {
                        return;
                    };
                    let to = if r.applied {
                        &mut self.tally.inputs_acked
                    } else {
                        &mut self.tally.inputs_unknown
                    };
                    to.entry(m.to_string()).or_default().push(id);
                    ended = r.state.ended.is_some();
                    pending = r.state.reports_pending;
                    if ended {
                        break;
                    }
                }
                Err(_) => self
                    .tally
                    .inputs_unknown
                    .entry(m.to_string())
                    .or_default()
                    .push(id),
            }
        }
        for _ in 0..REPORT_POLLS_MAX {
            if ended && pending == 0 {
                self.tally.matches_done.insert(m.to_string());
                return;
            }
            tokio::time::sleep(Duration::from_millis(POLL_MS)).await;
            let req = request("match", m, "tick", serde_json::Value::Null, None);
            if let Ok(out) = self.caller.call(shared, req, false).await
                && let Some(s) = decode::<MatchState>(shared, "tick", &out.payload)
            {
                ended = s.ended.is_some();
                pending = s.reports_pending;
            }
        }
    }
}

/// Acknowledged ids against applied ones: what was lost, doubled or
/// invented.
fn compare(what: &str, acked: &[u64], unknown: &[u64], applied: &[u64], v: &mut Vec<String>) {
    let mut count: BTreeMap<u64, usize> = BTreeMap::new();
    for id in applied {
        *count.entry(*id).or_default() += 1;
    }
    for id in acked {
        if !count.contains_key(id) {
            v.push(format!("{what}: acknowledged #{id:x} was lost"));
        }
    }
    let sent: BTreeSet<u64> = acked.iter().chain(unknown).copied().collect();
    for (id, n) in count {
        if n > 1 {
            v.push(format!("{what}: #{id:x} was applied {n} times"));
        }
        if !sent.contains(&id) {
            v.push(format!("{what}: #{id:x} was applied but never sent"));
        }
    }
}

#[async_trait]
impl Load for Doom {
    fn types(&self) -> &'static [&'static str] {
        &["player", "matchmaker", "match"]
    }

    async fn client(self: Arc<Self>, shared: Arc<Shared>, cid: usize) {
        let name = player(cid);
        let mut s = Session {
            cid,
            caller: Caller::new(&shared, name.clone(), cid),
            name,
            tally: Tally::default(),
            next_id: 0,
        };
        let body = serde_json::json!({"home": REGION, "rating": 1000});
        let req = request(
            "player",
            &s.name,
            "join",
            body,
            Some(format!("{}:join", s.name)),
        );
        let _ = s.caller.call(&shared, req, true).await;
        // Play rounds for as long as the faults last (at most
        // `calls_per_client` of them).
        let horizon = self.cfg.fault_secs * 1_000;
        for round in 0..self.cfg.calls_per_client {
            if shared.now_ms() >= horizon {
                break;
            }
            let acts = shared.draw(|r| r.random_range(1..4));
            for _ in 0..acts {
                s.act(&shared).await;
            }
            if let Some(m) = s.queue(&shared, round).await {
                s.play(&shared, &m).await;
            }
        }
        self.tallies.lock().insert(cid, s.tally);
    }

    async fn finish(&self, shared: &Arc<Shared>, healed_ms: u64) -> Vec<String> {
        let mut v = Vec::new();
        let tallies = self.tallies.lock().clone();
        // match -> player -> (acknowledged, unknown) inputs.
        let mut inputs = InputTally::new();
        for (cid, t) in &tallies {
            let name = player(*cid);
            let req = CallRequest::new("player", &name, "audit", Vec::new());
            let got = final_call(shared, req, healed_ms, &mut v).await;
            if let Some(out) = got
                && let Some(a) = decode::<Audit>(shared, "audit", &out.payload)
            {
                compare(
                    &format!("player/{name} act"),
                    &t.acts_acked,
                    &t.acts_unknown,
                    &a.applied,
                    &mut v,
                );
            }
            let req = CallRequest::new("player", &name, "state", Vec::new());
            if let Some(out) = final_call(shared, req, healed_ms, &mut v).await
                && let Some(s) = decode::<PlayerState>(shared, "state", &out.payload)
            {
                let (held, seen) = (s.stats.matches, t.matches_done.len() as u64);
                if held < seen {
                    v.push(format!(
                        "player/{name} holds {held} finished matches, but saw {seen} deliver their results (a result was lost)"
                    ));
                }
                let mut ids: Vec<&str> = s.history.iter().map(|h| h.match_id.as_str()).collect();
                ids.sort_unstable();
                if let Some(w) = ids.windows(2).find(|w| w[0] == w[1]) {
                    v.push(format!(
                        "player/{name} holds the result of match/{} twice",
                        w[0]
                    ));
                }
            }
            for (acked, lists) in [(true, &t.inputs_acked), (false, &t.inputs_unknown)] {
                for (m, ids) in lists {
                    let both = inputs
                        .entry(m.clone())
                        .or_default()
                        .entry(name.clone())
                        .or_default();
                    if acked { &mut both.0 } else { &mut both.1 }.extend(ids);
                }
            }
        }
        for (m, players) in &inputs {
            let req = CallRequest::new("match", m, "audit", Vec::new());
            let got = final_call(shared, req, healed_ms, &mut v).await;
            let Some(out) = got else { continue };
            let Some(a) = decode::<InputAudit>(shared, "match audit", &out.payload) else {
                continue;
            };
            for (p, (acked, unknown)) in players {
                let applied = a
                    .inputs
                    .iter()
                    .find(|(q, _)| q == p)
                    .map(|(_, ids)| ids.as_slice())
                    .unwrap_or_default();
                compare(
                    &format!("match/{m} input of {p}"),
                    acked,
                    unknown,
                    applied,
                    &mut v,
                );
            }
        }
        v
    }
}
