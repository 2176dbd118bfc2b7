//! tern-actor-sdk
