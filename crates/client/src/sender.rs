//! The batching event sender. `send` only puts the event in a bounded buffer; one
//! background task gathers batches (by size or age) and hands each to a delivery task,
//! at most `max_in_flight` at a time. A delivery retries its batch with the same event
//! ids until the gateway answers, so a timeout followed by a retry at worst yields
//! duplicates, which the gateway counts and does not store. RESOURCE_EXHAUSTED and
//! UNAVAILABLE also pause every delivery for a while, which fills the buffer and makes
//! `send` report `Full`: backpressure reaches the game code instead of memory growing.

use crate::{Client, pb};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tonic::Code;

/// Sender settings.
#[derive(Clone, Debug)]
pub struct SenderConfig {
    /// Events per batch (1..=10000; default 500).
    pub max_batch: usize,
    /// Oldest an event may get in the buffer before its batch is sent (default 20 ms).
    pub max_delay: Duration,
    /// Events buffered before `send` answers `Full` (default 100000).
    pub buffer: usize,
    /// Batches being delivered at once (default 4).
    pub max_in_flight: usize,
    /// Ack mode asked for (default durable).
    pub ack_mode: pb::AckMode,
    /// First retry delay, doubled per attempt with jitter (default 50 ms).
    pub retry_base: Duration,
    /// Longest retry delay (default 5 s).
    pub retry_max: Duration,
    /// Pause after RESOURCE_EXHAUSTED or UNAVAILABLE before any batch is sent (default 200 ms).
    pub busy_pause: Duration,
    /// Attempts per batch before its events are given up as undelivered (default 12).
    pub max_attempts: u32,
}

impl Default for SenderConfig {
    fn default() -> Self {
        Self {
            max_batch: 500,
            max_delay: Duration::from_millis(20),
            buffer: 100_000,
            max_in_flight: 4,
            ack_mode: pb::AckMode::Durable,
            retry_base: Duration::from_millis(50),
            retry_max: Duration::from_secs(5),
            busy_pause: Duration::from_millis(200),
            max_attempts: 12,
        }
    }
}

/// Why `send` did not take an event (the event is handed back).
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The buffer is full: the gateway is slow or refusing; retry later or drop.
    #[error("the event buffer is full")]
    Full(Box<pb::AdEvent>),
    /// The sender was closed.
    #[error("the sender is closed")]
    Closed(Box<pb::AdEvent>),
}

/// An event the gateway refused, with its reason; never retried.
#[derive(Clone, Debug)]
pub struct Rejected {
    /// The event.
    pub event: pb::AdEvent,
    /// The offending field.
    pub field: String,
    /// The reason code.
    pub reason: pb::RejectReason,
    /// The gateway's explanation.
    pub message: String,
}

/// Events that could not be delivered, with the last error.
#[derive(Clone, Debug)]
pub struct Undelivered {
    /// The events.
    pub events: Vec<pb::AdEvent>,
    /// The last error seen for them.
    pub error: String,
}

/// What the sender did so far.
#[derive(Debug, Default)]
pub struct Counters {
    /// Events accepted by `send`.
    pub sent: AtomicU64,
    /// Events the gateway confirmed it holds (accepted + duplicates).
    pub acked: AtomicU64,
    /// Of those, events it already had (e.g. after a retry).
    pub duplicates: AtomicU64,
    /// Events it refused (see `take_rejected`).
    pub rejected: AtomicU64,
    /// Event sends repeated after an error.
    pub retried: AtomicU64,
    /// Events given up (see `take_undelivered`).
    pub failed: AtomicU64,
    /// SendEvents calls that got an answer.
    pub batches: AtomicU64,
}

// Events are the hot path: boxing them to shrink the rare Flush variant would allocate per event.
#[allow(clippy::large_enum_variant)]
enum Cmd {
    Event(pb::AdEvent),
    Flush(oneshot::Sender<()>),
}

#[derive(Default)]
struct Outcomes {
    rejected: Mutex<Vec<Rejected>>,
    undelivered: Mutex<Vec<Undelivered>>,
    paused_until_ms: AtomicI64,
}

/// A batching, retrying event sender (see the module docs).
pub struct EventSender {
    tx: mpsc::Sender<Cmd>,
    counters: Arc<Counters>,
    outcomes: Arc<Outcomes>,
    task: tokio::task::JoinHandle<()>,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl EventSender {
    pub(crate) fn start(client: Client, mut cfg: SenderConfig) -> Self {
        cfg.max_batch = cfg.max_batch.clamp(1, 10_000);
        cfg.max_in_flight = cfg.max_in_flight.max(1);
        let (tx, rx) = mpsc::channel(cfg.buffer.max(1));
        let counters = Arc::new(Counters::default());
        let outcomes = Arc::new(Outcomes::default());
        let batcher = Batcher { client, cfg, counters: counters.clone(), outcomes: outcomes.clone() };
        let task = tokio::spawn(batcher.run(rx));
        Self { tx, counters, outcomes, task }
    }

    /// Queues `event` without waiting; a missing `event_id` gets a UUIDv7.
    pub fn send(&self, mut event: pb::AdEvent) -> Result<(), SendError> {
        if event.event_id.is_empty() {
            event.event_id = uuid::Uuid::now_v7().to_string();
        }
        match self.tx.try_send(Cmd::Event(event)) {
            Ok(()) => {
                self.counters.sent.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(mpsc::error::TrySendError::Full(Cmd::Event(e))) => Err(SendError::Full(Box::new(e))),
            Err(mpsc::error::TrySendError::Closed(Cmd::Event(e))) => Err(SendError::Closed(Box::new(e))),
            Err(_) => unreachable!("only events are sent here"),
        }
    }

    /// Like `send`, but waits for room instead of answering `Full`.
    pub async fn send_wait(&self, mut event: pb::AdEvent) -> Result<(), SendError> {
        if event.event_id.is_empty() {
            event.event_id = uuid::Uuid::now_v7().to_string();
        }
        match self.tx.send(Cmd::Event(event)).await {
            Ok(()) => {
                self.counters.sent.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(mpsc::error::SendError(Cmd::Event(e))) => Err(SendError::Closed(Box::new(e))),
            Err(_) => unreachable!("only events are sent here"),
        }
    }

    /// Waits until every event sent before this call is acked, rejected or given up.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Cmd::Flush(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// The counters.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Events the gateway refused since the last call, with reasons.
    pub fn take_rejected(&self) -> Vec<Rejected> {
        std::mem::take(&mut *self.outcomes.rejected.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Events given up since the last call.
    pub fn take_undelivered(&self) -> Vec<Undelivered> {
        std::mem::take(&mut *self.outcomes.undelivered.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Sends everything still buffered, waits for every answer, and returns the events
    /// that could not be delivered (empty when all arrived). Bounded by `max_attempts`.
    pub async fn close(self) -> Vec<Undelivered> {
        drop(self.tx);
        if let Err(e) = self.task.await {
            tracing::error!(error = %e, "adflow event sender task failed");
        }
        std::mem::take(&mut *self.outcomes.undelivered.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

struct Batcher {
    client: Client,
    cfg: SenderConfig,
    counters: Arc<Counters>,
    outcomes: Arc<Outcomes>,
}

impl Batcher {
    async fn run(self, mut rx: mpsc::Receiver<Cmd>) {
        let permits = Arc::new(Semaphore::new(self.cfg.max_in_flight));
        let mut inflight = JoinSet::new();
        let mut batch: Vec<pb::AdEvent> = Vec::new();
        let mut deadline: Option<Instant> = None;
        loop {
            tokio::select! {
                cmd = rx.recv() => match cmd {
                    Some(Cmd::Event(e)) => {
                        batch.push(e);
                        if batch.len() == 1 {
                            deadline = Some(Instant::now() + self.cfg.max_delay);
                        }
                        if batch.len() >= self.cfg.max_batch {
                            self.dispatch(&mut batch, &permits, &mut inflight).await;
                            deadline = None;
                        }
                    }
                    Some(Cmd::Flush(done)) => {
                        self.dispatch(&mut batch, &permits, &mut inflight).await;
                        deadline = None;
                        while inflight.join_next().await.is_some() {}
                        let _ = done.send(());
                    }
                    None => break,
                },
                _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                    self.dispatch(&mut batch, &permits, &mut inflight).await;
                    deadline = None;
                }
                Some(_) = inflight.join_next(), if !inflight.is_empty() => {}
            }
        }
        self.dispatch(&mut batch, &permits, &mut inflight).await;
        while inflight.join_next().await.is_some() {}
    }

    async fn dispatch(
        &self,
        batch: &mut Vec<pb::AdEvent>,
        permits: &Arc<Semaphore>,
        inflight: &mut JoinSet<()>,
    ) {
        if batch.is_empty() {
            return;
        }
        let events = std::mem::take(batch);
        let Ok(permit) = permits.clone().acquire_owned().await else { return };
        let d = Delivery {
            client: self.client.clone(),
            cfg: self.cfg.clone(),
            counters: self.counters.clone(),
            outcomes: self.outcomes.clone(),
        };
        inflight.spawn(async move {
            d.deliver(events).await;
            drop(permit);
        });
    }
}

struct Delivery {
    client: Client,
    cfg: SenderConfig,
    counters: Arc<Counters>,
    outcomes: Arc<Outcomes>,
}

/// The delay the gateway asked for in `grpc-retry-pushback-ms`, if any (capped at 30 s).
pub fn retry_pushback(status: &tonic::Status) -> Option<Duration> {
    let ms: u64 = status.metadata().get("grpc-retry-pushback-ms")?.to_str().ok()?.parse().ok()?;
    Some(Duration::from_millis(ms.min(30_000)))
}

/// Errors worth another attempt with the same ids.
fn retryable(code: Code) -> bool {
    matches!(
        code,
        Code::ResourceExhausted
            | Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Aborted
            | Code::Internal
            | Code::Unknown
            | Code::Cancelled
    )
}

impl Delivery {
    fn backoff(&self, attempt: u32) -> Duration {
        let exp = self.cfg.retry_base.saturating_mul(1 << attempt.saturating_sub(1).min(16));
        let capped = exp.min(self.cfg.retry_max);
        // Jitter in [0.5, 1.0) from the clock's low bits: retries of many clients spread out.
        let jitter = 0.5 + (now_ms().rem_euclid(997) as f64) / 1994.0;
        capped.mul_f64(jitter)
    }

    async fn deliver(self, events: Vec<pb::AdEvent>) {
        let mut ingest = self.client.ingest();
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let paused = self.outcomes.paused_until_ms.load(Ordering::Relaxed) - now_ms();
            if paused > 0 {
                tokio::time::sleep(Duration::from_millis(paused as u64)).await;
            }
            let req = pb::SendEventsRequest {
                events: events.clone(),
                ack_mode: self.cfg.ack_mode as i32,
                sequence: 0,
            };
            let status = match ingest.send_events(req).await {
                Ok(r) => return self.settle(events, r.into_inner()),
                Err(s) => s,
            };
            let code = status.code();
            if !retryable(code) || attempt >= self.cfg.max_attempts {
                tracing::warn!(%status, events = events.len(), attempt, "adflow batch given up");
                self.counters.failed.fetch_add(events.len() as u64, Ordering::Relaxed);
                let error = format!("{code:?}: {}", status.message());
                self.outcomes
                    .undelivered
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(Undelivered { events, error });
                return;
            }
            // The gateway's retry hint (gRPC retry pushback) wins over our own guess.
            let hint = retry_pushback(&status);
            if matches!(code, Code::ResourceExhausted | Code::Unavailable) {
                let pause = hint.unwrap_or(self.cfg.busy_pause);
                let until = now_ms() + pause.as_millis() as i64;
                self.outcomes.paused_until_ms.fetch_max(until, Ordering::Relaxed);
            }
            self.counters.retried.fetch_add(events.len() as u64, Ordering::Relaxed);
            tracing::debug!(%status, attempt, "adflow batch failed; retrying with the same event ids");
            tokio::time::sleep(hint.unwrap_or_else(|| self.backoff(attempt))).await;
        }
    }

    fn settle(&self, mut events: Vec<pb::AdEvent>, reply: pb::IngestReply) {
        let c = &self.counters;
        c.batches.fetch_add(1, Ordering::Relaxed);
        c.acked.fetch_add((reply.accepted + reply.duplicates) as u64, Ordering::Relaxed);
        c.duplicates.fetch_add(reply.duplicates as u64, Ordering::Relaxed);
        c.rejected.fetch_add(reply.rejected as u64, Ordering::Relaxed);
        if reply.rejections.is_empty() {
            return;
        }
        let mut out = self.outcomes.rejected.lock().unwrap_or_else(|p| p.into_inner());
        for r in reply.rejections {
            let Some(slot) = events.get_mut(r.index as usize) else { continue };
            out.push(Rejected {
                event: std::mem::take(slot),
                field: r.field,
                reason: pb::RejectReason::try_from(r.reason).unwrap_or(pb::RejectReason::Unspecified),
                message: r.message,
            });
        }
    }
}
