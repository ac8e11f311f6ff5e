//! The adflow worker: the deterministic ad analysis and the loop that subscribes to a
//! gateway, takes leases within its credits, analyses and acks. The standalone
//! `adflow-worker` binary and the gateway's in-process workers run the same `run`.

pub mod analysis;
pub mod metrics;
pub mod run;
