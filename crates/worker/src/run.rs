//! The worker loop: connect, say Hello with the credits (= concurrency), analyse every
//! lease as it arrives, ack in batches and grant the credits back. Errors and gateway
//! restarts lead to a reconnect with exponential backoff and jitter. On stop the worker
//! hands back (nacks for retry) every lease it has not analysed, then closes its stream;
//! the gateway also requeues whatever a vanished worker held.

use crate::analysis::{AnalysisConfig, Analyzer};
use adflow_client::{Client, ClientConfig};
use adflow_proto::v1::{self as pb, gateway_message, worker_message};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

/// Worker settings.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// How to reach the gateway (address, TLS, API key); its request timeout is ignored
    /// because Subscribe is a long-lived stream.
    pub gateway: ClientConfig,
    /// Name shown in ListWorkers.
    pub worker_id: String,
    /// Priorities served (empty: all).
    pub partitions: Vec<u32>,
    /// Leases held at once.
    pub concurrency: u32,
    /// Analysis rules.
    pub analysis: AnalysisConfig,
    /// Longest reconnect backoff.
    pub max_backoff: Duration,
}

/// What a worker did.
#[derive(Debug, Default)]
pub struct WorkerStats {
    /// Leases acked.
    pub acked: AtomicU64,
    /// Leases handed back at stop.
    pub handed_back: AtomicU64,
    /// Answers the gateway refused (e.g. on expired leases).
    pub refused: AtomicU64,
    /// Sessions opened.
    pub sessions: AtomicU64,
}

enum End {
    Stopped,
    Closed,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn msg(kind: worker_message::Kind) -> pb::WorkerMessage {
    pb::WorkerMessage { kind: Some(kind) }
}

/// Runs until `stop` turns true, reconnecting as needed.
pub async fn run(cfg: WorkerConfig, mut stop: watch::Receiver<bool>, stats: Arc<WorkerStats>) {
    let mut analyzer = Analyzer::new(cfg.analysis.clone());
    let mut backoff = Duration::from_millis(100);
    while !*stop.borrow() {
        let started = std::time::Instant::now();
        match session(&cfg, &mut analyzer, &mut stop, &stats).await {
            Ok(End::Stopped) => break,
            Ok(End::Closed) => {
                tracing::info!(worker = %cfg.worker_id, "gateway closed the session; reconnecting")
            }
            Err(e) => {
                tracing::warn!(worker = %cfg.worker_id, error = format!("{e:#}"), "worker session failed; reconnecting")
            }
        }
        if started.elapsed() > Duration::from_secs(10) {
            backoff = Duration::from_millis(100);
        }
        let jitter = 0.5 + (now_ms() % 500) as f64 / 1000.0;
        tokio::select! {
            _ = tokio::time::sleep(backoff.mul_f64(jitter)) => {}
            _ = stop.changed() => break,
        }
        backoff = (backoff * 2).min(cfg.max_backoff);
    }
    tracing::debug!(worker = %cfg.worker_id, "worker stopped");
}

async fn session(
    cfg: &WorkerConfig,
    analyzer: &mut Analyzer,
    stop: &mut watch::Receiver<bool>,
    stats: &WorkerStats,
) -> anyhow::Result<End> {
    let mut conn = cfg.gateway.clone();
    conn.request_timeout = None;
    let mut client = Client::connect(conn).await?.workers();
    let (tx, rx) = mpsc::channel(256);
    let hello = pb::Hello {
        worker_id: cfg.worker_id.clone(),
        partitions: cfg.partitions.clone(),
        credits: cfg.concurrency,
    };
    tx.send(msg(worker_message::Kind::Hello(hello))).await?;
    let mut inbound = client.subscribe(ReceiverStream::new(rx)).await?.into_inner();
    stats.sessions.fetch_add(1, Ordering::Relaxed);
    loop {
        let next = tokio::select! {
            biased;
            _ = stop.changed() => return hand_back(&tx, &mut inbound, stats).await,
            m = inbound.message() => m?,
        };
        let Some(m) = next else { return Ok(End::Closed) };
        match m.kind {
            Some(gateway_message::Kind::Leases(batch)) => {
                let n = batch.leases.len();
                let acks = batch
                    .leases
                    .into_iter()
                    .map(|l| {
                        let ad = l.ad.unwrap_or_default();
                        let started = std::time::Instant::now();
                        let span = if adflow_telemetry::trace::enabled() {
                            let s = tracing::info_span!("analyze", ad.id = %ad.id, lease.id = l.lease_id, worker = %cfg.worker_id);
                            adflow_telemetry::set_parent(&s, &l.traceparent);
                            s
                        } else {
                            tracing::Span::none()
                        };
                        let result = span.in_scope(|| analyzer.analyze(&ad, l.performance.as_ref(), &cfg.worker_id, now_ms()));
                        metrics::histogram!("worker_analysis_seconds").record(started.elapsed().as_secs_f64());
                        pb::Ack { lease_id: l.lease_id, result: Some(result) }
                    })
                    .collect();
                tx.send(msg(worker_message::Kind::Acks(pb::AckBatch { acks }))).await?;
                tx.send(msg(worker_message::Kind::Credits(pb::CreditGrant { credits: n as u32 }))).await?;
                stats.acked.fetch_add(n as u64, Ordering::Relaxed);
                metrics::counter!("worker_leases_total").increment(n as u64);
                metrics::counter!("worker_acks_total").increment(n as u64);
            }
            Some(gateway_message::Kind::Refusals(r)) => {
                // `total` counts refusals beyond the described ones (0 from older gateways).
                let n = u64::from(r.total).max(r.refusals.len() as u64);
                stats.refused.fetch_add(n, Ordering::Relaxed);
                metrics::counter!("worker_refusals_total").increment(n);
                for x in r.refusals {
                    tracing::warn!(lease = x.lease_id, code = x.code, message = %x.message, "gateway refused an answer");
                }
            }
            Some(gateway_message::Kind::Welcome(w)) => {
                tracing::info!(worker = %cfg.worker_id, lease_seconds = w.lease_seconds, "subscribed")
            }
            None => {}
        }
    }
}

/// Nacks (for retry) every lease that arrives within a short grace, then closes.
async fn hand_back(
    tx: &mpsc::Sender<pb::WorkerMessage>,
    inbound: &mut tonic::Streaming<pb::GatewayMessage>,
    stats: &WorkerStats,
) -> anyhow::Result<End> {
    // Ask for nothing more, then return what is already on its way.
    while let Ok(Ok(Some(m))) = tokio::time::timeout(Duration::from_millis(100), inbound.message()).await {
        if let Some(gateway_message::Kind::Leases(batch)) = m.kind {
            let nacks: Vec<_> = batch
                .leases
                .iter()
                .map(|l| pb::Nack { lease_id: l.lease_id, retry: true, error: "worker stopping".into() })
                .collect();
            stats.handed_back.fetch_add(nacks.len() as u64, Ordering::Relaxed);
            tx.send(msg(worker_message::Kind::Nacks(pb::NackBatch { nacks }))).await?;
        }
    }
    Ok(End::Stopped)
}
