//! `matchmaker/<region>`: the queue of one region's waiting players.
//!
//! | method | payload | reply |
//! |---|---|---|
//! | `enqueue` | `{"player": name, "rating": r}` | [`Ticket`] |
//! | `poll` | `{"player": name}` | [`Ticket`] |
//! | `leave` | `{"player": name}` | [`Ticket`] |
//! | `state` | (ignored) | [`QueueState`] |
//!
//! `enqueue` and `poll` also try to form matches: the oldest waiting player
//! is matched with the [`MATCH_SIZE`](crate::MATCH_SIZE)` - 1` players
//! nearest to its rating, if they are within its rating window, which widens
//! with its waiting time ([`window`]). For each match the matchmaker calls
//! `match/<id>.start` and then `player/<name>.match_found` for each player.
//! A player learns its match from `poll` (or from its player actor).
//!
//! Match ids are `<region>-<seq>-<random>`: a turn that formed a match and
//! was then lost (a crash before its commit) is retried with a fresh id, so
//! an id never names two different sets of players.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tern_actor_sdk::ActorError;

use crate::MATCH_SIZE;

/// Rating window of a player who just queued.
pub const WINDOW_BASE: i32 = 100;
/// Window growth per second waited.
pub const WINDOW_PER_S: i32 = 100;
/// Widest window.
pub const WINDOW_MAX: i32 = 2_000;
/// Most players queued in one region.
pub const QUEUE_MAX: usize = 4_096;
/// Assignments older than this are forgotten.
pub const ASSIGNMENT_KEEP_MS: u64 = 10 * 60 * 1000;

/// The rating window of a player who has waited `waited_ms`.
pub fn window(waited_ms: u64) -> i32 {
    let grown = (waited_ms / 1000).min(1_000) as i32 * WINDOW_PER_S;
    (WINDOW_BASE + grown).min(WINDOW_MAX)
}

/// A queued player.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Waiting {
    /// Player name.
    pub player: String,
    /// Rating when queued.
    pub rating: i32,
    /// When queued (ms since the epoch).
    pub since_ms: u64,
}

/// A formed match.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Assignment {
    /// The match.
    pub match_id: String,
    /// When formed.
    pub at_ms: u64,
}

/// The matchmaker's state.
#[derive(Serialize, Deserialize)]
pub struct Matchmaker {
    region: String,
    queue: Vec<Waiting>,
    assigned: BTreeMap<String, Assignment>,
    seq: u64,
    formed: u64,
    start_failures: u64,
    notify_failures: u64,
}

/// `enqueue` request.
#[derive(Deserialize, Serialize)]
pub struct Enqueue {
    /// Player name.
    pub player: String,
    /// Its rating.
    pub rating: i32,
}

/// `poll` / `leave` request.
#[derive(Deserialize, Serialize)]
pub struct Who {
    /// Player name.
    pub player: String,
}

/// Where a player stands.
#[derive(Serialize, Deserialize, Debug, PartialEq)]
pub struct Ticket {
    /// The player.
    pub player: String,
    /// Its match, once formed.
    pub match_id: Option<String>,
    /// Whether it is queued.
    pub queued: bool,
    /// Players queued in this region.
    pub queue_len: usize,
    /// Its current rating window.
    pub window: i32,
}

/// `state` reply.
#[derive(Serialize, Deserialize, Debug, PartialEq)]
pub struct QueueState {
    /// The region.
    pub region: String,
    /// Queued players, oldest first.
    pub queue: Vec<Waiting>,
    /// Matches formed.
    pub formed: u64,
    /// `match/<id>.start` calls that failed (the players stayed queued).
    pub start_failures: u64,
    /// `player/<name>.match_found` calls that failed.
    pub notify_failures: u64,
}

/// Picks groups of [`MATCH_SIZE`] from `queue` at time `now`: the oldest
/// ungrouped player with the nearest-rated others inside its window.
/// Returns indices into `queue`.
pub fn plan(queue: &[Waiting], now: u64) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..queue.len()).collect();
    order.sort_by_key(|&i| (queue[i].since_ms, i));
    let mut taken = vec![false; queue.len()];
    let mut groups = Vec::new();
    for &anchor in &order {
        if taken[anchor] {
            continue;
        }
        let a = &queue[anchor];
        let w = window(now.saturating_sub(a.since_ms));
        let mut near: Vec<(i32, u64, usize)> = order
            .iter()
            .copied()
            .filter(|&i| i != anchor && !taken[i])
            .map(|i| ((queue[i].rating - a.rating).abs(), queue[i].since_ms, i))
            .filter(|&(d, _, _)| d <= w)
            .collect();
        if near.len() + 1 < MATCH_SIZE {
            continue;
        }
        near.sort();
        let mut group = vec![anchor];
        group.extend(near.iter().take(MATCH_SIZE - 1).map(|&(_, _, i)| i));
        for &i in &group {
            taken[i] = true;
        }
        groups.push(group);
    }
    groups
}

/// `match/<id>.start` request.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct StartMatch {
    /// The region that formed it.
    pub region: String,
    /// The players and their ratings.
    pub players: Vec<Seat>,
}

/// One player of a [`StartMatch`].
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Seat {
    /// Player name.
    pub name: String,
    /// Rating.
    pub rating: i32,
}

impl Matchmaker {
    /// The matchmaker of `region`.
    pub fn new(region: &str) -> Matchmaker {
        Matchmaker {
            region: region.to_string(),
            queue: Vec::new(),
            assigned: BTreeMap::new(),
            seq: 0,
            formed: 0,
            start_failures: 0,
            notify_failures: 0,
        }
    }

    /// Runs one method.
    pub fn dispatch(&mut self, method: &str, payload: &[u8]) -> Result<Vec<u8>, ActorError> {
        let now = tern_actor_sdk::now_ms();
        match method {
            "enqueue" => crate::json("matchmaker.enqueue", payload, |r| self.enqueue(r, now)),
            "poll" => crate::json("matchmaker.poll", payload, |r: Who| {
                self.form(now);
                Ok(self.ticket(&r.player, now))
            }),
            "leave" => crate::json("matchmaker.leave", payload, |r: Who| {
                self.queue.retain(|w| w.player != r.player);
                Ok(self.ticket(&r.player, now))
            }),
            "state" => crate::json("matchmaker.state", b"", |()| Ok(self.state())),
            other => Err(ActorError::not_found(format!(
                "matchmaker has no method `{other}`; known methods: enqueue, poll, leave, state"
            ))),
        }
    }

    fn enqueue(&mut self, r: Enqueue, now: u64) -> Result<Ticket, ActorError> {
        if r.player.is_empty() || r.player.contains('/') {
            return Err(ActorError::invalid_argument(format!(
                "bad player name `{}`",
                r.player
            )));
        }
        self.assigned.remove(&r.player);
        match self.queue.iter_mut().find(|w| w.player == r.player) {
            Some(w) => w.rating = r.rating,
            None => {
                if self.queue.len() >= QUEUE_MAX {
                    return Err(ActorError::resource_exhausted(format!(
                        "the {} queue is full ({QUEUE_MAX} players)",
                        self.region
                    )));
                }
                self.queue.push(Waiting {
                    player: r.player.clone(),
                    rating: r.rating,
                    since_ms: now,
                });
            }
        }
        self.form(now);
        Ok(self.ticket(&r.player, now))
    }

    fn ticket(&self, player: &str, now: u64) -> Ticket {
        let queued = self.queue.iter().find(|w| w.player == player);
        Ticket {
            player: player.to_string(),
            match_id: self.assigned.get(player).map(|a| a.match_id.clone()),
            queued: queued.is_some(),
            queue_len: self.queue.len(),
            window: queued.map_or(0, |w| window(now.saturating_sub(w.since_ms))),
        }
    }

    /// Forms every match the queue allows now, creating the match actors
    /// and telling the players. Stops at the first match that cannot be
    /// started (its players stay queued for the next try).
    pub fn form(&mut self, now: u64) {
        self.assigned
            .retain(|_, a| now.saturating_sub(a.at_ms) < ASSIGNMENT_KEEP_MS);
        let groups = plan(&self.queue, now);
        if groups.is_empty() {
            return;
        }
        let mut done: Vec<usize> = Vec::new();
        for group in groups {
            self.seq += 1;
            let match_id = format!(
                "{}-{}-{:04x}",
                self.region,
                self.seq,
                tern_actor_sdk::random_u64() & 0xffff
            );
            let start = StartMatch {
                region: self.region.clone(),
                players: group
                    .iter()
                    .map(|&i| Seat {
                        name: self.queue[i].player.clone(),
                        rating: self.queue[i].rating,
                    })
                    .collect(),
            };
            if let Err(e) =
                tern_actor_sdk::call::<_, serde_json::Value>("match", &match_id, "start", &start)
            {
                tern_actor_sdk::warn!("cannot start match/{match_id}: {e}");
                self.start_failures += 1;
                break;
            }
            self.formed += 1;
            for seat in &start.players {
                self.assigned.insert(
                    seat.name.clone(),
                    Assignment {
                        match_id: match_id.clone(),
                        at_ms: now,
                    },
                );
                let found = crate::player::MatchFound {
                    match_id: match_id.clone(),
                };
                if let Err(e) = tern_actor_sdk::call::<_, serde_json::Value>(
                    "player",
                    &seat.name,
                    "match_found",
                    &found,
                ) {
                    // The player still learns its match from `poll`.
                    tern_actor_sdk::warn!("cannot tell player/{} about {match_id}: {e}", seat.name);
                    self.notify_failures += 1;
                }
            }
            done.extend(group);
        }
        let mut i = 0;
        self.queue.retain(|_| {
            let keep = !done.contains(&i);
            i += 1;
            keep
        });
    }

    fn state(&self) -> QueueState {
        QueueState {
            region: self.region.clone(),
            queue: self.queue.clone(),
            formed: self.formed,
            start_failures: self.start_failures,
            notify_failures: self.notify_failures,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn w(player: &str, rating: i32, since_ms: u64) -> Waiting {
        Waiting {
            player: player.into(),
            rating,
            since_ms,
        }
    }

    #[test]
    fn window_widens_with_waiting() {
        assert_eq!(window(0), WINDOW_BASE);
        assert_eq!(window(999), WINDOW_BASE);
        assert_eq!(window(3_000), WINDOW_BASE + 3 * WINDOW_PER_S);
        assert_eq!(window(u64::MAX), WINDOW_MAX);
    }

    #[test]
    fn plan_groups_close_ratings_first() {
        let q = vec![
            w("a", 1000, 0),
            w("b", 1500, 1),
            w("c", 1050, 2),
            w("d", 980, 3),
            w("e", 1090, 4),
            w("f", 1020, 5),
        ];
        // At t=10 ms the window is 100: a, f, d, c are the four nearest.
        let g = plan(&q, 10);
        assert_eq!(g.len(), 1);
        let mut names: Vec<&str> = g[0].iter().map(|&i| q[i].player.as_str()).collect();
        names.sort();
        assert_eq!(names, ["a", "c", "d", "f"]);
        // Three players never make a match.
        assert!(plan(&q[..3], 1_000_000).is_empty());
    }

    #[test]
    fn plan_waits_until_the_window_is_wide_enough() {
        let q = vec![
            w("a", 1000, 0),
            w("b", 1400, 0),
            w("c", 1000, 0),
            w("d", 1000, 0),
        ];
        assert!(plan(&q, 1_000).is_empty(), "b is 400 away");
        assert!(plan(&q, 2_000).is_empty());
        assert_eq!(plan(&q, 3_000).len(), 1, "after 3 s the window is 400");
        let eight: Vec<Waiting> = (0..8).map(|i| w(&format!("p{i}"), 1000, i)).collect();
        assert_eq!(plan(&eight, 10).len(), 2);
    }

    #[test]
    fn failed_start_keeps_players_queued() {
        // Off wasm every actor call fails with `unavailable`.
        let mut m = Matchmaker::new("eu");
        for (i, p) in ["a", "b", "c", "d"].iter().enumerate() {
            let body = json!({"player": p, "rating": 1000 + i as i32});
            let t: Ticket = serde_json::from_slice(
                &m.dispatch("enqueue", &serde_json::to_vec(&body).unwrap())
                    .unwrap(),
            )
            .unwrap();
            assert!(t.queued);
            assert_eq!(t.match_id, None);
        }
        let s: QueueState = serde_json::from_slice(&m.dispatch("state", b"").unwrap()).unwrap();
        assert_eq!((s.queue.len(), s.formed), (4, 0));
        assert!(s.start_failures >= 1);
        // Re-queueing keeps one entry per player.
        m.dispatch("enqueue", br#"{"player": "a", "rating": 1001}"#)
            .unwrap();
        let t: Ticket =
            serde_json::from_slice(&m.dispatch("leave", br#"{"player": "a"}"#).unwrap()).unwrap();
        assert!(!t.queued);
        assert_eq!(t.queue_len, 3);
        let e = m
            .dispatch("enqueue", br#"{"player": "x/y", "rating": 1}"#)
            .unwrap_err();
        assert_eq!(e.kind, tern_actor_sdk::ErrorKind::InvalidArgument);
    }
}
