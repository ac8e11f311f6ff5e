//! `adflow-loadtest`: drives an adflow gateway with realistic ad events and reports
//! throughput, latency percentiles (hdrhistogram) and status codes; `read` reads the
//! event log back (throughput, or follow-mode lag).

mod ads;
mod events;
mod read;
mod report;
mod scenario;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use events::{Generator, Shape};
use indicatif::{ProgressBar, ProgressStyle};
use prost::Message;
use report::{Report, Tally};
use scenario::Plan;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Load generator for the adflow gateway.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// One event per SendEvent call.
    Unary(Common),
    /// SendEvents calls of --batch-size events.
    Batch(Common),
    /// StreamEvents calls (one per --concurrency) with --inflight batches awaiting acks.
    Stream(Common),
    /// SubmitAd calls (or SubmitAds of --batch-size ads when it is above 1).
    Submit(Common),
    /// Submit ads and process them with --workers remote streaming workers run here.
    E2e(E2eArgs),
    /// Read the event log back (EventLog.Read): throughput from the oldest event, or with
    /// --follow the lag of new commits (now - received_at) while another process ingests.
    Read(ReadArgs),
}

#[derive(Args, Clone)]
struct ReadArgs {
    /// Gateway address (host:port).
    #[arg(long, default_value = "127.0.0.1:50051")]
    addr: String,
    /// Events per batch asked for (1..=10000).
    #[arg(long, short = 'b', default_value_t = 10_000)]
    batch_size: u32,
    /// Keep reading new commits and measure their lag, for --warmup + --duration seconds.
    #[arg(long)]
    follow: bool,
    /// Where to start (default: oldest; with --follow, newest; with --group, its cursor).
    #[arg(long, value_enum)]
    from: Option<read::From>,
    /// Resume this consumer group's committed cursor (the read does not commit).
    #[arg(long)]
    group: Option<String>,
    /// Measured seconds (follow), or the longest a read to the end may take.
    #[arg(long, short = 'd', default_value_t = 10.0)]
    duration: f64,
    /// Unmeasured seconds at the start of a follow run.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Stop after this many events.
    #[arg(long)]
    count: Option<u64>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// API key sent as a bearer token (needs the reader or operator role).
    #[arg(long, env = "ADFLOW_API_KEY")]
    api_key: Option<String>,
    /// PEM of the CA that signed the gateway's certificate (switches to TLS).
    #[arg(long)]
    tls_ca: Option<std::path::PathBuf>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

#[derive(Args, Clone)]
struct E2eArgs {
    #[command(flatten)]
    common: Common,
    /// Remote streaming workers.
    #[arg(long, default_value_t = 4)]
    workers: usize,
    /// Credits (concurrency) of each worker.
    #[arg(long, default_value_t = 256)]
    worker_credits: u32,
}

#[derive(Clone, Copy, ValueEnum)]
enum Ack {
    /// The gateway default.
    Default,
    /// Reply after the store commit.
    Durable,
    /// Reply once queued.
    Accepted,
}

#[derive(Args, Clone)]
struct Common {
    /// Gateway address (host:port); several, comma-separated, spread the connections
    /// (and e2e workers) over gateways that share one backend.
    #[arg(long, default_value = "127.0.0.1:50051")]
    addr: String,
    /// Concurrent tasks (streams in stream mode).
    #[arg(long, short = 'c', default_value_t = 64)]
    concurrency: usize,
    /// HTTP/2 connections shared by the tasks.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Measured seconds (after the warm-up).
    #[arg(long, short = 'd', default_value_t = 10.0)]
    duration: f64,
    /// Stop after this many events instead (no warm-up).
    #[arg(long)]
    count: Option<u64>,
    /// Seconds of unmeasured warm-up.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Events per call (batch, stream).
    #[arg(long, short = 'b', default_value_t = 1000)]
    batch_size: usize,
    /// Batches awaiting their ack per stream (stream mode).
    #[arg(long, default_value_t = 8)]
    inflight: usize,
    /// Target events per second over all tasks (0 = as fast as possible).
    #[arg(long, default_value_t = 0)]
    rate: u32,
    /// Distinct ads.
    #[arg(long, default_value_t = 5000)]
    ads: u64,
    /// Zipf exponent of ad popularity.
    #[arg(long, default_value_t = 1.05)]
    zipf: f64,
    /// Distinct campaigns.
    #[arg(long, default_value_t = 50)]
    campaigns: u64,
    /// Share of events resent with a recent event id (0..1), to exercise dedup.
    #[arg(long, default_value_t = 0.0)]
    duplicate_ratio: f64,
    /// Ack mode to ask for.
    #[arg(long, value_enum, default_value = "default")]
    ack: Ack,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// API key sent as a bearer token.
    #[arg(long, env = "ADFLOW_API_KEY")]
    api_key: Option<String>,
    /// PEM of the CA that signed the gateway's certificate (switches to TLS).
    #[arg(long)]
    tls_ca: Option<std::path::PathBuf>,
    /// Send a new W3C traceparent with every call (so each shows up as a trace in Jaeger).
    #[arg(long)]
    trace: bool,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

/// One connection through the client library (what game backends use), without a
/// per-request deadline so latency outliers are measured rather than cut.
/// Connects to the `i`-th gateway of `--addr` (round robin).
async fn connect(c: &Common, i: usize) -> anyhow::Result<adflow_client::Client> {
    connect_to(&c.addr, i, c.api_key.clone(), c.tls_ca.as_deref(), c.trace).await
}

async fn connect_to(
    addrs: &str,
    i: usize,
    api_key: Option<String>,
    tls_ca: Option<&std::path::Path>,
    trace: bool,
) -> anyhow::Result<adflow_client::Client> {
    let addrs: Vec<&str> = addrs.split(',').map(str::trim).filter(|a| !a.is_empty()).collect();
    anyhow::ensure!(!addrs.is_empty(), "--addr names no gateway");
    let addr = addrs[i % addrs.len()];
    let scheme = if tls_ca.is_some() { "https" } else { "http" };
    let mut cfg = adflow_client::ClientConfig::new(format!("{scheme}://{addr}"));
    cfg.request_timeout = None;
    cfg.api_key = api_key;
    cfg.trace_calls = trace;
    if let Some(path) = tls_ca {
        let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        cfg.tls = Some(adflow_client::TlsOptions { ca_pem: Some(pem), domain: None });
    }
    adflow_client::Client::connect(cfg).await.with_context(|| format!("connecting to {addr}"))
}

fn progress(c: &Common, total: Option<u64>) -> ProgressBar {
    if c.quiet || c.json {
        return ProgressBar::hidden();
    }
    let pb = match total {
        Some(n) => ProgressBar::new(n),
        None => ProgressBar::new(((c.warmup + c.duration) * 10.0) as u64),
    };
    let unit = if total.is_some() { "{pos}/{len} events" } else { "{elapsed}" };
    let style = format!("{{spinner}} [{{bar:40}}] {unit}  {{msg}}");
    pb.set_style(ProgressStyle::with_template(&style).expect("valid template").progress_chars("=> "));
    pb
}

async fn run(name: &str, c: Common, e2e: Option<(usize, u32)>) -> anyhow::Result<()> {
    anyhow::ensure!(
        c.concurrency > 0 && c.connections > 0 && c.batch_size > 0,
        "concurrency, connections and batch size must be > 0"
    );
    anyhow::ensure!((0.0..1.0).contains(&c.duplicate_ratio), "--duplicate-ratio must be in [0, 1)");
    let unary = name == "unary";
    let ads_mode = name == "submit" || name == "e2e";
    let batch = if unary { 1 } else { c.batch_size };
    let shape =
        Shape { ads: c.ads, zipf: c.zipf, campaigns: c.campaigns, duplicate_ratio: c.duplicate_ratio };
    let sample = Generator::new(shape.clone(), 0).batch(1000, 1_800_000_000_000);
    let avg_bytes = if ads_mode {
        0.0
    } else {
        sample.iter().map(|e| e.encoded_len() as f64).sum::<f64>() / sample.len() as f64
    };
    let ack_mode = match c.ack {
        Ack::Default => 0,
        Ack::Durable => 1,
        Ack::Accepted => 2,
    };
    let mut channels = Vec::with_capacity(c.connections);
    for i in 0..c.connections {
        channels.push(connect(&c, i).await?);
    }
    let start = Instant::now();
    let (warm, until) = match c.count {
        Some(_) => (Duration::ZERO, start + Duration::from_secs(3600)),
        None => {
            let w = Duration::from_secs_f64(c.warmup);
            (w, start + w + Duration::from_secs_f64(c.duration))
        }
    };
    let plan = Arc::new(Plan {
        measure_from: start + warm,
        until,
        budget: c.count.map(|n| AtomicI64::new(n as i64)),
        batch,
        ack_mode,
        inflight: c.inflight.max(1),
        limiter: Plan::limiter(c.rate, batch),
        progress: AtomicU64::new(0),
    });
    // A new seed per run: ids must not repeat those of an earlier run against the same gateway.
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_nanos() as u64;
    let mut tasks = Vec::with_capacity(c.concurrency);
    let (stop_workers, stop_rx) = tokio::sync::watch::channel(false);
    let mut workers = Vec::new();
    if let Some((n, credits)) = e2e {
        anyhow::ensure!(c.count.is_none(), "e2e runs for --duration; --count is not supported");
        for w in 0..n {
            let ch = connect(&c, w).await?;
            workers.push(tokio::spawn(ads::worker_loop(
                ch,
                format!("loadtest-{w}"),
                credits,
                plan.clone(),
                stop_rx.clone(),
            )));
        }
    }
    for i in 0..c.concurrency {
        if ads_mode {
            let client = channels[i % c.connections].ads();
            tasks.push(tokio::spawn(ads::submit_loop(
                client,
                plan.clone(),
                seed.wrapping_add((i as u64) << 40),
            )));
            continue;
        }
        let client = channels[i % c.connections]
            .ingest()
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20);
        let g = Generator::new(shape.clone(), seed.wrapping_add(i as u64));
        let plan = plan.clone();
        tasks.push(match name {
            "stream" => tokio::spawn(scenario::stream_loop(client, g, plan)),
            _ => tokio::spawn(scenario::call_loop(client, g, plan, unary)),
        });
    }
    let pb = progress(&c, c.count);
    let ticker = {
        let (pb, plan, counted) = (pb.clone(), plan.clone(), c.count.is_some());
        tokio::spawn(async move {
            let (mut last, mut at) = (0u64, Instant::now());
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let now_n = plan.progress.load(Ordering::Relaxed);
                let rate = (now_n - last) as f64 / at.elapsed().as_secs_f64();
                (last, at) = (now_n, Instant::now());
                if counted {
                    pb.set_position(now_n)
                } else {
                    pb.inc(1)
                }
                pb.set_message(format!("{rate:>10.0} events/s  {now_n} answered"));
            }
        })
    };
    let mut total = Tally::default();
    for t in tasks {
        total.merge(t.await.context("load task panicked")?);
    }
    // Workers keep draining what was submitted until the measured window closes.
    if !workers.is_empty() {
        tokio::time::sleep_until(tokio::time::Instant::from_std(plan.until)).await;
    }
    let _ = stop_workers.send(true);
    let mut e2e_report = None;
    if !workers.is_empty() {
        let mut done = 0;
        let mut lease = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 120_000_000, 3)?;
        let mut fin = lease.clone();
        for w in workers {
            let t = w.await.context("worker task panicked")??;
            done += t.done;
            lease.add(t.to_lease)?;
            fin.add(t.to_done)?;
        }
        let secs = c.duration.max(1e-9);
        e2e_report = Some(report::E2e {
            workers: e2e.map(|x| x.0).unwrap_or(0),
            ads_done: done,
            ads_per_s: done as f64 / secs,
            submit_to_lease_us: report::percentiles(&lease),
            submit_to_done_us: report::percentiles(&fin),
        });
    }
    ticker.abort();
    pb.finish_and_clear();
    let measured = match c.count {
        Some(_) => start.elapsed(),
        None => Duration::from_secs_f64(c.duration),
    };
    let ack = match c.ack {
        Ack::Default => "default",
        Ack::Durable => "durable",
        Ack::Accepted => "accepted",
    };
    let mut report =
        Report::new(name, &c.addr, c.concurrency, c.connections, batch, ack, measured, &total, avg_bytes);
    report.e2e = e2e_report;
    if c.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        report.print_table();
    }
    Ok(())
}

async fn read_mode(a: ReadArgs) -> anyhow::Result<()> {
    let client = connect_to(&a.addr, 0, a.api_key.clone(), a.tls_ca.as_deref(), false).await?;
    let progress = Arc::new(AtomicU64::new(0));
    let pb = if a.quiet || a.json {
        ProgressBar::hidden()
    } else {
        let pb = ProgressBar::new_spinner();
        pb.set_style(ProgressStyle::with_template("{spinner} {elapsed}  {msg}").expect("valid template"));
        pb
    };
    let ticker = {
        let (pb, progress) = (pb.clone(), progress.clone());
        tokio::spawn(async move {
            let (mut last, mut at) = (0u64, Instant::now());
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let n = progress.load(Ordering::Relaxed);
                let rate = (n - last) as f64 / at.elapsed().as_secs_f64();
                (last, at) = (n, Instant::now());
                pb.set_message(format!("{rate:>10.0} events/s  {n} read"));
                pb.tick();
            }
        })
    };
    let plan = read::Plan {
        from: a.from,
        follow: a.follow,
        batch: a.batch_size,
        group: a.group.clone(),
        warmup: Duration::from_secs_f64(a.warmup),
        duration: Duration::from_secs_f64(a.duration),
        count: a.count,
        progress,
    };
    let report = read::run(client.channel(), &a.addr, plan).await;
    ticker.abort();
    pb.finish_and_clear();
    let report = report?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        report.print_table();
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async {
        match cli.mode {
            Mode::Unary(c) => run("unary", c, None).await,
            Mode::Batch(c) => run("batch", c, None).await,
            Mode::Stream(c) => run("stream", c, None).await,
            Mode::Submit(c) => run("submit", c, None).await,
            Mode::E2e(a) => run("e2e", a.common, Some((a.workers, a.worker_credits))).await,
            Mode::Read(a) => read_mode(a).await,
        }
    })
}
