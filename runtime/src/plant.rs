//! Planted bugs, for proving that the simulator's checker catches them.
//! Compiled in only with the `plant` feature, which only `tern-sim` turns
//! on; without it every switch is a constant `false`.

#[cfg(feature = "plant")]
use std::sync::atomic::{AtomicBool, Ordering};

#[cfg(feature = "plant")]
static SERVE_AFTER_LEASE: AtomicBool = AtomicBool::new(false);
#[cfg(feature = "plant")]
static IGNORE_IDEMPOTENCY: AtomicBool = AtomicBool::new(false);

/// Whether a POP keeps running turns after its lease ended, trusting its
/// activation without confirming its epoch (the planted bug
/// `serve-after-lease`).
#[inline]
pub fn serve_after_lease() -> bool {
    #[cfg(feature = "plant")]
    {
        SERVE_AFTER_LEASE.load(Ordering::Relaxed)
    }
    #[cfg(not(feature = "plant"))]
    {
        false
    }
}

/// Whether POPs ignore idempotency keys (the planted bug
/// `ignore-idempotency`).
#[inline]
pub fn ignore_idempotency() -> bool {
    #[cfg(feature = "plant")]
    {
        IGNORE_IDEMPOTENCY.load(Ordering::Relaxed)
    }
    #[cfg(not(feature = "plant"))]
    {
        false
    }
}

/// Switches `serve-after-lease` on or off.
#[cfg(feature = "plant")]
pub fn set_serve_after_lease(on: bool) {
    SERVE_AFTER_LEASE.store(on, Ordering::Relaxed);
}

/// Switches `ignore-idempotency` on or off.
#[cfg(feature = "plant")]
pub fn set_ignore_idempotency(on: bool) {
    IGNORE_IDEMPOTENCY.store(on, Ordering::Relaxed);
}
