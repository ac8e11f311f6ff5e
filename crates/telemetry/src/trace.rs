//! OpenTelemetry tracing over OTLP/gRPC, and W3C trace context in and out of strings and
//! gRPC metadata, so a trace crosses client -> gateway -> queue -> worker -> ack.

use crate::TelemetryError;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// `[tracing]`: OTLP export, off unless an endpoint is set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TracingConfig {
    /// OTLP/gRPC collector, e.g. "http://127.0.0.1:4317" (empty: tracing export off).
    pub otlp_endpoint: String,
    /// `service.name` of the spans (default "adflow-gateway").
    pub service_name: String,
    /// Share of new traces sampled, 0..=1 (default 1.0); incoming sampled parents are followed.
    pub sampling_ratio: f64,
}

impl Default for TracingConfig {
    fn default() -> Self {
        Self { otlp_endpoint: String::new(), service_name: "adflow-gateway".into(), sampling_ratio: 1.0 }
    }
}

static ENABLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// True once spans are exported (hot paths create spans only then).
pub fn enabled() -> bool {
    ENABLED.load(std::sync::atomic::Ordering::Relaxed)
}

/// Builds the tracer provider when an endpoint is configured (inside a tokio runtime).
pub fn provider(cfg: &TracingConfig) -> Result<Option<SdkTracerProvider>, TelemetryError> {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    if cfg.otlp_endpoint.is_empty() {
        return Ok(None);
    }
    let err = |e: &dyn std::fmt::Display| TelemetryError::Otlp {
        endpoint: cfg.otlp_endpoint.clone(),
        message: e.to_string(),
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(cfg.otlp_endpoint.clone())
        .build()
        .map_err(|e| err(&e))?;
    let ratio = cfg.sampling_ratio.clamp(0.0, 1.0);
    let resource = opentelemetry_sdk::Resource::builder().with_service_name(cfg.service_name.clone()).build();
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio))))
        .with_resource(resource)
        .build();
    opentelemetry::global::set_tracer_provider(provider.clone());
    ENABLED.store(true, std::sync::atomic::Ordering::Relaxed);
    Ok(Some(provider))
}

struct Map<'a>(&'a mut HashMap<String, String>);

impl Injector for Map<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_owned(), value);
    }
}

struct One<'a>(&'a str);

impl Extractor for One<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        (key == "traceparent").then_some(self.0)
    }
    fn keys(&self) -> Vec<&str> {
        vec!["traceparent"]
    }
}

struct Headers<'a>(&'a http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// The W3C `traceparent` of the current span ("" when there is no sampled context).
pub fn current_traceparent() -> String {
    let cx = tracing::Span::current().context();
    let mut m = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut Map(&mut m));
    m.remove("traceparent").unwrap_or_default()
}

/// Makes `span` a child of the context in `traceparent` (ignored when empty or invalid).
pub fn set_parent(span: &tracing::Span, traceparent: &str) {
    if traceparent.is_empty() {
        return;
    }
    let cx = TraceContextPropagator::new().extract(&One(traceparent));
    let _ = span.set_parent(cx);
}

/// Makes `span` a child of the context in request headers, if any.
pub fn set_parent_from_headers(span: &tracing::Span, headers: &http::HeaderMap) {
    if headers.contains_key("traceparent") {
        let cx = TraceContextPropagator::new().extract(&Headers(headers));
        let _ = span.set_parent(cx);
    }
}

/// Adds the current span's `traceparent` to outgoing gRPC metadata.
pub fn inject_metadata(md: &mut tonic::metadata::MetadataMap) {
    let tp = current_traceparent();
    if let Ok(v) = tp.parse() {
        md.insert("traceparent", v);
    }
}
