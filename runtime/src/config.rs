//! Actor type configuration: durability and limits.

use serde::{Deserialize, Serialize};

/// When a turn's memory changes reach the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// The reply is released only after the turn is committed (default).
    #[default]
    Turn,
    /// Memory is persisted only when the actor is evicted or the POP stops.
    Idle,
}

/// Per-type limits. Units are last in every name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Limits {
    /// Wall-clock CPU budget of one turn (epoch interruption).
    pub turn_cpu_ms_max: u64,
    /// Linear memory cap of one actor.
    pub memory_bytes_max: u64,
    /// Largest request or reply payload.
    pub payload_bytes_max: u64,
    /// Calls queued on one actor before callers get RESOURCE_EXHAUSTED.
    pub mailbox_depth_max: u64,
    /// Idle time after which an actor is persisted and evicted.
    pub idle_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            turn_cpu_ms_max: 50,
            memory_bytes_max: 64 << 20,
            payload_bytes_max: 1 << 20,
            mailbox_depth_max: 1024,
            idle_ms: 30_000,
        }
    }
}

impl Limits {
    /// Replaces every zero field with the default.
    pub fn or_defaults(self) -> Limits {
        let d = Limits::default();
        let pick = |v: u64, d: u64| if v == 0 { d } else { v };
        Limits {
            turn_cpu_ms_max: pick(self.turn_cpu_ms_max, d.turn_cpu_ms_max),
            memory_bytes_max: pick(self.memory_bytes_max, d.memory_bytes_max),
            payload_bytes_max: pick(self.payload_bytes_max, d.payload_bytes_max),
            mailbox_depth_max: pick(self.mailbox_depth_max, d.mailbox_depth_max),
            idle_ms: pick(self.idle_ms, d.idle_ms),
        }
    }
}

/// Placement that follows the caller (see `Placement` in actor.proto).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Placement {
    /// Whether actors of this type move to the POP their callers use.
    pub follow_caller: bool,
    /// How many recent calls the share is computed over.
    pub window: u32,
    /// Share (percent) of the window that must come through one other POP.
    pub share_pct: u32,
    /// An actor idle this long moves on the first call from another POP.
    pub idle_move_ms: u64,
}

impl Default for Placement {
    fn default() -> Self {
        Placement {
            follow_caller: true,
            window: 8,
            share_pct: 75,
            idle_move_ms: 2_000,
        }
    }
}

impl Placement {
    /// Whether an actor whose recent callers came through `recent` (oldest
    /// first, the newest last), idle for `idle_ms` before this call, should
    /// move to the POP of the newest call, given it runs at `here`.
    pub fn should_move(&self, recent: &[String], idle_ms: u64, here: &str) -> bool {
        let Some(to) = recent.last() else {
            return false;
        };
        if !self.follow_caller || to == here {
            return false;
        }
        if idle_ms >= self.idle_move_ms {
            return true;
        }
        let window = self.window.max(1) as usize;
        if recent.len() < window {
            return false;
        }
        let tail = &recent[recent.len() - window..];
        let from_to = tail.iter().filter(|p| *p == to).count();
        from_to * 100 >= self.share_pct as usize * window
    }
}

/// What the store keeps for a type, besides its component digest.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TypeConfig {
    /// Durability mode.
    pub durability: Durability,
    /// Limits.
    pub limits: Limits,
    /// Digests of earlier components whose snapshots this code may restore
    /// (set by an explicit upgrade).
    pub restores_from: Vec<String>,
    /// Placement policy.
    pub placement: Placement,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn calls(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn placement_moves_per_user_actor_to_its_callers_pop() {
        let p = Placement::default();
        let mut recent = calls(&["fra", "fra"]);
        assert!(!p.should_move(&recent, 0, "fra"));
        recent.extend(calls(&["nrt"; 5]));
        assert!(
            !p.should_move(&recent, 0, "fra"),
            "window not full of nrt yet"
        );
        recent.push("nrt".into());
        assert!(p.should_move(&recent, 0, "fra"), "6 of 8 from nrt");
    }

    #[test]
    fn placement_keeps_shared_actor_put() {
        let p = Placement::default();
        let recent = calls(&["fra", "nrt", "iad", "nrt", "fra", "iad", "fra", "nrt"]);
        assert!(!p.should_move(&recent, 0, "fra"));
        let off = Placement {
            follow_caller: false,
            ..p
        };
        assert!(!off.should_move(&calls(&["nrt"; 8]), 1_000_000, "fra"));
    }

    #[test]
    fn placement_moves_idle_actor_at_once() {
        let p = Placement::default();
        assert!(p.should_move(&calls(&["nrt"]), 5_000, "fra"));
        assert!(!p.should_move(&calls(&["nrt"]), 10, "fra"));
    }
}
