//! Access control for every service, in one tower layer in front of the router: the
//! caller's API key (`authorization: Bearer <key>` or `x-api-key`) is hashed with SHA-256
//! and looked up among the configured key hashes (keys are never stored in plain text);
//! its role must allow the called service, and its request rate is limited per key.
//! Health and reflection stay open. The caller's name is put in the request extensions
//! for the agent's audit log.
//!
//! Failed authentication (no key, or a key that is not configured) is rate-limited per
//! peer address (IPv4 address or IPv6 /64): beyond `failed_auth_burst` failures (30), at most
//! `failed_auth_per_minute` more are tolerated; then the address is refused with
//! RESOURCE_EXHAUSTED *without its key being looked at* until the limit refills, so a
//! key cannot be guessed faster than that (a correct guess is refused like a wrong one).
//! Each refusal is counted in `auth_failures_total{reason}`.
//!
//! Roles: `client` (EventIngest, AdService, Analytics), `worker` (WorkerService),
//! `operator` (QueueControl, AgentService, and everything else).

use futures::future::BoxFuture;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tonic::Status;
use tower::{Layer, Service};

/// A role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Game backends: ingest events, submit and read ads, analytics.
    Client,
    /// Streaming workers: Subscribe.
    Worker,
    /// Downstream consumers (billing, warehouse, fraud models): EventLog reads and
    /// consumer group cursors.
    Reader,
    /// Operators: queue control, the agent, and everything a client or worker may do.
    Operator,
}

/// One configured key.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKey {
    /// A name for logs and the audit log.
    pub name: String,
    /// What it may call.
    pub role: Role,
    /// Hex SHA-256 of the key (`adflow-gateway --hash-key <key>` prints it).
    pub sha256: String,
}

/// `[auth]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Require keys (default false for local runs; the gateway warns loudly at start).
    pub enabled: bool,
    /// The keys.
    pub keys: Vec<ApiKey>,
    /// Requests per second per key (0: unlimited; default 0).
    pub rate_limit_per_second: u32,
    /// Burst allowance per key (default: one second's worth).
    pub rate_limit_burst: u32,
    /// Failed authentications (missing or unknown key) tolerated per peer address and
    /// minute once the burst is spent (default 30; 0: unlimited).
    pub failed_auth_per_minute: u32,
    /// Failed authentications a peer address may make at once (default 30: a client
    /// with a wrong key, or a role-matrix probe, sees UNAUTHENTICATED a few dozen times
    /// before it is throttled).
    pub failed_auth_burst: u32,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            keys: Vec::new(),
            rate_limit_per_second: 0,
            rate_limit_burst: 0,
            failed_auth_per_minute: 30,
            failed_auth_burst: 30,
        }
    }
}

/// The labels of `auth_failures_total`.
pub const FAILURE_REASONS: [&str; 4] = ["missing_key", "unknown_key", "wrong_role", "throttled"];

/// The hex SHA-256 of `key`.
pub fn hash_key(key: &str) -> String {
    Sha256::digest(key.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// The authenticated caller, available to handlers through request extensions.
#[derive(Clone, Debug)]
pub struct Caller {
    /// The key's name ("anonymous" when auth is off).
    pub name: String,
    /// Its role.
    pub role: Role,
}

/// The role a path needs; None for the open services.
fn required(path: &str) -> Option<Role> {
    if path.starts_with("/grpc.health.v1.") || path.starts_with("/grpc.reflection.") {
        None
    } else if path.starts_with("/adflow.v1.WorkerService/") {
        Some(Role::Worker)
    } else if path.starts_with("/adflow.v1.EventLog/") {
        Some(Role::Reader)
    } else if path.starts_with("/adflow.v1.EventIngest/")
        || path.starts_with("/adflow.v1.AdService/")
        || path.starts_with("/adflow.v1.Analytics/")
    {
        Some(Role::Client)
    } else {
        Some(Role::Operator)
    }
}

/// Where failed authentications are counted: one IPv4 address, or one IPv6 /64 (a
/// single host usually holds a whole /64, so counting addresses would not limit it).
fn peer_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        },
    }
}

/// Most peer addresses remembered as throttled at once (memory bound); beyond it, new
/// ones are still refused per failure but not blocked ahead of the key check.
const MAX_BLOCKED_PEERS: usize = 100_000;

/// The per-address limit on failed authentications.
struct FailureLimit {
    limiter: DefaultKeyedRateLimiter<IpAddr>,
    /// Addresses over the limit, until when (their requests are refused unlooked-at).
    blocked: Mutex<HashMap<IpAddr, Instant>>,
    failures: std::sync::atomic::AtomicU64,
}

impl FailureLimit {
    fn new(cfg: &AuthConfig) -> Option<Self> {
        let per_minute = NonZeroU32::new(cfg.failed_auth_per_minute)?;
        let burst = NonZeroU32::new(cfg.failed_auth_burst).unwrap_or(NonZeroU32::MIN);
        Some(Self {
            limiter: RateLimiter::keyed(Quota::per_minute(per_minute).allow_burst(burst)),
            blocked: Mutex::new(HashMap::new()),
            failures: Default::default(),
        })
    }

    /// How long `peer` is still blocked, if it is.
    fn blocked_for(&self, peer: IpAddr, now: Instant) -> Option<Duration> {
        let mut blocked = self.blocked.lock().unwrap_or_else(|p| p.into_inner());
        let until = *blocked.get(&peer)?;
        if until > now {
            return Some(until - now);
        }
        blocked.remove(&peer);
        None
    }

    /// Counts a failure of `peer`; when it is over the limit, blocks it and says how long.
    fn fail(&self, peer: IpAddr, now: Instant) -> Option<Duration> {
        use governor::clock::Clock;
        // Amortised cleanup keeps the per-address state of past attackers from piling up.
        let n = self.failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if n % 4096 == 4095 {
            self.limiter.retain_recent();
            self.limiter.shrink_to_fit();
            self.blocked.lock().unwrap_or_else(|p| p.into_inner()).retain(|_, until| *until > now);
        }
        let not_until = self.limiter.check_key(&peer).err()?;
        let wait = not_until.wait_time_from(self.limiter.clock().now()).max(Duration::from_millis(1));
        let mut blocked = self.blocked.lock().unwrap_or_else(|p| p.into_inner());
        if blocked.len() < MAX_BLOCKED_PEERS || blocked.contains_key(&peer) {
            blocked.insert(peer, now + wait);
        }
        Some(wait)
    }
}

/// RESOURCE_EXHAUSTED for a throttled address, with a retry hint in
/// `grpc-retry-pushback-ms` (the gRPC retry pushback header).
fn throttled(peer: IpAddr, wait: Duration, last: Option<&str>) -> Status {
    let ms = wait.as_millis().max(1);
    let why = last.map(|l| format!(" (this one: {l})")).unwrap_or_default();
    let mut s = Status::resource_exhausted(format!(
        "too many failed authentications from {peer}{why}; requests from it are refused without checking their key for {ms} ms"
    ));
    if let Ok(v) = ms.to_string().parse() {
        s.metadata_mut().insert("grpc-retry-pushback-ms", v);
    }
    s
}

fn count_failure(reason: &'static str) {
    metrics::counter!("auth_failures_total", "reason" => reason).increment(1);
}

/// The key table and the rate limiters.
pub struct Authz {
    enabled: bool,
    keys: HashMap<String, (String, Role)>,
    limiter: Option<DefaultKeyedRateLimiter<String>>,
    failures: Option<FailureLimit>,
}

impl Authz {
    /// Builds the checker; `extra` adds keys made at run time (the in-process workers').
    pub fn new(cfg: &AuthConfig, extra: &[(String, String, Role)]) -> Self {
        let mut keys: HashMap<_, _> =
            cfg.keys.iter().map(|k| (k.sha256.to_lowercase(), (k.name.clone(), k.role))).collect();
        for (name, key, role) in extra {
            keys.insert(hash_key(key), (name.clone(), *role));
        }
        let limiter = NonZeroU32::new(cfg.rate_limit_per_second).map(|rate| {
            let burst = NonZeroU32::new(cfg.rate_limit_burst).unwrap_or(rate);
            RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst))
        });
        Self { enabled: cfg.enabled, keys, limiter, failures: FailureLimit::new(cfg) }
    }

    /// Decides a request from `peer` (None when unknown, e.g. not over TCP): the caller,
    /// or the status that refuses it.
    pub fn check(
        &self,
        path: &str,
        headers: &http::HeaderMap,
        peer: Option<IpAddr>,
    ) -> Result<Caller, Status> {
        if !self.enabled {
            return Ok(Caller { name: "anonymous".into(), role: Role::Operator });
        }
        let Some(need) = required(path) else {
            return Ok(Caller { name: "anonymous".into(), role: Role::Client });
        };
        // Peers without an address share one budget.
        let peer = peer_key(peer.unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)));
        let now = Instant::now();
        if let Some(wait) = self.failures.as_ref().and_then(|f| f.blocked_for(peer, now)) {
            count_failure("throttled");
            return Err(throttled(peer, wait, None));
        }
        let failed = |reason: &'static str, status: Status| {
            count_failure(reason);
            match self.failures.as_ref().and_then(|f| f.fail(peer, now)) {
                Some(wait) => {
                    count_failure("throttled");
                    throttled(peer, wait, Some(status.message()))
                }
                None => status,
            }
        };
        let presented = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()));
        let Some(key) = presented.filter(|k| !k.is_empty()) else {
            return Err(failed(
                "missing_key",
                Status::unauthenticated(
                    "missing API key: send `authorization: Bearer <key>` or `x-api-key: <key>`",
                ),
            ));
        };
        let Some((name, role)) = self.keys.get(&hash_key(key)) else {
            return Err(failed("unknown_key", Status::unauthenticated("unknown API key")));
        };
        if *role != Role::Operator && *role != need {
            count_failure("wrong_role");
            return Err(Status::permission_denied(format!(
                "key {name:?} has role {role:?}; {} needs role {need:?} (or Operator)",
                match crate::rpc_layer::method_label(path) {
                    crate::rpc_layer::UNKNOWN_METHOD => adflow_domain::validate::trunc(path),
                    known => known,
                }
            )));
        }
        if let Some(l) = &self.limiter
            && l.check_key(name).is_err()
        {
            return Err(Status::resource_exhausted(format!(
                "rate limit for key {name:?} exceeded; slow down and retry"
            )));
        }
        Ok(Caller { name: name.clone(), role: *role })
    }
}

/// The caller's IP address, over plain TCP or TLS.
fn peer_ip<B>(req: &http::Request<B>) -> Option<IpAddr> {
    use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
    let ext = req.extensions();
    ext.get::<TcpConnectInfo>()
        .or_else(|| ext.get::<TlsConnectInfo<TcpConnectInfo>>().map(|t| t.get_ref()))
        .and_then(|i| i.remote_addr())
        .map(|a| a.ip())
}

/// The tower layer applying `Authz` to every request.
#[derive(Clone)]
pub struct AuthLayer(pub Arc<Authz>);

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        AuthService { inner, authz: self.0.clone() }
    }
}

/// See `AuthLayer`.
#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    authz: Arc<Authz>,
}

impl<S, B> Service<http::Request<B>> for AuthService<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        match self.authz.check(req.uri().path(), req.headers(), peer_ip(&req)) {
            Ok(caller) => {
                req.extensions_mut().insert(caller);
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                Box::pin(inner.call(req))
            }
            Err(status) => {
                let path = adflow_domain::validate::trunc(req.uri().path());
                tracing::debug!(path, code = ?status.code(), "request refused by access control");
                Box::pin(async move { Ok(status.into_http()) })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn authz() -> Authz {
        let key = |name: &str, role, k: &str| ApiKey { name: name.into(), role, sha256: hash_key(k) };
        let cfg = AuthConfig {
            enabled: true,
            keys: vec![
                key("game", Role::Client, "c-key"),
                key("w", Role::Worker, "w-key"),
                key("ops", Role::Operator, "o-key"),
            ],
            rate_limit_per_second: 0,
            rate_limit_burst: 0,
            failed_auth_per_minute: 0,
            failed_auth_burst: 0,
        };
        Authz::new(&cfg, &[])
    }

    fn headers(key: &str) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        h.insert("authorization", format!("Bearer {key}").parse().unwrap());
        h
    }

    #[test]
    fn the_role_matrix_holds() {
        let a = authz();
        let paths = [
            "/adflow.v1.EventIngest/SendEvents",
            "/adflow.v1.AdService/SubmitAd",
            "/adflow.v1.Analytics/TopAds",
            "/adflow.v1.WorkerService/Subscribe",
            "/adflow.v1.QueueControl/SetPolicy",
            "/adflow.v1.AgentService/Execute",
        ];
        let expect = [
            ("c-key", [true, true, true, false, false, false]),
            ("w-key", [false, false, false, true, false, false]),
            ("o-key", [true; 6]),
        ];
        for (key, allowed) in expect {
            for (p, ok) in paths.iter().zip(allowed) {
                let r = a.check(p, &headers(key), None);
                assert_eq!(r.is_ok(), ok, "{key} on {p}: {r:?}");
                if !ok {
                    assert_eq!(r.unwrap_err().code(), tonic::Code::PermissionDenied);
                }
            }
        }
        assert_eq!(
            a.check(paths[0], &http::HeaderMap::new(), None).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        assert_eq!(
            a.check(paths[0], &headers("nope"), None).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        assert!(a.check("/grpc.health.v1.Health/Check", &http::HeaderMap::new(), None).is_ok());
        assert!(
            a.check(
                "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
                &http::HeaderMap::new(),
                None
            )
            .is_ok()
        );
    }

    #[test]
    fn keys_are_compared_by_hash_and_rates_are_limited_per_key() {
        let cfg = AuthConfig {
            enabled: true,
            keys: vec![ApiKey { name: "g".into(), role: Role::Client, sha256: hash_key("k").to_uppercase() }],
            rate_limit_per_second: 1,
            rate_limit_burst: 2,
            ..AuthConfig::default()
        };
        let a = Authz::new(&cfg, &[("internal".into(), "secret".into(), Role::Worker)]);
        let p = "/adflow.v1.EventIngest/SendEvent";
        assert!(a.check(p, &headers("k"), None).is_ok());
        assert!(a.check(p, &headers("k"), None).is_ok());
        assert_eq!(a.check(p, &headers("k"), None).unwrap_err().code(), tonic::Code::ResourceExhausted);
        assert!(a.check("/adflow.v1.WorkerService/Subscribe", &headers("secret"), None).is_ok());
        assert_eq!(hash_key("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    #[test]
    fn failed_authentication_is_limited_per_address_and_then_no_key_is_looked_at() {
        let cfg = AuthConfig {
            enabled: true,
            keys: vec![ApiKey { name: "g".into(), role: Role::Client, sha256: hash_key("right") }],
            failed_auth_per_minute: 1,
            failed_auth_burst: 3,
            ..AuthConfig::default()
        };
        let a = Authz::new(&cfg, &[]);
        let p = "/adflow.v1.EventIngest/SendEvent";
        let attacker: IpAddr = "203.0.113.7".parse().unwrap();
        let other: IpAddr = "198.51.100.1".parse().unwrap();
        for guess in ["a", "b", "c"] {
            assert_eq!(
                a.check(p, &headers(guess), Some(attacker)).unwrap_err().code(),
                tonic::Code::Unauthenticated
            );
        }
        let over = a.check(p, &headers("d"), Some(attacker)).unwrap_err();
        assert_eq!(over.code(), tonic::Code::ResourceExhausted);
        assert!(
            over.message().contains("too many failed authentications from 203.0.113.7"),
            "{}",
            over.message()
        );
        assert!(over.message().contains("unknown API key"), "{}", over.message());
        assert!(over.metadata().get("grpc-retry-pushback-ms").is_some());
        // The right key from the blocked address is refused the same way: guessing stops.
        let right = a.check(p, &headers("right"), Some(attacker)).unwrap_err();
        assert_eq!(right.code(), tonic::Code::ResourceExhausted, "{}", right.message());
        // Other addresses, and open services, are not affected.
        assert!(a.check(p, &headers("right"), Some(other)).is_ok());
        assert!(a.check("/grpc.health.v1.Health/Check", &http::HeaderMap::new(), Some(attacker)).is_ok());
        // Missing keys count as failures too.
        for _ in 0..3 {
            assert_eq!(
                a.check(p, &http::HeaderMap::new(), Some(other)).unwrap_err().code(),
                tonic::Code::Unauthenticated
            );
        }
        assert_eq!(
            a.check(p, &http::HeaderMap::new(), Some(other)).unwrap_err().code(),
            tonic::Code::ResourceExhausted
        );
    }

    #[test]
    fn ipv6_peers_are_counted_per_64_and_mapped_ipv4_as_ipv4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(peer_key(a), peer_key(b));
        assert_ne!(peer_key(a), peer_key(c));
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(peer_key(mapped), "192.0.2.1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn a_wrong_role_on_an_invented_path_does_not_echo_it_whole() {
        let a = authz();
        let path = format!("/{}", "x".repeat(10_000));
        let e = a.check(&path, &headers("c-key"), None).unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        assert!(e.message().len() < 200, "{}", e.message().len());
    }
}
