//! Storage for adflow: the `EventStore` trait every backend implements, the backends
//! (one module each, chosen by config), and the conformance suite they all must pass.
//!
//! The trait is deliberately small (append a batch durably, scan in pages, health,
//! close): the pipeline batches and retries, the store only has to persist.

pub mod file;
mod framing;
pub mod mongo_store;
pub mod redis_conn;
pub mod redis_store;
pub mod resilient;

#[cfg(feature = "conformance")]
pub mod conformance;

pub use adflow_domain::StoredEvent;
pub use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;

/// Errors of the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// An I/O call failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done ("write", "fsync", "open" ...).
        op: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Stored data is damaged somewhere other than a torn tail.
    #[error("corrupt record in {path} at offset {offset}: {reason}")]
    Corrupt {
        /// The damaged file.
        path: PathBuf,
        /// Byte offset of the damaged record.
        offset: u64,
        /// What is wrong with it.
        reason: String,
    },
    /// A scan cursor that this backend did not produce.
    #[error("invalid cursor {0:?}")]
    BadCursor(String),
    /// The store was closed.
    #[error("the event store is closed")]
    Closed,
    /// A remote backend (Redis, MongoDB) failed.
    #[error("{backend} {op}: {message}")]
    Backend {
        /// The backend.
        backend: &'static str,
        /// What was being done.
        op: &'static str,
        /// Its error.
        message: String,
    },
}

/// Convenience alias.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// An opaque position in a store, returned by `scan` to continue after a page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cursor(pub String);

/// One page of a scan.
#[derive(Debug, Default)]
pub struct Page {
    /// Events in commit order.
    pub events: Vec<StoredEvent>,
    /// Where the next page starts; `None` when the scan reached the end.
    pub next: Option<Cursor>,
}

/// Whether a store can take writes, and why not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Health {
    /// True when writes are expected to succeed.
    pub ok: bool,
    /// A sentence about the state ("ok", or the last error).
    pub detail: String,
    /// The backend itself is unhealthy or bypassed (events are being spilled).
    pub degraded: bool,
}

/// A durable, append-only store of accepted ad events.
#[async_trait]
pub trait EventStore: Send + Sync + 'static {
    /// The backend's name as used in config and metrics ("file", "redis" ...).
    fn backend(&self) -> &'static str;
    /// Persists `events` as one commit; when it returns Ok they survive a crash. On error
    /// none of them is visible (the backend rolls back a partial write).
    async fn append(&self, events: &[StoredEvent]) -> Result<()>;
    /// Reads up to `limit` committed events in commit order, starting at `from` (the
    /// beginning when `None`).
    async fn scan(&self, from: Option<Cursor>, limit: usize) -> Result<Page>;
    /// The store's health, for grpc.health.v1.
    async fn health(&self) -> Health;
    /// Flushes and releases resources; later appends fail with `Closed`.
    async fn close(&self) -> Result<()>;
    /// Events held in a local spill buffer, waiting for the backend (0 for direct stores).
    fn spill_pending(&self) -> u64 {
        0
    }
}

/// Which backend stores events (`[storage]` in the config).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// Segment files on local disk (the embedded default).
    #[default]
    File,
    /// A Redis stream (shared by several gateways).
    Redis,
    /// A MongoDB collection (shared by several gateways).
    Mongodb,
}

/// Storage settings: the backend and each backend's own section.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// The backend in use (default "file").
    pub backend: Backend,
    /// Settings of the file backend.
    pub file: file::FileConfig,
    /// Settings of the redis backend.
    pub redis: redis_store::RedisConfig,
    /// Settings of the mongodb backend.
    pub mongodb: mongo_store::MongoConfig,
    /// Retries, breaker and spill buffer of the remote backends.
    pub resilience: resilient::ResilienceConfig,
}

/// Opens the configured backend. Remote backends come wrapped in `Resilient` (retries,
/// breaker, spill buffer); the returned drain task must be spawned to replay the spill.
pub async fn open(cfg: &StorageConfig) -> Result<(Arc<dyn EventStore>, Option<Arc<resilient::Resilient>>)> {
    let remote: Arc<dyn EventStore> = match cfg.backend {
        Backend::File => return Ok((Arc::new(file::FileStore::open(cfg.file.clone()).await?), None)),
        Backend::Redis => Arc::new(redis_store::RedisStore::open(cfg.redis.clone()).await?),
        Backend::Mongodb => Arc::new(mongo_store::MongoStore::open(cfg.mongodb.clone()).await?),
    };
    let r = resilient::Resilient::open(remote, cfg.resilience.clone()).await?;
    Ok((r.clone(), Some(r)))
}
