//! A tower layer around every RPC: a span named after the method (a child of the
//! caller's W3C `traceparent`, with the peer and the gRPC status code) when tracing is
//! on, and the `rpc_duration_seconds{method,code}` histogram always. The status is read
//! from the response headers: errors returned by a handler are "trailers-only" and carry
//! it there; a response that starts normally counts as OK (stream errors that come later
//! in trailers are not seen here).

use futures::future::BoxFuture;
use std::task::{Context, Poll};
use std::time::Instant;
use tower::{Layer, Service};
use tracing::Instrument;

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
        let method = req.uri().path().to_owned();
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
                rpc.method = %method,
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
            let res = inner.call(req).instrument(span.clone()).await;
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
