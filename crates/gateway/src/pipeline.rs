//! The ingest pipeline: validate -> dedup -> bounded queue -> batcher -> `EventStore`.
//!
//! Handlers call `Pipeline::enqueue`, which does the cheap per-event work on the RPC's own
//! task (so it spreads over all cores), reserves room for the new events in a semaphore
//! counted in events (the memory bound), and hands them to the single batcher task. The
//! batcher gathers submissions into one commit (group commit: many requests share one
//! fsync), retries failed writes with backoff, updates analytics after each commit, and
//! answers durable waiters. Room is given back only when the events are committed, so
//! the queue plus the batch in flight never exceed `ingest.queue_capacity_events`.
//!
//! "Duplicate" means "stored". Every submission carries an `Outcome` channel that the
//! batcher resolves when the commit holding it ends. The dedup window marks the ids of a
//! submission pending with its ticket until then (`in_flight` maps tickets to channels);
//! a repeat of a pending id (a client's retry racing its first attempt, on any
//! connection) is counted as a duplicate, and when either copy is durable its reply waits
//! for the first copy's commit and shares its outcome: a failed first commit fails the
//! repeat too, so its client retries instead of trusting a copy that was never written.

mod batcher;
mod in_flight;

use crate::config::{AckMode, IngestConfig};
use adflow_domain::analytics::Analytics;
use adflow_domain::dedup::{self, DedupWindow, Seen};
use adflow_domain::validate::Limits;
use adflow_domain::{EventView, StoredEvent, now_ms, pb};
use adflow_store::EventStore;
use bytes::Bytes;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};

/// The end of a commit as seen by waiters: `None` while in flight, then its result.
pub type CommitState = Option<Result<(), Arc<str>>>;
/// Where a submission's commit outcome is published (the batcher holds the sender).
pub type Outcome = watch::Receiver<CommitState>;
/// The local dedup window, with pending ids marked by their submission's ticket
/// (`in_flight`).
pub type Window = DedupWindow<u64>;

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
    /// The store refuses new events for now (e.g. the disk is nearly full).
    #[error("{0}; no event of this request was accepted, retry later")]
    StoreRefused(String),
    /// Another gateway holds the first copy of some events and has not committed it yet.
    #[error("{0} of these events are being committed by another gateway and did not finish in time; retry")]
    FirstCopyPending(usize),
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
    /// Accepted-mode events given up at shutdown because the store kept failing.
    pub abandoned: AtomicU64,
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
    /// The shared (Redis) dedup claims of this request's new ids.
    claims: crate::shared_dedup::Claims,
    /// Ids accepted while the shared dedup could not answer: recorded after the commit.
    unchecked: Vec<String>,
    /// Resolved by the batcher when the commit holding these events ends.
    outcome: watch::Sender<CommitState>,
    /// Marks this submission's pending ids in the dedup window; dropped once they settled.
    ticket: in_flight::Ticket,
    /// Whether a client waits for the commit (durable mode).
    durable: bool,
    _room: Option<OwnedSemaphorePermit>,
}

/// A request taken in; `wait` yields its reply once the ack mode is satisfied.
#[derive(Debug)]
pub struct Pending {
    reply: pb::IngestReply,
    /// Commits to wait for: this request's own, and those of pending first copies of its
    /// duplicates (durable mode only).
    commits: Vec<Outcome>,
}

/// Waits until `rx` is resolved; the commit's error, or shutdown when its batcher is gone.
pub(crate) async fn resolved(mut rx: Outcome) -> Result<(), IngestError> {
    match rx.wait_for(Option::is_some).await {
        Ok(v) => match v.as_ref() {
            Some(Ok(())) => Ok(()),
            Some(Err(e)) => Err(IngestError::CommitFailed(e.to_string())),
            None => Err(IngestError::ShuttingDown),
        },
        Err(_) => Err(IngestError::ShuttingDown),
    }
}

impl Pending {
    /// Waits for the commits (durable mode) and returns the reply.
    pub async fn wait(self) -> Result<pb::IngestReply, IngestError> {
        for rx in self.commits {
            resolved(rx).await?;
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
    dedup: Option<Arc<Window>>,
    in_flight: Arc<in_flight::InFlight>,
    shared: Option<Arc<crate::shared_dedup::SharedDedup>>,
    counters: Arc<Counters>,
    batcher: batcher::Handle,
    max_batch: Arc<std::sync::atomic::AtomicUsize>,
    mark: Option<crate::checkpoint::Mark>,
    store: Arc<dyn EventStore>,
}

impl Pipeline {
    /// Starts the batcher over `store`, feeding `analytics` (when local) after each commit. Ids are
    /// deduplicated in `dedup` (this gateway) or `shared` (Redis, every gateway).
    pub fn start(
        cfg: IngestConfig,
        limits: Limits,
        store: Arc<dyn EventStore>,
        analytics: Option<Arc<RwLock<Analytics>>>,
        dedup: Option<Arc<Window>>,
        shared: Option<Arc<crate::shared_dedup::SharedDedup>>,
        resilient: Option<Arc<adflow_store::resilient::Resilient>>,
    ) -> Self {
        let (tx, rx) = mpsc::channel(cfg.queue_capacity_events);
        let counters = Arc::new(Counters::default());
        let room = Arc::new(Semaphore::new(cfg.queue_capacity_events));
        let max_batch = Arc::new(std::sync::atomic::AtomicUsize::new(cfg.max_batch_events));
        let store_is_file = store.backend() == "file";
        let parts = batcher::Parts {
            cfg: cfg.clone(),
            store: store.clone(),
            mark: analytics.as_ref().map(|_| crate::checkpoint::Mark::default()),
            analytics,
            dedup: dedup.clone(),
            shared: shared.clone(),
            resilient,
            counters: counters.clone(),
            max_batch: max_batch.clone(),
            in_flight: match cfg.commits_in_flight {
                0 if store_is_file => 1,
                0 => 4,
                n => n,
            },
        };
        let mark = parts.mark.clone();
        let batcher = batcher::spawn(parts, rx);
        let in_flight = Arc::default();
        Self { cfg, limits, tx, room, dedup, in_flight, shared, counters, batcher, max_batch, mark, store }
    }

    /// The store position the local analytics are counted through (for checkpoints).
    pub fn mark(&self) -> Option<crate::checkpoint::Mark> {
        self.mark.clone()
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
        if let Some(why) = self.store.refuse_writes() {
            metrics::counter!("events_refused_total", "reason" => "store").increment(received as u64);
            return Err(IngestError::StoreRefused(why));
        }
        let mut room = self.reserve(received, when_full).await?;
        let durable = mode == pb::AckMode::Durable;
        let (outcome, mine) = watch::channel(None);
        let ticket = self.in_flight.open(&mine, durable);
        // Commits of pending first copies this request's duplicates must wait for.
        let mut firsts: Vec<Outcome> = Vec::new();
        // The ticket of the last of them (a resent batch repeats one ticket many times).
        let (own, mut last_first) = (ticket.id(), ticket.id());
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
                // A repeat waits for its first copy's commit when either copy is durable
                // (a failed durable commit drops its events); an accepted-mode first copy
                // is kept and retried until stored, so an accepted-mode repeat of it is
                // answered at once. Repeats inside this request share its own commit;
                // consecutive repeats of one first copy are folded (waiting twice on a
                // resolved commit is O(1), searching the list per event would be
                // quadratic). The lookup runs under the window's lock, while the first
                // copy's ticket is certainly open.
                let first = |&t: &u64| {
                    if t == own || t == last_first {
                        return None;
                    }
                    last_first = t;
                    match self.in_flight.get(t) {
                        Some((rx, first_durable)) => (durable || first_durable).then_some(rx),
                        // Closed with its ids still pending only if the batcher gave up on
                        // them (stopping with a dead store) or died: then, as for a dropped
                        // outcome, the repeat is answered "shutting down, retry".
                        None => Some(watch::channel(None).1),
                    }
                };
                match window.claim_with(k, now, &own, first) {
                    Seen::New => keys.push(k),
                    Seen::Stored => {
                        reply.duplicates += 1;
                        continue;
                    }
                    Seen::Pending(first) => {
                        reply.duplicates += 1;
                        firsts.extend(first);
                        continue;
                    }
                }
            } else if self.shared.is_some() {
                ids.push(view.event_id.to_owned());
            }
            let raw = if view.timestamp_ms == 0 { adflow_proto::raw::with_timestamp(&raw, now) } else { raw };
            fresh.push(StoredEvent { received_at_ms: now, raw });
        }
        let mut unchecked = Vec::new();
        let mut claims = crate::shared_dedup::Claims::default();
        if let Some(shared) = &self.shared {
            match shared.claim_request(&ids, durable).await {
                Ok((new, taken)) => {
                    let mut it = new.iter();
                    fresh.retain(|_| *it.next().unwrap_or(&true));
                    reply.duplicates += new.iter().filter(|n| !**n).count() as u32;
                    claims = taken;
                }
                Err(crate::shared_dedup::AdmitError::StillPending(n)) => {
                    drop(room);
                    return Err(IngestError::FirstCopyPending(n));
                }
                Err(crate::shared_dedup::AdmitError::Redis(e)) => {
                    // Availability first: the events are taken, and their ids are recorded
                    // in Redis after the commit (or when the spill replays them).
                    tracing::warn!(error = %e, "shared dedup unavailable; ids are recorded once Redis answers");
                    metrics::counter!("dedup_unchecked_events_total").increment(ids.len() as u64);
                    unchecked = std::mem::take(&mut ids);
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
            return Ok(Pending { reply, commits: firsts });
        }
        // Give back the room of events that turned out invalid or duplicate.
        if let Some(r) = room.as_mut()
            && let Some(extra) = r.split(received - fresh.len())
        {
            drop(extra);
        }
        let events = fresh;
        let sub = Submission { events, keys, claims, unchecked, outcome, ticket, durable, _room: room };
        if let Err(e) = self.tx.try_send(sub) {
            // Room was reserved, so the channel can only be closed (shutdown), not full.
            let sub = e.into_inner();
            self.forget(&sub.keys);
            if let Some(shared) = &self.shared {
                shared.drop_claims(&sub.claims).await;
            }
            return Err(IngestError::ShuttingDown);
        }
        if durable {
            firsts.insert(0, mine);
        }
        Ok(Pending { reply, commits: firsts })
    }

    async fn reserve(
        &self,
        n: usize,
        when_full: WhenFull,
    ) -> Result<Option<OwnedSemaphorePermit>, IngestError> {
        if n == 0 {
            return Ok(None);
        }
        let n = n.min(self.cfg.queue_capacity_events) as u32;
        let permit = match when_full {
            // Unary and batch callers queue for room in the same FIFO line as streams, for
            // at most `admission_wait_ms`: under overload each caller gets its turn in
            // arrival order instead of streams (which wait) taking all freed room.
            WhenFull::Refuse => match self.room.clone().try_acquire_many_owned(n) {
                Ok(p) => p,
                Err(tokio::sync::TryAcquireError::Closed) => return Err(IngestError::ShuttingDown),
                Err(tokio::sync::TryAcquireError::NoPermits) => {
                    let wait = std::time::Duration::from_millis(self.cfg.admission_wait_ms);
                    match tokio::time::timeout(wait, self.room.clone().acquire_many_owned(n)).await {
                        Ok(Ok(p)) => p,
                        Ok(Err(_)) => return Err(IngestError::ShuttingDown),
                        Err(_) => {
                            return Err(IngestError::Full {
                                queued: self.queued(),
                                capacity: self.cfg.queue_capacity_events,
                            });
                        }
                    }
                }
            },
            WhenFull::Wait => {
                self.room.clone().acquire_many_owned(n).await.map_err(|_| IngestError::ShuttingDown)?
            }
        };
        Ok(Some(permit))
    }

    fn forget(&self, keys: &[u64]) {
        if let Some(w) = &self.dedup {
            w.remove_all(keys);
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
