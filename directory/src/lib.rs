//! tern-directory
