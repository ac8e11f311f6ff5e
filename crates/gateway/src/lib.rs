//! The adflow gateway: configuration, the ingest pipeline, the tonic services and the
//! server that wires them together. `server::serve` is what the binary and the
//! integration tests both run.
//!
//! # Layout
//! - `server`: `serve` (start-up order, shutdown order); `config`: `Config`, loading and
//!   validation; `status`: the one table from domain errors to gRPC statuses.
//! - `pipeline` (+ `pipeline/batcher.rs`): validate, dedup, bounded channel, group commit.
//! - `services/`: one file per gRPC service (ingest, ads, workers, queue control,
//!   analytics, agent, event log); each takes only the queue trait it uses.
//! - `agent` (+ `agent/`: parser, executor, confirm, llm): the operator agent.
//! - `checkpoint` (+ `checkpoint/`): analytics and dedup snapshots for fast restarts;
//!   `shared_dedup`: dedup through Redis.
//! - `dashboard` (+ `dashboard/`): the operator web UI and its HTTP API.
//! - `auth`, `conn_guard`, `rpc_layer`, `panic_layer`, `metrics`, `worker_pool`: roles,
//!   connection limits, per-RPC logging, panic isolation, Prometheus, in-process workers.

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
