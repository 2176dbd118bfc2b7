//! tern's POP runtime: the wasmtime engine, actor activations, turns,
//! snapshots, limits, the ActorService gRPC server and the `tern` CLI.
//!
//! It must not know a database (it uses `tern-storage`'s record layer) nor
//! define wire types (they come from `tern-proto`; conversion happens in
//! [`server`] and [`client`]).

pub mod build;
pub mod client;
pub mod cluster;
pub mod committer;
pub mod config;
pub mod engine;
pub mod error;
pub mod hostmem;
pub mod idem;
pub mod instance;
pub mod node;
pub mod server;
pub mod snapshot;

pub use config::{Durability, Limits, Placement, TypeConfig};
pub use engine::TernEngine;
pub use error::{Result, RuntimeError};
pub use node::{CallOutput, CallRequest, DeployOptions, Node, Route};
