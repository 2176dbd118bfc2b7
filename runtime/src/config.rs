//! Actor type configuration: durability and limits.

use serde::{Deserialize, Serialize};

/// When actors already persisted by an older version move to a new one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Rollout {
    /// At each actor's next activation (active actors keep their code
    /// until they are evicted).
    #[default]
    Lazy,
    /// Active actors at every live POP finish their turn, persist and are
    /// reactivated on the new version at once.
    Now,
}

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
    /// How long an applied idempotency key is remembered: a retry within
    /// it is applied at most once.
    pub idempotency_ms: u64,
    /// Most idempotency keys remembered per actor; past it the oldest are
    /// forgotten first.
    pub idempotency_keys_max: u64,
}

/// The largest value each limit may be deployed with. A deploy outside
/// `1..=max` (after zero takes the default) is refused with
/// INVALID_ARGUMENT.
pub const LIMITS_MAX: Limits = Limits {
    turn_cpu_ms_max: 10_000,
    memory_bytes_max: 4 << 30,
    payload_bytes_max: 16 << 20,
    mailbox_depth_max: 65_536,
    idle_ms: 86_400_000,
    idempotency_ms: 30 * 86_400_000,
    idempotency_keys_max: 16_384,
};

impl Default for Limits {
    fn default() -> Self {
        Limits {
            turn_cpu_ms_max: 50,
            memory_bytes_max: 64 << 20,
            payload_bytes_max: 1 << 20,
            mailbox_depth_max: 1024,
            idle_ms: 30_000,
            idempotency_ms: 86_400_000,
            idempotency_keys_max: 4_096,
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
            idempotency_ms: pick(self.idempotency_ms, d.idempotency_ms),
            idempotency_keys_max: pick(self.idempotency_keys_max, d.idempotency_keys_max),
        }
    }

    /// Refuses any limit above its maximum in [`LIMITS_MAX`] (call after
    /// [`Limits::or_defaults`]).
    pub fn validate(&self) -> Result<(), String> {
        let m = LIMITS_MAX;
        let checks = [
            (
                "turn_cpu_ms_max",
                self.turn_cpu_ms_max,
                m.turn_cpu_ms_max,
                "ms",
            ),
            (
                "memory_bytes_max",
                self.memory_bytes_max,
                m.memory_bytes_max,
                "bytes",
            ),
            (
                "payload_bytes_max",
                self.payload_bytes_max,
                m.payload_bytes_max,
                "bytes",
            ),
            (
                "mailbox_depth_max",
                self.mailbox_depth_max,
                m.mailbox_depth_max,
                "calls",
            ),
            ("idle_ms", self.idle_ms, m.idle_ms, "ms"),
            (
                "idempotency_ms",
                self.idempotency_ms,
                m.idempotency_ms,
                "ms",
            ),
            (
                "idempotency_keys_max",
                self.idempotency_keys_max,
                m.idempotency_keys_max,
                "keys",
            ),
        ];
        for (name, v, max, unit) in checks {
            if v == 0 || v > max {
                return Err(format!(
                    "{name} = {v} is out of range: it must be between 1 and {max} {unit}"
                ));
            }
        }
        Ok(())
    }
}

impl Placement {
    /// Refuses out-of-range placement settings.
    pub fn validate(&self) -> Result<(), String> {
        if self.window == 0 || self.window > PLACEMENT_WINDOW_MAX {
            return Err(format!(
                "placement window = {} is out of range: it must be between 1 and {PLACEMENT_WINDOW_MAX} calls",
                self.window
            ));
        }
        if self.share_pct == 0 || self.share_pct > 100 {
            return Err(format!(
                "placement share_pct = {} is out of range: it must be between 1 and 100",
                self.share_pct
            ));
        }
        Ok(())
    }
}

/// Longest placement window, in calls.
pub const PLACEMENT_WINDOW_MAX: u32 = 1_024;

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
            // 16, not 8: at WAN distances (`tern-sim placement`) a window
            // of 8 let doom-lobby's match actors, called by four players
            // at four POPs, move 89 times in 30 minutes (17 back to a POP
            // they had just left); 16 moved them 22 times (4), with the
            // same latency for travelling players, who move by the idle
            // rule. See BENCHMARKS.md, "Placement at WAN distances".
            window: 16,
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
    /// The version this configuration belongs to (1, 2, ...: one per
    /// deploy of new code).
    pub version: u64,
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
        let mut recent = calls(&["fra"; 4]);
        assert!(!p.should_move(&recent, 0, "fra"));
        recent.extend(calls(&["nrt"; 11]));
        assert!(
            !p.should_move(&recent, 0, "fra"),
            "window not full of nrt yet"
        );
        recent.push("nrt".into());
        assert!(p.should_move(&recent, 0, "fra"), "12 of 16 from nrt");
    }

    #[test]
    fn placement_keeps_shared_actor_put() {
        let p = Placement::default();
        let recent = calls(&["fra", "nrt", "iad", "nrt", "fra", "iad", "fra", "nrt"].repeat(2));
        assert!(!p.should_move(&recent, 0, "fra"));
        let off = Placement {
            follow_caller: false,
            ..p
        };
        assert!(!off.should_move(&calls(&["nrt"; 8]), 1_000_000, "fra"));
    }

    #[test]
    fn limits_have_documented_maximums() {
        Limits::default().validate().unwrap();
        LIMITS_MAX.validate().unwrap();
        let over = Limits {
            mailbox_depth_max: u64::MAX,
            ..Limits::default()
        };
        let e = over.validate().unwrap_err();
        assert!(
            e.contains("mailbox_depth_max") && e.contains("65536"),
            "{e}"
        );
        let p = Placement {
            share_pct: 101,
            ..Placement::default()
        };
        assert!(p.validate().is_err());
    }

    #[test]
    fn placement_moves_idle_actor_at_once() {
        let p = Placement::default();
        assert!(p.should_move(&calls(&["nrt"]), 5_000, "fra"));
        assert!(!p.should_move(&calls(&["nrt"]), 10, "fra"));
    }
}
