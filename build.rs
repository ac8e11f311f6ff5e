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
        // Prost, except that an undecodable message is INVALID_ARGUMENT (not INTERNAL) and
        // worker batches are counted before they are decoded: see `src/codec.rs`.
        .codec_path("crate::codec::StrictCodec")
        .compile_protos(&protos, &[PathBuf::from("proto")])?;
    compile_raw_ingest_server();
    compile_raw_eventlog_server();
    Ok(())
}

/// The server side of `adflow.v1.EventIngest` again, this time with `raw::RawCodec`, so
/// the gateway receives events as zero-copy byte slices (see `src/raw.rs`). The wire
/// contract is the one in `ingest.proto`; only the Rust types on the server differ.
fn compile_raw_ingest_server() {
    use tonic_build::manual::{Builder, Method, Service};
    let method = |name: &str, route: &str, input: &str| {
        Method::builder()
            .name(name)
            .route_name(route)
            .input_type(input)
            .output_type("crate::v1::IngestReply")
            .codec_path("crate::raw::RawCodec")
    };
    let service = Service::builder()
        .name("EventIngest")
        .package("adflow.v1")
        .comment("Ingestion of ad events (zero-copy server side; see ingest.proto).")
        .method(method("send_event", "SendEvent", "crate::raw::RawEvent").build())
        .method(method("send_events", "SendEvents", "crate::raw::RawEvents").build())
        .method(
            method("stream_events", "StreamEvents", "crate::raw::RawEvents")
                .client_streaming()
                .server_streaming()
                .build(),
        )
        .build();
    Builder::new().build_client(false).compile(&[service]);
}

/// The server side of `adflow.v1.EventLog` with `raw::log::RawReadBatch` replies: stored
/// events go out as the bytes they were stored as, never decoded and re-encoded. The wire
/// contract is `eventlog.proto`'s (`bytes` and an embedded message share one encoding).
fn compile_raw_eventlog_server() {
    use tonic_build::manual::{Builder, Method, Service};
    let unary = |name: &str, route: &str, input: &str, output: &str| {
        Method::builder()
            .name(name)
            .route_name(route)
            .input_type(input)
            .output_type(output)
            .codec_path("crate::codec::StrictCodec")
            .build()
    };
    let service = Service::builder()
        .name("EventLog")
        .package("adflow.v1")
        .comment("Reading stored events back (server side with raw replies; see eventlog.proto).")
        .method(
            Method::builder()
                .name("read")
                .route_name("Read")
                .input_type("crate::v1::ReadRequest")
                .output_type("crate::raw::log::RawReadBatch")
                .codec_path("crate::codec::StrictCodec")
                .server_streaming()
                .build(),
        )
        .method(unary(
            "commit_cursor",
            "CommitCursor",
            "crate::v1::CommitCursorRequest",
            "crate::v1::CommitCursorResponse",
        ))
        .method(unary(
            "get_cursor",
            "GetCursor",
            "crate::v1::GetCursorRequest",
            "crate::v1::GetCursorResponse",
        ))
        .build();
    Builder::new().build_client(false).compile(&[service]);
}
