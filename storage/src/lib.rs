//! tern-storage
