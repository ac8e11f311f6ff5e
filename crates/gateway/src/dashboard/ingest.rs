//! The ingest view's numbers: this gateway's own counters, sampled every two seconds and
//! kept for ten minutes, so the page reads one small JSON document per poll however many
//! pages are open (and no Prometheus is needed).
//!
//! Totals come from the pipeline's counters (per gateway). Rejects by reason and the batch
//! commit latency exist only as metrics (`events_rejected_total{reason}`,
//! `batch_flush_seconds`), so they are read from the process's Prometheus registry, the
//! same numbers `/metrics` serves (one registry per process: several gateways in one
//! process, as in tests, add up there).

use super::stopped;
use crate::pipeline::Pipeline;
use adflow_domain::now_ms;
use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// How often a sample is taken.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(2);
/// Samples kept: ten minutes.
const KEEP: usize = 300;

/// Cumulative values at one instant.
#[derive(Clone, Debug, Default)]
struct Raw {
    at_ms: i64,
    received: u64,
    accepted: u64,
    duplicates: u64,
    rejected: u64,
    committed: u64,
    batches: u64,
    store_errors: u64,
    rejected_by_reason: BTreeMap<String, u64>,
    /// `batch_flush_seconds`: (upper bound, cumulative count) per bucket, sum, count.
    flush_buckets: Vec<(f64, u64)>,
    flush_sum: f64,
    flush_count: u64,
}

/// One interval between two samples, as rates.
#[derive(Clone, Debug, Serialize)]
pub struct Point {
    /// End of the interval, Unix ms.
    pub at_ms: i64,
    /// Events per second accepted (new ids).
    pub accepted_per_s: f64,
    /// Events per second refused as duplicates.
    pub duplicates_per_s: f64,
    /// Events per second refused by validation.
    pub rejected_per_s: f64,
    /// Events per second committed by the store.
    pub committed_per_s: f64,
    /// Batches committed in the interval.
    pub batches: u64,
    /// Rejected events in the interval, by reason.
    pub rejected_by_reason: BTreeMap<String, u64>,
    /// Mean batch commit time in the interval, ms (None without commits).
    pub commit_avg_ms: Option<f64>,
    /// 99th percentile batch commit time in the interval, ms: the upper bound of the
    /// histogram bucket it falls in (None without commits).
    pub commit_p99_ms: Option<f64>,
}

/// What `GET /api/ingest` answers.
#[derive(Debug, Serialize)]
pub struct IngestView {
    /// Seconds between points.
    pub interval_seconds: u64,
    /// Oldest first, up to ten minutes.
    pub points: Vec<Point>,
    /// Totals since the gateway started.
    pub totals: BTreeMap<&'static str, u64>,
    /// Rejected events since start, by reason (from the metrics registry).
    pub rejected_by_reason: BTreeMap<String, u64>,
    /// Events waiting for the store now.
    pub queued_events: u64,
}

/// The sampled history.
#[derive(Default)]
pub struct History {
    raw: Mutex<VecDeque<Raw>>,
}

/// `name{label="value",...} number` -> (name, labels, number).
fn parse_line(line: &str) -> Option<(&str, &str, f64)> {
    if line.starts_with('#') {
        return None;
    }
    let (series, value) = line.rsplit_once(' ')?;
    let value = value.parse().ok()?;
    match series.split_once('{') {
        Some((name, labels)) => Some((name, labels.trim_end_matches('}'), value)),
        None => Some((series, "", value)),
    }
}

fn label<'a>(labels: &'a str, key: &str) -> Option<&'a str> {
    labels.split(',').find_map(|kv| kv.strip_prefix(key)?.strip_prefix("=\"")?.strip_suffix('"'))
}

fn sample(pipeline: &Pipeline, metrics: &str) -> Raw {
    let c = pipeline.counters();
    let mut r = Raw {
        at_ms: now_ms(),
        received: c.received.load(Ordering::Relaxed),
        accepted: c.accepted.load(Ordering::Relaxed),
        duplicates: c.duplicates.load(Ordering::Relaxed),
        rejected: c.rejected.load(Ordering::Relaxed),
        committed: c.committed.load(Ordering::Relaxed),
        batches: c.batches.load(Ordering::Relaxed),
        store_errors: c.store_errors.load(Ordering::Relaxed),
        ..Raw::default()
    };
    for (name, labels, v) in metrics.lines().filter_map(parse_line) {
        match name {
            "events_rejected_total" => {
                if let Some(reason) = label(labels, "reason") {
                    r.rejected_by_reason.insert(reason.to_owned(), v as u64);
                }
            }
            "batch_flush_seconds_bucket" => {
                let le = label(labels, "le").and_then(|l| l.parse::<f64>().ok());
                if let Some(le) = le {
                    r.flush_buckets.push((le, v as u64));
                }
            }
            "batch_flush_seconds_sum" => r.flush_sum = v,
            "batch_flush_seconds_count" => r.flush_count = v as u64,
            _ => {}
        }
    }
    r.flush_buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    r
}

/// The interval from `a` to `b` as rates.
fn point(a: &Raw, b: &Raw) -> Point {
    let secs = ((b.at_ms - a.at_ms).max(1) as f64) / 1000.0;
    let per_s = |x: u64, y: u64| y.saturating_sub(x) as f64 / secs;
    let commits = b.flush_count.saturating_sub(a.flush_count);
    let (avg, p99) = if commits == 0 {
        (None, None)
    } else {
        let avg = (b.flush_sum - a.flush_sum).max(0.0) / commits as f64 * 1000.0;
        // The first bucket whose count in the interval reaches 99% of the commits.
        let want = (commits as f64 * 0.99).ceil() as u64;
        let before: BTreeMap<u64, u64> = a.flush_buckets.iter().map(|(le, n)| (le.to_bits(), *n)).collect();
        let p99 = b
            .flush_buckets
            .iter()
            .find(|(le, n)| n.saturating_sub(before.get(&le.to_bits()).copied().unwrap_or(0)) >= want)
            .map(|(le, _)| if le.is_finite() { le * 1000.0 } else { avg });
        (Some(avg), p99)
    };
    let rejected_by_reason = b
        .rejected_by_reason
        .iter()
        .map(|(k, v)| (k.clone(), v.saturating_sub(a.rejected_by_reason.get(k).copied().unwrap_or(0))))
        .collect();
    Point {
        at_ms: b.at_ms,
        accepted_per_s: per_s(a.accepted, b.accepted),
        duplicates_per_s: per_s(a.duplicates, b.duplicates),
        rejected_per_s: per_s(a.rejected, b.rejected),
        committed_per_s: per_s(a.committed, b.committed),
        batches: b.batches.saturating_sub(a.batches),
        rejected_by_reason,
        commit_avg_ms: avg,
        commit_p99_ms: p99,
    }
}

impl History {
    /// Samples `pipeline` every `SAMPLE_EVERY` until `stop` turns true.
    pub async fn run(self: Arc<Self>, pipeline: Arc<Pipeline>, mut stop: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(SAMPLE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stopped(&mut stop) => return,
            }
            self.record(sample(&pipeline, &adflow_telemetry::prometheus().render()));
        }
    }

    fn record(&self, r: Raw) {
        let mut raw = self.raw.lock().unwrap_or_else(|p| p.into_inner());
        if raw.len() > KEEP {
            raw.pop_front();
        }
        raw.push_back(r);
    }

    /// The view, with a fresh sample as its last point.
    pub fn view(&self, pipeline: &Pipeline) -> IngestView {
        let now = sample(pipeline, &adflow_telemetry::prometheus().render());
        let raw = self.raw.lock().unwrap_or_else(|p| p.into_inner());
        let mut points: Vec<Point> = raw.iter().zip(raw.iter().skip(1)).map(|(a, b)| point(a, b)).collect();
        if let Some(last) = raw.back()
            && now.at_ms - last.at_ms >= 500
        {
            points.push(point(last, &now));
        }
        let totals = BTreeMap::from([
            ("received", now.received),
            ("accepted", now.accepted),
            ("duplicates", now.duplicates),
            ("rejected", now.rejected),
            ("committed", now.committed),
            ("batches", now.batches),
            ("store_errors", now.store_errors),
        ]);
        IngestView {
            interval_seconds: SAMPLE_EVERY.as_secs(),
            points,
            totals,
            rejected_by_reason: now.rejected_by_reason,
            queued_events: pipeline.queued() as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_lines_are_read_by_name_and_label() {
        let text = "# TYPE events_rejected_total counter\n\
                    events_rejected_total{reason=\"missing_field\"} 3\n\
                    batch_flush_seconds_bucket{le=\"0.001\"} 2\n\
                    batch_flush_seconds_bucket{le=\"+Inf\"} 4\n\
                    batch_flush_seconds_sum 0.5\n";
        let lines: Vec<_> = text.lines().filter_map(parse_line).collect();
        assert_eq!(lines[0], ("events_rejected_total", "reason=\"missing_field\"", 3.0));
        assert_eq!(label(lines[0].1, "reason"), Some("missing_field"));
        assert_eq!(label(lines[2].1, "le"), Some("+Inf"));
        assert_eq!(lines[3], ("batch_flush_seconds_sum", "", 0.5));
    }

    #[test]
    fn an_interval_turns_into_rates_mean_and_p99_bucket() {
        let a = Raw {
            at_ms: 0,
            accepted: 100,
            flush_buckets: vec![(0.001, 10), (0.01, 10), (f64::INFINITY, 10)],
            flush_sum: 0.005,
            flush_count: 10,
            ..Raw::default()
        };
        let b = Raw {
            at_ms: 2000,
            accepted: 300,
            rejected: 4,
            rejected_by_reason: BTreeMap::from([("malformed".into(), 4)]),
            // 100 commits in the interval: 98 under 1 ms, 2 under 10 ms.
            flush_buckets: vec![(0.001, 108), (0.01, 110), (f64::INFINITY, 110)],
            flush_sum: 0.105,
            flush_count: 110,
            ..Raw::default()
        };
        let p = point(&a, &b);
        assert_eq!(p.accepted_per_s, 100.0);
        assert_eq!(p.rejected_per_s, 2.0);
        assert_eq!(p.rejected_by_reason["malformed"], 4);
        assert!((p.commit_avg_ms.unwrap() - 1.0).abs() < 1e-9);
        assert_eq!(p.commit_p99_ms, Some(10.0));
        assert_eq!(point(&a, &a).commit_avg_ms, None);
    }
}
