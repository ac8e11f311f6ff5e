//! The ad queue: priority partitions with anti-starvation, leases with expiry and
//! redelivery, dead letters, and persistence that survives a restart, on one of three
//! backends that pass the same conformance suite.
//!
//! The crate has a neutral core that every backend builds on and that knows no backend,
//! and one module per backend; `open` is the one place that picks and builds a backend
//! (as `adflow_store::open` does for the event store).
//!
//! # Layout
//! Core (no backend code):
//! - `contract`: the traits, split along their callers (`Ads`, `Leases`, `Reports`,
//!   `Controls`, `Audit`; `AdQueue` is all of them).
//! - `model`: what the queue hands out (`Leased`, `Expired`, `FamilyStats`) and the
//!   builders of what it reports (stats, dead letters, computed ad fields).
//! - `error`: `QueueError`, with a kind on backend failures (retry or bug).
//! - `status`: status names and classes; `fields`: the stored field codes of the shared
//!   backends; `policy`: policy bounds, updates, rules and their stored codes.
//! - `index`: the scheduling rules (which queued ad is served next), pure data.
//! - `config`: `[queue]` and each backend's section; `auto` resolution.
//!
//! Backends:
//! - `embedded` (+ `journal`, redb): one gateway, the `index` in memory.
//! - `redis_queue`: shared through Redis; each change is one Lua script (`lua/*.lua`) on
//!   one of K shards (`queue.redis.shards`), which a Redis Cluster spreads over its nodes.
//! - `mongo_queue`: shared through MongoDB; compare-and-set updates.
//! - `watchers`: WatchAd delivery, shared by every backend.
//!
//! `conformance` (feature "conformance") is the suite every backend must pass.

pub mod config;
#[cfg(feature = "conformance")]
pub mod conformance;
pub mod contract;
pub mod embedded;
pub mod error;
pub mod fields;
pub mod index;
pub mod journal;
pub mod model;
pub mod mongo_queue;
pub mod policy;
pub mod redis_queue;
pub mod status;
mod watchers;

pub use adflow_domain::ads::Priority;
pub use config::{MongoQueueConfig, QueueBackend, QueueConfig, RedisQueueConfig};
pub use contract::{AdQueue, Ads, Audit, Controls, Leases, Operator, Reports};
pub use embedded::EmbeddedQueue;
pub use error::{BackendErrorKind, QueueError};
pub use model::{Expired, FamilyStats, Leased};
pub use mongo_queue::MongoQueue;
pub use redis_queue::RedisQueue;

pub(crate) use model::parse_id;

use adflow_store::{Backend, StorageConfig};
use std::sync::Arc;

/// Opens the configured queue backend; `backend = "auto"` follows `storage` (file:
/// embedded; redis or mongodb: the same server as the events).
pub async fn open(cfg: &QueueConfig, storage: &StorageConfig) -> Result<Arc<dyn AdQueue>, QueueError> {
    let cfg = cfg.resolved(storage);
    Ok(match (cfg.backend, &storage.backend) {
        (QueueBackend::Embedded, _) | (QueueBackend::Auto, Backend::File) => {
            // redb opens and restores synchronously.
            let q = tokio::task::spawn_blocking(move || EmbeddedQueue::open(&cfg))
                .await
                .map_err(|e| QueueError::internal(format!("opening the embedded queue: {e}")))??;
            Arc::new(q)
        }
        (QueueBackend::Redis, _) | (QueueBackend::Auto, Backend::Redis) => {
            Arc::new(RedisQueue::open(&cfg, &cfg.redis).await?)
        }
        (QueueBackend::Mongodb, _) | (QueueBackend::Auto, Backend::Mongodb) => {
            Arc::new(MongoQueue::open(&cfg, &cfg.mongodb).await?)
        }
    })
}
