//! The batcher: the single task that turns queued submissions into store commits.
//! It gathers whatever is queued (up to `max_batch_events`, waiting at most
//! `max_batch_delay_ms` for more), appends it as one commit, and then answers every
//! durable waiter of that commit at once. While commits are in flight the next batch
//! accumulates in the channel, so the batch size adapts to the load by itself. The file
//! store commits one batch at a time (one fsync each); a remote backend may have several
//! commits in flight (`ingest.commits_in_flight`), so the network round trip of one commit
//! overlaps the next instead of capping the rate.
//!
//! A failed write is retried with exponential backoff and jitter. When the retry budget
//! is spent, durable requests are failed (their clients retry, and their ids are removed
//! from the dedup window so the retry is accepted), but events acked in `accepted` mode
//! are kept and retried until the store takes them: those clients were promised storage.

use super::{CommitState, Counters, Submission, Window};
use crate::config::IngestConfig;
use adflow_domain::analytics::Analytics;
use adflow_domain::{StoredEvent, now_ms};
use adflow_store::EventStore;
use adflow_store::resilient::Placement;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::Instrument;

/// Stops and joins the batcher.
pub(super) struct Handle {
    /// Raised first, so a commit already retrying on a dead store sees the shutdown too
    /// (the file store's batcher is inside that commit, not waiting on `stop`).
    stop_asked: Arc<AtomicBool>,
    stop: Mutex<Option<oneshot::Sender<()>>>,
    join: Mutex<Option<JoinHandle<()>>>,
}

impl Handle {
    /// Asks the batcher to drain the queue, commit it and exit; waits until it has.
    pub(super) async fn stop(&self) {
        self.stop_asked.store(true, Ordering::Relaxed);
        if let Some(tx) = self.stop.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = tx.send(());
        }
        let join = self.join.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(j) = join
            && let Err(e) = j.await
        {
            tracing::error!(error = %e, "batcher task failed");
        }
    }
}

struct Batcher {
    cfg: IngestConfig,
    store: Arc<dyn EventStore>,
    analytics: Option<Arc<RwLock<Analytics>>>,
    mark: Option<crate::checkpoint::Mark>,
    dedup: Option<Arc<Window>>,
    shared: Option<Arc<crate::shared_dedup::SharedDedup>>,
    resilient: Option<Arc<adflow_store::resilient::Resilient>>,
    counters: Arc<Counters>,
    stopping: AtomicBool,
    /// Set by `Handle::stop` (see there).
    stop_asked: Arc<AtomicBool>,
    /// A commit gave up on the store during the shutdown: later ones try once only, so
    /// the shutdown does not take a full retry budget per queued batch.
    gave_up: AtomicBool,
    max_batch: Arc<std::sync::atomic::AtomicUsize>,
    /// One permit per commit that may be in flight.
    slots: Arc<Semaphore>,
    in_flight: u32,
}

/// A submission's bookkeeping once its events moved into the batch.
struct Waiter {
    range: std::ops::Range<usize>,
    keys: Vec<u64>,
    claims: crate::shared_dedup::Claims,
    unchecked: Vec<String>,
    outcome: watch::Sender<CommitState>,
    /// Dropped (closed) only after the keys settled or were forgotten.
    _ticket: super::in_flight::Ticket,
    durable: bool,
}

/// What the batcher works with.
pub(super) struct Parts {
    pub cfg: IngestConfig,
    pub store: Arc<dyn EventStore>,
    pub analytics: Option<Arc<RwLock<Analytics>>>,
    /// The store position the analytics are counted through (for checkpoints).
    pub mark: Option<crate::checkpoint::Mark>,
    pub dedup: Option<Arc<Window>>,
    pub shared: Option<Arc<crate::shared_dedup::SharedDedup>>,
    /// The spill wrapper of a remote store, to learn where a commit landed.
    pub resilient: Option<Arc<adflow_store::resilient::Resilient>>,
    pub counters: Arc<Counters>,
    pub max_batch: Arc<std::sync::atomic::AtomicUsize>,
    /// Commits that may be in flight at once (>= 1).
    pub in_flight: u32,
}

pub(super) fn spawn(p: Parts, rx: mpsc::Receiver<Submission>) -> Handle {
    let (stop_tx, stop_rx) = oneshot::channel();
    let stop_asked = Arc::new(AtomicBool::new(false));
    let b = Batcher {
        cfg: p.cfg,
        store: p.store,
        analytics: p.analytics,
        mark: p.mark,
        dedup: p.dedup,
        shared: p.shared,
        resilient: p.resilient,
        counters: p.counters,
        stopping: AtomicBool::new(false),
        stop_asked: stop_asked.clone(),
        gave_up: AtomicBool::new(false),
        max_batch: p.max_batch,
        slots: Arc::new(Semaphore::new(p.in_flight.max(1) as usize)),
        in_flight: p.in_flight.max(1),
    };
    let join = tokio::spawn(Arc::new(b).run(rx, stop_rx));
    Handle { stop_asked, stop: Mutex::new(Some(stop_tx)), join: Mutex::new(Some(join)) }
}

impl Batcher {
    async fn run(self: Arc<Self>, mut rx: mpsc::Receiver<Submission>, mut stop: oneshot::Receiver<()>) {
        loop {
            let first = if self.stopping.load(Ordering::Relaxed) {
                rx.recv().await
            } else {
                tokio::select! {
                    biased;
                    s = rx.recv() => s,
                    _ = &mut stop => {
                        // No new submissions; everything already queued is still written.
                        self.stopping.store(true, Ordering::Relaxed);
                        rx.close();
                        continue;
                    }
                }
            };
            let Some(first) = first else { break };
            let batch = self.gather(first, &mut rx).await;
            let stopping = self.stopping.load(Ordering::Relaxed);
            if self.in_flight == 1 {
                self.commit(batch, stopping).await;
            } else {
                let Ok(slot) = self.slots.clone().acquire_owned().await else { break };
                let me = self.clone();
                tokio::spawn(async move {
                    me.commit(batch, stopping).await;
                    drop(slot);
                });
            }
        }
        // Every commit in flight has finished once all slots are free again.
        let _ = self.slots.acquire_many(self.in_flight).await;
        tracing::debug!("batcher drained and stopped");
    }

    async fn gather(&self, first: Submission, rx: &mut mpsc::Receiver<Submission>) -> Vec<Submission> {
        let delay = Duration::from_millis(self.cfg.max_batch_delay_ms);
        let deadline = Instant::now() + delay;
        let mut n = first.events.len();
        let mut subs = vec![first];
        let max = self.max_batch.load(Ordering::Relaxed);
        while n < max {
            let next = match rx.try_recv() {
                Ok(s) => Some(s),
                Err(TryRecvError::Empty) if !delay.is_zero() && !self.stopping.load(Ordering::Relaxed) => {
                    tokio::time::timeout_at(deadline, rx.recv()).await.ok().flatten()
                }
                Err(_) => None,
            };
            let Some(s) = next else { break };
            n += s.events.len();
            subs.push(s);
        }
        subs
    }

    /// Commits one batch; `stopping` says whether it was gathered during shutdown (it then
    /// gives up on a dead store after twice the retry budget).
    async fn commit(&self, subs: Vec<Submission>, stopping: bool) {
        let total = subs.iter().map(|s| s.events.len()).sum();
        let mut events: Vec<StoredEvent> = Vec::with_capacity(total);
        let mut waiters = Vec::with_capacity(subs.len());
        let mut rooms = Vec::with_capacity(subs.len());
        for s in subs {
            let start = events.len();
            events.extend(s.events);
            waiters.push(Waiter {
                range: start..events.len(),
                keys: s.keys,
                claims: s.claims,
                unchecked: s.unchecked,
                outcome: s.outcome,
                _ticket: s.ticket,
                durable: s.durable,
            });
            rooms.push(s._room);
        }
        let started = Instant::now();
        let backend = self.store.backend();
        let span = if adflow_telemetry::trace::enabled() {
            tracing::info_span!(
                "batch_flush",
                size = events.len(),
                backend,
                duration_ms = tracing::field::Empty,
                result = tracing::field::Empty
            )
        } else {
            tracing::Span::none()
        };
        let mut attempt = 0u32;
        // The attempt at which this commit saw the shutdown begin (a commit already
        // retrying then must give up too, not only the batches gathered after it).
        let mut stopped_at = stopping.then_some(0u32);
        let placement = loop {
            attempt += 1;
            // The shared dedup's claims are settled inside the commit's own transaction
            // (built per attempt: a failed attempt may have dropped waiters and their claims).
            let commit_script = self.shared.as_ref().and_then(|s| {
                let mut claims = crate::shared_dedup::Claims::default();
                waiters.iter().for_each(|w| claims.extend(&w.claims));
                s.commit_script(&claims)
            });
            let append = async {
                match &self.resilient {
                    Some(r) => r.append_placed(&events).instrument(span.clone()).await,
                    None => {
                        self.store.append(&events).instrument(span.clone()).await.map(|()| Placement::Backend)
                    }
                }
            };
            let res = adflow_store::redis_store::COMMIT_SCRIPT.scope(commit_script, append).await;
            let e = match res {
                Ok(p) => break p,
                Err(e) => e,
            };
            self.counters.store_errors.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("processing_errors_total").increment(1);
            span.record("result", "error");
            tracing::warn!(error = %e, attempt, events = events.len(), backend = self.store.backend(), "store append failed");
            if attempt == self.cfg.store_retry_attempts {
                (events, waiters) = self.fail_durable(events, waiters, &e.to_string());
                if events.is_empty() {
                    return;
                }
            }
            if stopped_at.is_none() && self.stop_asked.load(Ordering::Relaxed) {
                stopped_at = Some(attempt);
            }
            let spent = stopped_at.is_some_and(|at| attempt - at >= 2 * self.cfg.store_retry_attempts);
            if spent || (stopped_at.is_some() && self.gave_up.load(Ordering::Relaxed)) {
                self.gave_up.store(true, Ordering::Relaxed);
                self.counters.abandoned.fetch_add(events.len() as u64, Ordering::Relaxed);
                tracing::error!(
                    events = events.len(),
                    "shutting down with a failing store: accepted-mode events were NOT stored"
                );
                return;
            }
            tokio::time::sleep(backoff(&self.cfg, attempt)).await;
        };
        let n = events.len() as u64;
        let took = started.elapsed();
        span.record("duration_ms", took.as_secs_f64() * 1000.0);
        span.record("result", "ok");
        metrics::histogram!("batch_flush_seconds").record(took.as_secs_f64());
        metrics::counter!("batches_processed_total", "backend" => backend).increment(1);
        metrics::counter!("events_processed_total").increment(n);
        tracing::trace!(
            events = n,
            requests = waiters.len(),
            elapsed_us = started.elapsed().as_micros() as u64,
            "batch committed"
        );
        // Settle before counting: a checkpoint's position must never pass ids still
        // pending (see `checkpoint`).
        let keys: Vec<u64> = waiters.iter().flat_map(|w| w.keys.iter().copied()).collect();
        if let Some(d) = &self.dedup {
            d.settle(&keys);
        }
        if let Some(a) = &self.analytics {
            // The settled keys go to the next checkpoint journal record.
            crate::checkpoint::record_commit(a, self.mark.as_ref(), &*self.store, &events, keys, now_ms());
        }
        self.counters.committed.fetch_add(n, Ordering::Relaxed);
        self.counters.batches.fetch_add(1, Ordering::Relaxed);
        if let Some(shared) = &self.shared {
            // A claim is final only once its batch is stored: mark the ids stored (or, for a
            // batch parked in the spill, held by this gateway until the replay) before any
            // client hears "stored".
            let spilled = placement == Placement::Spill;
            let mut claims = crate::shared_dedup::Claims::default();
            waiters.iter().for_each(|w| claims.extend(&w.claims));
            shared.settle_claims(&claims, spilled).await;
            // Ids taken while Redis could not be asked are recorded one by one.
            let unchecked: Vec<&str> =
                waiters.iter().flat_map(|w| &w.unchecked).map(String::as_str).collect();
            shared.settle(&unchecked, spilled).await;
        }
        for w in waiters {
            w.outcome.send_replace(Some(Ok(())));
        }
        drop(rooms);
    }

    /// Fails every durable waiter and keeps only the events acked in accepted mode.
    fn fail_durable(
        &self,
        events: Vec<StoredEvent>,
        waiters: Vec<Waiter>,
        err: &str,
    ) -> (Vec<StoredEvent>, Vec<Waiter>) {
        let mut slots: Vec<Option<StoredEvent>> = events.into_iter().map(Some).collect();
        let (mut kept, mut kept_waiters) = (Vec::new(), Vec::new());
        let err: Arc<str> = Arc::from(err);
        for w in waiters {
            if w.durable {
                // Repeats waiting on this commit fail with it; then the ids are forgotten so
                // the client's retry is taken as new.
                w.outcome.send_replace(Some(Err(err.clone())));
                if let Some(d) = &self.dedup {
                    d.remove_all(&w.keys);
                }
                if let Some(shared) = &self.shared {
                    let (shared, claims) = (shared.clone(), w.claims.clone());
                    tokio::spawn(async move { shared.drop_claims(&claims).await });
                }
                continue;
            }
            let start = kept.len();
            kept.extend(slots[w.range.clone()].iter_mut().filter_map(Option::take));
            kept_waiters.push(Waiter { range: start..kept.len(), ..w });
        }
        if !kept.is_empty() {
            tracing::error!(
                events = kept.len(),
                "store still failing; keeping accepted-mode events and retrying"
            );
        }
        (kept, kept_waiters)
    }
}

/// Exponential backoff with jitter: base * 2^(attempt-1), capped, scaled by 0.5..1.0.
fn backoff(cfg: &IngestConfig, attempt: u32) -> Duration {
    let exp = cfg.store_retry_base_ms.saturating_mul(1 << attempt.saturating_sub(1).min(20));
    let capped = exp.min(cfg.store_retry_max_ms).max(1);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let jitter = 0.5 + (xxhash_rust::xxh3::xxh3_64(&nanos.to_le_bytes()) % 1000) as f64 / 2000.0;
    Duration::from_micros((capped as f64 * 1000.0 * jitter) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let cfg = IngestConfig { store_retry_base_ms: 10, store_retry_max_ms: 100, ..Default::default() };
        let b1 = backoff(&cfg, 1);
        assert!(b1 >= Duration::from_millis(5) && b1 <= Duration::from_millis(10), "{b1:?}");
        let b3 = backoff(&cfg, 3);
        assert!(b3 >= Duration::from_millis(20) && b3 <= Duration::from_millis(40), "{b3:?}");
        assert!(backoff(&cfg, 30) <= Duration::from_millis(100));
    }
}
