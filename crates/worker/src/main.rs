//! `adflow-worker`: a standalone streaming worker that connects to a gateway.

use adflow_worker::analysis::AnalysisConfig;
use adflow_worker::run::{WorkerConfig, WorkerStats, run};
use clap::Parser;
use std::sync::Arc;
use std::time::Duration;

/// Analyses ads leased from an adflow gateway.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// Gateway URL.
    #[arg(long, env = "ADFLOW_WORKER_GATEWAY", default_value = "http://127.0.0.1:50051")]
    gateway: String,
    /// Worker id (default: worker-<pid>).
    #[arg(long, env = "ADFLOW_WORKER_ID")]
    id: Option<String>,
    /// Priorities to serve, comma-separated (default: all).
    #[arg(long, env = "ADFLOW_WORKER_PARTITIONS", value_delimiter = ',')]
    partitions: Vec<u32>,
    /// Leases held at once.
    #[arg(long, env = "ADFLOW_WORKER_CONCURRENCY", default_value_t = 64)]
    concurrency: u32,
    /// API key sent as a bearer token.
    #[arg(long, env = "ADFLOW_WORKER_API_KEY")]
    api_key: Option<String>,
    /// PEM file of the CA that signed the gateway's TLS certificate (implies TLS).
    #[arg(long, env = "ADFLOW_WORKER_TLS_CA")]
    tls_ca: Option<std::path::PathBuf>,
    /// Address of this worker's Prometheus `/metrics` endpoint (e.g. 0.0.0.0:9465).
    #[arg(long, env = "ADFLOW_WORKER_METRICS_LISTEN")]
    metrics_listen: Option<String>,
    /// OTLP/gRPC collector for traces (e.g. http://jaeger:4317); off when unset.
    #[arg(long, env = "ADFLOW_WORKER_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
    /// Log as JSON lines.
    #[arg(long, env = "ADFLOW_WORKER_LOG_JSON")]
    log_json: bool,
    /// Send a W3C traceparent on its Subscribe call (its session shows up as a trace).
    #[arg(long, env = "ADFLOW_WORKER_TRACE_CALLS")]
    trace_calls: bool,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let tracing_cfg = adflow_telemetry::TracingConfig {
        otlp_endpoint: args.otlp_endpoint.clone().unwrap_or_default(),
        service_name: "adflow-worker".into(),
        sampling_ratio: 1.0,
    };
    let guard = match adflow_telemetry::init(args.log_json, "info", &tracing_cfg) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("adflow-worker: {e}");
            std::process::exit(2);
        }
    };
    let (metrics_stop_tx, metrics_stop_rx) = tokio::sync::watch::channel(false);
    if let Some(addr) = &args.metrics_listen {
        let handle = adflow_telemetry::prometheus();
        adflow_worker::metrics::register();
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => {
                tracing::info!(%addr, "worker metrics on /metrics");
                tokio::spawn(adflow_telemetry::serve_metrics(l, handle, metrics_stop_rx));
            }
            Err(e) => {
                eprintln!("adflow-worker: binding {addr} (--metrics-listen): {e}");
                std::process::exit(2);
            }
        }
    }
    let mut gateway = adflow_client::ClientConfig::new(args.gateway);
    gateway.api_key = args.api_key;
    gateway.trace_calls = args.trace_calls;
    if let Some(path) = args.tls_ca {
        match std::fs::read(&path) {
            Ok(pem) => gateway.tls = Some(adflow_client::TlsOptions { ca_pem: Some(pem), domain: None }),
            Err(e) => {
                eprintln!("adflow-worker: reading {}: {e}", path.display());
                std::process::exit(2);
            }
        }
    }
    let cfg = WorkerConfig {
        gateway,
        worker_id: args.id.unwrap_or_else(|| format!("worker-{}", std::process::id())),
        partitions: args.partitions,
        concurrency: args.concurrency.max(1),
        analysis: AnalysisConfig::default(),
        max_backoff: Duration::from_secs(5),
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let term = async {
            if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                s.recv().await;
            }
        };
        tokio::select! { _ = tokio::signal::ctrl_c() => {}, _ = term => {} }
        let _ = stop_tx.send(true);
    });
    let stats = Arc::new(WorkerStats::default());
    run(cfg, stop_rx, stats.clone()).await;
    tracing::info!(acked = stats.acked.load(std::sync::atomic::Ordering::Relaxed), "worker exited");
    let _ = metrics_stop_tx.send(true);
    guard.shutdown();
}
