//! tern's POP runtime: the wasmtime engine, actor activations, turns,
//! snapshots, limits, routing, and the ActorService gRPC edge.
//!
//! It must not know a database (it uses `tern-storage`'s record layer).
//! Only [`grpc`] knows proto and tonic types; the rest of the POP core
//! talks to the world through seams ([`directory::Directory`],
//! [`peers::Peers`], [`clock::World`]) that a simulator can replace.

mod activation;
pub mod auth;
pub mod clock;
pub mod codedir;
pub mod committer;
pub mod config;
pub mod directory;
pub mod engine;
pub mod error;
pub mod feeds;
pub mod flag;
pub mod globals;
pub mod grpc;
pub mod guestlog;
mod hibernate;
pub mod hostmem;
pub mod idem;
pub mod instance;
pub mod node;
pub mod outbox;
pub mod peers;
pub mod plant;
pub mod route;
pub mod snapshot;
mod table;
pub mod turnpool;
pub mod writetrack;

pub use config::{Durability, Limits, Placement, TypeConfig};
pub use engine::TernEngine;
pub use error::{ErrorKind, Result, RuntimeError};
pub use node::{CallOutput, CallRequest, DeployOptions, Node, NodeConfig, Route};
