//! Keeps ingestion durable while a remote backend (Redis, MongoDB) is down.
//!
//! Appends go to the backend with a few quick retries (exponential backoff with jitter).
//! If it still fails, or the circuit breaker is open (a recent failure: the dead backend is
//! not hammered until `breaker_cooldown` has passed), the batch is written to a local
//! spill buffer instead: a `FileStore` (framed records, fsync per batch), so the ack stays
//! durable. While the spill holds events, new batches also go there, keeping their order.
//! A drain task replays the spill into the backend in order, page by page, persisting its
//! position after each page, and empties the spill once it has caught up.
//!
//! A `ReplayGuard` (set by the gateway when event ids are deduplicated in a shared set)
//! sees every replayed page before it is written: it drops events that another writer
//! stored meanwhile and records the ids of the events it lets through once they are
//! written, so a resend after an outage is a duplicate and never a second copy.

use crate::file::{FileConfig, FileStore};
use crate::{Cursor, EventStore, Health, Page, Result, StoreError, StoredEvent};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::Mutex;

/// `[storage.resilience]`: retries, breaker and spill buffer for remote backends.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ResilienceConfig {
    /// Directory of the spill buffer (default "data/spill").
    pub spill_dir: PathBuf,
    /// Backend attempts per batch before spilling (default 3).
    pub attempts: u32,
    /// First retry delay in ms, doubled per attempt, with jitter (default 20).
    pub retry_base_ms: u64,
    /// After a failure, batches go straight to the spill for this long, in ms (default 1000).
    pub breaker_cooldown_ms: u64,
    /// Events replayed per drain step (default 2000).
    pub drain_page: usize,
}

impl Default for ResilienceConfig {
    fn default() -> Self {
        Self {
            spill_dir: PathBuf::from("data/spill"),
            attempts: 3,
            retry_base_ms: 20,
            breaker_cooldown_ms: 1000,
            drain_page: 2000,
        }
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Where a committed batch landed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// In the backend itself.
    Backend,
    /// In the local spill buffer, to be replayed into the backend later.
    Spill,
}

/// Decides which spilled events are still to be written when the spill replays.
#[async_trait]
pub trait ReplayGuard: Send + Sync {
    /// For each event of a page about to be replayed, whether to write it (false: the
    /// same event id is already stored, e.g. by another gateway while this one spilled).
    async fn admit(&self, events: &[StoredEvent]) -> Result<Vec<bool>>;
    /// The admitted events were written to the backend.
    async fn written(&self, events: &[StoredEvent]);
}

struct Spill {
    store: FileStore,
    /// Events written to the spill and not yet replayed.
    pending: u64,
    /// Position after the last replayed event.
    cursor: Option<Cursor>,
}

/// A backend wrapped with retries, a circuit breaker and a spill buffer.
pub struct Resilient {
    backend: Arc<dyn EventStore>,
    cfg: ResilienceConfig,
    spill: Mutex<Spill>,
    open_until_ms: AtomicI64,
    spilled: AtomicU64,
    replayed: AtomicU64,
    guard: std::sync::OnceLock<Arc<dyn ReplayGuard>>,
}

fn cursor_file(cfg: &ResilienceConfig) -> PathBuf {
    cfg.spill_dir.join("drained.cursor")
}

fn spill_cfg(cfg: &ResilienceConfig) -> FileConfig {
    // Spilled events wait for their replay: never removed by retention.
    FileConfig {
        dir: cfg.spill_dir.join("segments"),
        retention_hours: 0,
        max_bytes: 0,
        min_free_mb: 0,
        ..FileConfig::default()
    }
}

impl Resilient {
    /// Wraps `backend`; events left in the spill by an earlier run are replayed first.
    pub async fn open(backend: Arc<dyn EventStore>, cfg: ResilienceConfig) -> Result<Arc<Self>> {
        let store = FileStore::open(spill_cfg(&cfg)).await?;
        let cursor = std::fs::read_to_string(cursor_file(&cfg))
            .ok()
            .filter(|s| !s.trim().is_empty())
            .map(|s| Cursor(s.trim().into()));
        let mut pending = 0;
        let mut c = cursor.clone();
        loop {
            let p = store.scan(c, 10_000).await?;
            pending += p.events.len() as u64;
            match p.next {
                Some(n) => c = Some(n),
                None => break,
            }
        }
        if pending > 0 {
            tracing::warn!(
                events = pending,
                "spill buffer holds events from an earlier run; they will be replayed"
            );
        }
        Ok(Arc::new(Self {
            backend,
            cfg,
            spill: Mutex::new(Spill { store, pending, cursor }),
            open_until_ms: AtomicI64::new(0),
            spilled: AtomicU64::new(0),
            replayed: AtomicU64::new(0),
            guard: std::sync::OnceLock::new(),
        }))
    }

    /// Installs the guard that filters replayed pages (once; later calls are ignored).
    pub fn set_replay_guard(&self, guard: Arc<dyn ReplayGuard>) {
        let _ = self.guard.set(guard);
    }

    /// Events waiting in the spill buffer.
    pub async fn pending(&self) -> u64 {
        self.spill.lock().await.pending
    }

    /// Events held in the spill buffer, waiting for the backend (0 while its lock is busy):
    /// a gauge that must not wait, unlike `pending`.
    pub fn spill_pending(&self) -> u64 {
        self.spill.try_lock().map(|s| s.pending).unwrap_or(0)
    }

    /// Events spilled since start.
    pub fn spilled(&self) -> u64 {
        self.spilled.load(Ordering::Relaxed)
    }

    /// Events replayed into the backend since start.
    pub fn replayed(&self) -> u64 {
        self.replayed.load(Ordering::Relaxed)
    }

    fn breaker_open(&self) -> bool {
        self.open_until_ms.load(Ordering::Relaxed) > now_ms()
    }

    fn trip(&self) {
        self.open_until_ms.store(now_ms() + self.cfg.breaker_cooldown_ms as i64, Ordering::Relaxed);
    }

    async fn try_backend(&self, events: &[StoredEvent]) -> std::result::Result<(), StoreError> {
        let mut last = None;
        for attempt in 0..self.cfg.attempts.max(1) {
            if attempt > 0 {
                let base = self.cfg.retry_base_ms.saturating_mul(1 << (attempt - 1).min(10));
                let jitter = 0.5 + (now_ms().rem_euclid(97) as f64) / 194.0;
                tokio::time::sleep(Duration::from_millis((base as f64 * jitter) as u64)).await;
            }
            match self.backend.append(events).await {
                Ok(()) => return Ok(()),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or(StoreError::Closed))
    }

    /// Replays one page of the spill into the backend; returns events replayed.
    pub async fn drain_once(&self) -> Result<usize> {
        let mut s = self.spill.lock().await;
        if s.pending == 0 || self.breaker_open() {
            return Ok(0);
        }
        let page = s.store.scan(s.cursor.clone(), self.cfg.drain_page.max(1)).await?;
        if page.events.is_empty() {
            s.pending = 0;
            return Ok(0);
        }
        let keep = match self.guard.get() {
            Some(g) => match g.admit(&page.events).await {
                Ok(k) => Some(k),
                Err(e) => {
                    self.trip();
                    tracing::warn!(error = %e, "dedup set not answering; spill replay paused");
                    return Ok(0);
                }
            },
            None => None,
        };
        let write: Vec<StoredEvent> = match &keep {
            Some(k) => page.events.iter().zip(k).filter(|(_, k)| **k).map(|(e, _)| e.clone()).collect(),
            None => page.events.clone(),
        };
        if let Err(e) = self.backend.append(&write).await {
            self.trip();
            tracing::warn!(error = %e, "backend still failing; spill replay paused");
            return Ok(0);
        }
        if let Some(g) = self.guard.get() {
            g.written(&write).await;
            let dropped = page.events.len() - write.len();
            if dropped > 0 {
                tracing::info!(dropped, "spill replay skipped events another writer had already stored");
            }
        }
        let n = page.events.len();
        s.pending = s.pending.saturating_sub(n as u64);
        self.replayed.fetch_add(n as u64, Ordering::Relaxed);
        match page.next {
            Some(c) => {
                std::fs::write(cursor_file(&self.cfg), &c.0).map_err(|source| StoreError::Io {
                    op: "write",
                    path: cursor_file(&self.cfg),
                    source,
                })?;
                s.cursor = Some(c);
            }
            None => {
                // Caught up: start a fresh, empty spill.
                s.store.close().await?;
                let dir = spill_cfg(&self.cfg).dir;
                // Damaged spill records were kept aside: keep them past the reset.
                let quarantine = dir.join("quarantine");
                if quarantine.exists() {
                    let keep = self.cfg.spill_dir.join(format!("quarantine-{}", now_ms()));
                    if let Err(e) = std::fs::rename(&quarantine, &keep) {
                        tracing::error!(error = %e, path = %quarantine.display(), "could not keep the spill's quarantine");
                    }
                }
                std::fs::remove_dir_all(&dir).map_err(|source| StoreError::Io {
                    op: "remove",
                    path: dir.clone(),
                    source,
                })?;
                let _ = std::fs::remove_file(cursor_file(&self.cfg));
                s.store = FileStore::open(spill_cfg(&self.cfg)).await?;
                s.cursor = None;
                s.pending = 0;
                tracing::info!(replayed = self.replayed(), "spill buffer drained into the backend");
            }
        }
        Ok(n)
    }

    /// Appends like `EventStore::append` and says where the batch landed.
    pub async fn append_placed(&self, events: &[StoredEvent]) -> Result<Placement> {
        if events.is_empty() {
            return Ok(Placement::Backend);
        }
        {
            let s = self.spill.lock().await;
            let must_spill = s.pending > 0 || self.breaker_open();
            drop(s);
            if !must_spill {
                match self.try_backend(events).await {
                    Ok(()) => return Ok(Placement::Backend),
                    Err(e) => {
                        self.trip();
                        tracing::warn!(error = %e, events = events.len(), "backend down: spilling to the local buffer");
                    }
                }
            }
        }
        let mut s = self.spill.lock().await;
        s.store.append(events).await?;
        s.pending += events.len() as u64;
        self.spilled.fetch_add(events.len() as u64, Ordering::Relaxed);
        Ok(Placement::Spill)
    }

    /// Drains the spill every `every` until `stop` turns true.
    pub async fn drain_loop(self: Arc<Self>, every: Duration, mut stop: tokio::sync::watch::Receiver<bool>) {
        loop {
            match self.drain_once().await {
                Ok(n) if n > 0 => continue,
                Ok(_) => {}
                Err(e) => tracing::error!(error = %e, "spill replay failed"),
            }
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop.changed() => return,
            }
        }
    }
}

#[async_trait]
impl EventStore for Resilient {
    fn backend(&self) -> &'static str {
        self.backend.backend()
    }

    async fn append(&self, events: &[StoredEvent]) -> Result<()> {
        self.append_placed(events).await.map(|_| ())
    }

    async fn scan(&self, from: Option<Cursor>, limit: usize) -> Result<Page> {
        self.backend.scan(from, limit).await
    }

    async fn scan_since(&self, since_ms: i64, from: Option<Cursor>, limit: usize) -> Result<Page> {
        self.backend.scan_since(since_ms, from, limit).await
    }

    async fn log_start(&self, start: &crate::eventlog::Start) -> Result<Cursor> {
        self.backend.log_start(start).await
    }

    async fn log_read(&self, from: &Cursor, limit: usize) -> Result<crate::eventlog::LogPage> {
        self.backend.log_read(from, limit).await
    }

    async fn log_wait(&self, after: &Cursor, timeout: std::time::Duration) {
        self.backend.log_wait(after, timeout).await
    }

    async fn group_commit(&self, group: &str, cursor: &Cursor) -> Result<()> {
        self.backend.group_commit(group, cursor).await
    }

    async fn group_get(&self, group: &str) -> Result<Option<crate::eventlog::GroupPosition>> {
        self.backend.group_get(group).await
    }

    async fn health(&self) -> Health {
        let b = self.backend.health().await;
        let pending = self.spill.lock().await.pending;
        // Ingestion stays available through the spill: the service is healthy, the backend may not be.
        let detail = if b.ok && pending == 0 {
            b.detail
        } else {
            format!(
                "degraded: backend {} ({}); {pending} events in the spill buffer",
                self.backend.backend(),
                b.detail
            )
        };
        Health { ok: true, detail, degraded: !b.ok || pending > 0 }
    }

    async fn close(&self) -> Result<()> {
        let s = self.spill.lock().await;
        s.store.close().await?;
        self.backend.close().await
    }
}
