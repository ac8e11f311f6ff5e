//! The scenarios: `unary` (one event per SendEvent), `batch` (SendEvents of N events)
//! and `stream` (StreamEvents with several batches in flight per stream). Every task
//! runs until the deadline or until the shared event budget (`--count`) is spent, and
//! only calls that start after the warm-up and finish before the deadline are measured.

use crate::events::Generator;
use crate::report::Tally;
use adflow_client::AuthChannel as Channel;
use adflow_proto::v1::event_ingest_client::EventIngestClient;
use adflow_proto::v1::{IngestReply, SendEventRequest, SendEventsRequest};
use futures::StreamExt;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Instant;

/// Settings shared by every task of a run.
pub struct Plan {
    /// Measurement starts here.
    pub measure_from: Instant,
    /// Tasks stop here.
    pub until: Instant,
    /// Remaining events to send when `--count` is used (negative = spent).
    pub budget: Option<AtomicI64>,
    /// Events per call.
    pub batch: usize,
    /// Ack mode to request.
    pub ack_mode: i32,
    /// Batches in flight per stream.
    pub inflight: usize,
    /// Shared rate limiter (events per second).
    pub limiter: Option<DefaultDirectRateLimiter>,
    /// Events answered so far (for the progress bar).
    pub progress: AtomicU64,
}

impl Plan {
    /// A rate limiter allowing `rate` events per second in bursts of one batch.
    pub fn limiter(rate: u32, batch: usize) -> Option<DefaultDirectRateLimiter> {
        let rate = NonZeroU32::new(rate)?;
        let burst = NonZeroU32::new(batch.max(1) as u32)?;
        Some(RateLimiter::direct(Quota::per_second(rate).allow_burst(burst)))
    }

    /// Claims up to `n` events from the budget: how many this call may send (fewer than
    /// `n` for the last call of a `--count` run), 0 when the run is over.
    pub async fn claim(&self, n: usize) -> usize {
        if Instant::now() >= self.until {
            return 0;
        }
        let n = match &self.budget {
            Some(b) => {
                let before = b.fetch_sub(n as i64, Ordering::Relaxed);
                if before <= 0 {
                    return 0;
                }
                n.min(before as usize)
            }
            None => n,
        };
        if let Some(l) = &self.limiter {
            let k = NonZeroU32::new(n as u32).unwrap_or(NonZeroU32::MIN);
            if l.until_n_ready(k).await.is_err() {
                return 0;
            }
        }
        n
    }

    /// Whether a call that ran from `start` to `end` counts.
    pub fn measured(&self, start: Instant, end: Instant) -> bool {
        start >= self.measure_from && end <= self.until
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn record(t: &mut Tally, plan: &Plan, r: &IngestReply, n: usize, start: Instant, end: Instant) {
    plan.progress.fetch_add(n as u64, Ordering::Relaxed);
    if plan.measured(start, end) {
        t.latency_us.record((end - start).as_micros().max(1) as u64).ok();
        t.events += n as u64;
        t.accepted += r.accepted as u64;
        t.duplicates += r.duplicates as u64;
        t.rejected += r.rejected as u64;
        t.code(tonic::Code::Ok);
    }
}

/// One unary or batch task.
pub async fn call_loop(
    mut client: EventIngestClient<Channel>,
    mut g: Generator,
    plan: Arc<Plan>,
    unary: bool,
) -> Tally {
    let mut t = Tally::default();
    let want = if unary { 1 } else { plan.batch };
    loop {
        let n = plan.claim(want).await;
        if n == 0 {
            break;
        }
        let start = Instant::now();
        let res = if unary {
            let req = SendEventRequest { event: Some(g.event(now_ms())), ack_mode: plan.ack_mode };
            client.send_event(req).await
        } else {
            let req =
                SendEventsRequest { events: g.batch(n, now_ms()), ack_mode: plan.ack_mode, sequence: 0 };
            client.send_events(req).await
        };
        let end = Instant::now();
        match res {
            Ok(r) => record(&mut t, &plan, r.get_ref(), n, start, end),
            Err(s) => {
                if plan.measured(start, end) {
                    t.code(s.code());
                }
                if s.code() == tonic::Code::ResourceExhausted {
                    tokio::time::sleep(std::time::Duration::from_millis(2)).await;
                }
            }
        }
    }
    t
}

/// One StreamEvents call with up to `plan.inflight` batches awaiting their ack.
pub async fn stream_loop(mut client: EventIngestClient<Channel>, mut g: Generator, plan: Arc<Plan>) -> Tally {
    let mut t = Tally::default();
    let (tx, rx) = tokio::sync::mpsc::channel::<SendEventsRequest>(plan.inflight);
    let permits = Arc::new(tokio::sync::Semaphore::new(plan.inflight));
    let sent = Arc::new(std::sync::Mutex::new(VecDeque::<(Instant, usize)>::new()));
    let producer = {
        let (plan, permits, sent) = (plan.clone(), permits.clone(), sent.clone());
        tokio::spawn(async move {
            let mut seq = 0u64;
            loop {
                let Ok(p) = permits.clone().acquire_owned().await else {
                    break;
                };
                let n = plan.claim(plan.batch).await;
                if n == 0 {
                    break;
                }
                p.forget();
                let req = SendEventsRequest {
                    events: g.batch(n, now_ms()),
                    ack_mode: plan.ack_mode,
                    sequence: seq,
                };
                seq += 1;
                sent.lock().unwrap_or_else(|e| e.into_inner()).push_back((Instant::now(), n));
                if tx.send(req).await.is_err() {
                    break;
                }
            }
        })
    };
    match client.stream_events(tokio_stream::wrappers::ReceiverStream::new(rx)).await {
        Ok(resp) => {
            let mut replies = resp.into_inner();
            while let Some(item) = replies.next().await {
                let first = sent.lock().unwrap_or_else(|e| e.into_inner()).pop_front();
                let end = Instant::now();
                let (start, n) = first.map(|(at, n)| (Some(at), n)).unwrap_or((None, plan.batch));
                permits.add_permits(1);
                match item {
                    Ok(r) => record(&mut t, &plan, &r, n, start.unwrap_or(end), end),
                    Err(s) => {
                        t.code(s.code());
                        break;
                    }
                }
            }
        }
        Err(s) => t.code(s.code()),
    }
    permits.close();
    producer.abort();
    t
}
