//! Start-up: the gateway's derived state (analytics counters, the dedup window) comes
//! back from the last checkpoint, then from the store records committed after it (all of
//! them without a checkpoint).
//!
//! A checkpoint is trusted: records it covers are not read at start. They are checked
//! afterwards by `scrub`, one background pass over the whole store at a bounded pace,
//! which finds, skips, quarantines and reports damage exactly as a start-up rebuild did
//! (ERROR log, `store_corrupt_records_total`, `/healthz`). A record damaged on disk after
//! it was acked and checkpointed stays counted in the analytics (the event was accepted)
//! and its id stays in the dedup window until the window passes it.
//!
//! The replay overlaps its three costs on the machine's cores: the store reads the next
//! page (on the blocking pool) while this one is counted in the analytics on one thread
//! and its ids go into the dedup window on another.

use crate::checkpoint::Checkpoints;
use crate::config::Config;
use crate::pipeline::Window;
use adflow_domain::analytics::Analytics;
use adflow_domain::{dedup, now_ms};
use adflow_store::{Cursor, EventStore, Page, StoredEvent};
use anyhow::Context;
use std::sync::{Arc, RwLock};
use std::time::Instant;

/// Events per page of the replay.
const PAGE: usize = 16_384;

/// Puts the ids of `events` received inside the window into `d`.
fn remember(d: &Window, events: &[StoredEvent], now: i64) {
    let since = now - d.window_ms();
    for e in events.iter().filter(|e| e.received_at_ms >= since) {
        if let Ok(v) = e.view() {
            d.insert(dedup::key(v.event_id), e.received_at_ms);
        }
    }
}

/// Replays the store (from `from`, or all of it) into analytics and the dedup window;
/// returns the events read.
pub async fn rebuild(
    store: &dyn EventStore,
    analytics: Option<&RwLock<Analytics>>,
    dedup: Option<&Window>,
    from: Option<Cursor>,
) -> anyhow::Result<u64> {
    if analytics.is_none() && dedup.is_none() {
        return Ok(0);
    }
    let now = now_ms();
    // Analytics need every event; the dedup window only the recent ones.
    let since = match (analytics, dedup) {
        (None, Some(d)) => now - d.window_ms(),
        _ => i64::MIN,
    };
    let read = |c: Option<Cursor>| async move {
        store.scan_since(since, c, PAGE).await.context("reading the event store at start")
    };
    let mut n = 0u64;
    let mut page: Page = read(from).await?;
    loop {
        n += page.events.len() as u64;
        let events = std::mem::take(&mut page.events);
        let count = || {
            std::thread::scope(|s| {
                if let Some(d) = dedup {
                    s.spawn(|| remember(d, &events, now));
                }
                if let Some(a) = analytics {
                    a.write().unwrap_or_else(|p| p.into_inner()).record(&events, now);
                }
            })
        };
        match page.next.take() {
            Some(c) => {
                let (next, ()) = tokio::join!(read(Some(c)), async { count() });
                page = next?;
            }
            None => {
                count();
                return Ok(n);
            }
        }
    }
}

/// Pages of the scrub per second (at 16,384 events per page, ~500k records/s).
const SCRUB_PAGES_PER_SEC: u64 = 32;

/// Reads every stored record once in the background (see the module comment), until
/// done or `stop` turns true.
pub async fn scrub(store: Arc<dyn EventStore>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let started = Instant::now();
    let (mut cursor, mut n) = (None, 0u64);
    let pace = std::time::Duration::from_millis(1000 / SCRUB_PAGES_PER_SEC);
    loop {
        let page = match store.scan(cursor, PAGE).await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "store scrub stopped");
                return;
            }
        };
        n += page.events.len() as u64;
        match page.next {
            Some(c) => cursor = Some(c),
            None => break,
        }
        tokio::select! {
            _ = tokio::time::sleep(pace) => {}
            _ = stop.changed() => return,
        }
    }
    tracing::info!(
        records = n,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "store scrub finished (damage, if any, was reported above)"
    );
}

/// Loads the checkpoint into `analytics` and `dedup`; returns where the store must be
/// read from (None: all of it) and the dedup window to use (a fresh one when a damaged
/// checkpoint had partly filled it).
pub fn load_checkpoint(
    cp: &Checkpoints,
    cfg: &Config,
    store: &dyn EventStore,
    analytics: &RwLock<Analytics>,
    dedup: Option<Arc<Window>>,
) -> (Option<adflow_store::Cursor>, Option<Arc<Window>>) {
    let started = Instant::now();
    match cp.load(&cfg.analytics, dedup.as_deref(), store, now_ms()) {
        Ok(Some(l)) => {
            tracing::info!(
                path = %cp.path().display(),
                bytes = l.bytes,
                dedup_ids = l.dedup_ids,
                cursor = %l.cursor.0,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "checkpoint loaded; reading the store from its position"
            );
            *analytics.write().unwrap_or_else(|p| p.into_inner()) = l.analytics;
            (Some(l.cursor), dedup)
        }
        Ok(None) => {
            tracing::info!(path = %cp.path().display(), "no checkpoint yet; reading the whole event store");
            (None, dedup)
        }
        Err(e) => {
            metrics::counter!("checkpoint_failures_total").increment(1);
            tracing::warn!(error = %e, "checkpoint not used; rebuilding from the whole event store");
            let d = &cfg.ingest.dedup;
            let fresh = dedup
                .map(|_| Arc::new(Window::with_budget(d.window_secs as i64 * 1000, d.max_memory_mb << 20)));
            (None, fresh)
        }
    }
}
