//! The adflow gateway: configuration, the ingest pipeline, the tonic services and the
//! server that wires them together. `server::serve` is what the binary and the
//! integration tests both run.

pub mod agent;
pub mod auth;
pub mod checkpoint;
pub mod config;
pub mod conn_guard;
pub mod dashboard;
pub mod metrics;
pub mod panic_layer;
pub mod pipeline;
pub(crate) mod rpc_layer;
pub mod server;
pub mod services;
pub mod shared_dedup;
pub mod startup;
mod status;
pub mod worker_pool;

pub use config::Config;
pub use server::serve;
