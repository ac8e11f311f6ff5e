//! `read` mode: reads the event log back through `EventLog.Read`.
//!
//! - Without `--follow`: reads from `--from` (default the oldest event) to the end of the
//!   log (or `--count` events, or `--duration` seconds) and reports events/s and MB/s.
//! - With `--follow`: tails the log (from the newest commit by default) for `--warmup` +
//!   `--duration` seconds while another process ingests, and reports the lag of every
//!   event measured: the time it reached this reader minus its `received_at_ms` (the
//!   gateway's receive time), so it covers batching, the store commit, the wake-up of
//!   the reader and the trip to the client. Run on the gateway's host (one clock);
//!   `received_at_ms` has 1 ms resolution.
//!
//! Batches are decoded with the events kept as bytes (`raw::log::RawReadBatch`, the same
//! wire format as `ReadBatch`), so the reader's own decoding does not cap the measured
//! throughput; MB/s counts the batches' encoded size.

use adflow_client::AuthChannel;
use adflow_proto::codec::StrictCodec;
use adflow_proto::raw::log::RawReadBatch;
use adflow_proto::v1::{ReadRequest, StartPosition, read_request::Start};
use clap::ValueEnum;
use futures::StreamExt;
use hdrhistogram::Histogram;
use prost::Message;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Where the read starts.
#[derive(Clone, Copy, ValueEnum)]
pub enum From {
    /// The oldest event stored.
    Oldest,
    /// After the newest commit.
    Newest,
}

/// What to read and how long.
pub struct Plan {
    pub from: Option<From>,
    pub follow: bool,
    pub batch: u32,
    pub group: Option<String>,
    pub warmup: Duration,
    pub duration: Duration,
    pub count: Option<u64>,
    /// Events read so far (for the progress bar).
    pub progress: Arc<AtomicU64>,
}

/// The result of a read run.
#[derive(Serialize)]
pub struct ReadReport {
    /// "read" or "read-follow".
    pub mode: String,
    /// Gateway address.
    pub addr: String,
    /// Events per batch asked for.
    pub batch_size: u32,
    /// Measured seconds.
    pub seconds: f64,
    /// Events read in the measured time.
    pub events: u64,
    /// Batches received in the measured time.
    pub batches: u64,
    /// Encoded bytes of those batches.
    pub bytes: u64,
    /// Events per second.
    pub events_per_s: f64,
    /// MB (10^6 bytes) per second.
    pub mb_per_s: f64,
    /// Follow mode: now - received_at_ms of each event, in microseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lag_us: Option<BTreeMap<String, u64>>,
    /// The read ended because it reached the end of the log.
    pub reached_end: bool,
    /// The cursor after the last batch (resume point).
    pub cursor: String,
}

fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// Runs one read over `channel`.
pub async fn run(channel: AuthChannel, addr: &str, p: Plan) -> anyhow::Result<ReadReport> {
    anyhow::ensure!((1..=10_000).contains(&p.batch), "--batch-size must be 1 to 10000 for read");
    let from = p.from.unwrap_or(if p.follow { From::Newest } else { From::Oldest });
    let start = match (&p.group, p.from) {
        (Some(_), None) => None, // the group's committed cursor
        _ => Some(Start::Position(match from {
            From::Oldest => StartPosition::Oldest,
            From::Newest => StartPosition::Newest,
        } as i32)),
    };
    let req = ReadRequest {
        start,
        group: p.group.clone().unwrap_or_default(),
        max_batch_events: p.batch,
        follow: p.follow,
        ..Default::default()
    };
    let mut grpc = tonic::client::Grpc::new(channel).max_decoding_message_size(256 << 20);
    grpc.ready().await?;
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/adflow.v1.EventLog/Read");
    let codec = StrictCodec::<ReadRequest, RawReadBatch>::default();
    let began = Instant::now();
    let mut stream = grpc.server_streaming(tonic::Request::new(req), path, codec).await?.into_inner();
    let measure_from = began + if p.follow { p.warmup } else { Duration::ZERO };
    let until = measure_from + p.duration;
    let mut lag = Histogram::<u64>::new_with_bounds(1, 120_000_000, 3)?;
    let (mut events, mut batches, mut bytes, mut reached_end) = (0u64, 0u64, 0u64, false);
    let mut cursor = String::new();
    let mut first_at = None;
    loop {
        let next = match tokio::time::timeout_at(until.into(), stream.next()).await {
            Ok(n) => n,
            Err(_) => break, // the measured time is over
        };
        let b = match next {
            Some(b) => b?,
            None => {
                reached_end = true;
                break;
            }
        };
        let at = Instant::now();
        p.progress.fetch_add(b.events.len() as u64, Ordering::Relaxed);
        cursor = b.cursor.clone();
        if at < measure_from {
            continue;
        }
        // Throughput is timed from the first batch (the request's set-up is not reading).
        first_at.get_or_insert(at);
        if p.follow {
            let now = now_us();
            for e in &b.events {
                let us = (now - e.received_at_ms * 1000).clamp(1, 120_000_000);
                lag.record(us as u64).ok();
            }
        }
        events += b.events.len() as u64;
        batches += 1;
        bytes += b.encoded_len() as u64;
        if p.count.is_some_and(|n| events >= n) {
            break;
        }
        if !p.follow && b.caught_up {
            reached_end = true;
            break;
        }
    }
    let end = Instant::now();
    let secs = if p.follow {
        (end.min(until) - measure_from.min(end)).as_secs_f64()
    } else {
        (end - first_at.unwrap_or(end)).as_secs_f64()
    }
    .max(1e-9);
    Ok(ReadReport {
        mode: if p.follow { "read-follow".into() } else { "read".into() },
        addr: addr.into(),
        batch_size: p.batch,
        seconds: secs,
        events,
        batches,
        bytes,
        events_per_s: events as f64 / secs,
        mb_per_s: bytes as f64 / secs / 1e6,
        lag_us: p.follow.then(|| {
            let mut m = crate::report::percentiles(&lag);
            m.insert("mean".into(), lag.mean() as u64);
            m
        }),
        reached_end,
        cursor,
    })
}

impl ReadReport {
    /// Prints the human table.
    pub fn print_table(&self) {
        println!();
        println!("adflow-loadtest  mode={}  addr={}  batch={}", self.mode, self.addr, self.batch_size);
        println!("  {:<20} {:.2} s", "measured", self.seconds);
        println!(
            "  {:<20} {:.0} events/s  {:.1} MB/s  ({} events in {} batches, {} bytes)",
            "throughput", self.events_per_s, self.mb_per_s, self.events, self.batches, self.bytes
        );
        if let Some(l) = &self.lag_us {
            let ms = |k: &str| l.get(k).copied().unwrap_or(0) as f64 / 1000.0;
            println!(
                "  {:<20} p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms  max {:.2} ms (now - received_at)",
                "lag",
                ms("p50"),
                ms("p90"),
                ms("p99"),
                ms("p99.9"),
                ms("max")
            );
        }
        println!("  {:<20} {}", "reached the end", if self.reached_end { "yes" } else { "no" });
        println!("  {:<20} {}", "last cursor", self.cursor);
    }
}
