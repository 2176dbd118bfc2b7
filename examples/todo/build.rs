//! Give the guest a 64 KiB stack instead of Rust's default 1 MiB, so the
//! actor starts at 128 KiB of linear memory. Only affects wasm32 cdylibs.
fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    if std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() == Ok("wasm32") {
        println!("cargo::rustc-link-arg-cdylib=-zstack-size=65536");
    }
}
