//! The tonic services. Each RPC method stays thin: it unpacks the request, calls the
//! pipeline or the analytics state, and lets `status.rs` turn errors into gRPC codes.

pub mod ads;
pub mod agent;
pub mod analytics;
pub mod eventlog;
pub mod ingest;
pub mod queue_control;
pub mod workers;
