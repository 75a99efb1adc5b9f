//! Compiles `proto/gatehouse/v1/*.proto` with protox (a protobuf compiler written in Rust), so a
//! build needs no system `protoc`, and writes the file descriptor set next to the generated code
//! (`gatehouse_descriptor.bin`, exposed as `FILE_DESCRIPTOR_SET`).

use std::path::PathBuf;

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/gatehouse/v1/config.proto",
        "proto/gatehouse/v1/sync.proto",
    ];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["proto"])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("gatehouse_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;
    tonic_prost_build::configure()
        // Every `bytes` field is `bytes::Bytes`: the control plane encodes a snapshot once and
        // shares that buffer with every data-plane stream without copying it.
        .bytes(".")
        .compile_fds(descriptors)?;
    Ok(())
}
