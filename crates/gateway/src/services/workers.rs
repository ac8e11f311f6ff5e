//! `adflow.v1.WorkerService`: one session per Subscribe stream. The session leases ads
//! only while the worker has credits (so it never holds more leases than it granted),
//! wakes when the queue signals new work, settles acks, nacks and extensions in batches,
//! reports refused ones (FAILED_PRECONDITION for a lease that is no longer the ad's
//! newest), and hands every lease it still holds back to the queue when the stream ends.
//!
//! Nothing a worker sends is answered with more than it sent: a message holds at most
//! `MAX_WORKER_ITEMS` answers (counted by the codec before decoding, checked again here),
//! and its refusals come back as one summary (the first `MAX_REFUSAL_DETAILS`, and the
//! count of all). A message that cannot be received ends the session with its status.

use adflow_domain::analytics::Counters;
use adflow_domain::{now_ms, pb};
use adflow_proto::codec::{MAX_REFUSAL_DETAILS, MAX_WORKER_ITEMS, inbound_error};
use adflow_queue::index::{ALL_PARTITIONS, PartitionMask};
use adflow_queue::{AdQueue, Leased, Leases, Priority, QueueError, Reports};
use adflow_store::counters::CounterSource;
use futures::StreamExt;
use pb::{gateway_message, worker_message};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

const MAX_CREDITS: u32 = 10_000;

/// The connected workers and what they hold.
pub struct WorkerHub {
    /// What sessions do with the queue.
    leases: Arc<dyn Leases>,
    /// The policy (lease duration) sessions announce.
    reports: Arc<dyn Reports>,
    analytics: Arc<dyn CounterSource>,
    sessions: Mutex<HashMap<u64, pb::WorkerInfo>>,
    next: AtomicU64,
    shutdown: watch::Receiver<bool>,
}

impl WorkerHub {
    /// A hub leasing from `queue`; sessions end when `shutdown` turns true.
    pub fn new(
        queue: Arc<dyn AdQueue>,
        analytics: Arc<dyn CounterSource>,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        Self {
            leases: queue.clone(),
            reports: queue,
            analytics,
            sessions: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
            shutdown,
        }
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<u64, pb::WorkerInfo>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Connected workers.
    pub fn count(&self) -> usize {
        self.sessions().len()
    }

    /// A snapshot of every session.
    pub fn list(&self) -> Vec<pb::WorkerInfo> {
        let mut v: Vec<_> = self.sessions().values().cloned().collect();
        v.sort_by(|a, b| a.worker_id.cmp(&b.worker_id));
        v
    }

    fn update(&self, id: u64, f: impl FnOnce(&mut pb::WorkerInfo)) {
        if let Some(w) = self.sessions().get_mut(&id) {
            f(w);
            w.last_seen_ms = now_ms();
        }
    }

    /// The last day's performance of each leased ad, in one counter read.
    async fn performance(&self, leased: &[Leased], now: i64) -> Vec<Option<pb::AdPerformance>> {
        let ids: Vec<&str> = leased.iter().map(|l| l.ad.id.as_str()).collect();
        match self.analytics.recent_for_ads(&ids, now).await {
            Ok(cs) => cs.iter().map(|c| Some(to_performance(c))).collect(),
            Err(e) => {
                tracing::warn!(error = %e, "reading ad performance failed; leases go without it");
                vec![None; leased.len()]
            }
        }
    }

    fn to_lease(
        &self,
        l: Leased,
        performance: Option<pb::AdPerformance>,
        worker: &str,
        now: i64,
    ) -> pb::Lease {
        metrics::histogram!("queue_wait_seconds").record((now - l.ad.enqueued_at_ms).max(0) as f64 / 1000.0);
        if adflow_telemetry::trace::enabled() {
            let span = tracing::info_span!("lease", ad.id = %l.ad.id, lease.id = l.lease_id, attempt = l.attempt, worker = %worker);
            adflow_telemetry::set_parent(&span, &l.traceparent);
        }
        pb::Lease {
            lease_id: l.lease_id,
            attempt: l.attempt,
            deadline_ms: l.deadline_ms,
            ad: Some(l.ad),
            performance,
            traceparent: l.traceparent,
        }
    }
}

fn to_performance(c: &Counters) -> pb::AdPerformance {
    use pb::EventType as T;
    pb::AdPerformance {
        impressions: c.count(T::Impression),
        clicks: c.count(T::Click),
        conversions: c.count(T::Conversion),
        ctr: c.ctr(),
        conversion_rate: c.conversion_rate(),
    }
}

fn gw(kind: gateway_message::Kind) -> pb::GatewayMessage {
    pb::GatewayMessage { kind: Some(kind) }
}

/// The refusals of one worker message: the first `MAX_REFUSAL_DETAILS` described, all
/// counted.
#[derive(Default)]
struct Refusals(pb::LeaseRefusals);

impl Refusals {
    fn push(&mut self, lease_id: u64, e: &QueueError) {
        self.0.total += 1;
        if self.0.refusals.len() >= MAX_REFUSAL_DETAILS {
            return;
        }
        let code = crate::status::queue_code(e);
        self.0.refusals.push(pb::LeaseRefusal { lease_id, code: code as i32, message: e.to_string() });
    }
}

/// INVALID_ARGUMENT when a batch has more answers than a message may hold (the codec
/// refuses such a message before decoding it; this holds whatever codec is used).
fn check_items(what: &str, n: usize) -> Result<(), Status> {
    if n > MAX_WORKER_ITEMS {
        return Err(Status::invalid_argument(format!(
            "WorkerMessage.{what} has {n} items; at most {MAX_WORKER_ITEMS} are allowed per message (split it)"
        )));
    }
    Ok(())
}

fn mask_of(partitions: &[u32]) -> Result<PartitionMask, Status> {
    if partitions.is_empty() {
        return Ok(ALL_PARTITIONS);
    }
    let mut m = 0;
    for &p in partitions {
        if let Err(e) = Priority::new(p) {
            return Err(Status::invalid_argument(format!("hello.partitions: {e}")));
        }
        m |= 1 << (p - 1);
    }
    Ok(m)
}

/// The WorkerService.
pub struct WorkersService {
    hub: Arc<WorkerHub>,
}

impl WorkersService {
    /// A service over `hub`.
    pub fn new(hub: Arc<WorkerHub>) -> Self {
        Self { hub }
    }
}

#[tonic::async_trait]
impl pb::worker_service_server::WorkerService for WorkersService {
    type SubscribeStream = ReceiverStream<Result<pb::GatewayMessage, Status>>;

    #[tracing::instrument(level = "debug", skip_all, name = "Subscribe")]
    async fn subscribe(
        &self,
        req: Request<Streaming<pb::WorkerMessage>>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let peer = req.remote_addr().map(|a| a.to_string()).unwrap_or_default();
        let mut inbound = req.into_inner();
        let first = tokio::time::timeout(Duration::from_secs(10), inbound.next())
            .await
            .map_err(|_| Status::deadline_exceeded("no Hello within 10 s"))?;
        let hello = match first {
            Some(Ok(pb::WorkerMessage { kind: Some(worker_message::Kind::Hello(h)) })) => h,
            Some(Err(s)) => return Err(inbound_error(&s, "message 1 of the stream (the Hello)")),
            _ => return Err(Status::invalid_argument("the first message of Subscribe must be a Hello")),
        };
        if hello.worker_id.trim().is_empty() || hello.worker_id.len() > 128 {
            return Err(Status::invalid_argument("hello.worker_id must be 1..=128 bytes"));
        }
        if !(1..=MAX_CREDITS).contains(&hello.credits) {
            return Err(Status::invalid_argument(format!(
                "hello.credits {} is outside 1..={MAX_CREDITS}",
                hello.credits
            )));
        }
        let mask = mask_of(&hello.partitions)?;
        let id = self.hub.next.fetch_add(1, Ordering::Relaxed);
        self.hub.sessions().insert(
            id,
            pb::WorkerInfo {
                worker_id: hello.worker_id.clone(),
                partitions: hello.partitions.clone(),
                credits: hello.credits,
                in_flight: 0,
                processed: 0,
                last_seen_ms: now_ms(),
                peer,
            },
        );
        let (tx, rx) = mpsc::channel(64);
        let lease_seconds = self.hub.reports.policy().await.map_err(crate::status::from_queue)?.lease_seconds;
        let _ = tx.send(Ok(gw(gateway_message::Kind::Welcome(pb::Welcome { lease_seconds })))).await;
        let session = Session {
            hub: self.hub.clone(),
            id,
            worker_id: hello.worker_id,
            mask,
            credits: hello.credits,
            in_flight: 0,
            tx: tx.clone(),
        };
        crate::panic_layer::spawn_stream("/adflow.v1.WorkerService/Subscribe", tx, session.run(inbound));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

struct Session {
    hub: Arc<WorkerHub>,
    id: u64,
    worker_id: String,
    mask: PartitionMask,
    credits: u32,
    in_flight: u32,
    tx: mpsc::Sender<Result<pb::GatewayMessage, Status>>,
}

impl Session {
    async fn run(mut self, mut inbound: Streaming<pb::WorkerMessage>) {
        let mut work = self.hub.leases.work_signal();
        let mut shutdown = self.hub.shutdown.clone();
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        let mut received = 1u64; // the Hello
        loop {
            if self.credits > 0 && !self.dispatch().await {
                break;
            }
            tokio::select! {
                m = inbound.next() => match m {
                    Some(Ok(msg)) => {
                        received += 1;
                        if !self.handle(msg).await {
                            break;
                        }
                    }
                    Some(Err(s)) => {
                        // Malformed, too many items, too large, or the connection broke:
                        // say which (ending with OK would hide that anything was dropped).
                        tracing::debug!(session = self.id, status = %s, "worker stream ended with an error");
                        let what = format!("message {} of the stream", received + 1);
                        let _ = self.tx.send(Err(inbound_error(&s, &what))).await;
                        break;
                    }
                    None => break,
                },
                r = work.changed(), if self.credits > 0 => {
                    if r.is_err() {
                        break;
                    }
                }
                _ = tick.tick() => {}
                _ = shutdown.changed() => {
                    let _ = self.tx.send(Err(Status::unavailable("the gateway is shutting down; leases go back to the queue"))).await;
                    break;
                }
            }
        }
        let released = self.hub.leases.release_session(self.id, now_ms()).await;
        self.hub.sessions().remove(&self.id);
        tracing::debug!(session = self.id, released, "worker session closed");
    }

    /// Leases what the credits allow; false when the worker is gone.
    async fn dispatch(&mut self) -> bool {
        let now = now_ms();
        let leased = self.hub.leases.lease(self.id, self.mask, self.credits as usize, now).await;
        if leased.is_empty() {
            return true;
        }
        let n = leased.len() as u32;
        self.credits -= n;
        self.in_flight += n;
        let (credits, in_flight) = (self.credits, self.in_flight);
        self.hub.update(self.id, |w| (w.credits, w.in_flight) = (credits, in_flight));
        let perf = self.hub.performance(&leased, now).await;
        let leases = leased
            .into_iter()
            .zip(perf)
            .map(|(l, p)| self.hub.to_lease(l, p, &self.worker_id, now))
            .collect();
        self.tx.send(Ok(gw(gateway_message::Kind::Leases(pb::LeaseBatch { leases })))).await.is_ok()
    }

    /// Applies one worker message; false when the session must end.
    async fn handle(&mut self, msg: pb::WorkerMessage) -> bool {
        let now = now_ms();
        let q = &self.hub.leases;
        let items = match &msg.kind {
            Some(worker_message::Kind::Acks(b)) => check_items("acks", b.acks.len()),
            Some(worker_message::Kind::Nacks(b)) => check_items("nacks", b.nacks.len()),
            Some(worker_message::Kind::Extends(b)) => check_items("extends", b.extends.len()),
            _ => Ok(()),
        };
        if let Err(s) = items {
            let _ = self.tx.send(Err(s)).await;
            return false;
        }
        let mut refusals = Refusals::default();
        let mut settled = 0u32;
        let mut acked = 0u64;
        match msg.kind {
            Some(worker_message::Kind::Acks(b)) => {
                let mut ids = Vec::with_capacity(b.acks.len());
                let mut items = Vec::with_capacity(b.acks.len());
                for a in b.acks {
                    let result = a.result.unwrap_or_default();
                    let outcome = match pb::Verdict::try_from(result.verdict) {
                        Ok(pb::Verdict::Approved) => "approved",
                        Ok(pb::Verdict::NeedsReview) => "needs_review",
                        Ok(pb::Verdict::Rejected) => "rejected",
                        _ => "unspecified",
                    };
                    ids.push((a.lease_id, outcome));
                    items.push((a.lease_id, result));
                }
                let results = q.ack_many(self.id, items, now).await;
                for ((lease_id, outcome), r) in ids.into_iter().zip(results) {
                    match r {
                        Ok(trace) => {
                            settled += 1;
                            acked += 1;
                            metrics::counter!("ads_processed_total", "outcome" => outcome).increment(1);
                            if adflow_telemetry::trace::enabled() {
                                let span = tracing::info_span!("ack", lease.id = lease_id, outcome);
                                adflow_telemetry::set_parent(&span, &trace);
                            }
                        }
                        Err(e) => {
                            // A stale lease (expired, handed to another worker) is no longer held either.
                            settled += u32::from(matches!(e, QueueError::StaleLease(_)));
                            refusals.push(lease_id, &e);
                        }
                    }
                }
            }
            Some(worker_message::Kind::Nacks(b)) => {
                for n in b.nacks {
                    match q.nack(self.id, n.lease_id, n.retry, &n.error, now).await {
                        Ok(()) => {
                            settled += 1;
                            let outcome = if n.retry { "nacked_retry" } else { "nacked_dead_letter" };
                            metrics::counter!("ads_processed_total", "outcome" => outcome).increment(1);
                        }
                        Err(e) => {
                            // A stale lease (expired, handed to another worker) is no longer held either.
                            settled += u32::from(matches!(e, QueueError::StaleLease(_)));
                            refusals.push(n.lease_id, &e);
                        }
                    }
                }
            }
            Some(worker_message::Kind::Extends(b)) => {
                for x in b.extends {
                    if let Err(e) = q.extend(self.id, x.lease_id, x.seconds, now).await {
                        refusals.push(x.lease_id, &e);
                    }
                }
            }
            Some(worker_message::Kind::Credits(c)) => {
                self.credits = self.credits.saturating_add(c.credits).min(MAX_CREDITS);
            }
            Some(worker_message::Kind::Hello(_)) => {
                let _ =
                    self.tx.send(Err(Status::invalid_argument("Hello may only be the first message"))).await;
                return false;
            }
            None => {}
        }
        self.in_flight = self.in_flight.saturating_sub(settled);
        let (credits, in_flight) = (self.credits, self.in_flight);
        self.hub.update(self.id, |w| {
            w.credits = credits;
            w.in_flight = in_flight;
            w.processed += acked;
        });
        if refusals.0.total > 0 {
            let m = gw(gateway_message::Kind::Refusals(refusals.0));
            return self.tx.send(Ok(m)).await.is_ok();
        }
        true
    }
}
