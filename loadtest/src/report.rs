//! Results of a run: per-task tallies merged into one report, printed as a table for
//! people or as JSON for scripts.

use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// What one task measured.
pub struct Tally {
    /// Latency per RPC (unary, batch) or per batch ack (stream), in microseconds.
    pub latency_us: Histogram<u64>,
    /// Events in requests that completed inside the measured window.
    pub events: u64,
    /// Events the gateway accepted.
    pub accepted: u64,
    /// Events the gateway reported as duplicates.
    pub duplicates: u64,
    /// Events the gateway rejected.
    pub rejected: u64,
    /// Completed RPCs (or stream batches) by gRPC status code name.
    pub codes: BTreeMap<String, u64>,
}

impl Default for Tally {
    fn default() -> Self {
        Self {
            latency_us: Histogram::new_with_bounds(1, 120_000_000, 3).expect("histogram bounds"),
            events: 0,
            accepted: 0,
            duplicates: 0,
            rejected: 0,
            codes: BTreeMap::new(),
        }
    }
}

impl Tally {
    /// Adds `other` into `self`.
    pub fn merge(&mut self, other: Tally) {
        self.latency_us.add(other.latency_us).expect("same histogram bounds");
        self.events += other.events;
        self.accepted += other.accepted;
        self.duplicates += other.duplicates;
        self.rejected += other.rejected;
        for (k, v) in other.codes {
            *self.codes.entry(k).or_default() += v;
        }
    }

    /// Counts one completed call with status `code`.
    pub fn code(&mut self, code: tonic::Code) {
        *self.codes.entry(format!("{code:?}")).or_default() += 1;
    }
}

/// The final report.
#[derive(Serialize)]
pub struct Report {
    /// Scenario name.
    pub mode: String,
    /// Gateway address.
    pub addr: String,
    /// Concurrent tasks (streams in stream mode).
    pub concurrency: usize,
    /// HTTP/2 connections.
    pub connections: usize,
    /// Events per RPC.
    pub batch_size: usize,
    /// Ack mode asked for.
    pub ack_mode: String,
    /// Measured seconds.
    pub seconds: f64,
    /// Events sent in measured, completed calls.
    pub events: u64,
    /// Events accepted.
    pub accepted: u64,
    /// Events reported as duplicates.
    pub duplicates: u64,
    /// Events rejected.
    pub rejected: u64,
    /// Accepted + duplicate + rejected events per second (events the gateway answered for).
    pub events_per_s: f64,
    /// Calls per second.
    pub calls_per_s: f64,
    /// Latency percentiles in microseconds.
    pub latency_us: BTreeMap<String, u64>,
    /// Completed calls by status code.
    pub status_codes: BTreeMap<String, u64>,
    /// Average encoded event size in bytes.
    pub avg_event_bytes: f64,
    /// End-to-end results (e2e mode).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub e2e: Option<E2e>,
}

/// End-to-end results: ads processed by the workers and their latencies.
#[derive(Serialize)]
pub struct E2e {
    /// Remote workers.
    pub workers: usize,
    /// Ads acked inside the measured window.
    pub ads_done: u64,
    /// ads_done per second.
    pub ads_per_s: f64,
    /// Submit to lease, us.
    pub submit_to_lease_us: BTreeMap<String, u64>,
    /// Submit to ack, us.
    pub submit_to_done_us: BTreeMap<String, u64>,
}

/// Percentiles of a histogram (p50, p90, p99, p99.9, max).
pub fn percentiles(h: &Histogram<u64>) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for (name, q) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p99.9", 0.999)] {
        m.insert(name.to_string(), h.value_at_quantile(q));
    }
    m.insert("max".into(), h.max());
    m
}

impl Report {
    /// Builds the report from the merged tally.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        mode: &str,
        addr: &str,
        concurrency: usize,
        connections: usize,
        batch_size: usize,
        ack_mode: &str,
        elapsed: Duration,
        t: &Tally,
        avg_event_bytes: f64,
    ) -> Self {
        let secs = elapsed.as_secs_f64().max(1e-9);
        let h = &t.latency_us;
        let mut latency_us = percentiles(h);
        latency_us.insert("mean".into(), h.mean() as u64);
        Self {
            mode: mode.into(),
            addr: addr.into(),
            concurrency,
            connections,
            batch_size,
            ack_mode: ack_mode.into(),
            seconds: secs,
            events: t.events,
            accepted: t.accepted,
            duplicates: t.duplicates,
            rejected: t.rejected,
            events_per_s: (t.accepted + t.duplicates + t.rejected) as f64 / secs,
            calls_per_s: h.len() as f64 / secs,
            latency_us,
            status_codes: t.codes.clone(),
            avg_event_bytes,
            e2e: None,
        }
    }

    /// Prints the human table.
    pub fn print_table(&self) {
        let ms = |k: &str| self.latency_us.get(k).copied().unwrap_or(0) as f64 / 1000.0;
        let per = if self.mode == "stream" { "per batch ack" } else { "per RPC" };
        println!();
        println!(
            "adflow-loadtest  mode={}  addr={}  concurrency={}  connections={}  batch={}  ack={}",
            self.mode, self.addr, self.concurrency, self.connections, self.batch_size, self.ack_mode
        );
        println!("  {:<20} {:.2} s", "measured", self.seconds);
        println!(
            "  {:<20} {:.0} events/s  ({:.0} calls/s)",
            "throughput", self.events_per_s, self.calls_per_s
        );
        println!(
            "  {:<20} p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms  max {:.2} ms ({per})",
            "latency",
            ms("p50"),
            ms("p90"),
            ms("p99"),
            ms("p99.9"),
            ms("max")
        );
        println!(
            "  {:<20} {} sent, {} accepted, {} duplicate, {} rejected",
            "events", self.events, self.accepted, self.duplicates, self.rejected
        );
        let codes: Vec<_> = self.status_codes.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!("  {:<20} {}", "status codes", codes.join("  "));
        if self.avg_event_bytes > 0.0 {
            println!("  {:<20} {:.1} bytes", "avg event size", self.avg_event_bytes);
        }
        if let Some(e) = &self.e2e {
            let ms = |m: &BTreeMap<String, u64>, k: &str| m.get(k).copied().unwrap_or(0) as f64 / 1000.0;
            println!(
                "  {:<20} {} ads acked by {} workers: {:.0} ads/s",
                "end to end", e.ads_done, e.workers, e.ads_per_s
            );
            for (name, m) in
                [("submit->lease", &e.submit_to_lease_us), ("submit->done", &e.submit_to_done_us)]
            {
                println!(
                    "  {:<20} p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms  max {:.2} ms",
                    name,
                    ms(m, "p50"),
                    ms(m, "p90"),
                    ms(m, "p99"),
                    ms(m, "p99.9"),
                    ms(m, "max")
                );
            }
        }
    }
}
