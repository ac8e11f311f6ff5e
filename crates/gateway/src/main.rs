//! `adflow-gateway`: loads the configuration, sizes the runtime to the machine, and runs
//! the gateway until SIGINT or SIGTERM.

use adflow_gateway::config::LogFormat;
use adflow_gateway::{Config, serve};
use anyhow::Context;
use clap::Parser;
use std::path::PathBuf;

mod allocator;

// Events are decoded on one thread and freed on the batcher's: mimalloc handles that
// cross-thread churn far better than glibc malloc (measured in BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The adflow gRPC gateway.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// A TOML file merged over the defaults and configs/default.toml.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Print the effective configuration as TOML, each value with the layer it came from
    /// (default, file, environment variable) and what it overrode, and exit.
    #[arg(long)]
    print_config: bool,
    /// Print the SHA-256 of an API key (for `[[auth.keys]] sha256`) and exit.
    #[arg(long, value_name = "KEY")]
    hash_key: Option<String>,
}

/// SIGTERM or SIGINT. The handlers are installed when this is called, not when it is
/// first polled: a signal that arrives during start-up (store recovery, rebuild) is kept
/// and stops the gateway gracefully once it is up, instead of killing the process.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    async move {
        let wait = |s: std::io::Result<tokio::signal::unix::Signal>, name: &'static str| async move {
            match s {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(e) => {
                    tracing::error!(error = %e, signal = name, "cannot listen for the signal");
                    std::future::pending::<()>().await
                }
            }
        };
        tokio::select! {
            _ = wait(term, "SIGTERM") => {}
            _ = wait(int, "SIGINT") => {}
        }
    }
}

fn main() {
    allocator::tune();
    if let Err(e) = run() {
        eprintln!("adflow-gateway: {}", causes(&e));
        std::process::exit(1);
    }
}

/// An error and its causes on one line, each cause once: many errors already include
/// their source's text in their own message (`create dir X: <os error>`), and anyhow's
/// `{:#}` would print that source again.
fn causes(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let msg = cause.to_string();
        if out.contains(&msg) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&msg);
    }
    out
}

fn run() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(k) = &args.hash_key {
        println!("{}", adflow_gateway::auth::hash_key(k));
        return Ok(());
    }
    if args.print_config {
        match Config::explain(args.config.as_deref()) {
            Ok(text) => print!("{text}"),
            Err(e) => {
                eprintln!("adflow-gateway: {e}");
                std::process::exit(2);
            }
        }
        return Ok(());
    }
    let cfg = match Config::load(args.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("adflow-gateway: {e}");
            std::process::exit(2);
        }
    };
    let threads = match cfg.server.worker_threads {
        0 => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2),
        n => n,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .context("building the tokio runtime")?;
    rt.block_on(async move {
        let guard = adflow_telemetry::init(cfg.log.format == LogFormat::Json, &cfg.log.level, &cfg.tracing)?;
        if !cfg.tracing.otlp_endpoint.is_empty() {
            tracing::info!(endpoint = %cfg.tracing.otlp_endpoint, ratio = cfg.tracing.sampling_ratio, "exporting traces over OTLP");
        }
        let res = run_server(cfg, threads).await;
        guard.shutdown();
        res
    })
}

async fn run_server(cfg: Config, threads: usize) -> anyhow::Result<()> {
    {
        let stop = shutdown_signal();
        let listener = tokio::net::TcpListener::bind(cfg.server.listen)
            .await
            .with_context(|| format!("binding {} (server.listen)", cfg.server.listen))?;
        tracing::info!(worker_threads = threads, "runtime ready");
        serve(listener, cfg, stop).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_cause_is_printed_once() {
        let os = std::io::Error::from_raw_os_error(20);
        #[derive(Debug, thiserror::Error)]
        #[error("create dir afile/events: {0}")]
        struct Quoting(#[source] std::io::Error);
        let e = anyhow::Error::new(Quoting(os)).context("opening the event store");
        let text = causes(&e);
        assert_eq!(text.matches("os error 20").count(), 1, "{text}");
        assert!(text.starts_with("opening the event store: create dir afile/events: "), "{text}");
        let plain = anyhow::anyhow!("inner").context("outer");
        assert_eq!(causes(&plain), "outer: inner");
    }
}
