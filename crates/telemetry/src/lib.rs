//! adflow telemetry, shared by the gateway and the worker: one `init` installs logging
//! (text or JSON) and, when an OTLP endpoint is configured, OpenTelemetry tracing with a
//! W3C trace-context propagator; `prometheus` installs the metrics recorder and
//! `serve_metrics` answers `GET /metrics` on a side port.
//!
//! # Layout
//! - this file: `init` (filter, text/JSON logs, the optional OTLP layer).
//! - `trace`: the OTLP settings and W3C trace-context helpers (`current_traceparent`).
//! - `metrics_http`: the Prometheus recorder and the `/metrics` (and health) side port.

pub mod metrics_http;
pub mod trace;

pub use metrics_http::{HealthText, prometheus, serve_metrics, serve_metrics_and_health};
pub use trace::{TracingConfig, current_traceparent, set_parent};

use opentelemetry::trace::TracerProvider as _;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Errors setting telemetry up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The OTLP exporter could not be built.
    #[error("OTLP exporter for {endpoint}: {message}")]
    Otlp {
        /// The configured endpoint.
        endpoint: String,
        /// Why.
        message: String,
    },
}

/// Flushes and stops tracing on `shutdown`.
#[must_use = "keep the guard and call shutdown() before exit, or spans are lost"]
pub struct Guard {
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Guard {
    /// Exports the spans still buffered and stops the exporter.
    pub fn shutdown(self) {
        if let Some(p) = self.provider
            && let Err(e) = p.shutdown()
        {
            eprintln!("adflow: flushing traces failed: {e}");
        }
    }
}

/// Installs the global subscriber. `json` selects JSON lines; `level` is a tracing
/// filter (`RUST_LOG` wins). Must run inside a tokio runtime when OTLP is on. A second
/// call in the same process (tests) keeps the first subscriber.
pub fn init(json: bool, level: &str, tracing_cfg: &TracingConfig) -> Result<Guard, TelemetryError> {
    use std::io::IsTerminal;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let fmt = if json { fmt.json().flatten_event(true).boxed() } else { fmt.boxed() };
    let (otel, provider) = match trace::provider(tracing_cfg)? {
        Some(p) => {
            let tracer = p.tracer("adflow");
            (Some(tracing_opentelemetry::layer().with_tracer(tracer)), Some(p))
        }
        None => (None, None),
    };
    let _ = tracing_subscriber::registry().with(filter).with(fmt).with(otel).try_init();
    Ok(Guard { provider })
}

use tracing_subscriber::Layer as _;
