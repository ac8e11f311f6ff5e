//! The gateway's Prometheus metrics: their descriptions, and a sampler that refreshes
//! the gauges (queue sizes, dead letters, workers, backend health) once a second.
//! Counters and histograms are recorded where things happen (pipeline, batcher, worker
//! sessions, RPC layer); the names are the ones operators know from the seed systems.
//!
//! Every documented series exists from the start, at 0: a series that appears only on
//! first use leaves its dashboard panel saying "no data" on a healthy gateway, and makes
//! `rate()` and `increase()` miss the first increment. Labelled series are registered
//! for every label value known up front (event types, reject reasons, ad outcomes, auth
//! failure reasons, the store's backend).

use crate::services::workers::WorkerHub;
use adflow_domain::now_ms;
use adflow_domain::pb;
use adflow_queue::Reports;
use adflow_store::EventStore;
use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Registers help texts for every metric.
pub fn describe() {
    describe_counter!("events_received_total", "Ad events received in requests, by event type.");
    describe_counter!("events_processed_total", "Ad events committed by the event store.");
    describe_counter!("events_duplicate_total", "Ad events refused as duplicates of an accepted event id.");
    describe_counter!("events_rejected_total", "Ad events refused by validation, by reason.");
    describe_counter!("batches_processed_total", "Batches committed by the event store, by backend.");
    describe_counter!("processing_errors_total", "Failed event store writes (each attempt).");
    describe_histogram!("batch_flush_seconds", "Time to commit one batch of events.");
    describe_histogram!(
        "rpc_duration_seconds",
        "RPC latency until the response starts, by method and status code."
    );
    describe_gauge!("queue_size", "Queued ads, by priority.");
    describe_histogram!("queue_wait_seconds", "Time ads waited in the queue before their lease.");
    describe_gauge!("queue_oldest_wait_seconds", "How long the oldest queued ad has waited.");
    describe_counter!("ads_processed_total", "Ads settled by workers, by outcome.");
    describe_counter!("leases_expired_total", "Leases that expired (redelivered or dead-lettered).");
    describe_gauge!("dead_letters", "Ads in the dead-letter list.");
    describe_gauge!("workers_connected", "Workers with an open Subscribe stream.");
    describe_gauge!(
        "spill_buffer_events",
        "Events held in the local spill buffer (the file backend writes directly and never spills)."
    );
    describe_counter!(
        "spilled_events_total",
        "Events written to the local spill buffer while the backend was down."
    );
    describe_counter!(
        "replayed_events_total",
        "Spilled events replayed into the backend after it came back."
    );
    describe_gauge!("backend_up", "1 when the event store backend is healthy, by backend.");
    describe_counter!(
        "auth_failures_total",
        "Requests refused by access control, by reason (missing_key, unknown_key, wrong_role, throttled)."
    );
    describe_counter!("rpc_panics_total", "RPC handlers that panicked (answered INTERNAL; a bug).");
    describe_counter!(
        "events_refused_total",
        "Ad events refused because the store refuses writes (e.g. disk nearly full), by reason."
    );
    describe_histogram!("checkpoint_duration_seconds", "Time to write one checkpoint.");
    describe_gauge!("checkpoint_bytes", "Size of the last checkpoint written.");
    describe_gauge!("checkpoint_last_success_timestamp_seconds", "When the last checkpoint was written.");
    describe_counter!("checkpoint_failures_total", "Checkpoints that could not be written or loaded.");
    describe_gauge!("store_bytes", "Bytes of event segments on disk (file backend).");
    describe_gauge!("store_segments", "Event segments on disk (file backend).");
    describe_gauge!("store_oldest_record_age_seconds", "Age of the oldest stored event (file backend).");
    describe_counter!("store_segments_removed_total", "Segments removed by retention (file backend).");
    describe_gauge!("store_disk_free_bytes", "Free bytes on the events filesystem (file backend).");
    describe_counter!("eventlog_read_events_total", "Events sent to EventLog readers.");
    describe_gauge!("eventlog_readers", "Open EventLog.Read streams.");
    describe_histogram!(
        "eventlog_follow_delivery_seconds",
        "Follow mode: from the commit that woke a reader to its batch handed to the transport."
    );
    describe_counter!(
        "eventlog_group_lost_events_total",
        "Events removed by the size limit before a consumer group read them, by group."
    );
    register();
    adflow_worker::metrics::register();
}

/// The `snake_case` label of a protobuf enum value name without its prefix.
fn label(name: &str, prefix: &str) -> String {
    name.trim_start_matches(prefix).to_ascii_lowercase()
}

/// Creates every documented series at 0 (an increment of 0 never resets a live value).
fn register() {
    for name in [
        "events_processed_total",
        "events_duplicate_total",
        "processing_errors_total",
        "leases_expired_total",
        "spilled_events_total",
        "replayed_events_total",
        "rpc_panics_total",
        "checkpoint_failures_total",
        "store_segments_removed_total",
        "eventlog_read_events_total",
    ] {
        counter!(name).increment(0);
    }
    for t in (1..).map_while(|i| pb::EventType::try_from(i).ok()) {
        counter!("events_received_total", "type" => label(t.as_str_name(), "EVENT_TYPE_")).increment(0);
    }
    for r in (1..).map_while(|i| pb::RejectReason::try_from(i).ok()) {
        counter!("events_rejected_total", "reason" => label(r.as_str_name(), "REJECT_REASON_")).increment(0);
    }
    for v in (1..).map_while(|i| pb::Verdict::try_from(i).ok()) {
        counter!("ads_processed_total", "outcome" => label(v.as_str_name(), "VERDICT_")).increment(0);
    }
    for outcome in ["nacked_retry", "nacked_dead_letter"] {
        counter!("ads_processed_total", "outcome" => outcome).increment(0);
    }
    for reason in crate::auth::FAILURE_REASONS {
        counter!("auth_failures_total", "reason" => reason).increment(0);
    }
    counter!("events_refused_total", "reason" => "store").increment(0);
    for name in [
        "dead_letters",
        "workers_connected",
        "queue_oldest_wait_seconds",
        "spill_buffer_events",
        "eventlog_readers",
    ] {
        gauge!(name).increment(0.0);
    }
    for p in 1..=5u32 {
        gauge!("queue_size", "priority" => p.to_string()).increment(0.0);
    }
    for name in ["batch_flush_seconds", "queue_wait_seconds", "eventlog_follow_delivery_seconds"] {
        let _ = metrics::histogram!(name);
    }
}

/// Refreshes the gauges every second until `stop` turns true.
pub async fn sample(
    queue: Arc<dyn Reports>,
    hub: Arc<WorkerHub>,
    store: Arc<dyn EventStore>,
    resilient: Option<Arc<adflow_store::resilient::Resilient>>,
    mut stop: watch::Receiver<bool>,
) {
    counter!("batches_processed_total", "backend" => store.backend()).increment(0);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        if let Ok(s) = queue.stats(now_ms()).await {
            for p in &s.partitions {
                gauge!("queue_size", "priority" => p.priority.to_string()).set(p.queued as f64);
            }
            gauge!("dead_letters").set(s.dead_letters as f64);
            gauge!("queue_oldest_wait_seconds").set(s.oldest_wait_ms as f64 / 1000.0);
        }
        gauge!("workers_connected").set(hub.count() as f64);
        let h = store.health().await;
        let up = if h.ok && !h.degraded { 1.0 } else { 0.0 };
        gauge!("backend_up", "backend" => store.backend()).set(up);
        gauge!("spill_buffer_events").set(resilient.as_ref().map_or(0, |r| r.spill_pending()) as f64);
        if let Some(r) = &resilient {
            counter!("spilled_events_total").absolute(r.spilled());
            counter!("replayed_events_total").absolute(r.replayed());
        }
    }
}
