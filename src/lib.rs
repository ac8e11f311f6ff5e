//! The `adflow.v1` gRPC contract: prost messages, tonic clients and servers, and the
//! encoded file descriptor set served by reflection. Generated at build time from
//! `proto/adflow/v1`; nothing here is written by hand.

/// Generated code for the `adflow.v1` package.
#[allow(missing_docs, clippy::all)]
pub mod v1 {
    tonic::include_proto!("adflow.v1");
}

/// Zero-copy request decoding for the ingest hot path.
pub mod raw;

/// The codec of the generated services: decode errors are INVALID_ARGUMENT, worker
/// batches are bounded before they are decoded.
pub mod codec;

/// The `adflow.v1.EventIngest` server trait and service, taking `raw` request types.
/// The gateway serves this one; `v1::event_ingest_server` is the plain prost variant.
#[allow(missing_docs, clippy::all)]
pub mod raw_ingest {
    include!(concat!(env!("OUT_DIR"), "/adflow.v1.EventIngest.rs"));
}

/// The `adflow.v1.EventLog` server trait and service, replying with `raw::log` types.
/// The gateway serves this one; `v1::event_log_server` is the plain prost variant.
#[allow(missing_docs, clippy::all)]
pub mod raw_eventlog {
    include!(concat!(env!("OUT_DIR"), "/adflow.v1.EventLog.rs"));
}

/// Encoded `FileDescriptorSet` of every adflow proto file (for server reflection).
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("adflow_descriptor");
