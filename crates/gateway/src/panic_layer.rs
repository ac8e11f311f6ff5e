//! The backstop under every RPC: a handler that panics is answered INTERNAL (with an
//! ERROR log line naming the method and the panic) instead of the connection task
//! dropping the stream, which a client sees as CANCELLED with no explanation and no
//! trace in the gateway's log. It is not how bad input is handled (handlers refuse bad
//! input with INVALID_ARGUMENT and use checked arithmetic); it keeps an unforeseen bug
//! from turning into a silent, unlogged failure.
//!
//! The layer catches panics while the handler computes its response: all of a unary
//! call, and the setup of a streaming one. Response streams are fed by tasks started with
//! `spawn_stream`, which catches a panic in the task the same way and ends that stream
//! with INTERNAL (a bare task panic would drop the sender, and the client would see a
//! normal end of stream: "caught up", "no more updates").

use futures::FutureExt;
use futures::future::BoxFuture;
use std::panic::AssertUnwindSafe;
use std::task::{Context, Poll};
use tower::{Layer, Service};

/// Wraps services with `PanicService`.
#[derive(Clone, Copy, Debug, Default)]
pub struct PanicLayer;

impl<S> Layer<S> for PanicLayer {
    type Service = PanicService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        PanicService { inner }
    }
}

/// See `PanicLayer`.
#[derive(Clone, Debug)]
pub struct PanicService<S> {
    inner: S,
}

/// The text of a panic payload (`panic!` with a literal or a formatted message).
fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
    payload
        .downcast_ref::<&'static str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(a panic without a message)")
}

impl<S, B, RB> Service<http::Request<B>> for PanicService<S>
where
    S: Service<http::Request<B>, Response = http::Response<RB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
    RB: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let method = adflow_domain::validate::trunc(req.uri().path()).to_owned();
        // The clone is the one that was made ready: swap it in (the tower pattern).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            // Calling the service may itself run handler code (tonic's generated `call`
            // only builds a future, but a hand-written service need not).
            let fut = match std::panic::catch_unwind(AssertUnwindSafe(|| inner.call(req))) {
                Ok(fut) => fut,
                Err(payload) => return Ok(internal(&method, &*payload)),
            };
            match AssertUnwindSafe(fut).catch_unwind().await {
                Ok(res) => res,
                Err(payload) => Ok(internal(&method, &*payload)),
            }
        })
    }
}

/// Runs `feed`, the task behind a response stream, on its own task; if it panics, the
/// stream ends with INTERNAL (logged and counted like a handler panic) instead of a
/// normal end. `tx` is a clone of the sender `feed` writes to.
pub fn spawn_stream<T: Send + 'static>(
    method: &'static str,
    tx: tokio::sync::mpsc::Sender<Result<T, tonic::Status>>,
    feed: impl std::future::Future<Output = ()> + Send + 'static,
) {
    tokio::spawn(async move {
        if let Err(payload) = AssertUnwindSafe(feed).catch_unwind().await {
            let message = panic_message(&*payload);
            tracing::error!(method, panic = message, "RPC response stream panicked; ended with INTERNAL");
            metrics::counter!("rpc_panics_total").increment(1);
            let status = tonic::Status::internal(format!(
                "internal error in {method}; the gateway log has the details"
            ));
            let _ = tx.send(Err(status)).await;
        }
    });
}

/// The INTERNAL answer to a panic in `method`, and its log line.
fn internal<RB: Default>(method: &str, payload: &(dyn std::any::Any + Send)) -> http::Response<RB> {
    let message = panic_message(payload);
    tracing::error!(method, panic = message, "RPC handler panicked; answered INTERNAL");
    metrics::counter!("rpc_panics_total").increment(1);
    tonic::Status::internal(format!("internal error in {method}; the gateway log has the details"))
        .into_http()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use tower::ServiceExt;

    fn status_of<RB>(res: &http::Response<RB>) -> Option<(i32, String)> {
        let s = tonic::Status::from_header_map(res.headers())?;
        Some((s.code() as i32, s.message().to_owned()))
    }

    fn request() -> http::Request<()> {
        http::Request::builder().uri("/adflow.v1.Analytics/GetAdStats").body(()).unwrap()
    }

    #[tokio::test]
    async fn a_panicking_handler_is_answered_internal() {
        let svc = PanicLayer.layer(tower::service_fn(|_: http::Request<()>| async {
            let from: i64 = std::hint::black_box(i64::MIN);
            if from == i64::MIN {
                panic!("attempt to negate with overflow");
            }
            Ok::<_, Infallible>(http::Response::new(tonic::body::Body::empty()))
        }));
        let res = svc.oneshot(request()).await.unwrap();
        let (code, msg) = status_of(&res).expect("a trailers-only gRPC status");
        assert_eq!(code, tonic::Code::Internal as i32);
        assert!(msg.contains("GetAdStats"), "{msg}");
        assert!(!msg.contains("negate"), "the panic text stays in the log: {msg}");
    }

    #[tokio::test]
    async fn a_panic_while_calling_the_service_is_answered_internal() {
        #[derive(Clone)]
        struct Explodes;
        impl Service<http::Request<()>> for Explodes {
            type Response = http::Response<tonic::body::Body>;
            type Error = Infallible;
            type Future = std::future::Ready<Result<Self::Response, Infallible>>;
            fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
                Poll::Ready(Ok(()))
            }
            fn call(&mut self, _: http::Request<()>) -> Self::Future {
                panic!("{}", String::from("formatted panic"))
            }
        }
        let res = PanicLayer.layer(Explodes).oneshot(request()).await.unwrap();
        assert_eq!(status_of(&res).unwrap().0, tonic::Code::Internal as i32);
    }

    #[tokio::test]
    async fn answers_that_do_not_panic_pass_through() {
        let svc = PanicLayer.layer(tower::service_fn(|_: http::Request<()>| async {
            Ok::<_, Infallible>(tonic::Status::not_found("ad x not found").into_http::<tonic::body::Body>())
        }));
        let res = svc.oneshot(request()).await.unwrap();
        assert_eq!(status_of(&res).unwrap(), (tonic::Code::NotFound as i32, "ad x not found".into()));
    }

    #[tokio::test]
    async fn a_panic_inside_a_started_stream_ends_it_with_internal_not_ok() {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<u32, tonic::Status>>(4);
        let feeder = tx.clone();
        spawn_stream("/adflow.v1.AdService/WatchAd", tx, async move {
            feeder.send(Ok(1)).await.unwrap();
            let n: u32 = std::hint::black_box(0);
            if n == 0 {
                panic!("bug after the first item");
            }
        });
        assert_eq!(rx.recv().await.unwrap().unwrap(), 1);
        let end = rx.recv().await.expect("an error, not the end of the stream").unwrap_err();
        assert_eq!(end.code(), tonic::Code::Internal);
        assert!(end.message().contains("WatchAd"), "{}", end.message());
        assert!(rx.recv().await.is_none(), "then the stream ends");
    }

    #[test]
    fn panic_payloads_are_read() {
        assert_eq!(panic_message(&"literal"), "literal");
        assert_eq!(panic_message(&String::from("formatted")), "formatted");
        assert_eq!(panic_message(&42u8), "(a panic without a message)");
    }
}
