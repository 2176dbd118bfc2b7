//! Tests that are not part of the per-backend conformance suite: memory
//! fault injection, and sqlite crash consistency.

mod crash;
mod faults;
