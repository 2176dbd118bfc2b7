//! Recent guest log lines, per actor, kept by the POP that ran them, for
//! `tern logs TYPE/ID` (which asks every POP and merges, so an actor's
//! lines are found wherever it ran).
//!
//! Bounded three ways: [`LINES_PER_ACTOR_MAX`] lines per actor (oldest
//! dropped), [`ACTORS_MAX`] actors (the one logged to least recently is
//! forgotten first), and [`LINE_BYTES_MAX`] bytes per line (cut).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

/// Lines kept per actor.
pub const LINES_PER_ACTOR_MAX: usize = 200;
/// Actors whose lines are kept.
pub const ACTORS_MAX: usize = 10_000;
/// Longest line kept, bytes; longer ones are cut.
pub const LINE_BYTES_MAX: usize = 2_048;

/// One guest log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// When, ms since the Unix epoch.
    pub at_ms: u64,
    /// `trace` ... `error`.
    pub level: &'static str,
    /// The line (cut to [`LINE_BYTES_MAX`]).
    pub message: String,
}

#[derive(Default)]
struct Inner {
    lines: HashMap<String, VecDeque<LogLine>>,
    /// Actors by when they last logged, oldest first, with a stamp so a
    /// stale entry (the actor logged again since) can be told apart.
    order: VecDeque<(u64, String)>,
    stamp: HashMap<String, u64>,
    next: u64,
}

/// The POP's guest log lines.
#[derive(Default)]
pub struct GuestLogs {
    inner: Mutex<Inner>,
}

impl GuestLogs {
    /// Keeps a line `actor` logged.
    pub fn push(&self, actor: &str, level: &'static str, message: &str, at_ms: u64) {
        let mut message = message.to_string();
        if message.len() > LINE_BYTES_MAX {
            let mut cut = LINE_BYTES_MAX;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push('…');
        }
        let mut g = self.inner.lock().expect("guest logs lock");
        let g = &mut *g;
        g.next += 1;
        let stamp = g.next;
        g.stamp.insert(actor.to_string(), stamp);
        g.order.push_back((stamp, actor.to_string()));
        let lines = g.lines.entry(actor.to_string()).or_default();
        if lines.len() >= LINES_PER_ACTOR_MAX {
            lines.pop_front();
        }
        lines.push_back(LogLine {
            at_ms,
            level,
            message,
        });
        // Forget the actors logged to least recently, and drop stale
        // order entries, so `order` stays bounded too.
        while g.lines.len() > ACTORS_MAX || g.order.len() > 2 * ACTORS_MAX {
            let Some((s, a)) = g.order.pop_front() else {
                break;
            };
            if g.stamp.get(&a) == Some(&s) {
                g.stamp.remove(&a);
                g.lines.remove(&a);
            }
        }
        assert!(
            g.lines.len() <= ACTORS_MAX,
            "guest logs hold {} actors, over ACTORS_MAX",
            g.lines.len()
        );
    }

    /// The newest `limit` lines of `actor`, oldest first.
    pub fn recent(&self, actor: &str, limit: usize) -> Vec<LogLine> {
        let g = self.inner.lock().expect("guest logs lock");
        g.lines
            .get(actor)
            .map(|l| {
                let skip = l.len().saturating_sub(limit);
                l.iter().skip(skip).cloned().collect()
            })
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_bounded_per_actor_and_in_all() {
        let logs = GuestLogs::default();
        for i in 0..LINES_PER_ACTOR_MAX + 10 {
            logs.push("t/a", "info", &format!("line {i}"), i as u64);
        }
        let got = logs.recent("t/a", usize::MAX);
        assert_eq!(got.len(), LINES_PER_ACTOR_MAX);
        assert_eq!(
            got.last().unwrap().message,
            format!("line {}", LINES_PER_ACTOR_MAX + 9)
        );
        assert_eq!(logs.recent("t/a", 2).len(), 2);
        logs.push("t/b", "warn", &"x".repeat(LINE_BYTES_MAX * 2), 0);
        assert!(logs.recent("t/b", 1)[0].message.len() <= LINE_BYTES_MAX + '…'.len_utf8());
        for i in 0..ACTORS_MAX + 5 {
            logs.push(&format!("t/{i}"), "info", "x", 0);
        }
        assert!(
            logs.recent("t/a", 1).is_empty(),
            "the least recent actor is forgotten"
        );
        assert_eq!(logs.recent(&format!("t/{}", ACTORS_MAX + 4), 10).len(), 1);
    }
}
