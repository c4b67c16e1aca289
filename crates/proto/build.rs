//! Generates the notify.v1 code with the vendored `protoc` (never the system's).

use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // Passed through the builder, not the PROTOC variable: `set_var` is unsafe
    // in edition 2024 and a system protoc must never be picked up.
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let out = PathBuf::from(env::var("OUT_DIR")?);
    let protos = [
        root.join("notify/v1/notify.proto"),
        root.join("notify/v1/bridge.proto"),
        root.join("notify/v1/upstream.proto"),
    ];

    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("notify_descriptor.bin"))
        .compile_with_config(config, &protos, std::slice::from_ref(&root))?;
    for proto in &protos {
        println!("cargo:rerun-if-changed={}", proto.display());
    }
    Ok(())
}
