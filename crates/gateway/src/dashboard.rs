//! The web dashboard: a page served by the gateway on its own HTTP port (`[dashboard]
//! listen`, 127.0.0.1:8090 by default) with four views: ingest, ads analytics, queue and
//! the operator console.
//!
//! Built this way:
//! - **One API.** The page calls `POST /api/<gRPC method path>` (see `api`): JSON in and
//!   out, transcoded with the gateway's descriptor set, checked by the gRPC server's
//!   `Authz` for that very path, served by the very service objects the gRPC server
//!   uses. Chosen over gRPC-Web (tonic-web) because the browser then needs no protobuf
//!   codec or generated JavaScript (no Node toolchain), and the JSON is the one grpcurl
//!   prints. The only extra read is `GET /api/ingest` (the gateway's own counters, see
//!   `ingest`), allowed to whoever may send events.
//! - **No build step.** HTML, CSS and JavaScript live in `crates/gateway/assets/` and are
//!   compiled into the binary with `include_str!`; charts are SVG drawn by hand (a few
//!   line and bar charts do not justify a vendored library).
//! - **Safe by construction.** The page sets text only with `textContent`, never HTML; the
//!   Content-Security-Policy allows scripts and styles from this origin only (no inline
//!   code, no `eval`). API calls must be `application/json` POSTs (a cross-site form
//!   cannot send one without a CORS preflight, which is never granted), from this origin
//!   when the browser says, to a Host that is an IP address, `localhost` or listed in
//!   `allowed_hosts` (DNS rebinding). Keys travel in the `authorization` header, never in
//!   cookies. The page changes the queue only through the agent, which previews and asks
//!   for a confirmation token for wide or disruptive changes.
//! - **Bounded.** At most `MAX_CONNECTIONS` connections, 10 s to send headers, 64 KiB
//!   request bodies; the page polls the open view once per `poll_seconds` and pages long
//!   tables through the RPCs' own paging.

pub mod api;
pub mod ingest;

use crate::auth::Authz;
use crate::pipeline::Pipeline;
use anyhow::Context;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

/// Most connections served at once; more wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 64;
/// Largest request body, bytes.
const MAX_BODY: usize = 64 << 10;

/// `[dashboard]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DashboardConfig {
    /// Address of the dashboard's HTTP port (default "127.0.0.1:8090"; empty: off).
    pub listen: String,
    /// How often the page refreshes the view it shows, seconds (default 3; 1..=60).
    pub poll_seconds: u32,
    /// Host names (besides IP addresses and `localhost`) the page may be opened under,
    /// e.g. a DNS name in front of it (default none).
    pub allowed_hosts: Vec<String>,
}

impl Default for DashboardConfig {
    fn default() -> Self {
        Self { listen: "127.0.0.1:8090".into(), poll_seconds: 3, allowed_hosts: Vec::new() }
    }
}

impl DashboardConfig {
    /// The first bad value: its key and what is wrong (`Config::validate` reports it).
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if !self.listen.is_empty() && self.listen.parse::<SocketAddr>().is_err() {
            return Err((
                "dashboard.listen",
                format!("{:?} is not an address like 127.0.0.1:8090", self.listen),
            ));
        }
        if !(1..=60).contains(&self.poll_seconds) {
            return Err(("dashboard.poll_seconds", format!("must be 1..=60 (got {})", self.poll_seconds)));
        }
        Ok(())
    }
}

/// What the dashboard serves from.
pub struct Parts {
    /// The service objects the gRPC server serves.
    pub services: api::Services,
    /// The gRPC server's access control.
    pub authz: Arc<Authz>,
    /// Whether `[auth]` is on (the page then asks for a key).
    pub auth_enabled: bool,
    /// The ingest pipeline (its counters).
    pub pipeline: Arc<Pipeline>,
}

struct State {
    api: api::Api,
    history: Arc<ingest::History>,
    pipeline: Arc<Pipeline>,
    auth_enabled: bool,
    poll_ms: u64,
    allowed_hosts: Vec<String>,
}

/// Binds `cfg.listen` and serves the dashboard until `stop` turns true; None when it is
/// off. A port that cannot be bound is logged and the gateway runs without a dashboard
/// (it is a convenience; a second gateway on one machine must still start).
pub async fn start(
    cfg: &DashboardConfig,
    parts: Parts,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    if cfg.listen.is_empty() {
        return Ok(None);
    }
    // `Config::validate` checked these already; a caller that built the config by hand
    // gets the same message.
    if let Err((key, problem)) = cfg.check() {
        anyhow::bail!("invalid configuration: {key} {problem}");
    }
    let addr: SocketAddr = cfg.listen.parse()?;
    let listener = match TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(addr = %addr, error = %e, "dashboard not started: could not bind dashboard.listen");
            return Ok(None);
        }
    };
    let local = listener.local_addr()?;
    if !local.ip().is_loopback() && !parts.auth_enabled {
        tracing::warn!(addr = %local, "the dashboard is reachable beyond this machine with access control OFF");
    }
    tracing::info!(url = %format!("http://{local}/"), "dashboard");
    let history = Arc::new(ingest::History::default());
    tokio::spawn(history.clone().run(parts.pipeline.clone(), stop.clone()));
    let state = Arc::new(State {
        api: api::Api::new(parts.services, parts.authz).context("dashboard API descriptors")?,
        history,
        pipeline: parts.pipeline,
        auth_enabled: parts.auth_enabled,
        poll_ms: cfg.poll_seconds as u64 * 1000,
        allowed_hosts: cfg.allowed_hosts.iter().map(|h| h.to_ascii_lowercase()).collect(),
    });
    Ok(Some(tokio::spawn(serve(listener, state, stop))))
}

/// Returns once `stop` is true (the guard is dropped inside, so callers stay `Send`).
pub(crate) async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

async fn serve(listener: TcpListener, state: Arc<State>, mut stop: watch::Receiver<bool>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = stopped(&mut stop) => return,
        };
        let (stream, peer) = tokio::select! {
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "dashboard accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopped(&mut stop) => return,
        };
        let state = state.clone();
        let mut stop = stop.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let svc = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(&state, req, peer.ip()).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = stopped(&mut stop) => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(2), conn).await;
                }
            }
        });
    }
}

/// The embedded files: path, content type, bytes.
const ASSETS: [(&str, &str, &str); 5] = [
    ("/", "text/html; charset=utf-8", include_str!("../assets/index.html")),
    ("/app.js", "text/javascript; charset=utf-8", include_str!("../assets/app.js")),
    ("/charts.js", "text/javascript; charset=utf-8", include_str!("../assets/charts.js")),
    ("/app.css", "text/css; charset=utf-8", include_str!("../assets/app.css")),
    ("/favicon.svg", "image/svg+xml", include_str!("../assets/favicon.svg")),
];

/// No inline scripts or styles, nothing from elsewhere, no framing.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                       connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn respond(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_str(content_type).expect("static content type"));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn json(reply: api::JsonReply) -> Response<Full<Bytes>> {
    respond(reply.0, "application/json", reply.1)
}

fn refuse(code: tonic::Code, message: &str) -> Response<Full<Bytes>> {
    json(api::error(code, message))
}

/// Whether the page may be served under this Host (an IP address, `localhost`, or a
/// configured name): a rebound DNS name of an attacker's site is not.
fn host_allowed(host: &str, allowed: &[String]) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => return v6.split(']').next().is_some_and(|a| a.parse::<IpAddr>().is_ok()),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    let name = name.to_ascii_lowercase();
    name.parse::<IpAddr>().is_ok() || name == "localhost" || allowed.contains(&name)
}

async fn handle(state: &State, req: Request<Incoming>, peer: IpAddr) -> Response<Full<Bytes>> {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))
        .unwrap_or("")
        .to_owned();
    if !host_allowed(&host, &state.allowed_hosts) {
        return refuse(
            tonic::Code::PermissionDenied,
            &format!(
                "host {:?} is not allowed: open the dashboard by IP address or localhost, or add the name to dashboard.allowed_hosts",
                adflow_domain::validate::trunc(&host)
            ),
        );
    }
    let path = req.uri().path().to_owned();
    match (req.method(), path.as_str()) {
        (&Method::GET | &Method::HEAD, p) if !p.starts_with("/api/") => {
            let want = match path.as_str() {
                "/index.html" => "/",
                "/favicon.ico" => "/favicon.svg",
                p => p,
            };
            match ASSETS.iter().find(|(p, _, _)| *p == want) {
                Some((_, ct, body)) => respond(StatusCode::OK, ct, *body),
                None => respond(StatusCode::NOT_FOUND, "text/plain; charset=utf-8", "not found\n"),
            }
        }
        (&Method::GET, "/api/session") => session(state, &req, peer),
        (&Method::GET, "/api/ingest") => match state.api.check(INGEST_VIEW, req.headers(), Some(peer)) {
            Ok(_) => match serde_json::to_vec(&state.history.view(&state.pipeline)) {
                Ok(b) => respond(StatusCode::OK, "application/json", b),
                Err(e) => refuse(tonic::Code::Internal, &e.to_string()),
            },
            Err(s) => refuse(s.code(), s.message()),
        },
        (&Method::POST, p) if p.starts_with("/api/") => rpc(state, req, peer).await,
        (_, p) if p.starts_with("/api/") => refuse(
            tonic::Code::InvalidArgument,
            &format!(
                "{} {}: RPCs are POST /api/<gRPC method path> with a JSON body; GET serves /api/session and /api/ingest",
                req.method(),
                adflow_domain::validate::trunc(p)
            ),
        ),
        _ => respond(StatusCode::METHOD_NOT_ALLOWED, "text/plain; charset=utf-8", "method not allowed\n"),
    }
}

/// The access check of the ingest view: the role that may send events.
pub const INGEST_VIEW: &str = "/adflow.v1.EventIngest/DashboardView";
/// The access check that tells a key's role: the one Analytics needs (client or operator).
const SESSION_CHECK: &str = "/adflow.v1.Analytics/TopAds";

/// `GET /api/session`: whether a key is needed and what the presented key may see.
fn session(state: &State, req: &Request<Incoming>, peer: IpAddr) -> Response<Full<Bytes>> {
    let presented =
        req.headers().contains_key(header::AUTHORIZATION) || req.headers().contains_key("x-api-key");
    let body = |role: Option<crate::auth::Role>, name: Option<&str>| {
        let v = serde_json::json!({
            "auth_enabled": state.auth_enabled,
            "role": role,
            "name": name,
            "poll_ms": state.poll_ms,
        });
        respond(StatusCode::OK, "application/json", v.to_string())
    };
    if state.auth_enabled && !presented {
        // Asking the page for a key is not a failed authentication.
        return body(None, None);
    }
    match state.api.check(SESSION_CHECK, req.headers(), Some(peer)) {
        Ok(c) => body(Some(c.role), Some(&c.name)),
        Err(s) if s.code() == tonic::Code::PermissionDenied => {
            refuse(s.code(), &format!("{}; the dashboard needs a client or operator key", s.message()))
        }
        Err(s) => refuse(s.code(), s.message()),
    }
}

async fn rpc(state: &State, req: Request<Incoming>, peer: IpAddr) -> Response<Full<Bytes>> {
    let is_json = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|v| {
        v.split(';').next().is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
    });
    if !is_json {
        return json((
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            api::error(tonic::Code::InvalidArgument, "send the request as content-type: application/json").1,
        ));
    }
    let host = req.headers().get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
    if let Some(origin) = req.headers().get(header::ORIGIN) {
        let same = origin
            .to_str()
            .ok()
            .and_then(|o| o.strip_prefix("http://").or_else(|| o.strip_prefix("https://")))
            .is_some_and(|o| o.eq_ignore_ascii_case(host));
        if !same {
            return refuse(tonic::Code::PermissionDenied, "cross-origin API calls are refused");
        }
    }
    let path = req.uri().path().trim_start_matches("/api").to_owned();
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            let too_big = e.downcast_ref::<http_body_util::LengthLimitError>().is_some();
            return if too_big {
                json((
                    StatusCode::PAYLOAD_TOO_LARGE,
                    api::error(tonic::Code::InvalidArgument, &format!("request body over {MAX_BODY} bytes"))
                        .1,
                ))
            } else {
                refuse(tonic::Code::InvalidArgument, &format!("reading the request body: {e}"))
            };
        }
    };
    json(state.api.call(&path, &parts.headers, Some(peer), &body).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_settings_name_their_key() {
        assert_eq!(DashboardConfig::default().check(), Ok(()));
        let off = DashboardConfig { listen: String::new(), ..Default::default() };
        assert_eq!(off.check(), Ok(()));
        let bad = DashboardConfig { listen: "localhost:80".into(), ..Default::default() };
        assert_eq!(bad.check().unwrap_err().0, "dashboard.listen");
        let bad = DashboardConfig { poll_seconds: 0, ..Default::default() };
        assert_eq!(bad.check().unwrap_err().0, "dashboard.poll_seconds");
    }

    #[test]
    fn hosts_are_addresses_localhost_or_configured_names() {
        let allowed = vec!["dash.example.org".to_string()];
        for ok in
            ["127.0.0.1:8090", "localhost:8090", "LOCALHOST", "[::1]:8090", "10.0.0.5", "dash.example.org:80"]
        {
            assert!(host_allowed(ok, &allowed), "{ok}");
        }
        for bad in ["evil.example.com:8090", "", "127.0.0.1.evil.com", "[nope]:1"] {
            assert!(!host_allowed(bad, &allowed), "{bad}");
        }
    }

    #[test]
    fn the_policy_allows_no_inline_code() {
        assert!(!CSP.contains("unsafe-inline") && !CSP.contains("unsafe-eval"));
        for (_, _, body) in ASSETS {
            assert!(!body.contains("innerHTML") && !body.contains("insertAdjacentHTML"));
        }
        let html = ASSETS[0].2;
        assert!(
            !html.contains("<script>") && !html.contains("style=") && !html.contains("<style"),
            "inline code"
        );
    }
}
