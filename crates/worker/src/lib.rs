//! The adflow worker: the deterministic ad analysis and the loop that subscribes to a
//! gateway, takes leases within its credits, analyses and acks. The standalone
//! `adflow-worker` binary and the gateway's in-process workers run the same `run`.
//!
//! # Layout
//! - `analysis` (+ `analysis/minhash.rs`): the deterministic analysis of one ad.
//! - `run`: the Subscribe loop (credits, leases, acks, reconnects) and its settings.
//! - `metrics`: the worker's Prometheus series.

pub mod analysis;
pub mod metrics;
pub mod run;
