//! The simulated players and the chaos around them (a POP kill, a travelling
//! player), and the audit after the run.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use doom_lobby_actors::game::{InputAudit, MatchState, Pushed, STATE_TOPIC, is_wall};
use doom_lobby_actors::matchmaker::Ticket;
use doom_lobby_actors::player::{Audit, ITEMS, PlayerState};
use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use serde_json::json;
use tern_client::{Credentials, PopInfo, TernClient, by_distance};

/// Where simulated players come from.
#[derive(Clone, Copy, Debug)]
pub struct Metro {
    /// City.
    pub city: &'static str,
    /// Matchmaking region.
    pub region: &'static str,
    /// `[lat, lon]`.
    pub coords: [f64; 2],
}

/// Paris, New York and Seoul (nearest POPs: fra, iad, nrt).
pub const METROS: [Metro; 3] = [
    Metro {
        city: "Paris",
        region: "eu",
        coords: [48.86, 2.35],
    },
    Metro {
        city: "New York",
        region: "na",
        coords: [40.71, -74.0],
    },
    Metro {
        city: "Seoul",
        region: "asia",
        coords: [37.57, 126.98],
    },
];

/// Inputs per second while in a match.
pub const INPUT_HZ: u64 = 10;
/// Mean time between two `act` calls of one player.
pub const ACT_EVERY_MS: u64 = 500;
/// Matchmaking poll interval.
pub const POLL_MS: u64 = 250;
/// A player waiting this long for a match leaves the queue and queues again.
pub const QUEUE_WAIT_MS_MAX: u64 = 20_000;
/// Extra rounds of retries (on top of `TernClient`'s own) for a call that
/// carries an idempotency key or only reads.
pub const CALL_ROUNDS_MAX: u32 = 3;
/// Calls slower than this are listed in the report.
pub const SLOW_CALL_MS: u64 = 1_000;
/// How many slow calls the report lists.
pub const SLOW_CALLS_MAX: usize = 20;
/// After a match ends, how long a player waits for its results to be
/// delivered.
pub const REPORT_WAIT_MS_MAX: u64 = 10_000;

/// What to run.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Players.
    pub players: usize,
    /// Length of the play phase.
    pub duration: Duration,
    /// POPs to SIGKILL during it.
    pub kill_pops: usize,
    /// Whether one player travels halfway.
    pub travel: bool,
    /// When (a fraction of the play time) to deploy the second version of
    /// the actors' code with `--rollout now`, if at all.
    pub upgrade_at: Option<f64>,
}

/// A POP kill in flight: the actors last seen there, waiting for their
/// first successful call elsewhere.
struct KillWatch {
    pop: String,
    at: Instant,
    waiting: HashSet<String>,
    resolved: usize,
    worst_ms: u64,
}

/// The travelling player.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Travel {
    /// Player name.
    pub player: String,
    /// City left.
    pub from_city: String,
    /// City reached.
    pub to_city: String,
    /// POP its actor was at before.
    pub from_pop: String,
    /// POP its client uses after.
    pub to_pop: String,
    /// When it travelled, seconds into the run.
    pub at_s: f64,
    /// How long until its `player` actor answered from `to_pop`.
    pub followed_after_ms: Option<u64>,
}

/// Counters shared by all players, read live by the progress bar.
#[derive(Default)]
pub struct Counters {
    /// Calls that succeeded.
    pub calls_ok: AtomicU64,
    /// Retries (by `TernClient` and by us), over all calls.
    pub calls_retried: AtomicU64,
    /// Calls that failed after every retry.
    pub calls_failed: AtomicU64,
    /// Player actions acknowledged.
    pub actions_acked: AtomicU64,
    /// Match inputs acknowledged as applied.
    pub inputs_acked: AtomicU64,
    /// Distinct matches seen to end.
    pub matches_completed: AtomicU64,
    /// Players in a match right now.
    pub playing: AtomicU64,
    /// Match events received by subscription.
    pub push_events: AtomicU64,
    /// Events a subscriber never got (a seq jumped ahead).
    pub push_gaps: AtomicU64,
    /// Events a subscriber got twice (a seq did not go up).
    pub push_duplicates: AtomicU64,
    /// Subscriptions that ended with an error.
    pub push_errors: AtomicU64,
}

/// Push samples kept at most (latencies and alarm lateness).
pub const PUSH_SAMPLES_MAX: usize = 1_000_000;

/// State shared by the players and the chaos task.
pub struct Shared {
    /// The cluster's POPs.
    pub pops: Vec<PopInfo>,
    /// What the players present: the cluster CA and a call-only token.
    pub creds: Credentials,
    /// A tag in every actor id, unique to this run.
    pub run: String,
    /// When play started.
    pub started: Instant,
    /// When play stops.
    pub deadline: Instant,
    /// Live counters.
    pub counters: Counters,
    stop: AtomicBool,
    latency_us: Mutex<HashMap<String, Vec<u64>>>,
    /// Call latencies by `type.method`, µs.
    method_latency_us: Mutex<HashMap<String, Vec<u64>>>,
    last_pop: Mutex<HashMap<String, String>>,
    kills: Mutex<Vec<KillWatch>>,
    ended: Mutex<HashSet<String>>,
    /// Things that happened, for the live display and the summary.
    pub events: Mutex<Vec<String>>,
    /// The travelling player.
    pub travel: Mutex<Option<Travel>>,
    /// The first calls that took over [`SLOW_CALL_MS`], for the report.
    pub slow_calls: Mutex<Vec<String>>,
    travel_to: Mutex<Option<(usize, Metro, Instant)>>,
    /// Publish-to-receive latencies of match events, µs.
    pub push_latency_us: Mutex<Vec<u64>>,
    /// How late each match tick's alarm fired, ms, by (match, event seq).
    pub alarm_late_ms: Mutex<HashMap<(String, u64), u64>>,
}

/// Why a call failed for good.
#[derive(Debug)]
pub struct CallError(pub String);

/// A successful call.
pub struct Reply<T> {
    /// The decoded reply.
    pub body: T,
    /// The POP that ran the turn.
    pub pop: String,
}

impl Shared {
    /// Shared state for a run starting now.
    pub fn new(
        pops: Vec<PopInfo>,
        creds: Credentials,
        run: String,
        duration: Duration,
    ) -> Arc<Shared> {
        let started = Instant::now();
        Arc::new(Shared {
            pops,
            creds,
            run,
            started,
            deadline: started + duration,
            counters: Counters::default(),
            stop: AtomicBool::new(false),
            latency_us: Mutex::new(HashMap::new()),
            method_latency_us: Mutex::new(HashMap::new()),
            last_pop: Mutex::new(HashMap::new()),
            kills: Mutex::new(Vec::new()),
            ended: Mutex::new(HashSet::new()),
            events: Mutex::new(Vec::new()),
            travel: Mutex::new(None),
            slow_calls: Mutex::new(Vec::new()),
            travel_to: Mutex::new(None),
            push_latency_us: Mutex::new(Vec::new()),
            alarm_late_ms: Mutex::new(HashMap::new()),
        })
    }

    fn playing(&self) -> bool {
        !self.stop.load(Relaxed) && Instant::now() < self.deadline
    }

    /// Stops play (the players finish their current call).
    pub fn stop(&self) {
        self.stop.store(true, Relaxed);
    }

    /// Seconds since play started.
    pub fn secs(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// Records something that happened.
    pub fn event(&self, what: String) {
        self.events
            .lock()
            .push(format!("[{:>5.1}s] {what}", self.secs()));
    }

    /// One call, with an idempotency key for writes. `TernClient` retries
    /// UNAVAILABLE and transport errors; on top of that the call gets a few
    /// more rounds across a failover. Every call the simulation makes is
    /// safe to repeat: it carries an idempotency key, only reads, or is
    /// idempotent by design (`poll`, `leave`, `tick`).
    pub async fn call<T: DeserializeOwned>(
        &self,
        client: &TernClient,
        ty: &str,
        id: &str,
        method: &str,
        body: serde_json::Value,
        key: Option<String>,
    ) -> Result<Reply<T>, CallError> {
        let payload = serde_json::to_vec(&body).expect("JSON encodes");
        let t0 = Instant::now();
        let mut rounds = 0;
        loop {
            match client
                .call(ty, id, method, payload.clone(), key.clone())
                .await
            {
                Ok(c) => {
                    let now = Instant::now();
                    let c2 = &self.counters;
                    c2.calls_ok.fetch_add(1, Relaxed);
                    c2.calls_retried.fetch_add(u64::from(c.retries), Relaxed);
                    let us = now.duration_since(t0).as_micros() as u64;
                    self.latency_us
                        .lock()
                        .entry(c.via.clone())
                        .or_default()
                        .push(us);
                    self.method_latency_us
                        .lock()
                        .entry(format!("{ty}.{method}"))
                        .or_default()
                        .push(us);
                    let actor = format!("{ty}/{id}");
                    let ms = now.duration_since(t0).as_millis() as u64;
                    if ms > SLOW_CALL_MS {
                        let mut slow = self.slow_calls.lock();
                        if slow.len() < SLOW_CALLS_MAX {
                            slow.push(format!(
                                "{actor}.{method} at {:.1} s via {} ran at {}: {ms} ms, {} retries",
                                t0.duration_since(self.started).as_secs_f64(),
                                c.via,
                                c.reply.pop,
                                c.retries
                            ));
                        }
                    }
                    self.seen(&actor, &c.reply.pop, t0, now);
                    let bytes: &[u8] = if c.reply.payload.is_empty() {
                        b"null"
                    } else {
                        &c.reply.payload
                    };
                    let body = serde_json::from_slice(bytes).map_err(|e| {
                        CallError(format!("{actor}.{method}: unexpected reply: {e}"))
                    })?;
                    return Ok(Reply {
                        body,
                        pop: c.reply.pop,
                    });
                }
                Err(s) => {
                    let transient = matches!(
                        s.code(),
                        tonic::Code::Unavailable
                            | tonic::Code::Unknown
                            | tonic::Code::Cancelled
                            | tonic::Code::DeadlineExceeded
                            | tonic::Code::Aborted
                            | tonic::Code::Internal
                    );
                    if transient && rounds < CALL_ROUNDS_MAX {
                        rounds += 1;
                        self.counters.calls_retried.fetch_add(1, Relaxed);
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        continue;
                    }
                    self.counters.calls_failed.fetch_add(1, Relaxed);
                    return Err(CallError(format!(
                        "{ty}/{id}.{method}: {:?}: {}",
                        s.code(),
                        s.message()
                    )));
                }
            }
        }
    }

    /// Notes that `actor` answered from `pop` to a call made at `t0`,
    /// resolving POP-kill watches: the failover time is how long the first
    /// successful call elsewhere waited since the later of the kill and its
    /// start (time nobody called the actor is not outage).
    fn seen(&self, actor: &str, pop: &str, t0: Instant, now: Instant) {
        self.last_pop
            .lock()
            .insert(actor.to_string(), pop.to_string());
        let mut kills = self.kills.lock();
        for k in kills.iter_mut() {
            if k.pop != pop && now > k.at && k.waiting.remove(actor) {
                k.resolved += 1;
                let from = t0.max(k.at);
                k.worst_ms = k.worst_ms.max(now.duration_since(from).as_millis() as u64);
            }
        }
    }

    /// SIGKILLs a POP through `kill` and starts watching the actors that
    /// were last seen there.
    pub fn killed(&self, pop: &str, at: Instant) {
        let waiting: HashSet<String> = self
            .last_pop
            .lock()
            .iter()
            .filter(|(_, p)| p.as_str() == pop)
            .map(|(a, _)| a.clone())
            .collect();
        self.event(format!(
            "SIGKILL POP {pop} ({} of our actors were there)",
            waiting.len()
        ));
        self.kills.lock().push(KillWatch {
            pop: pop.to_string(),
            at,
            waiting,
            resolved: 0,
            worst_ms: 0,
        });
    }

    /// Asks player number `idx` to travel to `to`.
    pub fn send_traveller(&self, idx: usize, to: Metro) {
        *self.travel_to.lock() = Some((idx, to, Instant::now()));
    }

    /// `(failover_ms_max, actors measured, actors never called again)`.
    pub fn failover(&self) -> (u64, usize, usize) {
        let kills = self.kills.lock();
        (
            kills.iter().map(|k| k.worst_ms).max().unwrap_or(0),
            kills.iter().map(|k| k.resolved).sum(),
            kills.iter().map(|k| k.waiting.len()).sum(),
        )
    }

    /// Latencies in µs per POP the calls went to.
    pub fn latencies(&self) -> HashMap<String, Vec<u64>> {
        self.latency_us.lock().clone()
    }

    /// Call latencies by `type.method`, µs.
    pub fn method_latencies(&self) -> HashMap<String, Vec<u64>> {
        self.method_latency_us.lock().clone()
    }

    fn match_ended(&self, id: &str) {
        if self.ended.lock().insert(id.to_string()) {
            self.counters.matches_completed.fetch_add(1, Relaxed);
        }
    }
}

/// One simulated player.
#[derive(Clone, Debug)]
pub struct Spec {
    /// Index (also the high half of its action ids).
    pub idx: usize,
    /// Actor id.
    pub name: String,
    /// Where it starts.
    pub metro: Metro,
    /// Starting rating.
    pub rating: i32,
}

/// What a player's client did, for the audit.
#[derive(Default, Debug)]
pub struct Tally {
    /// The player's actor id.
    pub name: String,
    /// `act` ids acknowledged.
    pub acts_acked: Vec<u64>,
    /// `act` ids whose call failed (may or may not be applied).
    pub acts_unknown: Vec<u64>,
    /// Per match: input ids acknowledged as applied.
    pub inputs_acked: BTreeMap<String, Vec<u64>>,
    /// Per match: input ids whose call failed, or acknowledged as not
    /// applied (the match was over).
    pub inputs_unknown: BTreeMap<String, Vec<u64>>,
    /// Matches this player saw end with all results delivered.
    pub matches_done: Vec<String>,
    /// Longest time between two successful calls.
    pub gap_ms_max: u64,
    /// Errors seen (first few).
    pub errors: Vec<String>,
    /// Error count.
    pub error_count: u64,
    /// Where the player ended up.
    pub metro: Option<Metro>,
}

impl Tally {
    fn error(&mut self, e: CallError) {
        self.error_count += 1;
        if self.errors.len() < 5 {
            self.errors.push(e.0);
        }
    }
}

/// A small xorshift generator (the workload need not be reproducible).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

struct PlayerRun {
    sh: Arc<Shared>,
    spec: Spec,
    client: TernClient,
    metro: Metro,
    rng: Rng,
    seq: u64,
    tally: Tally,
    last_ok: Instant,
    next_act: Instant,
    rating: i32,
}

impl PlayerRun {
    fn next_id(&mut self) -> u64 {
        self.seq += 1;
        ((self.spec.idx as u64 + 1) << 32) | self.seq
    }

    fn key(&self, id: u64) -> String {
        format!("{}:{id}", self.spec.name)
    }

    fn ok(&mut self) {
        let now = Instant::now();
        self.tally.gap_ms_max = self
            .tally
            .gap_ms_max
            .max(now.duration_since(self.last_ok).as_millis() as u64);
        self.last_ok = now;
    }

    async fn player_call<T: DeserializeOwned>(
        &mut self,
        method: &str,
        body: serde_json::Value,
        key: Option<String>,
    ) -> Result<Reply<T>, CallError> {
        let name = self.spec.name.clone();
        let r = self
            .sh
            .call(&self.client, "player", &name, method, body, key)
            .await;
        if r.is_ok() {
            self.ok();
        }
        r
    }

    /// One `act`, if it is time for one.
    async fn maybe_act(&mut self) {
        if Instant::now() < self.next_act {
            return;
        }
        self.next_act =
            Instant::now() + Duration::from_millis(ACT_EVERY_MS / 2 + self.rng.below(ACT_EVERY_MS));
        let id = self.next_id();
        let item = ITEMS[self.rng.below(ITEMS.len() as u64) as usize];
        let body = match self.rng.below(10) {
            0..5 => json!({"action_id": id, "kind": "pickup", "item": item}),
            5..8 => json!({"action_id": id, "kind": "use", "item": item}),
            _ => json!({"action_id": id, "kind": "emote"}),
        };
        let key = Some(self.key(id));
        match self
            .player_call::<serde_json::Value>("act", body, key)
            .await
        {
            Ok(_) => {
                self.tally.acts_acked.push(id);
                self.sh.counters.actions_acked.fetch_add(1, Relaxed);
            }
            Err(e) => {
                self.tally.acts_unknown.push(id);
                self.tally.error(e);
            }
        }
    }

    /// Travels if the chaos task asked this player to.
    async fn maybe_travel(&mut self) {
        let order = {
            let mut t = self.sh.travel_to.lock();
            match *t {
                Some((idx, to, at)) if idx == self.spec.idx => {
                    *t = None;
                    Some((to, at))
                }
                _ => None,
            }
        };
        let Some((to, at)) = order else { return };
        let from_pop = self
            .sh
            .last_pop
            .lock()
            .get(&format!("player/{}", self.spec.name))
            .cloned()
            .unwrap_or_default();
        self.client.relocate(to.coords);
        let to_pop = self.client.pop().name.clone();
        self.sh.event(format!(
            "{} travels {} -> {} (its POP {} -> {})",
            self.spec.name, self.metro.city, to.city, from_pop, to_pop
        ));
        let mut travel = Travel {
            player: self.spec.name.clone(),
            from_city: self.metro.city.into(),
            to_city: to.city.into(),
            from_pop,
            to_pop: to_pop.clone(),
            at_s: at.duration_since(self.sh.started).as_secs_f64(),
            followed_after_ms: None,
        };
        self.metro = to;
        // Keep calling the player actor from the new POP until it follows.
        for _ in 0..40 {
            if let Ok(r) = self
                .player_call::<PlayerState>("state", json!(null), None)
                .await
                && r.pop == to_pop
            {
                travel.followed_after_ms = Some(at.elapsed().as_millis() as u64);
                self.sh.event(format!(
                    "actor player/{} followed its client to {to_pop} in {} ms",
                    self.spec.name,
                    at.elapsed().as_millis()
                ));
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        *self.sh.travel.lock() = Some(travel);
    }

    async fn run(mut self) -> Tally {
        let sh = self.sh.clone();
        let join = json!({"home": self.metro.region, "rating": self.spec.rating});
        let key = Some(format!("{}:join", self.spec.name));
        match self.player_call::<PlayerState>("join", join, key).await {
            Ok(r) => self.rating = r.body.rating,
            Err(e) => self.tally.error(e),
        }
        let mut round = 0u64;
        while sh.playing() {
            round += 1;
            self.maybe_travel().await;
            let Some(match_id) = self.queue(round).await else {
                continue;
            };
            sh.counters.playing.fetch_add(1, Relaxed);
            self.play(&match_id).await;
            sh.counters.playing.fetch_sub(1, Relaxed);
            if let Ok(r) = self
                .player_call::<PlayerState>("state", json!(null), None)
                .await
            {
                self.rating = r.body.rating;
            }
        }
        self.tally.name = self.spec.name.clone();
        self.tally.metro = Some(self.metro);
        self.tally
    }

    /// Queues in the current region; returns the match, or `None` if play
    /// stopped or the wait timed out.
    async fn queue(&mut self, round: u64) -> Option<String> {
        let sh = self.sh.clone();
        let mm = format!("{}-{}", self.metro.region, sh.run);
        let body = json!({"player": self.spec.name, "rating": self.rating});
        let key = Some(format!("{}:enqueue:{round}", self.spec.name));
        let mut ticket = match sh
            .call::<Ticket>(&self.client, "matchmaker", &mm, "enqueue", body, key)
            .await
        {
            Ok(t) => {
                self.ok();
                t.body
            }
            Err(e) => {
                self.tally.error(e);
                tokio::time::sleep(Duration::from_millis(POLL_MS)).await;
                return None;
            }
        };
        let since = Instant::now();
        while ticket.match_id.is_none() {
            if !sh.playing()
                || self
                    .sh
                    .travel_to
                    .lock()
                    .is_some_and(|t| t.0 == self.spec.idx)
            {
                let body = json!({"player": self.spec.name});
                let _ = sh
                    .call::<Ticket>(&self.client, "matchmaker", &mm, "leave", body, None)
                    .await;
                return None;
            }
            if since.elapsed() > Duration::from_millis(QUEUE_WAIT_MS_MAX) {
                return None;
            }
            self.maybe_act().await;
            tokio::time::sleep(Duration::from_millis(POLL_MS)).await;
            let body = json!({"player": self.spec.name});
            match sh
                .call::<Ticket>(&self.client, "matchmaker", &mm, "poll", body, None)
                .await
            {
                Ok(t) => {
                    self.ok();
                    ticket = t.body;
                    if ticket.match_id.is_none() && !ticket.queued {
                        // Lost our place (a failover rolled the queue
                        // back past our enqueue, which cannot happen with
                        // turn durability; or we left): queue again.
                        return None;
                    }
                }
                Err(e) => self.tally.error(e),
            }
        }
        ticket.match_id
    }

    async fn play(&mut self, match_id: &str) {
        let sh = self.sh.clone();
        let mut view: Option<MatchState> = None;
        let (pushed, follower) = follow_match(&sh, &self.client, match_id);
        let mut tick = tokio::time::interval(Duration::from_millis(1000 / INPUT_HZ));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ended = false;
        while sh.playing() {
            tick.tick().await;
            self.maybe_travel().await;
            self.maybe_act().await;
            if let Some(p) = pushed.borrow().clone()
                && view
                    .as_ref()
                    .is_none_or(|v| p.tick > v.tick || p.ended.is_some())
            {
                ended = p.ended.is_some();
                view = Some(p);
            }
            if ended {
                break;
            }
            let (kind, dir) = self.decide(view.as_ref());
            let id = self.next_id();
            let body = json!({"player": self.spec.name, "action_id": id, "kind": kind, "dir": dir});
            let key = Some(self.key(id));
            match sh
                .call::<doom_lobby_actors::game::InputReply>(
                    &self.client,
                    "match",
                    match_id,
                    "input",
                    body,
                    key,
                )
                .await
            {
                Ok(r) => {
                    self.ok();
                    let r = r.body;
                    let to = if r.applied {
                        sh.counters.inputs_acked.fetch_add(1, Relaxed);
                        &mut self.tally.inputs_acked
                    } else {
                        &mut self.tally.inputs_unknown
                    };
                    to.entry(match_id.to_string()).or_default().push(id);
                    ended = r.state.ended.is_some();
                    view = Some(r.state);
                    if ended {
                        break;
                    }
                }
                Err(e) => {
                    self.tally
                        .inputs_unknown
                        .entry(match_id.to_string())
                        .or_default()
                        .push(id);
                    self.tally.error(e);
                }
            }
        }
        if !ended {
            follower.abort();
            return;
        }
        // The match pushes its state until every result is delivered: wait
        // (bounded) for that event; no polling.
        match tokio::time::timeout(Duration::from_millis(REPORT_WAIT_MS_MAX), follower).await {
            Ok(Ok(true)) => {
                sh.match_ended(match_id);
                self.tally.matches_done.push(match_id.to_string());
            }
            Ok(_) => {}
            Err(_) => self.tally.error(CallError(format!(
                "match/{match_id}: no event with every result delivered within {REPORT_WAIT_MS_MAX} ms"
            ))),
        }
    }

    /// A simple bot: shoot the nearest opponent in line of sight, else walk
    /// towards it.
    fn decide(&mut self, view: Option<&MatchState>) -> (&'static str, &'static str) {
        const DIRS: [&str; 4] = ["n", "s", "e", "w"];
        let random = DIRS[self.rng.below(4) as usize];
        let Some(v) = view else {
            return ("move", random);
        };
        let Some(me) = v.fighters.iter().find(|f| f.name == self.spec.name) else {
            return ("move", random);
        };
        if me.health <= 0 || self.rng.below(10) == 0 {
            return ("move", random);
        }
        let target = v
            .fighters
            .iter()
            .filter(|f| f.name != me.name && f.health > 0)
            .min_by_key(|f| (f.x - me.x).abs() + (f.y - me.y).abs());
        let Some(t) = target else {
            return ("move", random);
        };
        let clear = |dx: i32, dy: i32| {
            let (mut x, mut y) = (me.x, me.y);
            loop {
                x += dx;
                y += dy;
                if (x, y) == (t.x, t.y) {
                    return true;
                }
                if is_wall(x, y) {
                    return false;
                }
            }
        };
        if t.y == me.y {
            let (d, dx) = if t.x > me.x { ("e", 1) } else { ("w", -1) };
            if clear(dx, 0) {
                return ("fire", d);
            }
        }
        if t.x == me.x {
            let (d, dy) = if t.y > me.y { ("s", 1) } else { ("n", -1) };
            if clear(0, dy) {
                return ("fire", d);
            }
        }
        let (dx, dy) = (t.x - me.x, t.y - me.y);
        let horiz = if dx > 0 { ("e", 1, 0) } else { ("w", -1, 0) };
        let vert = if dy > 0 { ("s", 0, 1) } else { ("n", 0, -1) };
        let (first, second) = if dx.abs() >= dy.abs() {
            (horiz, vert)
        } else {
            (vert, horiz)
        };
        for (d, sx, sy) in [first, second] {
            if !is_wall(me.x + sx, me.y + sy) {
                return ("move", d);
            }
        }
        ("move", random)
    }
}

/// Subscribes to `match/<id>`'s `state` topic from its first event. The
/// returned task audits the numbering (gaps, duplicates), records each
/// event's publish-to-receive latency and its alarm's lateness, keeps the
/// newest state in the watch, and ends `true` at the event that says every
/// result was delivered.
fn follow_match(
    sh: &Arc<Shared>,
    client: &TernClient,
    match_id: &str,
) -> (
    tokio::sync::watch::Receiver<Option<MatchState>>,
    tokio::task::JoinHandle<bool>,
) {
    use tokio_stream::StreamExt;
    let (tx, rx) = tokio::sync::watch::channel(None);
    let mut events = client.subscribe("match", match_id, STATE_TOPIC, 0);
    let sh = sh.clone();
    let id = match_id.to_string();
    let task = tokio::spawn(async move {
        let mut last = 0u64;
        while let Some(item) = events.next().await {
            let ev = match item {
                Ok(ev) => ev,
                Err(s) => {
                    sh.counters.push_errors.fetch_add(1, Relaxed);
                    sh.event(format!(
                        "match/{id}: subscription ended: {:?}: {}",
                        s.code(),
                        s.message()
                    ));
                    return false;
                }
            };
            let c = &sh.counters;
            c.push_events.fetch_add(1, Relaxed);
            if ev.seq <= last {
                c.push_duplicates.fetch_add(1, Relaxed);
                continue;
            }
            c.push_gaps.fetch_add(ev.seq - last - 1, Relaxed);
            last = ev.seq;
            let Ok(p) = serde_json::from_slice::<Pushed>(&ev.payload) else {
                sh.event(format!("match/{id}: event {} is not a match state", ev.seq));
                continue;
            };
            let now = crate::now_ms();
            {
                let mut lat = sh.push_latency_us.lock();
                if lat.len() < PUSH_SAMPLES_MAX {
                    lat.push(now.saturating_sub(p.at_ms) * 1000);
                }
            }
            {
                let mut late = sh.alarm_late_ms.lock();
                if late.len() < PUSH_SAMPLES_MAX {
                    late.insert((id.clone(), ev.seq), p.alarm_late_ms);
                }
            }
            let done = p.state.ended.is_some() && p.state.reports_pending == 0;
            tx.send_replace(Some(p.state));
            if done {
                return true;
            }
        }
        false
    });
    (rx, task)
}

/// The players of a run: `n`, spread over the metros, named
/// `<city>-<i>-<run>`, with ratings spread over 800..1400.
pub fn specs(n: usize, run: &str) -> Vec<Spec> {
    (0..n)
        .map(|i| {
            let metro = METROS[i % METROS.len()];
            let city = metro.city.to_lowercase().replace(' ', "");
            Spec {
                idx: i,
                name: format!("{city}-{i:03}-{run}"),
                metro,
                rating: 800 + ((i as i32 * 137) % 600),
            }
        })
        .collect()
}

/// Starts one task per player.
pub fn spawn_players(sh: &Arc<Shared>, specs: &[Spec]) -> Vec<tokio::task::JoinHandle<Tally>> {
    specs
        .iter()
        .map(|spec| {
            let client = TernClient::new(&sh.pops, spec.metro.coords, &sh.creds).expect("client");
            let run = PlayerRun {
                sh: sh.clone(),
                spec: spec.clone(),
                client,
                metro: spec.metro,
                rng: Rng(0x9E37_79B9_7F4A_7C15
                    ^ (spec.idx as u64 + 1).wrapping_mul(0xA24B_AED4_963E_E407)),
                seq: 0,
                tally: Tally::default(),
                last_ok: Instant::now(),
                next_act: Instant::now(),
                rating: spec.rating,
            };
            tokio::spawn(run.run())
        })
        .collect()
}

/// The POPs to kill, in order: never the traveller's destination, and the
/// traveller's origin only after the others.
pub fn kill_order(pops: &[PopInfo], from: [f64; 2], to: [f64; 2]) -> Vec<String> {
    let src = by_distance(pops, from)[0].name.clone();
    let dst = by_distance(pops, to)[0].name.clone();
    let mut order: Vec<String> = pops
        .iter()
        .map(|p| p.name.clone())
        .filter(|n| *n != src && *n != dst)
        .collect();
    if src != dst {
        order.push(src);
    }
    order
}

/// When (fraction of the run) the `k` kills happen; travel is at 0.5.
pub fn kill_times(k: usize) -> Vec<f64> {
    match k {
        0 => vec![],
        1 => vec![0.33],
        _ => (0..k)
            .map(|i| 0.25 + 0.55 * i as f64 / (k - 1) as f64)
            .collect(),
    }
}

/// The audit of one run: the client's tally against the actors.
#[derive(Default, Debug, serde::Serialize)]
pub struct AuditResult {
    /// Acknowledged actions and inputs the actors do not hold.
    pub lost_updates: u64,
    /// Applies beyond the first of an action or input.
    pub duplicate_applies: u64,
    /// Actions and inputs whose call failed but which were applied (allowed:
    /// the client never learned the outcome).
    pub applied_unacked: u64,
    /// Ids the actors hold that this client never sent (must be 0).
    pub phantom_applies: u64,
    /// Acknowledged actions and inputs checked.
    pub checked: u64,
    /// Actors that could not be audited (their audit call failed).
    pub unaudited_actors: u64,
    /// Players whose finished-match count differs from the matches they
    /// saw complete (each ended match must be in its players' stats).
    pub result_mismatches: u64,
}

/// Acknowledged and unknown-outcome ids.
type IdLists = (Vec<u64>, Vec<u64>);

/// Compares one actor's applied ids with the client's tally.
fn compare(acked: &[u64], unknown: &[u64], applied: &[u64], out: &mut AuditResult) {
    let mut count: HashMap<u64, u64> = HashMap::new();
    for &id in applied {
        *count.entry(id).or_default() += 1;
    }
    let unknown: HashSet<u64> = unknown.iter().copied().collect();
    let acked_set: HashSet<u64> = acked.iter().copied().collect();
    for &id in acked {
        out.checked += 1;
        if count.get(&id).copied().unwrap_or(0) == 0 {
            out.lost_updates += 1;
        }
    }
    for (&id, &n) in &count {
        out.duplicate_applies += n.saturating_sub(1);
        if !acked_set.contains(&id) {
            if unknown.contains(&id) {
                out.applied_unacked += 1;
            } else {
                out.phantom_applies += 1;
            }
        }
    }
}

/// Audits every player (its `act`s) and every match it played (its
/// inputs), after play has stopped.
pub async fn audit(sh: &Arc<Shared>, tallies: &[Tally]) -> AuditResult {
    let mut out = AuditResult::default();
    // Call each player from where it ended up, so the audit does not make
    // player actors follow it; matches stay where they are anyway.
    let clients: Vec<TernClient> = METROS
        .iter()
        .map(|m| TernClient::new(&sh.pops, m.coords, &sh.creds).expect("client"))
        .collect();
    let client = &clients[0];
    // match -> player -> (acknowledged, unknown) input ids.
    let mut inputs: BTreeMap<String, BTreeMap<String, IdLists>> = BTreeMap::new();
    for t in tallies {
        let at = t.metro.map_or(0, |m| {
            METROS.iter().position(|x| x.city == m.city).unwrap_or(0)
        });
        let client = &clients[at];
        let audit = sh
            .call::<Audit>(client, "player", &t.name, "audit", json!(null), None)
            .await;
        match audit {
            Ok(a) => compare(&t.acts_acked, &t.acts_unknown, &a.body.applied, &mut out),
            Err(_) => out.unaudited_actors += 1,
        }
        let state = sh
            .call::<PlayerState>(client, "player", &t.name, "state", json!(null), None)
            .await;
        if let Ok(s) = state {
            // A match it saw complete must be in its stats; the player may
            // also hold one more (completed while we were not looking).
            let seen = t.matches_done.len() as u64;
            let held = s.body.stats.matches;
            if held < seen || held > seen + 1 {
                out.result_mismatches += 1;
            }
        }
        for (m, ids) in &t.inputs_acked {
            inputs
                .entry(m.clone())
                .or_default()
                .entry(t.name.clone())
                .or_default()
                .0
                .extend(ids);
        }
        for (m, ids) in &t.inputs_unknown {
            inputs
                .entry(m.clone())
                .or_default()
                .entry(t.name.clone())
                .or_default()
                .1
                .extend(ids);
        }
    }
    for (m, players) in &inputs {
        let a = sh
            .call::<InputAudit>(client, "match", m, "audit", json!(null), None)
            .await;
        let Ok(a) = a else {
            out.unaudited_actors += 1;
            continue;
        };
        for (p, applied) in &a.body.inputs {
            let (acked, unknown) = players.get(p).cloned().unwrap_or_default();
            compare(&acked, &unknown, applied, &mut out);
        }
        for p in players.keys() {
            if !a.body.inputs.iter().any(|(q, _)| q == p) {
                out.unaudited_actors += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pop(name: &str, coords: [f64; 2]) -> PopInfo {
        PopInfo {
            name: name.into(),
            endpoint: String::new(),
            pid: 0,
            coords,
        }
    }

    #[test]
    fn compare_counts_exactly() {
        let mut out = AuditResult::default();
        compare(&[1, 2, 3], &[4, 5], &[1, 3, 3, 4, 9], &mut out);
        assert_eq!(out.lost_updates, 1, "2 is missing");
        assert_eq!(out.duplicate_applies, 1, "3 twice");
        assert_eq!(out.applied_unacked, 1, "4");
        assert_eq!(out.phantom_applies, 1, "9");
        assert_eq!(out.checked, 3);
    }

    #[test]
    fn kills_spare_the_travellers_destination() {
        let pops = [
            pop("fra", [50.11, 8.68]),
            pop("iad", [39.04, -77.49]),
            pop("nrt", [35.76, 140.39]),
        ];
        let order = kill_order(&pops, METROS[0].coords, METROS[2].coords);
        assert_eq!(order, ["iad", "fra"]);
        assert_eq!(kill_times(1), [0.33]);
        let t = kill_times(2);
        assert!((t[0] - 0.25).abs() < 1e-9 && (t[1] - 0.8).abs() < 1e-9);
    }

    #[test]
    fn specs_spread_players() {
        let s = specs(6, "x1");
        assert_eq!(s[0].name, "paris-000-x1");
        assert_eq!(s[1].metro.region, "na");
        assert_eq!(s[5].name, "seoul-005-x1");
        assert!(s.iter().all(|p| (800..1400).contains(&p.rating)));
    }
}
