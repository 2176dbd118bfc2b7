//! `player/<name>`: a player's profile, rating, stats, inventory, current
//! match, and the audit of the actions applied to it.
//!
//! | method | payload | reply |
//! |---|---|---|
//! | `join` | `{"home": region, "rating": r}` (rating used on the first join only) | [`PlayerState`] |
//! | `act` | `{"action_id": u64, "kind": "pickup"\|"use"\|"emote", "item": name}` | [`Acted`] |
//! | `match_found` | `{"match_id": id}` | [`PlayerState`] |
//! | `match_result` | [`MatchResult`] | [`ResultApplied`] |
//! | `state` | (ignored) | [`PlayerState`] |
//! | `audit` | (ignored) | [`Audit`]: every applied action id, in order |
//!
//! `act` does **not** deduplicate action ids: it records each one it
//! applies, so a client that compares its own tally of acknowledged actions
//! with `audit` sees exactly what tern lost or applied twice. (Retries are
//! made safe by tern's idempotency keys, not by the actor.)
//!
//! `match_found` and `match_result` come from other actors, whose calls carry
//! no idempotency key and may be repeated when a turn is retried after a
//! crash; the player makes them idempotent by match id.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tern_actor_sdk::ActorError;

/// Rating a new player starts with when `join` gives none.
pub const RATING_DEFAULT: i32 = 1000;
/// Elo K-factor.
pub const RATING_K: f64 = 32.0;
/// Most action ids kept for the audit.
pub const AUDIT_IDS_MAX: usize = 200_000;
/// Most match ids remembered (for idempotent `match_result`).
pub const RESULTS_SEEN_MAX: usize = 512;
/// Most matches kept in the history.
pub const HISTORY_MAX: usize = 16;
/// Most of one item a player can carry.
pub const ITEM_STACK_MAX: u32 = 9;
/// Items a player can pick up.
pub const ITEMS: &[&str] = &["shotgun", "medkit", "armor", "rocket", "keycard"];

/// Matches, kills and the rest.
#[derive(Default, Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Stats {
    /// Matches finished.
    pub matches: u64,
    /// Matches won (placed first).
    pub wins: u64,
    /// Frags.
    pub kills: u64,
    /// Deaths.
    pub deaths: u64,
    /// Items picked up.
    pub pickups: u64,
    /// Items used.
    pub items_used: u64,
    /// `use` with an empty slot.
    pub fumbles: u64,
    /// Emotes.
    pub emotes: u64,
    /// Matches the matchmaker put this player in.
    pub matches_found: u64,
}

/// One finished match, as the player remembers it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct MatchRecord {
    /// The match.
    pub match_id: String,
    /// 1 = winner.
    pub placement: u32,
    /// Frags.
    pub kills: u64,
    /// Deaths.
    pub deaths: u64,
    /// Rating change.
    pub rating_delta: i32,
}

/// The player actor's state.
#[derive(Serialize, Deserialize)]
pub struct Player {
    name: String,
    home: String,
    rating: i32,
    stats: Stats,
    inventory: BTreeMap<String, u32>,
    current_match: Option<String>,
    results_seen: Vec<String>,
    history: Vec<MatchRecord>,
    applied: Vec<u64>,
    /// Version 2 only: a field added with a default.
    #[cfg(feature = "v2")]
    #[serde(default)]
    actions_since_upgrade: u64,
}

/// `join` request.
#[derive(Deserialize, Default)]
#[serde(default)]
pub struct Join {
    /// Home region.
    pub home: String,
    /// Starting rating (first join only).
    pub rating: Option<i32>,
}

/// `act` request.
#[derive(Deserialize, Serialize, Clone, Debug)]
pub struct Act {
    /// Unique id of this action (the client's tally key).
    pub action_id: u64,
    /// `pickup`, `use` or `emote`.
    pub kind: String,
    /// The item, for `pickup` and `use`.
    #[serde(default)]
    pub item: Option<String>,
}

/// `act` reply.
#[derive(Serialize, Deserialize, Debug, PartialEq)]
pub struct Acted {
    /// The action.
    pub action_id: u64,
    /// What it did.
    pub effect: String,
    /// Actions applied so far.
    pub applied_total: u64,
}

/// `match_found` request.
#[derive(Deserialize, Serialize)]
pub struct MatchFound {
    /// The match.
    pub match_id: String,
}

/// `match_result` request, sent by `match/<id>` when it ends.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
pub struct MatchResult {
    /// The match.
    pub match_id: String,
    /// 1 = winner.
    pub placement: u32,
    /// Players in the match.
    pub players: u32,
    /// Frags.
    pub kills: u64,
    /// Deaths.
    pub deaths: u64,
    /// Mean rating of the opponents.
    pub opponents_rating: i32,
}

/// `match_result` reply.
#[derive(Serialize, Deserialize, Debug, PartialEq)]
pub struct ResultApplied {
    /// False when this match was already reported (a repeated call).
    pub applied: bool,
    /// Rating after.
    pub rating: i32,
}

/// `state` reply.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct PlayerState {
    /// Name (the actor id).
    pub name: String,
    /// Home region.
    pub home: String,
    /// Elo-like rating.
    pub rating: i32,
    /// Stats.
    pub stats: Stats,
    /// Item counts.
    pub inventory: BTreeMap<String, u32>,
    /// The match the player is in, if any.
    pub current_match: Option<String>,
    /// Recent matches, oldest first.
    pub history: Vec<MatchRecord>,
    /// Actions applied so far.
    pub applied_total: u64,
    /// The version of this code: 1, or 2 when built with feature `v2`.
    #[serde(default)]
    pub code_version: u32,
    /// Actions applied since the actor moved to version 2 (0 before).
    #[serde(default)]
    pub actions_since_upgrade: u64,
}

/// The version of this build of the code.
pub const CODE_VERSION: u32 = if cfg!(feature = "v2") { 2 } else { 1 };

/// `audit` reply.
#[derive(Serialize, Deserialize, Debug, PartialEq)]
pub struct Audit {
    /// The player.
    pub player: String,
    /// Every applied action id, in the order applied (repeats included).
    pub applied: Vec<u64>,
    /// True if more than [`AUDIT_IDS_MAX`] were applied (the oldest dropped).
    pub truncated: bool,
}

/// Expected score of `r` against `opp` (Elo).
pub fn expected_score(r: i32, opp: i32) -> f64 {
    1.0 / (1.0 + 10f64.powf(f64::from(opp - r) / 400.0))
}

/// Rating change for a placement among `players` (1st scores 1, last 0).
pub fn rating_delta(r: i32, opp: i32, placement: u32, players: u32) -> i32 {
    let players = players.max(2);
    let placement = placement.clamp(1, players);
    let score = f64::from(players - placement) / f64::from(players - 1);
    (RATING_K * (score - expected_score(r, opp))).round() as i32
}

impl Player {
    /// A new player named `name`.
    pub fn new(name: &str) -> Player {
        Player {
            name: name.to_string(),
            home: String::new(),
            rating: RATING_DEFAULT,
            stats: Stats::default(),
            inventory: BTreeMap::new(),
            current_match: None,
            results_seen: Vec::new(),
            history: Vec::new(),
            applied: Vec::new(),
            #[cfg(feature = "v2")]
            actions_since_upgrade: 0,
        }
    }

    /// Runs one method.
    pub fn dispatch(&mut self, method: &str, payload: &[u8]) -> Result<Vec<u8>, ActorError> {
        match method {
            "join" => crate::json("player.join", payload, |r: Option<Join>| {
                Ok(self.join(r.unwrap_or_default()))
            }),
            "act" => crate::json("player.act", payload, |r| self.act(r)),
            "match_found" => {
                crate::json("player.match_found", payload, |r| Ok(self.match_found(r)))
            }
            "match_result" => {
                crate::json("player.match_result", payload, |r| Ok(self.match_result(r)))
            }
            "state" => crate::json("player.state", b"", |()| Ok(self.state())),
            "audit" => crate::json("player.audit", b"", |()| Ok(self.audit())),
            other => Err(ActorError::not_found(format!(
                "player has no method `{other}`; known methods: join, act, match_found, match_result, state, audit"
            ))),
        }
    }

    fn join(&mut self, req: Join) -> PlayerState {
        if self.home.is_empty() {
            if let Some(r) = req.rating {
                self.rating = r.clamp(0, 4000);
            }
            tern_actor_sdk::info!("{} joined from {}", self.name, req.home);
        }
        if !req.home.is_empty() {
            self.home = req.home;
        }
        self.state()
    }

    fn act(&mut self, req: Act) -> Result<Acted, ActorError> {
        let item = || -> Result<String, ActorError> {
            match &req.item {
                Some(i) if ITEMS.contains(&i.as_str()) => Ok(i.clone()),
                Some(i) => Err(ActorError::invalid_argument(format!(
                    "unknown item `{i}`; items: {}",
                    ITEMS.join(", ")
                ))),
                None => Err(ActorError::invalid_argument(format!(
                    "`{}` needs an item",
                    req.kind
                ))),
            }
        };
        // Validate fully before changing anything: an error must not leave
        // half an action behind.
        let effect = match req.kind.as_str() {
            "pickup" => {
                let item = item()?;
                let n = self.inventory.entry(item.clone()).or_insert(0);
                if *n < ITEM_STACK_MAX {
                    *n += 1;
                    self.stats.pickups += 1;
                    format!("picked up {item}")
                } else {
                    format!("{item} stack is full")
                }
            }
            "use" => {
                let item = item()?;
                match self.inventory.get_mut(&item) {
                    Some(n) if *n > 0 => {
                        *n -= 1;
                        if *n == 0 {
                            self.inventory.remove(&item);
                        }
                        self.stats.items_used += 1;
                        format!("used {item}")
                    }
                    _ => {
                        self.stats.fumbles += 1;
                        format!("no {item} to use")
                    }
                }
            }
            "emote" => {
                self.stats.emotes += 1;
                "waved".to_string()
            }
            other => {
                return Err(ActorError::invalid_argument(format!(
                    "unknown action `{other}`; actions: pickup, use, emote"
                )));
            }
        };
        if self.applied.len() >= AUDIT_IDS_MAX {
            self.applied.remove(0);
        }
        self.applied.push(req.action_id);
        #[cfg(feature = "v2")]
        {
            self.actions_since_upgrade += 1;
        }
        Ok(Acted {
            action_id: req.action_id,
            effect,
            applied_total: self.applied.len() as u64,
        })
    }

    fn match_found(&mut self, req: MatchFound) -> PlayerState {
        let known = self.current_match.as_deref() == Some(req.match_id.as_str())
            || self.results_seen.contains(&req.match_id);
        if !known {
            self.current_match = Some(req.match_id);
            self.stats.matches_found += 1;
        }
        self.state()
    }

    fn match_result(&mut self, r: MatchResult) -> ResultApplied {
        if self.results_seen.contains(&r.match_id) {
            return ResultApplied {
                applied: false,
                rating: self.rating,
            };
        }
        if self.results_seen.len() >= RESULTS_SEEN_MAX {
            self.results_seen.remove(0);
        }
        self.results_seen.push(r.match_id.clone());
        let delta = rating_delta(self.rating, r.opponents_rating, r.placement, r.players);
        self.rating = (self.rating + delta).max(0);
        self.stats.matches += 1;
        self.stats.kills += r.kills;
        self.stats.deaths += r.deaths;
        if r.placement == 1 {
            self.stats.wins += 1;
        }
        if self.current_match.as_deref() == Some(r.match_id.as_str()) {
            self.current_match = None;
        }
        if self.history.len() >= HISTORY_MAX {
            self.history.remove(0);
        }
        self.history.push(MatchRecord {
            match_id: r.match_id,
            placement: r.placement,
            kills: r.kills,
            deaths: r.deaths,
            rating_delta: delta,
        });
        ResultApplied {
            applied: true,
            rating: self.rating,
        }
    }

    fn state(&self) -> PlayerState {
        PlayerState {
            name: self.name.clone(),
            home: self.home.clone(),
            rating: self.rating,
            stats: self.stats.clone(),
            inventory: self.inventory.clone(),
            current_match: self.current_match.clone(),
            history: self.history.clone(),
            applied_total: self.applied.len() as u64,
            code_version: CODE_VERSION,
            #[cfg(feature = "v2")]
            actions_since_upgrade: self.actions_since_upgrade,
            #[cfg(not(feature = "v2"))]
            actions_since_upgrade: 0,
        }
    }

    fn audit(&self) -> Audit {
        Audit {
            player: self.name.clone(),
            applied: self.applied.clone(),
            truncated: self.stats_applied_dropped(),
        }
    }

    fn stats_applied_dropped(&self) -> bool {
        self.applied.len() >= AUDIT_IDS_MAX
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use tern_actor_sdk::ErrorKind;

    fn call<T: serde::de::DeserializeOwned>(p: &mut Player, m: &str, v: serde_json::Value) -> T {
        let body = serde_json::to_vec(&v).unwrap();
        serde_json::from_slice(&p.dispatch(m, &body).unwrap()).unwrap()
    }

    #[test]
    fn join_sets_profile_once() {
        let mut p = Player::new("ann");
        let s: PlayerState = call(&mut p, "join", json!({"home": "eu", "rating": 1200}));
        assert_eq!(
            (s.name.as_str(), s.home.as_str(), s.rating),
            ("ann", "eu", 1200)
        );
        let s: PlayerState = call(&mut p, "join", json!({"home": "asia", "rating": 5}));
        assert_eq!((s.home.as_str(), s.rating), ("asia", 1200));
        let s: PlayerState = serde_json::from_slice(&p.dispatch("join", b"").unwrap()).unwrap();
        assert_eq!(s.home, "asia");
    }

    #[test]
    fn actions_change_inventory_and_are_audited() {
        let mut p = Player::new("bo");
        let a: Acted = call(
            &mut p,
            "act",
            json!({"action_id": 7, "kind": "pickup", "item": "medkit"}),
        );
        assert_eq!(
            (a.effect.as_str(), a.applied_total),
            ("picked up medkit", 1)
        );
        let a: Acted = call(
            &mut p,
            "act",
            json!({"action_id": 8, "kind": "use", "item": "medkit"}),
        );
        assert_eq!(a.effect, "used medkit");
        let a: Acted = call(
            &mut p,
            "act",
            json!({"action_id": 9, "kind": "use", "item": "medkit"}),
        );
        assert_eq!(a.effect, "no medkit to use");
        let _: Acted = call(&mut p, "act", json!({"action_id": 10, "kind": "emote"}));
        // The same id again is applied again: the actor audits, tern dedupes.
        let _: Acted = call(&mut p, "act", json!({"action_id": 10, "kind": "emote"}));
        for i in 0..12 {
            let _: Acted = call(
                &mut p,
                "act",
                json!({"action_id": 100 + i, "kind": "pickup", "item": "rocket"}),
            );
        }
        let s: PlayerState = call(&mut p, "state", json!(null));
        assert_eq!(s.inventory.get("rocket"), Some(&ITEM_STACK_MAX));
        assert_eq!(s.inventory.get("medkit"), None);
        assert_eq!(
            (
                s.stats.pickups,
                s.stats.items_used,
                s.stats.fumbles,
                s.stats.emotes
            ),
            (1 + u64::from(ITEM_STACK_MAX), 1, 1, 2)
        );
        let audit: Audit = call(&mut p, "audit", json!(null));
        assert_eq!(&audit.applied[..6], &[7, 8, 9, 10, 10, 100]);
        assert_eq!(audit.applied.len(), 17);
        assert_eq!(s.applied_total, 17);
    }

    #[test]
    fn bad_actions_change_nothing() {
        let mut p = Player::new("cy");
        for bad in [
            json!({"action_id": 1, "kind": "dance"}),
            json!({"action_id": 1, "kind": "pickup"}),
            json!({"action_id": 1, "kind": "pickup", "item": "bfg"}),
        ] {
            let e = p
                .dispatch("act", &serde_json::to_vec(&bad).unwrap())
                .unwrap_err();
            assert_eq!(e.kind, ErrorKind::InvalidArgument, "{e}");
        }
        let e = p.dispatch("act", b"{").unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidArgument);
        let audit: Audit = call(&mut p, "audit", json!(null));
        assert!(audit.applied.is_empty());
        assert_eq!(
            p.dispatch("nope", b"").unwrap_err().kind,
            ErrorKind::NotFound
        );
    }

    #[test]
    fn match_flow_is_idempotent_by_match_id() {
        let mut p = Player::new("di");
        let s: PlayerState = call(&mut p, "match_found", json!({"match_id": "eu-1"}));
        assert_eq!(s.current_match.as_deref(), Some("eu-1"));
        let s: PlayerState = call(&mut p, "match_found", json!({"match_id": "eu-1"}));
        assert_eq!(s.stats.matches_found, 1);
        let result = json!({"match_id": "eu-1", "placement": 1, "players": 4, "kills": 5, "deaths": 2, "opponents_rating": 1000});
        let r: ResultApplied = call(&mut p, "match_result", result.clone());
        assert!(r.applied);
        assert_eq!(r.rating, 1016);
        let r: ResultApplied = call(&mut p, "match_result", result);
        assert_eq!((r.applied, r.rating), (false, 1016));
        // A late match_found for a finished match does not reopen it.
        let s: PlayerState = call(&mut p, "match_found", json!({"match_id": "eu-1"}));
        assert_eq!(s.current_match, None);
        assert_eq!(
            (s.stats.matches, s.stats.wins, s.stats.kills, s.stats.deaths),
            (1, 1, 5, 2)
        );
        assert_eq!(s.history.len(), 1);
        assert_eq!(s.history[0].rating_delta, 16);
    }

    #[test]
    fn rating_follows_elo() {
        assert_eq!(rating_delta(1000, 1000, 1, 4), 16);
        assert_eq!(rating_delta(1000, 1000, 4, 4), -16);
        assert_eq!(rating_delta(1000, 1000, 2, 4), 5);
        assert!(rating_delta(1400, 1000, 1, 4) < 4);
        assert!(rating_delta(1000, 1400, 4, 4) > -4);
        assert!((expected_score(1200, 1000) - 0.76).abs() < 0.01);
    }
}
