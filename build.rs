//! Compiles `proto/adflow/v1/*.proto` with the protoc shipped by `protoc-bin-vendored`,
//! so a fresh machine needs no system protoc. Also writes the descriptor set that the
//! gateway serves through gRPC reflection.
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY of intent: build scripts are single-threaded; tonic-prost-build reads PROTOC.
    // `set_var` is `unsafe` in edition 2024 only because of multi-threaded readers.
    #[allow(unsafe_code)]
    unsafe {
        std::env::set_var("PROTOC", &protoc)
    };
    let protos: Vec<PathBuf> = std::fs::read_dir("proto/adflow/v1")?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "proto"))
        .collect();
    for p in &protos {
        println!("cargo:rerun-if-changed={}", p.display());
    }
    println!("cargo:rerun-if-changed=proto/adflow/v1");
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .file_descriptor_set_path(out.join("adflow_descriptor.bin"))
        // Small string maps (event attributes) decode faster into a BTreeMap than into a
        // SipHash-keyed HashMap, and iterate in a stable order.
        .btree_map(".")
        .compile_protos(&protos, &[PathBuf::from("proto")])?;
    Ok(())
}
