//! Tests that are not part of the per-backend conformance suite: memory
//! fault injection, sqlite crash consistency, and the bounds on what the
//! record layer writes.

mod bounds;
mod crash;
mod faults;
mod round_trips;
