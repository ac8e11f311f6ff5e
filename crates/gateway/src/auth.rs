//! Access control for every service, in one tower layer in front of the router: the
//! caller's API key (`authorization: Bearer <key>` or `x-api-key`) is hashed with SHA-256
//! and looked up among the configured key hashes (keys are never stored in plain text);
//! its role must allow the called service, and its request rate is limited per key.
//! Health and reflection stay open. The caller's name is put in the request extensions
//! for the agent's audit log.
//!
//! Roles: `client` (EventIngest, AdService, Analytics), `worker` (WorkerService),
//! `operator` (QueueControl, AgentService, and everything else).

use futures::future::BoxFuture;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::task::{Context, Poll};
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
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
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
}

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
    } else if path.starts_with("/adflow.v1.EventIngest/")
        || path.starts_with("/adflow.v1.AdService/")
        || path.starts_with("/adflow.v1.Analytics/")
    {
        Some(Role::Client)
    } else {
        Some(Role::Operator)
    }
}

/// The key table and the rate limiter.
pub struct Authz {
    enabled: bool,
    keys: HashMap<String, (String, Role)>,
    limiter: Option<DefaultKeyedRateLimiter<String>>,
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
        Self { enabled: cfg.enabled, keys, limiter }
    }

    /// Decides a request: the caller, or the status that refuses it.
    pub fn check(&self, path: &str, headers: &http::HeaderMap) -> Result<Caller, Status> {
        if !self.enabled {
            return Ok(Caller { name: "anonymous".into(), role: Role::Operator });
        }
        let Some(need) = required(path) else {
            return Ok(Caller { name: "anonymous".into(), role: Role::Client });
        };
        let presented = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()));
        let Some(key) = presented.filter(|k| !k.is_empty()) else {
            return Err(Status::unauthenticated(
                "missing API key: send `authorization: Bearer <key>` or `x-api-key: <key>`",
            ));
        };
        let Some((name, role)) = self.keys.get(&hash_key(key)) else {
            return Err(Status::unauthenticated("unknown API key"));
        };
        if *role != Role::Operator && *role != need {
            return Err(Status::permission_denied(format!(
                "key {name:?} has role {role:?}; {path} needs role {need:?} (or Operator)"
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
        match self.authz.check(req.uri().path(), req.headers()) {
            Ok(caller) => {
                req.extensions_mut().insert(caller);
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                Box::pin(inner.call(req))
            }
            Err(status) => {
                tracing::debug!(path = req.uri().path(), code = ?status.code(), "request refused by access control");
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
                let r = a.check(p, &headers(key));
                assert_eq!(r.is_ok(), ok, "{key} on {p}: {r:?}");
                if !ok {
                    assert_eq!(r.unwrap_err().code(), tonic::Code::PermissionDenied);
                }
            }
        }
        assert_eq!(
            a.check(paths[0], &http::HeaderMap::new()).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        assert_eq!(a.check(paths[0], &headers("nope")).unwrap_err().code(), tonic::Code::Unauthenticated);
        assert!(a.check("/grpc.health.v1.Health/Check", &http::HeaderMap::new()).is_ok());
        assert!(
            a.check(
                "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
                &http::HeaderMap::new()
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
        };
        let a = Authz::new(&cfg, &[("internal".into(), "secret".into(), Role::Worker)]);
        let p = "/adflow.v1.EventIngest/SendEvent";
        assert!(a.check(p, &headers("k")).is_ok());
        assert!(a.check(p, &headers("k")).is_ok());
        assert_eq!(a.check(p, &headers("k")).unwrap_err().code(), tonic::Code::ResourceExhausted);
        assert!(a.check("/adflow.v1.WorkerService/Subscribe", &headers("secret")).is_ok());
        assert_eq!(hash_key("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}
