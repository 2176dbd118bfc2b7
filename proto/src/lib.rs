//! Wire types of tern: the generated tonic/prost code for the gRPC services.
//!
//! This is the only crate that knows wire types. Other crates convert at
//! their edges (the runtime's server and client modules).

/// `tern.actor.v1`: the ActorService every POP serves.
pub mod actor {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("tern.actor.v1");
}

/// `tern.directory.v1`: the DirectoryService.
pub mod directory {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("tern.directory.v1");
}
