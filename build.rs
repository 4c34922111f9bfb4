//! The build script of the `stormlock-api` crate (`api/Cargo.toml` names it):
//! compiles `proto/stormlock/v1/*.proto` with protox (pure Rust, no system
//! `protoc`) into Rust types and tonic stubs, and writes the descriptor set
//! that gRPC server reflection serves.

use std::{env, fs, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The proto tree sits beside this script at the repository root; the
    // crate that runs it lives in `api/`.
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?).join("..");
    let includes = [root.join("proto")];
    let protos = [includes[0].join("stormlock/v1/lock.proto")];
    for proto in &protos {
        println!("cargo:rerun-if-changed={}", proto.display());
    }
    let fds = protox::compile(&protos, &includes)?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(
        out.join("stormlock_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        .emit_rerun_if_changed(false)
        .compile_fds(fds)?;
    Ok(())
}
