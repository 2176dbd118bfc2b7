//! Compiles the `.proto` files with protox (a pure-Rust protobuf compiler,
//! so no `protoc` binary is needed) and generates tonic/prost code.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/actor.proto", "proto/directory.proto"];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["proto"])?;
    // The descriptors, for gRPC server reflection (grpcurl and friends).
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("tern_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
