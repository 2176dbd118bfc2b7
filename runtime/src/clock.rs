//! Time and randomness, behind seams a simulator can replace.
//!
//! Everything in the POP core that reads the wall clock or draws a random
//! number goes through a [`Clock`] and an [`Entropy`], including the host
//! imports `now-ms` and `random-u64` that guests see. Monotonic time comes
//! from `tokio::time::Instant`, which a paused tokio runtime makes virtual.

use std::sync::Arc;

use parking_lot::Mutex;
use rand::{Rng, SeedableRng};

/// Wall-clock and monotonic time.
pub trait Clock: Send + Sync + 'static {
    /// Milliseconds since the Unix epoch.
    fn wall_ms(&self) -> u64;

    /// Milliseconds on this POP's monotonic clock (from an arbitrary
    /// origin). The POP's own view of its lease runs on it; a simulator
    /// stops it to model a paused machine.
    fn mono_ms(&self) -> u64 {
        static ORIGIN: std::sync::OnceLock<tokio::time::Instant> = std::sync::OnceLock::new();
        let origin = *ORIGIN.get_or_init(tokio::time::Instant::now);
        tokio::time::Instant::now()
            .saturating_duration_since(origin)
            .as_millis() as u64
    }
}

/// The system's clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn wall_ms(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}

/// A source of random numbers.
pub trait Entropy: Send + Sync + 'static {
    /// A uniformly random `u64`.
    fn next_u64(&self) -> u64;
}

/// Randomness from the operating system's generator.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemEntropy;

impl Entropy for SystemEntropy {
    fn next_u64(&self) -> u64 {
        rand::random()
    }
}

/// A deterministic generator: the same seed gives the same sequence.
pub struct SeededEntropy {
    rng: Mutex<rand::rngs::StdRng>,
}

impl SeededEntropy {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> SeededEntropy {
        SeededEntropy {
            rng: Mutex::new(rand::rngs::StdRng::seed_from_u64(seed)),
        }
    }
}

impl Entropy for SeededEntropy {
    fn next_u64(&self) -> u64 {
        self.rng.lock().random()
    }
}

/// The clock and randomness a node uses.
#[derive(Clone)]
pub struct World {
    /// Wall-clock time.
    pub clock: Arc<dyn Clock>,
    /// Randomness.
    pub entropy: Arc<dyn Entropy>,
}

impl Default for World {
    fn default() -> Self {
        World {
            clock: Arc::new(SystemClock),
            entropy: Arc::new(SystemEntropy),
        }
    }
}

impl World {
    /// A deterministic world: wall time from `clock`, randomness from `seed`.
    pub fn seeded(clock: Arc<dyn Clock>, seed: u64) -> World {
        World {
            clock,
            entropy: Arc::new(SeededEntropy::new(seed)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_entropy_repeats_for_the_same_seed() {
        let a: Vec<u64> = {
            let e = SeededEntropy::new(7);
            (0..4).map(|_| e.next_u64()).collect()
        };
        let b: Vec<u64> = {
            let e = SeededEntropy::new(7);
            (0..4).map(|_| e.next_u64()).collect()
        };
        let c = SeededEntropy::new(8).next_u64();
        assert_eq!(a, b);
        assert_ne!(a[0], c);
    }
}
