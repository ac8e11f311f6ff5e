//! The ingest pipeline: validate -> dedup -> bounded queue -> batcher -> `EventStore`.
//!
//! Handlers call `Pipeline::enqueue`, which does the cheap per-event work on the RPC's own
//! task (so it spreads over all cores), reserves room for the new events in a semaphore
//! counted in events (the memory bound), and hands them to the single batcher task. The
//! batcher gathers submissions into one commit (group commit: many requests share one
//! fsync), retries failed writes with backoff, updates analytics after each commit, and
//! answers durable waiters. Room is given back only when the events are committed, so
//! the queue plus the batch in flight never exceed `ingest.queue_capacity_events`.

mod batcher;

use crate::config::{AckMode, IngestConfig};
use adflow_domain::analytics::Analytics;
use adflow_domain::dedup::{self, DedupWindow};
use adflow_domain::validate::Limits;
use adflow_domain::{EventView, StoredEvent, now_ms, pb};
use adflow_store::EventStore;
use bytes::Bytes;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

/// Why a request could not be taken in.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The request carries no event.
    #[error("the request has no events")]
    Empty,
    /// The request carries more events than allowed.
    #[error("the request has {got} events, the limit is {limit} per request")]
    TooMany {
        /// Events sent.
        got: usize,
        /// The limit.
        limit: usize,
    },
    /// A single event (SendEvent) failed validation.
    #[error("event rejected: {0}")]
    Invalid(#[from] adflow_domain::validate::Invalid),
    /// The pipeline has no room for the events.
    #[error(
        "ingest pipeline is full ({queued} of {capacity} events waiting for the store); retry with backoff"
    )]
    Full {
        /// Events currently waiting.
        queued: usize,
        /// The capacity.
        capacity: usize,
    },
    /// The gateway is stopping.
    #[error("the gateway is shutting down; resend to another gateway or after restart")]
    ShuttingDown,
    /// The store could not commit the batch holding the events; none of them was stored.
    #[error("the event store could not commit the batch ({0}); none of these events was stored, retry")]
    CommitFailed(String),
}

/// Counters of the pipeline, for logs, tests and (later) metrics.
#[derive(Debug, Default)]
pub struct Counters {
    /// Events received in requests.
    pub received: AtomicU64,
    /// Events accepted (new ids).
    pub accepted: AtomicU64,
    /// Events refused as duplicates.
    pub duplicates: AtomicU64,
    /// Events refused by validation.
    pub rejected: AtomicU64,
    /// Events committed by the store.
    pub committed: AtomicU64,
    /// Commits (batches written).
    pub batches: AtomicU64,
    /// Failed store writes (each attempt).
    pub store_errors: AtomicU64,
}

/// Whether the caller waits for room in the queue or is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WhenFull {
    /// Refuse with `IngestError::Full` (unary and batch RPCs).
    Refuse,
    /// Wait for room (streams, whose backpressure is HTTP/2 flow control).
    Wait,
}

/// One request's events on their way to the batcher.
pub(crate) struct Submission {
    events: Vec<StoredEvent>,
    keys: Vec<u64>,
    /// Event ids claimed in the shared (Redis) dedup set.
    ids: Vec<String>,
    done: Option<oneshot::Sender<Result<(), String>>>,
    _room: Option<OwnedSemaphorePermit>,
}

/// A request taken in; `wait` yields its reply once the ack mode is satisfied.
#[derive(Debug)]
pub struct Pending {
    reply: pb::IngestReply,
    commit: Option<oneshot::Receiver<Result<(), String>>>,
}

impl Pending {
    /// Waits for the commit (durable mode) and returns the reply.
    pub async fn wait(self) -> Result<pb::IngestReply, IngestError> {
        if let Some(rx) = self.commit {
            match rx.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(IngestError::CommitFailed(e)),
                Err(_) => return Err(IngestError::ShuttingDown),
            }
        }
        Ok(self.reply)
    }
}

/// The shared state of the pipeline, cloned into every handler.
pub struct Pipeline {
    cfg: IngestConfig,
    limits: Limits,
    tx: mpsc::Sender<Submission>,
    room: Arc<Semaphore>,
    dedup: Option<Arc<DedupWindow>>,
    shared: Option<Arc<crate::shared_dedup::SharedDedup>>,
    counters: Arc<Counters>,
    batcher: batcher::Handle,
    max_batch: Arc<std::sync::atomic::AtomicUsize>,
}

impl Pipeline {
    /// Starts the batcher over `store`, feeding `analytics` (when local) after each commit. Ids are
    /// deduplicated in `dedup` (this gateway) or `shared` (Redis, every gateway).
    pub fn start(
        cfg: IngestConfig,
        limits: Limits,
        store: Arc<dyn EventStore>,
        analytics: Option<Arc<RwLock<Analytics>>>,
        dedup: Option<Arc<DedupWindow>>,
        shared: Option<Arc<crate::shared_dedup::SharedDedup>>,
    ) -> Self {
        let (tx, rx) = mpsc::channel(cfg.queue_capacity_events);
        let counters = Arc::new(Counters::default());
        let room = Arc::new(Semaphore::new(cfg.queue_capacity_events));
        let max_batch = Arc::new(std::sync::atomic::AtomicUsize::new(cfg.max_batch_events));
        let store_is_file = store.backend() == "file";
        let parts = batcher::Parts {
            cfg: cfg.clone(),
            store,
            analytics,
            dedup: dedup.clone(),
            shared: shared.clone(),
            counters: counters.clone(),
            max_batch: max_batch.clone(),
            in_flight: match cfg.commits_in_flight {
                0 if store_is_file => 1,
                0 => 4,
                n => n,
            },
        };
        let batcher = batcher::spawn(parts, rx);
        Self { cfg, limits, tx, room, dedup, shared, counters, batcher, max_batch }
    }

    /// The pipeline's counters.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Events per commit the batcher aims for now.
    pub fn max_batch(&self) -> usize {
        self.max_batch.load(Ordering::Relaxed)
    }

    /// Changes the batcher's events per commit at run time; returns the previous value.
    pub fn set_max_batch(&self, n: usize) -> usize {
        self.max_batch.swap(n.max(1), Ordering::Relaxed)
    }

    /// Events waiting for the store right now.
    pub fn queued(&self) -> usize {
        self.cfg.queue_capacity_events - self.room.available_permits()
    }

    /// The ack mode a request asked for, or the configured default.
    pub fn ack_mode(&self, requested: pb::AckMode) -> pb::AckMode {
        match requested {
            pb::AckMode::Unspecified => match self.cfg.ack_mode {
                AckMode::Durable => pb::AckMode::Durable,
                AckMode::Accepted => pb::AckMode::Accepted,
            },
            m => m,
        }
    }

    /// Validates, deduplicates and queues `events` (each an encoded `AdEvent`).
    pub async fn enqueue(
        &self,
        events: Vec<Bytes>,
        mode: pb::AckMode,
        sequence: u64,
        when_full: WhenFull,
    ) -> Result<Pending, IngestError> {
        if events.is_empty() {
            return Err(IngestError::Empty);
        }
        if events.len() > self.cfg.max_events_per_request {
            return Err(IngestError::TooMany { got: events.len(), limit: self.cfg.max_events_per_request });
        }
        let now = now_ms();
        let mode = self.ack_mode(mode);
        let mut reply = pb::IngestReply { sequence, ack_mode: mode as i32, ..Default::default() };
        let received = events.len();
        // Room first (for every event that could be new), dedup second: a refused request
        // then leaves no trace in the window. Validation is cheap and runs in the same pass.
        let mut room = self.reserve(received, when_full).await?;
        let mut fresh = Vec::with_capacity(received);
        let mut by_type = [0u64; 9]; // EventType values 0..=7, 8 = not parseable
        let mut keys = Vec::with_capacity(if self.dedup.is_some() { received } else { 0 });
        let mut ids = Vec::with_capacity(if self.shared.is_some() { received } else { 0 });
        for (index, raw) in events.into_iter().enumerate() {
            let view = match EventView::parse(&raw) {
                Ok(v) => v,
                Err(bad) => {
                    by_type[8] += 1;
                    reply.rejections.push(pb::Rejection {
                        index: index as u32,
                        event_id: String::new(),
                        field: "event".into(),
                        reason: pb::RejectReason::Malformed as i32,
                        message: format!("not a valid AdEvent: {bad}"),
                    });
                    continue;
                }
            };
            by_type[(view.r#type.clamp(0, 7)) as usize] += 1;
            if let Err(bad) = self.limits.check(&view, now) {
                reply.rejections.push(pb::Rejection {
                    index: index as u32,
                    event_id: adflow_domain::validate::trunc(view.event_id).to_owned(),
                    field: bad.field.to_owned(),
                    reason: bad.reason as i32,
                    message: bad.message,
                });
                continue;
            }
            if let Some(window) = &self.dedup {
                let k = dedup::key(view.event_id);
                if !window.insert(k, now) {
                    reply.duplicates += 1;
                    continue;
                }
                keys.push(k);
            } else if self.shared.is_some() {
                ids.push(view.event_id.to_owned());
            }
            let raw = if view.timestamp_ms == 0 { adflow_proto::raw::with_timestamp(&raw, now) } else { raw };
            fresh.push(StoredEvent { received_at_ms: now, raw });
        }
        if let Some(shared) = &self.shared {
            match shared.claim(&ids).await {
                Ok(new) => {
                    let mut it = new.iter();
                    fresh.retain(|_| *it.next().unwrap_or(&true));
                    let mut it = new.iter();
                    ids.retain(|_| *it.next().unwrap_or(&true));
                    reply.duplicates += new.iter().filter(|n| !**n).count() as u32;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "shared dedup unavailable; accepting the events unchecked")
                }
            }
        }
        reply.rejected = reply.rejections.len() as u32;
        reply.accepted = fresh.len() as u32;
        let c = &self.counters;
        c.received.fetch_add(received as u64, Ordering::Relaxed);
        c.rejected.fetch_add(reply.rejected as u64, Ordering::Relaxed);
        c.duplicates.fetch_add(reply.duplicates as u64, Ordering::Relaxed);
        c.accepted.fetch_add(fresh.len() as u64, Ordering::Relaxed);
        record_metrics(&by_type, &reply);
        if fresh.is_empty() {
            return Ok(Pending { reply, commit: None });
        }
        // Give back the room of events that turned out invalid or duplicate.
        if let Some(r) = room.as_mut()
            && let Some(extra) = r.split(received - fresh.len())
        {
            drop(extra);
        }
        let events = fresh;
        let (done, commit) = match mode {
            pb::AckMode::Durable => {
                let (tx, rx) = oneshot::channel();
                (Some(tx), Some(rx))
            }
            _ => (None, None),
        };
        let sub = Submission { events, keys, ids, done, _room: room };
        if let Err(e) = self.tx.try_send(sub) {
            // Room was reserved, so the channel can only be closed (shutdown), not full.
            let sub = e.into_inner();
            self.forget(&sub.keys);
            if let Some(shared) = &self.shared {
                shared.forget(&sub.ids).await;
            }
            return Err(IngestError::ShuttingDown);
        }
        Ok(Pending { reply, commit })
    }

    async fn reserve(
        &self,
        n: usize,
        when_full: WhenFull,
    ) -> Result<Option<OwnedSemaphorePermit>, IngestError> {
        if n == 0 {
            return Ok(None);
        }
        let permit = match when_full {
            WhenFull::Refuse => self.room.clone().try_acquire_many_owned(n as u32).map_err(|e| match e {
                tokio::sync::TryAcquireError::Closed => IngestError::ShuttingDown,
                tokio::sync::TryAcquireError::NoPermits => {
                    IngestError::Full { queued: self.queued(), capacity: self.cfg.queue_capacity_events }
                }
            })?,
            WhenFull::Wait => {
                self.room.clone().acquire_many_owned(n as u32).await.map_err(|_| IngestError::ShuttingDown)?
            }
        };
        Ok(Some(permit))
    }

    fn forget(&self, keys: &[u64]) {
        if let Some(w) = &self.dedup {
            keys.iter().for_each(|k| w.remove(*k));
        }
    }

    /// Stops taking events, writes everything already accepted and waits for the batcher.
    pub async fn shutdown(&self) {
        self.room.close();
        self.batcher.stop().await;
    }
}

const TYPE_NAMES: [&str; 9] = [
    "unspecified",
    "impression",
    "click",
    "conversion",
    "install",
    "video_start",
    "video_progress",
    "video_complete",
    "malformed",
];

/// Per-request metrics: one counter update per event type present, not per event.
fn record_metrics(by_type: &[u64; 9], reply: &pb::IngestReply) {
    for (i, &n) in by_type.iter().enumerate() {
        if n > 0 {
            metrics::counter!("events_received_total", "type" => TYPE_NAMES[i]).increment(n);
        }
    }
    if reply.duplicates > 0 {
        metrics::counter!("events_duplicate_total").increment(reply.duplicates as u64);
    }
    for r in &reply.rejections {
        let reason = match pb::RejectReason::try_from(r.reason) {
            Ok(pb::RejectReason::MissingField) => "missing_field",
            Ok(pb::RejectReason::OutOfRange) => "out_of_range",
            Ok(pb::RejectReason::Malformed) => "malformed",
            Ok(pb::RejectReason::BadTimestamp) => "bad_timestamp",
            _ => "other",
        };
        metrics::counter!("events_rejected_total", "reason" => reason).increment(1);
    }
}

#[cfg(test)]
mod tests;
