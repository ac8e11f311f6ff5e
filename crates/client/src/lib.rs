//! A Rust client for adflow that makes the right thing the easy thing for game backends.
//!
//! - [`Client::connect`] opens one HTTP/2 channel (optional TLS, API key, timeouts); the
//!   handle is cheap to clone and shares the connection.
//! - [`Client::event_sender`] returns an [`EventSender`]: `send(event)` is non-blocking
//!   up to a bounded buffer; a background task batches by size and time, sends with
//!   `SendEvents` (durable acks), and retries failed batches with the same event ids
//!   (the gateway deduplicates, so a retry never stores twice), backing off
//!   exponentially with jitter, longer on RESOURCE_EXHAUSTED and UNAVAILABLE. Events the
//!   gateway rejects come back to the caller with the reason and are never retried.
//! - [`Consumer`] reads stored events back (`EventLog.Read`) for a consumer group: it
//!   resumes at the group's committed cursor, reconnects with backoff when the stream
//!   breaks (resuming after the last batch it handed out), and commits after processing.
//! - Typed helpers for ads and analytics, so callers rarely touch the generated code.
//!
//! # Layout
//! - this file: `Client` (connection, TLS, API key) and the typed ad and analytics calls.
//! - `sender`: `EventSender`, the batching, retrying background sender of events.

mod consumer;
mod sender;

pub use adflow_proto::v1 as pb;
pub use consumer::{Consumer, ConsumerConfig, StartAt};
pub use sender::{Counters, EventSender, Rejected, SendError, SenderConfig, Undelivered};

use futures::{Stream, StreamExt};
use std::time::Duration;
use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Request, Status};

/// How to reach a gateway.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// `http://host:port` or `https://host:port`.
    pub endpoint: String,
    /// TLS settings; with `https://` and no CA given, the system roots are used.
    pub tls: Option<TlsOptions>,
    /// Sent as `authorization: Bearer <key>` on every call.
    pub api_key: Option<String>,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Deadline of each call until its response starts (None: no deadline, e.g. for
    /// long-lived streams such as a worker's Subscribe).
    pub request_timeout: Option<Duration>,
    /// Start a new sampled W3C trace on every call (a random `traceparent` header), so the
    /// gateway's spans for it are exported and findable in Jaeger (default false).
    pub trace_calls: bool,
}

/// TLS settings.
#[derive(Clone, Debug, Default)]
pub struct TlsOptions {
    /// PEM of the CA that signed the gateway's certificate (None: system roots).
    pub ca_pem: Option<Vec<u8>>,
    /// Name to verify in the certificate (None: the endpoint's host).
    pub domain: Option<String>,
}

impl ClientConfig {
    /// Defaults for `endpoint`: no TLS, no key, 5 s connect, 10 s per request.
    pub fn new(endpoint: impl Into<String>) -> Self {
        Self {
            endpoint: endpoint.into(),
            tls: None,
            api_key: None,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Some(Duration::from_secs(10)),
            trace_calls: false,
        }
    }
}

/// Errors of the client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The endpoint or TLS settings are invalid, or connecting failed.
    #[error("connecting to {endpoint}: {}", causes(source))]
    Connect {
        /// The endpoint.
        endpoint: String,
        /// Why.
        #[source]
        source: tonic::transport::Error,
    },
    /// The API key cannot be sent as a header.
    #[error("the API key contains characters not allowed in a header")]
    BadApiKey,
    /// The gateway answered with an error status.
    #[error(transparent)]
    Status(#[from] Status),
}

/// An error and every cause under it ("transport error: invalid peer certificate: ..."),
/// so a certificate problem is named instead of hidden behind "transport error".
pub fn causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let s = c.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cur = c.source();
    }
    out
}

/// Adds the API key (and, when asked, a new trace's `traceparent`) to every request.
#[derive(Clone, Default)]
pub struct Auth {
    key: Option<MetadataValue<tonic::metadata::Ascii>>,
    trace_calls: bool,
}

/// A random, sampled W3C `traceparent`: a new trace with a new root span id.
pub fn new_traceparent() -> String {
    let t = uuid::Uuid::new_v4().simple().to_string();
    let s = uuid::Uuid::new_v4().simple().to_string();
    format!("00-{t}-{}-01", &s[..16])
}

impl Interceptor for Auth {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = &self.key {
            req.metadata_mut().insert("authorization", v.clone());
        }
        if self.trace_calls
            && !req.metadata().contains_key("traceparent")
            && let Ok(v) = new_traceparent().parse()
        {
            req.metadata_mut().insert("traceparent", v);
        }
        Ok(req)
    }
}

/// A channel with the client's API key attached.
pub type AuthChannel = InterceptedService<Channel, Auth>;

/// Builds the endpoint of `cfg` (timeouts, TCP_NODELAY, HTTP/2 windows, TLS).
fn endpoint(cfg: &ClientConfig) -> Result<Endpoint, ClientError> {
    let err = |source| ClientError::Connect { endpoint: cfg.endpoint.clone(), source };
    let mut ep = Endpoint::from_shared(cfg.endpoint.clone())
        .map_err(err)?
        .connect_timeout(cfg.connect_timeout)
        .tcp_nodelay(true)
        .initial_connection_window_size(8 << 20)
        .initial_stream_window_size(4 << 20)
        .http2_keep_alive_interval(Duration::from_secs(30));
    if let Some(t) = cfg.request_timeout {
        ep = ep.timeout(t);
    }
    if cfg.tls.is_some() || cfg.endpoint.starts_with("https://") {
        let t = cfg.tls.clone().unwrap_or_default();
        let mut tls = ClientTlsConfig::new();
        tls = match &t.ca_pem {
            Some(pem) => tls.ca_certificate(Certificate::from_pem(pem)),
            None => tls.with_native_roots(),
        };
        if let Some(d) = &t.domain {
            tls = tls.domain_name(d.clone());
        }
        ep = ep.tls_config(tls).map_err(err)?;
    }
    Ok(ep)
}

/// A connected, cloneable handle to a gateway.
#[derive(Clone)]
pub struct Client {
    channel: Channel,
    auth: Auth,
    cfg: ClientConfig,
}

impl Client {
    /// Connects to the gateway of `cfg`.
    pub async fn connect(cfg: ClientConfig) -> Result<Self, ClientError> {
        let key = match &cfg.api_key {
            Some(k) => Some(format!("Bearer {k}").parse().map_err(|_| ClientError::BadApiKey)?),
            None => None,
        };
        let auth = Auth { key, trace_calls: cfg.trace_calls };
        let channel = endpoint(&cfg)?
            .connect()
            .await
            .map_err(|source| ClientError::Connect { endpoint: cfg.endpoint.clone(), source })?;
        Ok(Self { channel, auth, cfg })
    }

    /// Connects to a plain-text gateway at `endpoint` with the defaults.
    pub async fn connect_to(endpoint: impl Into<String>) -> Result<Self, ClientError> {
        Self::connect(ClientConfig::new(endpoint)).await
    }

    /// The raw channel (with the API key attached), for generated clients.
    pub fn channel(&self) -> AuthChannel {
        InterceptedService::new(self.channel.clone(), self.auth.clone())
    }

    /// The settings this client connected with.
    pub fn config(&self) -> &ClientConfig {
        &self.cfg
    }

    /// The generated EventIngest client on this connection.
    pub fn ingest(&self) -> pb::event_ingest_client::EventIngestClient<AuthChannel> {
        pb::event_ingest_client::EventIngestClient::new(self.channel())
    }

    /// The generated AdService client on this connection.
    pub fn ads(&self) -> pb::ad_service_client::AdServiceClient<AuthChannel> {
        pb::ad_service_client::AdServiceClient::new(self.channel())
    }

    /// The generated Analytics client on this connection.
    pub fn analytics(&self) -> pb::analytics_client::AnalyticsClient<AuthChannel> {
        pb::analytics_client::AnalyticsClient::new(self.channel())
    }

    /// The generated WorkerService client on this connection.
    pub fn workers(&self) -> pb::worker_service_client::WorkerServiceClient<AuthChannel> {
        pb::worker_service_client::WorkerServiceClient::new(self.channel())
    }

    /// The generated EventLog client on this connection.
    pub fn event_log(&self) -> pb::event_log_client::EventLogClient<AuthChannel> {
        pb::event_log_client::EventLogClient::new(self.channel())
    }

    /// A consumer of the event log on this connection (see [`Consumer`]).
    pub fn consumer(&self, cfg: ConsumerConfig) -> Result<Consumer, ClientError> {
        Consumer::new(self, cfg)
    }

    /// Starts a batching event sender on this connection.
    pub fn event_sender(&self, cfg: SenderConfig) -> EventSender {
        EventSender::start(self.clone(), cfg)
    }

    /// Submits one ad; returns its id, status, position and estimated completion.
    pub async fn submit_ad(&self, ad: pb::AdSpec) -> Result<pb::SubmitAdResponse, ClientError> {
        Ok(self.ads().submit_ad(pb::SubmitAdRequest { ad: Some(ad) }).await?.into_inner())
    }

    /// The ad with its status and analysis.
    pub async fn get_ad(&self, id: &str) -> Result<pb::Ad, ClientError> {
        Ok(self.ads().get_ad(pb::GetAdRequest { id: id.into() }).await?.into_inner())
    }

    /// The ad now and at every status change, until it is final.
    pub async fn watch_ad(
        &self,
        id: &str,
    ) -> Result<impl Stream<Item = Result<pb::Ad, Status>> + use<>, ClientError> {
        let stream = self.ads().watch_ad(pb::WatchAdRequest { id: id.into() }).await?.into_inner();
        Ok(stream.boxed())
    }

    /// Statistics of one ad (or all ads with "") over a window.
    pub async fn ad_stats(&self, ad_id: &str, window: pb::Window) -> Result<pb::Stats, ClientError> {
        let period = Some(pb::Period { period: Some(pb::period::Period::Window(window as i32)) });
        let r = self.analytics().get_ad_stats(pb::GetAdStatsRequest { ad_id: ad_id.into(), period }).await?;
        Ok(r.into_inner().stats.unwrap_or_default())
    }

    /// The best `limit` ads by `metric` over a window.
    pub async fn top_ads(
        &self,
        metric: pb::Metric,
        limit: u32,
        window: pb::Window,
    ) -> Result<Vec<pb::Stats>, ClientError> {
        let period = Some(pb::Period { period: Some(pb::period::Period::Window(window as i32)) });
        let req = pb::TopAdsRequest { metric: metric as i32, limit, period, min_denominator: 0 };
        Ok(self.analytics().top_ads(req).await?.into_inner().ads)
    }
}
