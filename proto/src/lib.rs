//! tern-proto
