//! `match/<id>`: a small deathmatch on a grid map.
//!
//! | method | payload | reply |
//! |---|---|---|
//! | `start` | [`StartMatch`](crate::matchmaker::StartMatch) | [`MatchState`] |
//! | `input` | `{"player": name, "action_id": u64, "kind": "move"\|"fire", "dir": "n"\|"s"\|"e"\|"w"}` | [`InputReply`] |
//! | `tick` | (ignored) | [`MatchState`] |
//! | `state` | (ignored) | [`MatchState`] |
//! | `audit` | (ignored) | [`InputAudit`]: per player, every applied input's action id |
//!
//! Time is driven by durable alarms: `start` sets one for the first tick,
//! and each alarm's turn runs the ticks (10 per second) due by now, sets
//! the next alarm and publishes the match on topic `state` (a [`Pushed`]),
//! so players follow the match by subscription, without calling it. Calls
//! also run the ticks due first, so the state a call answers is current.
//! An alarm due while the match's POP was down fires late, once a POP hosts
//! the match again, and catches the ticks up. A tick respawns dead players
//! ([`RESPAWN_TICKS`] after their death) and ends the match at
//! [`TICK_LIMIT`]. A `fire` hits the first player in line of sight
//! for [`DAMAGE`]; a kill scores a frag, and [`FRAG_LIMIT`] frags end the
//! match.
//!
//! When the match ends it reports each player's result to
//! `player/<name>.match_result`. A report that fails (the player's POP is
//! down) stays pending and is retried by an alarm every
//! [`REPORT_RETRY_MS`] (and on every later call); the last `state` event
//! has `reports_pending` 0. Players make the report idempotent.
//!
//! Inputs are recorded, not deduplicated, for the client's audit: an input
//! that arrives after the end is not applied (`applied: false`) and not
//! recorded.

use serde::{Deserialize, Serialize};
use tern_actor_sdk::ActorError;

use crate::matchmaker::StartMatch;
use crate::player::MatchResult;

/// The map: `#` is a wall.
pub const MAP: [&str; 12] = [
    "############",
    "#..........#",
    "#.##....##.#",
    "#.#......#.#",
    "#....##....#",
    "#...#..#...#",
    "#...#..#...#",
    "#....##....#",
    "#.#......#.#",
    "#.##....##.#",
    "#..........#",
    "############",
];
/// Spawn points, one per seat.
pub const SPAWNS: [(i32, i32); 4] = [(1, 1), (10, 10), (10, 1), (1, 10)];
/// Ticks per second.
pub const TICK_MS: u64 = 100;
/// The match ends after this many ticks.
pub const TICK_LIMIT: u64 = 100;
/// ... or when someone has this many frags.
pub const FRAG_LIMIT: u32 = 5;
/// Health at spawn.
pub const HEALTH: i32 = 100;
/// Damage of one hit.
pub const DAMAGE: i32 = 34;
/// Ticks a dead player waits to respawn.
pub const RESPAWN_TICKS: u64 = 5;
/// Most inputs recorded per player for the audit.
pub const INPUT_IDS_MAX: usize = 100_000;
/// How often an ended match retries the result reports that failed, ms.
pub const REPORT_RETRY_MS: u64 = 500;
/// The topic a match publishes its state on.
pub const STATE_TOPIC: &str = "state";

/// One `state` event: the match after an alarm's turn.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Pushed {
    /// The match.
    pub state: MatchState,
    /// When the turn that published it ran, ms since the Unix epoch.
    pub at_ms: u64,
    /// How late the alarm that drove this turn fired, ms.
    pub alarm_late_ms: u64,
}

/// Whether `(x, y)` is a wall (outside the map counts as wall).
pub fn is_wall(x: i32, y: i32) -> bool {
    if x < 0 || y < 0 {
        return true;
    }
    MAP.get(y as usize)
        .and_then(|row| row.as_bytes().get(x as usize))
        .is_none_or(|&c| c == b'#')
}

/// A direction's step.
pub fn step(dir: &str) -> Option<(i32, i32)> {
    match dir {
        "n" => Some((0, -1)),
        "s" => Some((0, 1)),
        "e" => Some((1, 0)),
        "w" => Some((-1, 0)),
        _ => None,
    }
}

/// One player in the match.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Fighter {
    /// Player name.
    pub name: String,
    /// Rating at the start.
    pub rating: i32,
    /// Column.
    pub x: i32,
    /// Row.
    pub y: i32,
    /// Health; 0 while dead.
    pub health: i32,
    /// Frags.
    pub frags: u32,
    /// Deaths.
    pub deaths: u32,
    /// Tick at which a dead player respawns.
    pub respawn_at: u64,
}

/// The match actor's state.
#[derive(Serialize, Deserialize)]
pub struct Game {
    id: String,
    region: String,
    fighters: Vec<Fighter>,
    inputs: Vec<Vec<u64>>,
    started_ms: u64,
    tick: u64,
    ended: Option<String>,
    reports_pending: Vec<usize>,
}

/// `input` request.
#[derive(Deserialize, Serialize, Clone, Debug)]
pub struct Input {
    /// Who.
    pub player: String,
    /// Unique id of this input (the client's tally key).
    pub action_id: u64,
    /// `move` or `fire`.
    pub kind: String,
    /// `n`, `s`, `e` or `w`.
    pub dir: String,
}

/// `input` reply: what happened and what the player sees.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct InputReply {
    /// False if the match was over (nothing recorded).
    pub applied: bool,
    /// What the input did.
    pub effect: String,
    /// The match after it.
    pub state: MatchState,
}

/// `state` / `tick` / `start` reply.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct MatchState {
    /// The match.
    pub match_id: String,
    /// The region that formed it.
    pub region: String,
    /// Current tick.
    pub tick: u64,
    /// Players.
    pub fighters: Vec<Fighter>,
    /// Why it ended, once it has.
    pub ended: Option<String>,
    /// Player results not yet delivered.
    pub reports_pending: usize,
}

/// `audit` reply.
#[derive(Serialize, Deserialize, Debug, PartialEq)]
pub struct InputAudit {
    /// The match.
    pub match_id: String,
    /// `(player, applied input ids in order)`.
    pub inputs: Vec<(String, Vec<u64>)>,
}

impl Game {
    /// A match that has not started.
    pub fn new(id: &str) -> Game {
        Game {
            id: id.to_string(),
            region: String::new(),
            fighters: Vec::new(),
            inputs: Vec::new(),
            started_ms: 0,
            tick: 0,
            ended: None,
            reports_pending: Vec::new(),
        }
    }

    /// Runs one method.
    pub fn dispatch(&mut self, method: &str, payload: &[u8]) -> Result<Vec<u8>, ActorError> {
        let now = tern_actor_sdk::now_ms();
        match method {
            "start" => crate::json("match.start", payload, |r| self.start(r, now)),
            "input" => crate::json("match.input", payload, |r: Input| {
                self.started()?;
                self.advance(now);
                let mut reply = self.input(r)?;
                self.report();
                reply.state = self.state();
                Ok(reply)
            }),
            "tick" | "state" => crate::json("match.state", b"", |()| {
                if !self.fighters.is_empty() {
                    self.advance(now);
                    self.report();
                }
                Ok(self.state())
            }),
            tern_actor_sdk::ALARM_METHOD => {
                crate::json("match.alarm", payload, |a: tern_actor_sdk::Alarm| {
                    self.on_alarm(&a, now)
                })
            }
            "audit" => crate::json("match.audit", b"", |()| {
                Ok(InputAudit {
                    match_id: self.id.clone(),
                    inputs: self
                        .fighters
                        .iter()
                        .zip(&self.inputs)
                        .map(|(f, ids)| (f.name.clone(), ids.clone()))
                        .collect(),
                })
            }),
            other => Err(ActorError::not_found(format!(
                "match has no method `{other}`; known methods: start, input, tick, state, audit"
            ))),
        }
    }

    fn started(&self) -> Result<(), ActorError> {
        if self.fighters.is_empty() {
            Err(ActorError::failed_precondition(format!(
                "match/{} has not started",
                self.id
            )))
        } else {
            Ok(())
        }
    }

    /// Starts the match at `now`. Starting again with the same players is a
    /// no-op (a repeated call); with other players it is refused.
    pub fn start(&mut self, r: StartMatch, now: u64) -> Result<MatchState, ActorError> {
        if !self.fighters.is_empty() {
            let same = r.players.len() == self.fighters.len()
                && r.players
                    .iter()
                    .zip(&self.fighters)
                    .all(|(s, f)| s.name == f.name);
            return if same {
                Ok(self.state())
            } else {
                Err(ActorError::failed_precondition(format!(
                    "match/{} already started with other players",
                    self.id
                )))
            };
        }
        if r.players.len() < 2 || r.players.len() > SPAWNS.len() {
            return Err(ActorError::invalid_argument(format!(
                "a match needs 2 to {} players, got {}",
                SPAWNS.len(),
                r.players.len()
            )));
        }
        self.region = r.region;
        self.started_ms = now;
        for (i, seat) in r.players.into_iter().enumerate() {
            let (x, y) = SPAWNS[i];
            self.fighters.push(Fighter {
                name: seat.name,
                rating: seat.rating,
                x,
                y,
                health: HEALTH,
                frags: 0,
                deaths: 0,
                respawn_at: 0,
            });
            self.inputs.push(Vec::new());
        }
        tern_actor_sdk::info!("match/{} started", self.id);
        tern_actor_sdk::set_alarm(now + TICK_MS, "tick")?;
        Ok(self.state())
    }

    /// An alarm's turn: the ticks due, the reports pending, the next alarm,
    /// and the match published to its subscribers.
    pub fn on_alarm(&mut self, alarm: &tern_actor_sdk::Alarm, now: u64) -> Result<(), ActorError> {
        if self.fighters.is_empty() {
            return Ok(());
        }
        self.advance(now);
        self.report();
        if self.ended.is_none() {
            // The next tick; after an outage, the next one from now (the
            // ticks missed were just caught up).
            let mut next = alarm.at_ms + TICK_MS;
            if next <= now {
                next = now + TICK_MS - now.saturating_sub(self.started_ms) % TICK_MS;
            }
            tern_actor_sdk::set_alarm(next, "tick")?;
        } else if !self.reports_pending.is_empty() {
            tern_actor_sdk::set_alarm(now + REPORT_RETRY_MS, "report")?;
        }
        tern_actor_sdk::publish_json(
            STATE_TOPIC,
            &Pushed {
                state: self.state(),
                at_ms: now,
                alarm_late_ms: now.saturating_sub(alarm.at_ms),
            },
        )
    }

    /// Runs the ticks that elapsed up to `now`.
    pub fn advance(&mut self, now: u64) {
        let target = (now.saturating_sub(self.started_ms) / TICK_MS).min(TICK_LIMIT);
        while self.ended.is_none() && self.tick < target {
            self.tick += 1;
            self.step_tick();
        }
    }

    fn step_tick(&mut self) {
        let tick = self.tick;
        for i in 0..self.fighters.len() {
            if self.fighters[i].health <= 0 && self.fighters[i].respawn_at <= tick {
                // Respawn at the free spawn point farthest from the others.
                let spot = SPAWNS
                    .iter()
                    .copied()
                    .filter(|&(x, y)| self.occupant(x, y).is_none())
                    .max_by_key(|&(x, y)| {
                        self.fighters
                            .iter()
                            .filter(|f| f.health > 0)
                            .map(|f| (f.x - x).abs() + (f.y - y).abs())
                            .min()
                            .unwrap_or(0)
                    });
                if let Some((x, y)) = spot {
                    let f = &mut self.fighters[i];
                    (f.x, f.y, f.health) = (x, y, HEALTH);
                }
            }
        }
        if tick >= TICK_LIMIT {
            self.end("time limit");
        }
    }

    fn occupant(&self, x: i32, y: i32) -> Option<usize> {
        self.fighters
            .iter()
            .position(|f| f.health > 0 && f.x == x && f.y == y)
    }

    fn end(&mut self, why: &str) {
        if self.ended.is_none() {
            self.ended = Some(why.to_string());
            self.reports_pending = (0..self.fighters.len()).collect();
            tern_actor_sdk::info!("match/{} ended: {why}", self.id);
        }
    }

    /// Applies one input (the match must have been advanced to now).
    pub fn input(&mut self, r: Input) -> Result<InputReply, ActorError> {
        let Some(me) = self.fighters.iter().position(|f| f.name == r.player) else {
            return Err(ActorError::failed_precondition(format!(
                "{} is not in match/{}",
                r.player, self.id
            )));
        };
        let Some((dx, dy)) = step(&r.dir) else {
            return Err(ActorError::invalid_argument(format!(
                "unknown direction `{}`; directions: n, s, e, w",
                r.dir
            )));
        };
        if r.kind != "move" && r.kind != "fire" {
            return Err(ActorError::invalid_argument(format!(
                "unknown input `{}`; inputs: move, fire",
                r.kind
            )));
        }
        if self.ended.is_some() {
            return Ok(InputReply {
                applied: false,
                effect: "the match is over".into(),
                state: self.state(),
            });
        }
        let ids = &mut self.inputs[me];
        if ids.len() < INPUT_IDS_MAX {
            ids.push(r.action_id);
        }
        let (x, y) = (self.fighters[me].x, self.fighters[me].y);
        let effect = if self.fighters[me].health <= 0 {
            "waiting to respawn".to_string()
        } else if r.kind == "move" {
            let (nx, ny) = (x + dx, y + dy);
            if is_wall(nx, ny) || self.occupant(nx, ny).is_some() {
                "blocked".to_string()
            } else {
                (self.fighters[me].x, self.fighters[me].y) = (nx, ny);
                format!("moved to {nx},{ny}")
            }
        } else {
            self.fire(me, dx, dy)
        };
        Ok(InputReply {
            applied: true,
            effect,
            state: self.state(),
        })
    }

    fn fire(&mut self, me: usize, dx: i32, dy: i32) -> String {
        let (mut x, mut y) = (self.fighters[me].x, self.fighters[me].y);
        loop {
            x += dx;
            y += dy;
            if is_wall(x, y) {
                return "missed".into();
            }
            if let Some(v) = self.occupant(x, y) {
                let victim = &mut self.fighters[v];
                victim.health -= DAMAGE;
                if victim.health > 0 {
                    return format!("hit {}", victim.name);
                }
                victim.health = 0;
                victim.deaths += 1;
                victim.respawn_at = self.tick + RESPAWN_TICKS;
                let name = victim.name.clone();
                self.fighters[me].frags += 1;
                if self.fighters[me].frags >= FRAG_LIMIT {
                    self.end("frag limit");
                }
                return format!("fragged {name}");
            }
        }
    }

    /// Placements (1 = winner): most frags, then fewest deaths, then seat.
    pub fn placements(&self) -> Vec<u32> {
        let mut order: Vec<usize> = (0..self.fighters.len()).collect();
        order.sort_by_key(|&i| {
            (
                std::cmp::Reverse(self.fighters[i].frags),
                self.fighters[i].deaths,
                i,
            )
        });
        let mut place = vec![0; self.fighters.len()];
        for (p, &i) in order.iter().enumerate() {
            place[i] = p as u32 + 1;
        }
        place
    }

    /// The result report for seat `i`.
    pub fn result_of(&self, i: usize) -> MatchResult {
        let n = self.fighters.len();
        let others: i64 = self
            .fighters
            .iter()
            .enumerate()
            .filter(|&(j, _)| j != i)
            .map(|(_, f)| i64::from(f.rating))
            .sum();
        MatchResult {
            match_id: self.id.clone(),
            placement: self.placements()[i],
            players: n as u32,
            kills: u64::from(self.fighters[i].frags),
            deaths: u64::from(self.fighters[i].deaths),
            opponents_rating: (others / (n as i64 - 1).max(1)) as i32,
        }
    }

    /// Delivers pending result reports; failures stay pending.
    fn report(&mut self) {
        let pending = std::mem::take(&mut self.reports_pending);
        for i in pending {
            let r = self.result_of(i);
            let name = self.fighters[i].name.clone();
            match tern_actor_sdk::call::<_, serde_json::Value>("player", &name, "match_result", &r)
            {
                Ok(_) => {}
                Err(e) => {
                    tern_actor_sdk::warn!("match/{}: cannot report to player/{name}: {e}", self.id);
                    self.reports_pending.push(i);
                }
            }
        }
    }

    /// The client view.
    pub fn state(&self) -> MatchState {
        MatchState {
            match_id: self.id.clone(),
            region: self.region.clone(),
            tick: self.tick,
            fighters: self.fighters.clone(),
            ended: self.ended.clone(),
            reports_pending: self.reports_pending.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matchmaker::Seat;

    fn started(n: usize) -> Game {
        let mut g = Game::new("eu-1-abcd");
        let players = (0..n)
            .map(|i| Seat {
                name: format!("p{i}"),
                rating: 1000 + 100 * i as i32,
            })
            .collect();
        g.start(
            StartMatch {
                region: "eu".into(),
                players,
            },
            0,
        )
        .unwrap();
        g
    }

    fn input(g: &mut Game, who: usize, id: u64, kind: &str, dir: &str) -> InputReply {
        g.input(Input {
            player: format!("p{who}"),
            action_id: id,
            kind: kind.into(),
            dir: dir.into(),
        })
        .unwrap()
    }

    #[test]
    fn map_is_closed_and_spawns_are_free() {
        for row in MAP {
            assert_eq!(row.len(), MAP.len());
        }
        for i in 0..12 {
            assert!(is_wall(i, 0) && is_wall(0, i) && is_wall(i, 11) && is_wall(11, i));
        }
        assert!(is_wall(-1, 3) && is_wall(3, 12));
        for (x, y) in SPAWNS {
            assert!(!is_wall(x, y));
        }
    }

    #[test]
    fn start_is_idempotent_for_the_same_players() {
        let mut g = started(4);
        let again = StartMatch {
            region: "eu".into(),
            players: (0..4)
                .map(|i| Seat {
                    name: format!("p{i}"),
                    rating: 0,
                })
                .collect(),
        };
        assert!(g.start(again.clone(), 50).is_ok());
        assert_eq!(g.started_ms, 0);
        let mut other = again;
        other.players[3].name = "zz".into();
        assert_eq!(
            g.start(other, 60).unwrap_err().kind,
            tern_actor_sdk::ErrorKind::FailedPrecondition
        );
    }

    #[test]
    fn moves_are_blocked_by_walls_and_players() {
        let mut g = started(4);
        assert_eq!(input(&mut g, 0, 1, "move", "n").effect, "blocked");
        assert_eq!(input(&mut g, 0, 2, "move", "e").effect, "moved to 2,1");
        assert_eq!(input(&mut g, 0, 3, "move", "w").effect, "moved to 1,1");
        let e = g
            .input(Input {
                player: "p0".into(),
                action_id: 4,
                kind: "jump".into(),
                dir: "n".into(),
            })
            .unwrap_err();
        assert_eq!(e.kind, tern_actor_sdk::ErrorKind::InvalidArgument);
        let e = g
            .input(Input {
                player: "nobody".into(),
                action_id: 5,
                kind: "move".into(),
                dir: "n".into(),
            })
            .unwrap_err();
        assert_eq!(e.kind, tern_actor_sdk::ErrorKind::FailedPrecondition);
    }

    #[test]
    fn three_hits_frag_and_the_victim_respawns() {
        let mut g = started(4);
        // p0 at (1,1), p2 at (10,1): same row, open line of sight.
        assert_eq!(input(&mut g, 0, 1, "fire", "e").effect, "hit p2");
        assert_eq!(input(&mut g, 0, 2, "fire", "e").effect, "hit p2");
        assert_eq!(input(&mut g, 0, 3, "fire", "e").effect, "fragged p2");
        assert_eq!(g.fighters[2].health, 0);
        assert_eq!((g.fighters[0].frags, g.fighters[2].deaths), (1, 1));
        assert_eq!(input(&mut g, 0, 4, "fire", "e").effect, "missed");
        assert_eq!(
            input(&mut g, 2, 5, "move", "w").effect,
            "waiting to respawn"
        );
        g.advance(RESPAWN_TICKS * TICK_MS);
        assert_eq!(g.fighters[2].health, HEALTH);
        let audit: InputAudit = serde_json::from_slice(&g.dispatch("audit", b"").unwrap()).unwrap();
        assert_eq!(audit.inputs[0], ("p0".to_string(), vec![1, 2, 3, 4]));
        assert_eq!(audit.inputs[2], ("p2".to_string(), vec![5]));
    }

    #[test]
    fn frag_limit_ends_and_reports_stay_pending_off_wasm() {
        let mut g = started(4);
        let mut id = 0;
        while g.ended.is_none() {
            id += 1;
            input(&mut g, 0, id, "fire", "e");
            g.advance(g.started_ms + (g.tick + RESPAWN_TICKS) * TICK_MS);
        }
        assert_eq!(g.ended.as_deref(), Some("frag limit"));
        assert_eq!(g.fighters[0].frags, FRAG_LIMIT);
        let r = input(&mut g, 1, 999, "move", "n");
        assert!(!r.applied);
        assert_eq!(g.placements()[0], 1);
        let res = g.result_of(0);
        assert_eq!((res.placement, res.kills, res.players), (1, 5, 4));
        assert_eq!(res.opponents_rating, 1200);
        assert_eq!(g.result_of(2).deaths, 5);
        // Off wasm the player calls fail, so all four reports stay pending.
        g.report();
        assert_eq!(g.state().reports_pending, 4);
        let ids: u64 = g.inputs.iter().map(|v| v.len() as u64).sum();
        assert_eq!(ids, id, "the late input was not recorded");
    }

    #[test]
    fn alarms_tick_the_match_and_catch_up_after_an_outage() {
        let mut g = started(2);
        let alarm = |at_ms| tern_actor_sdk::Alarm {
            id: 1,
            tag: "tick".into(),
            at_ms,
        };
        g.on_alarm(&alarm(TICK_MS), TICK_MS).unwrap();
        assert_eq!(g.tick, 1);
        // An alarm that fires 3 s late (its POP died) runs every tick due.
        g.on_alarm(&alarm(2 * TICK_MS), 2 * TICK_MS + 3_000)
            .unwrap();
        assert_eq!(g.tick, 32);
        // Past the time limit the match ends; results stay pending off wasm.
        g.on_alarm(&alarm(TICK_LIMIT * TICK_MS), TICK_LIMIT * TICK_MS)
            .unwrap();
        assert_eq!(g.ended.as_deref(), Some("time limit"));
        assert_eq!(g.state().reports_pending, 2);
        // An alarm for a match never started changes nothing.
        let mut idle = Game::new("x");
        idle.on_alarm(&alarm(0), 10).unwrap();
        assert_eq!(idle.tick, 0);
    }

    #[test]
    fn time_limit_ends_the_match() {
        let mut g = started(2);
        g.advance(TICK_LIMIT * TICK_MS - 1);
        assert!(g.ended.is_none());
        g.advance(TICK_LIMIT * TICK_MS * 5);
        assert_eq!(g.tick, TICK_LIMIT);
        assert_eq!(g.ended.as_deref(), Some("time limit"));
        // The dispatcher reports (and fails off wasm) and answers the state.
        let s: MatchState = serde_json::from_slice(&g.dispatch("state", b"").unwrap()).unwrap();
        assert_eq!(s.reports_pending, 2);
        let e = Game::new("x").dispatch(
            "input",
            br#"{"player":"a","action_id":1,"kind":"move","dir":"n"}"#,
        );
        assert_eq!(
            e.unwrap_err().kind,
            tern_actor_sdk::ErrorKind::FailedPrecondition
        );
    }
}
