//! # tern-cli
//!
//! The `tern` command line (the binary in `src/main.rs`) and what it needs
//! beyond the runtime: building guest crates into components
//! ([`build`]) and cluster certificates ([`certs`]). It owns the commands, the `tern dev` supervisor and guest
//! builds; it must not hold POP logic (that is `tern-runtime`) or wire
//! logic (that is `tern-proto` and `tern-client`).

pub mod build;
pub mod certs;
pub mod lang;
pub mod logfile;
pub mod page;
pub mod scaffold;
