//! The worker's Prometheus series, created at start with their help texts so a worker
//! that has not leased anything yet already reports 0 (a dashboard panel says "no data"
//! otherwise). The gateway registers them too: its in-process workers report there.

use metrics::{counter, describe_counter, describe_histogram, histogram};

/// Describes every worker series and creates it at 0 (never resets a live value).
pub fn register() {
    describe_counter!("worker_leases_total", "Leases this worker analysed.");
    describe_counter!("worker_acks_total", "Results this worker acknowledged to the gateway.");
    describe_counter!(
        "worker_refusals_total",
        "Acks the gateway refused (the lease expired or was settled elsewhere)."
    );
    describe_histogram!("worker_analysis_seconds", "Time to analyse one ad.");
    for name in ["worker_leases_total", "worker_acks_total", "worker_refusals_total"] {
        counter!(name).increment(0);
    }
    let _ = histogram!("worker_analysis_seconds");
}
