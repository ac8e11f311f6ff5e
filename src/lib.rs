//! The `adflow.v1` gRPC contract: prost messages, tonic clients and servers, and the
//! encoded file descriptor set served by reflection. Generated at build time from
//! `proto/adflow/v1`; nothing here is written by hand.

/// Generated code for the `adflow.v1` package.
#[allow(missing_docs, clippy::all)]
pub mod v1 {
    tonic::include_proto!("adflow.v1");
}

/// Encoded `FileDescriptorSet` of every adflow proto file (for server reflection).
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("adflow_descriptor");
