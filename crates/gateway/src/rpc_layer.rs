//! A tower layer around every RPC: a span named after the method (a child of the
//! caller's W3C `traceparent`, with the peer and the gRPC status code) when tracing is
//! on, and the `rpc_duration_seconds{method,code}` histogram always. The status is read
//! from the response headers: errors returned by a handler are "trailers-only" and carry
//! it there; a response that starts normally counts as OK (stream errors that come later
//! in trailers are not seen here).
//!
//! The `method` label is a method this gateway serves, or `unknown` for any other path:
//! the layer runs before authentication, and labelling by the raw path let anyone
//! without a key create series at will (20 invented paths made 380 series). The known
//! methods are read once from the descriptor sets that reflection serves.

use futures::future::BoxFuture;
use std::collections::HashSet;
use std::sync::OnceLock;
use std::task::{Context, Poll};
use std::time::Instant;
use tower::{Layer, Service};
use tracing::Instrument;

/// The `method` label of paths this gateway does not serve.
pub const UNKNOWN_METHOD: &str = "unknown";

/// Just enough of `google.protobuf.FileDescriptorSet` to list services and methods
/// (prost skips the other fields).
mod descriptor {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct FileSet {
        #[prost(message, repeated, tag = "1")]
        pub file: Vec<File>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct File {
        #[prost(string, optional, tag = "2")]
        pub package: Option<String>,
        #[prost(message, repeated, tag = "6")]
        pub service: Vec<Service>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Service {
        #[prost(string, optional, tag = "1")]
        pub name: Option<String>,
        #[prost(message, repeated, tag = "2")]
        pub method: Vec<Method>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Method {
        #[prost(string, optional, tag = "1")]
        pub name: Option<String>,
    }
}

/// Every `/package.Service/Method` path the gateway serves (adflow, health, reflection).
fn known_methods() -> &'static HashSet<&'static str> {
    static KNOWN: OnceLock<HashSet<&'static str>> = OnceLock::new();
    KNOWN.get_or_init(|| {
        let sets = [
            adflow_proto::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
        ];
        let mut known = HashSet::new();
        for set in sets {
            let set = <descriptor::FileSet as prost::Message>::decode(set).unwrap_or_default();
            for f in set.file {
                let package = f.package.unwrap_or_default();
                for s in f.service {
                    let service = s.name.unwrap_or_default();
                    for m in s.method {
                        let path = format!("/{package}.{service}/{}", m.name.unwrap_or_default());
                        // Leaked once: a few dozen labels that live as long as the process.
                        known.insert(&*Box::leak(path.into_boxed_str()));
                    }
                }
            }
        }
        known
    })
}

/// The `method` label of a request path: the path itself when the gateway serves it.
pub fn method_label(path: &str) -> &'static str {
    known_methods().get(path).copied().unwrap_or(UNKNOWN_METHOD)
}

/// Wraps services with `RpcService`.
#[derive(Clone, Copy)]
pub struct RpcLayer {
    /// Create a span per RPC (only worth it when traces are exported).
    pub spans: bool,
}

impl<S> Layer<S> for RpcLayer {
    type Service = RpcService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RpcService { inner, spans: self.spans }
    }
}

/// See `RpcLayer`.
#[derive(Clone)]
pub struct RpcService<S> {
    inner: S,
    spans: bool,
}

impl<S, B, RB> Service<http::Request<B>> for RpcService<S>
where
    S: Service<http::Request<B>, Response = http::Response<RB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let method = method_label(req.uri().path());
        let span = if self.spans {
            let peer = req
                .extensions()
                .get::<tonic::transport::server::TcpConnectInfo>()
                .and_then(|i| i.remote_addr())
                .map(|a| a.to_string())
                .unwrap_or_default();
            let span = tracing::info_span!(
                "rpc",
                otel.name = %method.trim_start_matches('/'),
                otel.kind = "server",
                rpc.system = "grpc",
                rpc.method = %adflow_domain::validate::trunc(req.uri().path()),
                net.peer = %peer,
                rpc.grpc.status_code = tracing::field::Empty,
            );
            adflow_telemetry::trace::set_parent_from_headers(&span, req.headers());
            span
        } else {
            tracing::Span::none()
        };
        // The clone is the one that was made ready: swap it in (the tower pattern).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let start = Instant::now();
        Box::pin(async move {
            let mut res = inner.call(req).instrument(span.clone()).await;
            if let Ok(r) = &mut res {
                oversize_is_resource_exhausted(r.headers_mut());
                undecodable_is_invalid_argument(r.headers_mut());
            }
            let code = match &res {
                Ok(r) => r
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|s| s.parse::<i32>().ok())
                    .unwrap_or(0),
                Err(_) => tonic::Code::Internal as i32,
            };
            span.record("rpc.grpc.status_code", code);
            let name = format!("{:?}", tonic::Code::from_i32(code));
            metrics::histogram!("rpc_duration_seconds", "method" => method, "code" => name)
                .record(start.elapsed().as_secs_f64());
            res
        })
    }
}

/// tonic refuses a request over `max_decoding_message_size` with OUT_OF_RANGE before any
/// handler runs; gRPC says RESOURCE_EXHAUSTED, which clients treat as "too big / back
/// off" (streams already get it from the codec). Rewrites that trailers-only status.
fn oversize_is_resource_exhausted(headers: &mut http::HeaderMap) {
    let out_of_range = (tonic::Code::OutOfRange as i32).to_string();
    if headers.get("grpc-status").and_then(|v| v.to_str().ok()) != Some(out_of_range.as_str()) {
        return;
    }
    let msg = headers.get("grpc-message").and_then(|v| v.to_str().ok()).unwrap_or_default();
    if !(msg.contains("too%20large") || msg.contains("too large")) {
        return;
    }
    let decoded = msg.replace("%20", " ").replace("%3A", ":").replace("%2C", ",");
    let nums: Vec<&str> = decoded.split(|c: char| !c.is_ascii_digit()).filter(|w| !w.is_empty()).collect();
    let text = match nums.as_slice() {
        [got, limit, ..] => format!(
            "request message of {got} bytes is over the limit of {limit} bytes (server.max_message_bytes); send smaller batches"
        ),
        _ => "request message is over the size limit (server.max_message_bytes); send smaller batches".into(),
    };
    let encoded = text.replace(' ', "%20");
    headers.insert("grpc-status", http::HeaderValue::from(tonic::Code::ResourceExhausted as i32));
    if let Ok(v) = http::HeaderValue::from_str(&encoded) {
        headers.insert("grpc-message", v);
    }
}

/// tonic's own services (health, reflection) answer an undecodable request INTERNAL;
/// it is the client's fault: INVALID_ARGUMENT, as every adflow service answers.
fn undecodable_is_invalid_argument(headers: &mut http::HeaderMap) {
    let internal = (tonic::Code::Internal as i32).to_string();
    if headers.get("grpc-status").and_then(|v| v.to_str().ok()) != Some(internal.as_str()) {
        return;
    }
    let msg = headers.get("grpc-message").and_then(|v| v.to_str().ok()).unwrap_or_default();
    if msg.contains("failed%20to%20decode") || msg.contains("failed to decode") {
        headers.insert("grpc-status", http::HeaderValue::from(tonic::Code::InvalidArgument as i32));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_oversize_request_is_answered_resource_exhausted_with_the_sizes() {
        let mut h = http::HeaderMap::new();
        h.insert("grpc-status", http::HeaderValue::from_static("11"));
        h.insert(
            "grpc-message",
            http::HeaderValue::from_static(
                "Error,%20decoded%20message%20length%20too%20large:%20found%2016004%20bytes,%20the%20limit%20is:%204096%20bytes",
            ),
        );
        oversize_is_resource_exhausted(&mut h);
        assert_eq!(h["grpc-status"], "8");
        let m = h["grpc-message"].to_str().unwrap().replace("%20", " ");
        assert!(m.contains("16004 bytes") && m.contains("4096 bytes"), "{m}");
        // Other OUT_OF_RANGE answers are left alone.
        let mut h = http::HeaderMap::new();
        h.insert("grpc-status", http::HeaderValue::from_static("11"));
        h.insert("grpc-message", http::HeaderValue::from_static("page%20out%20of%20range"));
        oversize_is_resource_exhausted(&mut h);
        assert_eq!(h["grpc-status"], "11");
    }

    #[test]
    fn an_undecodable_request_to_tonics_own_services_is_invalid_argument() {
        let mut h = http::HeaderMap::new();
        h.insert("grpc-status", http::HeaderValue::from_static("13"));
        h.insert(
            "grpc-message",
            http::HeaderValue::from_static(
                "failed%20to%20decode%20Protobuf%20message:%20invalid%20wire%20type",
            ),
        );
        undecodable_is_invalid_argument(&mut h);
        assert_eq!(h["grpc-status"], "3");
        let mut h = http::HeaderMap::new();
        h.insert("grpc-status", http::HeaderValue::from_static("13"));
        h.insert("grpc-message", http::HeaderValue::from_static("database%20on%20fire"));
        undecodable_is_invalid_argument(&mut h);
        assert_eq!(h["grpc-status"], "13", "real server faults stay INTERNAL");
    }

    #[test]
    fn served_methods_keep_their_name_and_every_other_path_is_one_label() {
        for path in [
            "/adflow.v1.EventIngest/SendEvent",
            "/adflow.v1.EventIngest/StreamEvents",
            "/adflow.v1.Analytics/GetAdStats",
            "/adflow.v1.AdService/WatchAd",
            "/adflow.v1.QueueControl/ListWorkers",
            "/adflow.v1.WorkerService/Subscribe",
            "/adflow.v1.AgentService/Execute",
            "/grpc.health.v1.Health/Check",
            "/grpc.health.v1.Health/Watch",
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        ] {
            assert_eq!(method_label(path), path);
        }
        for path in [
            "/",
            "",
            "/adflow.v1.EventIngest/Nope",
            "/adflow.v1.EventIngest",
            "/x/y",
            "/adflow.v1.EventIngest/SendEvent/",
        ] {
            assert_eq!(method_label(path), UNKNOWN_METHOD, "{path}");
        }
        let adflow = known_methods().iter().filter(|m| m.starts_with("/adflow.v1.")).count();
        assert!(adflow >= 27, "{adflow} adflow methods");
    }
}
