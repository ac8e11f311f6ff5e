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
//! An append can land although its caller hears an error (Redis runs the EXEC after the
//! response timeout). Every batch is appended with a landed marker (`append_marked`): a
//! retry asks `landed` first, the replay skips the spilled events a marker covers and
//! marks each page it writes, so neither a retry nor a replay after a crash writes a
//! commit twice.
//!
//! A `ReplayGuard` (set by the gateway when event ids are deduplicated in a shared set)
//! sees every replayed page before it is written: it drops events that another writer
//! stored meanwhile and records the ids of the events it lets through once they are
//! written, so a resend after an outage is a duplicate and never a second copy.

use crate::file::{FileConfig, FileStore};
use crate::{Cursor, EventStore, Health, Marker, Page, Result, StoreError, StoredEvent};
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

/// Most events a replay page is widened to, so it never ends inside a landed commit.
const MAX_WIDENED_PAGE: usize = 1_000_000;

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
        // Nothing follows the spill: no tail kept in memory.
        tail_cache_mb: 0,
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
        let marker = Marker::of(events);
        let mut last = None;
        for attempt in 0..self.cfg.attempts.max(1) {
            if attempt > 0 {
                let base = self.cfg.retry_base_ms.saturating_mul(1 << (attempt - 1).min(10));
                let jitter = 0.5 + (now_ms().rem_euclid(97) as f64) / 194.0;
                tokio::time::sleep(Duration::from_millis((base as f64 * jitter) as u64)).await;
            }
            if attempt > 0 {
                // The attempt before may have landed with its reply lost (a response
                // timeout, a dropped connection): ask before writing the batch again.
                match self.backend.landed(&events[..1]).await {
                    Ok(l) if l.first().copied().flatten() == Some(marker.landed) => {
                        tracing::info!(
                            events = events.len(),
                            "an append whose reply was lost had landed: not written again"
                        );
                        return Ok(());
                    }
                    Ok(_) => {}
                    Err(e) => {
                        last = Some(e);
                        continue;
                    }
                }
            }
            match self.backend.append_marked(events, &marker).await {
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
        let mut page = s.store.scan(s.cursor.clone(), self.cfg.drain_page.max(1)).await?;
        if page.events.is_empty() {
            s.pending = 0;
            return Ok(0);
        }
        // Commits that landed although their writer saw an error (a live batch spilled
        // after a lost reply, or this page's own replay before a crash) are not written
        // again. A page is widened so it never ends inside such a commit.
        let stored = loop {
            let marks = match self.backend.landed(&page.events).await {
                Ok(m) => m,
                Err(e) => {
                    self.trip();
                    tracing::warn!(error = %e, "backend still failing; spill replay paused");
                    return Ok(0);
                }
            };
            let n = page.events.len();
            let reach = marks
                .iter()
                .enumerate()
                .filter_map(|(i, m)| m.map(|l| i + l.covers as usize))
                .max()
                .unwrap_or(0)
                .min(MAX_WIDENED_PAGE);
            if reach > n && page.next.is_some() {
                page = s.store.scan(s.cursor.clone(), reach).await?;
                continue;
            }
            // A marker counts only where the very run it describes starts (its length and
            // digest): an id repeated later, or a shorter batch starting with the same
            // event, is not covered by it. And one marker stands for one commit: it covers
            // the first run it matches only (byte-identical runs with one receive time are
            // possible with dedup off).
            let mut stored = vec![false; n];
            let mut used = Vec::new();
            for (i, m) in marks.iter().enumerate() {
                if let Some(l) = m
                    && !used.contains(l)
                    && let Some(run) = page.events.get(i..i + l.covers as usize)
                    && l.matches(run)
                {
                    stored[i..i + run.len()].iter_mut().for_each(|s| *s = true);
                    used.push(*l);
                }
            }
            break stored;
        };
        let landed: Vec<StoredEvent> =
            page.events.iter().zip(&stored).filter(|(_, s)| **s).map(|(e, _)| e.clone()).collect();
        if !landed.is_empty() {
            tracing::info!(
                landed = landed.len(),
                "spill replay skipped events whose commit had landed unseen"
            );
        }
        let candidates: Vec<StoredEvent> =
            page.events.iter().zip(&stored).filter(|(_, s)| !**s).map(|(e, _)| e.clone()).collect();
        let keep = match self.guard.get() {
            Some(g) => match g.admit(&candidates).await {
                Ok(k) => Some(k),
                Err(e) => {
                    self.trip();
                    tracing::warn!(error = %e, "dedup set not answering; spill replay paused");
                    return Ok(0);
                }
            },
            None => None,
        };
        let dropped = candidates.len();
        let write: Vec<StoredEvent> = match &keep {
            Some(k) => candidates.into_iter().zip(k).filter(|(_, k)| **k).map(|(e, _)| e).collect(),
            None => candidates,
        };
        let dropped = dropped - write.len();
        // The marker covers the whole page: a replay after a crash skips all of it.
        if let Err(e) = self.backend.append_marked(&write, &Marker::of(&page.events)).await {
            self.trip();
            tracing::warn!(error = %e, "backend still failing; spill replay paused");
            return Ok(0);
        }
        if let Some(g) = self.guard.get() {
            // What landed unseen is stored too: its ids are recorded like the written ones.
            g.written(&[landed.as_slice(), write.as_slice()].concat()).await;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Landed;
    use adflow_proto::v1::AdEvent;
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicBool, AtomicU32};

    /// A backend whose commits can land while their caller hears an error; markers are
    /// keyed like Redis's (receive time and event id).
    #[derive(Default)]
    struct Lossy {
        stored: std::sync::Mutex<Vec<StoredEvent>>,
        markers: std::sync::Mutex<HashMap<(i64, String), Landed>>,
        /// The next this many appends land but answer an error.
        lose_replies: AtomicU32,
        /// Appends fail without landing.
        down: AtomicBool,
    }

    fn key(e: &StoredEvent) -> (i64, String) {
        (e.received_at_ms, e.event().unwrap().event_id)
    }

    #[async_trait]
    impl EventStore for Lossy {
        fn backend(&self) -> &'static str {
            "lossy"
        }
        async fn append(&self, events: &[StoredEvent]) -> Result<()> {
            self.stored.lock().unwrap().extend_from_slice(events);
            Ok(())
        }
        async fn append_marked(&self, events: &[StoredEvent], marker: &Marker) -> Result<()> {
            let down = || StoreError::Backend { backend: "lossy", op: "append", message: "down".into() };
            if self.down.load(Ordering::SeqCst) {
                return Err(down());
            }
            if !events.is_empty() {
                self.stored.lock().unwrap().extend_from_slice(events);
                self.markers.lock().unwrap().insert(key(&marker.first), marker.landed);
            }
            let lost =
                self.lose_replies.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
            if lost.is_ok() { Err(down()) } else { Ok(()) }
        }
        async fn landed(&self, events: &[StoredEvent]) -> Result<Vec<Option<Landed>>> {
            let m = self.markers.lock().unwrap();
            Ok(events.iter().map(|e| m.get(&key(e)).copied()).collect())
        }
        async fn scan(&self, _: Option<Cursor>, _: usize) -> Result<Page> {
            Ok(Page::default())
        }
        async fn health(&self) -> Health {
            Health { ok: true, detail: "ok".into(), degraded: false }
        }
        async fn close(&self) -> Result<()> {
            Ok(())
        }
    }

    fn ev(id: &str) -> StoredEvent {
        StoredEvent::encode(1_000, &AdEvent { event_id: id.into(), ..Default::default() })
    }

    fn batch(b: usize, n: usize) -> Vec<StoredEvent> {
        (0..n).map(|i| ev(&format!("e-{b}-{i}"))).collect()
    }

    async fn open(dir: &std::path::Path, attempts: u32, drain_page: usize) -> (Arc<Lossy>, Arc<Resilient>) {
        let backend = Arc::new(Lossy::default());
        let cfg = ResilienceConfig {
            spill_dir: dir.join("spill"),
            attempts,
            retry_base_ms: 1,
            breaker_cooldown_ms: 0,
            drain_page,
        };
        let r = Resilient::open(backend.clone(), cfg).await.unwrap();
        (backend, r)
    }

    fn ids(b: &Lossy) -> Vec<String> {
        b.stored.lock().unwrap().iter().map(|e| e.event().unwrap().event_id).collect()
    }

    /// Appends `events` while the backend is down (so they are spilled, never sent).
    async fn spill_while_down(backend: &Lossy, store: &Resilient, events: &[StoredEvent]) {
        backend.down.store(true, Ordering::SeqCst);
        assert_eq!(store.append_placed(events).await.unwrap(), Placement::Spill);
        backend.down.store(false, Ordering::SeqCst);
    }

    async fn drain_all(store: &Resilient) {
        for _ in 0..100 {
            if store.pending().await == 0 {
                return;
            }
            store.drain_once().await.unwrap();
        }
        panic!("the spill did not drain");
    }

    #[tokio::test]
    async fn a_retry_after_a_lost_reply_does_not_write_the_batch_again() {
        let dir = tempfile::tempdir().unwrap();
        let (backend, store) = open(dir.path(), 3, 100).await;
        backend.lose_replies.store(1, Ordering::SeqCst);
        let placed = store.append_placed(&batch(0, 5)).await.unwrap();
        assert_eq!(placed, Placement::Backend);
        assert_eq!(ids(&backend).len(), 5, "stored once: {:?}", ids(&backend));
    }

    #[tokio::test]
    async fn a_spilled_batch_whose_commit_landed_unseen_is_not_replayed() {
        let dir = tempfile::tempdir().unwrap();
        let (backend, store) = open(dir.path(), 1, 100).await;
        backend.lose_replies.store(1, Ordering::SeqCst);
        assert_eq!(store.append_placed(&batch(0, 5)).await.unwrap(), Placement::Spill);
        assert_eq!(store.pending().await, 5);
        drain_all(&store).await;
        assert_eq!(ids(&backend).len(), 5, "stored once: {:?}", ids(&backend));
    }

    #[tokio::test]
    async fn a_replayed_page_whose_reply_was_lost_is_not_replayed_again() {
        let dir = tempfile::tempdir().unwrap();
        let (backend, store) = open(dir.path(), 1, 100).await;
        spill_while_down(&backend, &store, &batch(0, 5)).await;
        backend.lose_replies.store(1, Ordering::SeqCst);
        assert_eq!(store.drain_once().await.unwrap(), 0, "the replay heard an error");
        drain_all(&store).await;
        assert_eq!(ids(&backend).len(), 5, "stored once: {:?}", ids(&backend));
    }

    #[tokio::test]
    async fn a_page_is_widened_to_the_end_of_a_commit_that_landed() {
        let dir = tempfile::tempdir().unwrap();
        let (backend, store) = open(dir.path(), 1, 3).await;
        backend.lose_replies.store(1, Ordering::SeqCst);
        assert_eq!(store.append_placed(&batch(0, 5)).await.unwrap(), Placement::Spill);
        spill_while_down(&backend, &store, &batch(1, 2)).await;
        drain_all(&store).await;
        let got = ids(&backend);
        let unique: std::collections::HashSet<_> = got.iter().collect();
        assert_eq!((got.len(), unique.len()), (7, 7), "every event once: {got:?}");
    }

    #[tokio::test]
    async fn a_repeated_id_later_in_the_spill_is_not_taken_for_a_landed_commit() {
        // Dedup off (or a shared dedup that could not be asked): a request may hold the
        // same id twice, with one receive time, so both copies have one marker key.
        let dir = tempfile::tempdir().unwrap();
        let (backend, store) = open(dir.path(), 1, 2).await;
        spill_while_down(&backend, &store, &[ev("a"), ev("x"), ev("a"), ev("c1")]).await;
        drain_all(&store).await;
        assert_eq!(ids(&backend), vec!["a", "x", "a", "c1"], "nothing skipped");
    }

    #[tokio::test]
    async fn a_marker_of_a_longer_batch_does_not_cover_a_shorter_one_starting_alike() {
        let dir = tempfile::tempdir().unwrap();
        let (backend, store) = open(dir.path(), 1, 100).await;
        // A commit of five landed unseen; what reaches the spill is its first three
        // (e.g. the batcher dropped failed durable requests), then another batch.
        let five = batch(0, 5);
        backend.lose_replies.store(1, Ordering::SeqCst);
        backend.append_marked(&five, &Marker::of(&five)).await.unwrap_err();
        spill_while_down(&backend, &store, &five[..3]).await;
        spill_while_down(&backend, &store, &batch(1, 2)).await;
        drain_all(&store).await;
        let got = ids(&backend);
        assert!(
            got.contains(&"e-1-0".to_string()) && got.contains(&"e-1-1".to_string()),
            "nothing lost: {got:?}"
        );
    }

    #[tokio::test]
    async fn one_marker_covers_one_of_two_identical_commits() {
        // Dedup off: the same event twice in one millisecond, as two commits; the first
        // landed unseen, the second never reached the backend.
        let dir = tempfile::tempdir().unwrap();
        let (backend, store) = open(dir.path(), 1, 100).await;
        backend.lose_replies.store(1, Ordering::SeqCst);
        assert_eq!(store.append_placed(&[ev("a")]).await.unwrap(), Placement::Spill);
        spill_while_down(&backend, &store, &[ev("a")]).await;
        drain_all(&store).await;
        assert_eq!(ids(&backend), vec!["a", "a"], "both acked copies stored, once each");
    }

    /// Records what the replay reports as written.
    #[derive(Default)]
    struct Recorder(std::sync::Mutex<Vec<String>>);

    #[async_trait]
    impl ReplayGuard for Recorder {
        async fn admit(&self, events: &[StoredEvent]) -> Result<Vec<bool>> {
            Ok(vec![true; events.len()])
        }
        async fn written(&self, events: &[StoredEvent]) {
            self.0.lock().unwrap().extend(events.iter().map(|e| e.event().unwrap().event_id));
        }
    }

    #[tokio::test]
    async fn events_skipped_as_landed_are_reported_written_to_the_guard() {
        let dir = tempfile::tempdir().unwrap();
        let (backend, store) = open(dir.path(), 1, 100).await;
        let guard = Arc::new(Recorder::default());
        store.set_replay_guard(guard.clone());
        spill_while_down(&backend, &store, &batch(0, 5)).await;
        backend.lose_replies.store(1, Ordering::SeqCst);
        assert_eq!(store.drain_once().await.unwrap(), 0, "the replay heard an error");
        drain_all(&store).await;
        let mut seen = guard.0.lock().unwrap().clone();
        seen.sort();
        assert_eq!(seen, ids(&backend), "the ids of the landed page are recorded as stored");
    }
}
