//! Prometheus metrics: the `metrics` facade records, `metrics-exporter-prometheus`
//! renders the text format, and a small hyper server answers `GET /metrics`.
//! The recorder is process-global, installed once; later calls share its handle.

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;
use tokio::net::TcpListener;
use tokio::sync::watch;

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Latency buckets in seconds (100 us .. 10 s).
const SECONDS: &[f64] =
    &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
/// Queue wait buckets in seconds (1 ms .. 1 h).
const WAIT: &[f64] = &[0.001, 0.01, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0];

/// The process's Prometheus handle (installs the recorder on first use).
pub fn prometheus() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new().set_buckets(SECONDS).and_then(|b| {
                b.set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Suffix("wait_seconds".into()),
                    WAIT,
                )
            });
            match builder.and_then(|b| b.install_recorder()) {
                Ok(h) => h,
                // Another recorder is installed (a test harness): render an empty registry.
                Err(_) => PrometheusBuilder::new().build_recorder().handle(),
            }
        })
        .clone()
}

/// Serves `GET /metrics` on `listener` until `stop` turns true.
pub async fn serve_metrics(listener: TcpListener, handle: PrometheusHandle, stop: watch::Receiver<bool>) {
    serve_metrics_and_health(listener, handle, None, stop).await
}

/// A health report that the process keeps current (one line per component).
pub type HealthText = std::sync::Arc<std::sync::RwLock<String>>;

/// Serves `GET /metrics` and, when `health` is given, `GET /healthz` (the report as text).
pub async fn serve_metrics_and_health(
    listener: TcpListener,
    handle: PrometheusHandle,
    health: Option<HealthText>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let (stream, _) = tokio::select! {
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics listener accept failed");
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let handle = handle.clone();
        let health = health.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                let handle = handle.clone();
                let health = health.clone();
                async move {
                    if req.uri().path() == "/metrics" {
                        Response::builder()
                            .header("content-type", "text/plain; version=0.0.4")
                            .body(Full::new(Bytes::from(handle.render())))
                    } else if let (Some(h), "/healthz") = (&health, req.uri().path()) {
                        let text = h.read().unwrap_or_else(|p| p.into_inner()).clone();
                        Response::builder()
                            .header("content-type", "text/plain; charset=utf-8")
                            .body(Full::new(Bytes::from(text)))
                    } else {
                        Response::builder()
                            .status(StatusCode::NOT_FOUND)
                            .body(Full::new(Bytes::from_static(b"try /metrics\n")))
                    }
                }
            });
            let _ =
                hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
        });
    }
}
