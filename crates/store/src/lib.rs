//! Storage for adflow: the `EventStore` trait every backend implements, the backends
//! (one module each, chosen by config), and the conformance suite they all must pass.
//!
//! The trait is deliberately small (append a batch durably, scan in pages, health,
//! close): the pipeline batches and retries, the store only has to persist.
//!
//! # Layout
//! - this file: `EventStore`, `StoreError`, `[storage]` and `open` (the one factory).
//! - `file` (+ `file/`: reader, damage, log, groups, retention, maintenance): segment
//!   files with framed records (`framing`), the embedded default.
//! - `redis_store` (+ `redis_store/log.rs`), `mongo_store` (+ `mongo_store/log.rs`): the
//!   shared backends; `redis_conn`: one connection type for a server or a cluster.
//! - `resilient`: retries, breaker and spill buffer around a remote backend.
//! - `counters`: analytics counters shared through the backend; `eventlog`: the types
//!   of event-log reads. `conformance` (feature): the suite every backend passes.

pub mod counters;
pub mod eventlog;
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
    /// This backend does not offer the operation.
    #[error("the {0} backend does not support this operation")]
    Unsupported(&'static str),
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

/// What a commit records so that its writer, having heard an error, can tell whether it
/// landed: recorded under its first event, the number of events it covers from there and
/// a digest of them (so it is never taken for another run of events that merely starts
/// with the same event, e.g. a repeated id or a shorter batch).
#[derive(Clone, Debug, PartialEq)]
pub struct Marker {
    /// The first covered event (the marker is found under it).
    pub first: StoredEvent,
    /// What the marker says about the run starting there.
    pub landed: Landed,
}

/// A landed marker's contents.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Landed {
    /// Events covered, from the one the marker is found under.
    pub covers: u32,
    /// `digest` of the covered events.
    pub digest: u64,
}

impl Marker {
    /// The marker of a commit covering `events` (which must not be empty).
    pub fn of(events: &[StoredEvent]) -> Self {
        Self {
            first: events[0].clone(),
            landed: Landed {
                covers: u32::try_from(events.len()).unwrap_or(u32::MAX),
                digest: digest(events),
            },
        }
    }
}

impl Landed {
    /// Whether this marker describes exactly the run `events` (its length and digest).
    pub fn matches(&self, events: &[StoredEvent]) -> bool {
        events.len() == self.covers as usize && digest(events) == self.digest
    }
}

/// A digest of a run of events: their receive times and encoded bytes, in order.
pub fn digest(events: &[StoredEvent]) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for e in events {
        h.update(&e.received_at_ms.to_le_bytes());
        h.update(&(e.raw.len() as u64).to_le_bytes());
        h.update(&e.raw);
    }
    h.digest()
}

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
    /// Appends like `append` and records `marker` with the events, for a while, so a
    /// writer that did not see the outcome can ask `landed` before it writes the commit
    /// again. Backends whose commit cannot land unseen just append.
    async fn append_marked(&self, events: &[StoredEvent], marker: &Marker) -> Result<()> {
        let _ = marker;
        self.append(events).await
    }
    /// For each event, the marker recorded under it by an earlier `append_marked` (None:
    /// none known). Backends whose commit cannot land unseen (a local file; MongoDB,
    /// whose inserts are idempotent by event id) answer all None.
    async fn landed(&self, events: &[StoredEvent]) -> Result<Vec<Option<Landed>>> {
        Ok(vec![None; events.len()])
    }
    /// Reads up to `limit` committed events in commit order, starting at `from` (the
    /// beginning when `None`).
    async fn scan(&self, from: Option<Cursor>, limit: usize) -> Result<Page>;
    /// Like `scan`, but a backend may skip events received before `since_ms` (the start-up
    /// rebuild of the dedup window needs only those). The default reads everything.
    async fn scan_since(&self, since_ms: i64, from: Option<Cursor>, limit: usize) -> Result<Page> {
        let _ = since_ms;
        self.scan(from, limit).await
    }
    /// The position just after the last committed record, for checkpoints of state
    /// derived from the store (None: this backend has no such position).
    fn end_cursor(&self) -> Option<Cursor> {
        None
    }
    /// Ok when `cursor` is a position this store holds (at or before its end); a
    /// checkpoint from another store or from the future is refused with `BadCursor`.
    fn check_cursor(&self, cursor: &Cursor) -> Result<()> {
        let _ = cursor;
        Ok(())
    }
    /// The cursor where a read of the log from `start` begins.
    async fn log_start(&self, start: &eventlog::Start) -> Result<Cursor> {
        let _ = start;
        Err(StoreError::Unsupported(self.backend()))
    }
    /// Reads up to `limit` committed events from `from`, with the cursor after them.
    async fn log_read(&self, from: &Cursor, limit: usize) -> Result<eventlog::LogPage> {
        let _ = (from, limit);
        Err(StoreError::Unsupported(self.backend()))
    }
    /// Returns once events may have been committed after `after` (woken by the commit
    /// itself where the backend allows), or after `timeout`.
    async fn log_wait(&self, after: &Cursor, timeout: std::time::Duration) {
        let _ = after;
        tokio::time::sleep(timeout).await
    }
    /// Stores `cursor` as consumer group `group`'s position (durably).
    async fn group_commit(&self, group: &str, cursor: &Cursor) -> Result<()> {
        let _ = (group, cursor);
        Err(StoreError::Unsupported(self.backend()))
    }
    /// Consumer group `group`'s position, if it ever committed one.
    async fn group_get(&self, group: &str) -> Result<Option<eventlog::GroupPosition>> {
        let _ = group;
        Err(StoreError::Unsupported(self.backend()))
    }
    /// The store's health, for grpc.health.v1.
    async fn health(&self) -> Health;
    /// Flushes and releases resources; later appends fail with `Closed`.
    async fn close(&self) -> Result<()>;
    /// Why new events must be refused now (e.g. "disk nearly full: ..."), or None.
    fn refuse_writes(&self) -> Option<String> {
        None
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

/// An opened event store and what comes with it.
pub struct Opened {
    /// The store the pipeline writes to.
    pub store: Arc<dyn EventStore>,
    /// For remote backends: the retry/spill wrapper, whose drain loop must be spawned.
    pub resilient: Option<Arc<resilient::Resilient>>,
    /// Counters shared by every gateway on the backend (None: use the in-memory ones).
    pub counters: Option<Arc<dyn counters::CounterSource>>,
}

/// Opens the configured backend. Remote backends come wrapped in `Resilient` (retries,
/// breaker, spill buffer); with `shared_counters`, they also keep the analytics counters
/// every gateway reads.
pub async fn open(
    cfg: &StorageConfig,
    shared_counters: Option<adflow_domain::analytics::Retention>,
) -> Result<Opened> {
    let (remote, counters): (Arc<dyn EventStore>, Option<Arc<dyn counters::CounterSource>>) =
        match cfg.backend {
            Backend::File => {
                let store = Arc::new(file::FileStore::open(cfg.file.clone()).await?);
                return Ok(Opened { store, resilient: None, counters: None });
            }
            Backend::Redis => {
                let s = redis_store::RedisStore::open_with(cfg.redis.clone(), shared_counters).await?;
                let c = s.counters().map(|c| c as Arc<dyn counters::CounterSource>);
                (Arc::new(s), c)
            }
            Backend::Mongodb => {
                let s = mongo_store::MongoStore::open(cfg.mongodb.clone()).await?;
                let c = shared_counters.map(|r| s.counters(r) as Arc<dyn counters::CounterSource>);
                (Arc::new(s), c)
            }
        };
    let r = resilient::Resilient::open(remote, cfg.resilience.clone()).await?;
    Ok(Opened { store: r.clone(), resilient: Some(r), counters })
}
