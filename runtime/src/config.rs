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
}
