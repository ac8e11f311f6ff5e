//! The dashboard's JSON API: `POST /api/<gRPC method path>` with the request message as
//! JSON answers the response message as JSON, e.g. `POST /api/adflow.v1.Analytics/TopAds`
//! with `{"metric": "METRIC_CLICKS", "limit": 10}`.
//!
//! There is no second implementation of anything here. A call is transcoded from JSON to
//! the protobuf request with the gateway's own descriptor set (the proto3 JSON mapping,
//! as grpcurl speaks it: field names as in the .proto, enums by name), checked by the very
//! `Authz` the gRPC server uses *for the same method path* (so roles, rate limits and
//! failed-auth throttling are identical), and handed as a `tonic::Request` to the same
//! service object the gRPC server serves (shared `Arc`s). Its answer, or its `Status`, is
//! transcoded back. Only reads and the agent are exposed: the page changes the queue only
//! through `AgentService.Execute`, whose wide or disruptive plans need a confirmation.

use crate::auth::{Authz, Caller};
use crate::services::ads::AdsService;
use crate::services::agent::AgentSvc;
use crate::services::analytics::AnalyticsService;
use crate::services::queue_control::QueueControlService;
use adflow_domain::pb;
use bytes::Bytes;
use futures::future::BoxFuture;
use http::StatusCode;
use pb::ad_service_server::AdService as _;
use pb::agent_service_server::AgentService as _;
use pb::analytics_server::Analytics as _;
use pb::queue_control_server::QueueControl as _;
use prost_reflect::{DescriptorPool, DeserializeOptions, DynamicMessage, MethodDescriptor, SerializeOptions};
use std::net::IpAddr;
use std::sync::Arc;
use tonic::{Code, Request, Status};

/// The service objects the gRPC server serves, shared with the dashboard.
#[derive(Clone)]
pub struct Services {
    /// `adflow.v1.Analytics`.
    pub analytics: Arc<AnalyticsService>,
    /// `adflow.v1.AdService`.
    pub ads: Arc<AdsService>,
    /// `adflow.v1.QueueControl`.
    pub control: Arc<QueueControlService>,
    /// `adflow.v1.AgentService`.
    pub agent: Arc<AgentSvc>,
}

/// A call of one RPC with its protobuf-encoded request; answers the encoded response.
type Handler = fn(Arc<Services>, Bytes, Caller) -> BoxFuture<'static, Result<Vec<u8>, Status>>;

/// Calls `$svc.$method` with the request decoded as `$req`, the caller in its extensions
/// (as the gRPC auth layer puts it there).
macro_rules! rpc {
    ($svc:ident, $method:ident, $req:ty) => {
        |s: Arc<Services>, body: Bytes, caller: Caller| {
            Box::pin(async move {
                let msg = <$req as prost::Message>::decode(body)
                    .map_err(|e| Status::invalid_argument(format!("undecodable request: {e}")))?;
                let mut req = Request::new(msg);
                req.extensions_mut().insert(caller);
                let resp = s.$svc.$method(req).await?;
                Ok(prost::Message::encode_to_vec(resp.get_ref()))
            })
        }
    };
}

/// The methods the page may call, by gRPC path.
fn handler(path: &str) -> Option<Handler> {
    let h: Handler = match path {
        "/adflow.v1.Analytics/GetAdStats" => rpc!(analytics, get_ad_stats, pb::GetAdStatsRequest),
        "/adflow.v1.Analytics/TopAds" => rpc!(analytics, top_ads, pb::TopAdsRequest),
        "/adflow.v1.Analytics/EventsByCampaign" => {
            rpc!(analytics, events_by_campaign, pb::EventsByCampaignRequest)
        }
        "/adflow.v1.AdService/GetAd" => rpc!(ads, get_ad, pb::GetAdRequest),
        "/adflow.v1.AdService/ListAds" => rpc!(ads, list_ads, pb::ListAdsRequest),
        "/adflow.v1.QueueControl/GetStats" => rpc!(control, get_stats, pb::GetStatsRequest),
        "/adflow.v1.QueueControl/Peek" => rpc!(control, peek, pb::PeekRequest),
        "/adflow.v1.QueueControl/GetPolicy" => rpc!(control, get_policy, pb::GetPolicyRequest),
        "/adflow.v1.QueueControl/ListDeadLetters" => {
            rpc!(control, list_dead_letters, pb::ListDeadLettersRequest)
        }
        "/adflow.v1.QueueControl/ListWorkers" => rpc!(control, list_workers, pb::ListWorkersRequest),
        "/adflow.v1.AgentService/Execute" => rpc!(agent, execute, pb::ExecuteRequest),
        "/adflow.v1.AgentService/ListCommands" => rpc!(agent, list_commands, pb::ListCommandsRequest),
        _ => return None,
    };
    Some(h)
}

/// The paths `handler` knows (for the "not exposed" message and the tests).
pub const EXPOSED: [&str; 12] = [
    "/adflow.v1.Analytics/GetAdStats",
    "/adflow.v1.Analytics/TopAds",
    "/adflow.v1.Analytics/EventsByCampaign",
    "/adflow.v1.AdService/GetAd",
    "/adflow.v1.AdService/ListAds",
    "/adflow.v1.QueueControl/GetStats",
    "/adflow.v1.QueueControl/Peek",
    "/adflow.v1.QueueControl/GetPolicy",
    "/adflow.v1.QueueControl/ListDeadLetters",
    "/adflow.v1.QueueControl/ListWorkers",
    "/adflow.v1.AgentService/Execute",
    "/adflow.v1.AgentService/ListCommands",
];

/// A JSON answer: status and body.
pub type JsonReply = (StatusCode, Vec<u8>);

/// The HTTP status of a gRPC code (as grpc-gateway maps them).
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::InvalidArgument | Code::OutOfRange | Code::FailedPrecondition => StatusCode::BAD_REQUEST,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Cancelled => StatusCode::REQUEST_TIMEOUT,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// `{"code": "INVALID_ARGUMENT", "message": "..."}` with the matching HTTP status.
pub fn error(code: Code, message: &str) -> JsonReply {
    let name = format!("{code:?}");
    // "InvalidArgument" -> "INVALID_ARGUMENT", the name gRPC documents.
    let mut upper = String::with_capacity(name.len() + 4);
    for (i, c) in name.chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            upper.push('_');
        }
        upper.push(c.to_ascii_uppercase());
    }
    let body = serde_json::json!({ "code": upper, "message": message });
    (http_status(code), body.to_string().into_bytes())
}

fn status_reply(s: &Status) -> JsonReply {
    error(s.code(), s.message())
}

/// The transcoder and the services behind it.
pub struct Api {
    pool: DescriptorPool,
    services: Arc<Services>,
    authz: Arc<Authz>,
}

impl Api {
    /// An API over `services`, checked by `authz`.
    pub fn new(services: Services, authz: Arc<Authz>) -> anyhow::Result<Self> {
        let pool = DescriptorPool::decode(adflow_proto::FILE_DESCRIPTOR_SET)?;
        Ok(Self { pool, services: Arc::new(services), authz })
    }

    /// The access check of `path` (a gRPC method path) for these headers.
    pub fn check(
        &self,
        path: &str,
        headers: &http::HeaderMap,
        peer: Option<IpAddr>,
    ) -> Result<Caller, Status> {
        self.authz.check(path, headers, peer)
    }

    fn method(&self, path: &str) -> Option<MethodDescriptor> {
        let (service, method) = path.strip_prefix('/')?.split_once('/')?;
        self.pool.get_service_by_name(service)?.methods().find(|m| m.name() == method)
    }

    /// Serves `POST /api{path}` with the JSON `body`.
    pub async fn call(
        &self,
        path: &str,
        headers: &http::HeaderMap,
        peer: Option<IpAddr>,
        body: &[u8],
    ) -> JsonReply {
        let Some(method) = self.method(path) else {
            return error(
                Code::NotFound,
                &format!(
                    "no RPC {}; the dashboard API is POST /api/<gRPC method path>, e.g. /api/adflow.v1.QueueControl/GetStats",
                    adflow_domain::validate::trunc(path)
                ),
            );
        };
        let Some(call) = handler(path) else {
            return error(
                Code::NotFound,
                &format!(
                    "{path} is not served to the dashboard: it reads, and changes the queue only through \
                     /api/adflow.v1.AgentService/Execute (previewed, confirmed); use gRPC for the rest"
                ),
            );
        };
        // Access first: nothing about the request is looked at for a caller without rights.
        let caller = match self.check(path, headers, peer) {
            Ok(c) => c,
            Err(s) => return status_reply(&s),
        };
        let input = method.input();
        let body = if body.iter().all(u8::is_ascii_whitespace) { b"{}".as_slice() } else { body };
        let mut de = serde_json::Deserializer::from_slice(body);
        let request =
            DynamicMessage::deserialize_with_options(input.clone(), &mut de, &DeserializeOptions::new())
                .and_then(|m| de.end().map(|_| m));
        let request = match request {
            Ok(m) => prost::Message::encode_to_vec(&m),
            Err(e) => {
                return error(
                    Code::InvalidArgument,
                    &format!("the body is not a JSON {} (proto3 JSON mapping): {e}", input.full_name()),
                );
            }
        };
        let reply = call(self.services.clone(), Bytes::from(request), caller).await;
        match reply.and_then(|bytes| self.to_json(&method, &bytes)) {
            Ok(json) => (StatusCode::OK, json),
            Err(s) => {
                tracing::debug!(path, code = ?s.code(), "dashboard API call refused");
                status_reply(&s)
            }
        }
    }

    /// The response message as JSON: proto field names, enums by name, every field
    /// (defaults too, so the page needs no knowledge of proto3 defaults), 64-bit integers
    /// as numbers (counts and Unix milliseconds stay far below 2^53).
    fn to_json(&self, method: &MethodDescriptor, bytes: &[u8]) -> Result<Vec<u8>, Status> {
        let internal = |e: String| Status::internal(format!("encoding the answer as JSON: {e}"));
        let msg = DynamicMessage::decode(method.output(), bytes).map_err(|e| internal(e.to_string()))?;
        let opts = SerializeOptions::new()
            .stringify_64_bit_integers(false)
            .use_proto_field_name(true)
            .skip_default_fields(false);
        let mut ser = serde_json::Serializer::new(Vec::with_capacity(bytes.len() * 2));
        msg.serialize_with_options(&mut ser, &opts).map_err(|e| internal(e.to_string()))?;
        Ok(ser.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_exposed_path_has_a_handler_and_a_method_in_the_descriptors() {
        let pool = DescriptorPool::decode(adflow_proto::FILE_DESCRIPTOR_SET).unwrap();
        for p in EXPOSED {
            assert!(handler(p).is_some(), "{p}");
            let (s, m) = p[1..].split_once('/').unwrap();
            assert!(pool.get_service_by_name(s).unwrap().methods().any(|x| x.name() == m), "{p}");
        }
        assert!(handler("/adflow.v1.QueueControl/PurgePartition").is_none());
    }

    #[test]
    fn codes_map_to_http_and_keep_their_grpc_name() {
        let (status, body) = error(Code::InvalidArgument, "limit 5000 is above the maximum of 1000");
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["code"], "INVALID_ARGUMENT");
        assert_eq!(error(Code::PermissionDenied, "").0, StatusCode::FORBIDDEN);
        assert_eq!(error(Code::Unauthenticated, "").0, StatusCode::UNAUTHORIZED);
    }
}
