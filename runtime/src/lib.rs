//! tern-runtime
