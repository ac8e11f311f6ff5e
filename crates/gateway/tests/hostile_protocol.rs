//! Hostile and careless clients at the protocol level (issue 12, items 2-5 and 7): bytes
//! the generated clients would never send, written straight onto a gRPC stream through a
//! codec that sends whatever it is given, against a real gateway on 127.0.0.1:0.
//! Resource bounds are asserted as counts and sizes, never as times.

mod common;

use adflow_domain::pb::{self, gateway_message, worker_message};
use bytes::{BufMut, Bytes};
use common::*;
use futures::stream::{self, StreamExt};
use prost::Message;
use std::marker::PhantomData;
use std::time::Duration;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;
use tonic::{Code, Status};

/// Sends `Bytes` as they are; decodes replies as `D`.
struct Raw<D>(PhantomData<D>);

impl<D> Default for Raw<D> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

struct RawEncoder;

impl Encoder for RawEncoder {
    type Item = Bytes;
    type Error = Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

struct ReplyDecoder<D>(PhantomData<D>);

impl<D: Message + Default> Decoder for ReplyDecoder<D> {
    type Item = D;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<D>, Status> {
        D::decode(src).map(Some).map_err(|e| Status::internal(format!("test client: {e}")))
    }
}

impl<D: Message + Default + Send + 'static> Codec for Raw<D> {
    type Encode = Bytes;
    type Decode = D;
    type Encoder = RawEncoder;
    type Decoder = ReplyDecoder<D>;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> ReplyDecoder<D> {
        ReplyDecoder(PhantomData)
    }
}

fn client(ch: Channel) -> tonic::client::Grpc<Channel> {
    tonic::client::Grpc::new(ch).max_decoding_message_size(256 << 20)
}

/// A unary call with `body` as the request message.
async fn unary<D: Message + Default + Send + 'static>(
    ch: Channel,
    path: &str,
    body: Bytes,
) -> Result<D, Status> {
    let mut g = client(ch);
    g.ready().await.unwrap();
    let path = http::uri::PathAndQuery::try_from(path).unwrap();
    g.unary(tonic::Request::new(body), path, Raw::<D>::default()).await.map(|r| r.into_inner())
}

/// A bidirectional call sending `msgs`; returns every reply and the final status.
async fn bidi<D: Message + Default + Send + 'static>(
    ch: Channel,
    path: &str,
    msgs: Vec<Bytes>,
) -> (Vec<D>, Status) {
    let mut g = client(ch);
    g.ready().await.unwrap();
    let name = path.to_owned();
    let path = http::uri::PathAndQuery::try_from(path).unwrap();
    // The request side stays open after `msgs`: the gateway, not the client, ends the call.
    let requests = stream::iter(msgs).chain(stream::pending());
    let mut inbound = match g.streaming(tonic::Request::new(requests), path, Raw::<D>::default()).await {
        Ok(r) => r.into_inner(),
        Err(s) => return (Vec::new(), s),
    };
    let mut replies = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(30), inbound.message()).await {
            Ok(Ok(Some(m))) => replies.push(m),
            Ok(Ok(None)) => return (replies, Status::ok("")),
            Ok(Err(s)) => return (replies, s),
            Err(_) => panic!("{name}: no reply or end within 30 s after {} replies", replies.len()),
        }
    }
}

fn enc(m: &impl Message) -> Bytes {
    m.encode_to_vec().into()
}

fn good_batch(prefix: &str, sequence: u64) -> pb::SendEventsRequest {
    let events = (0..3).map(|i| event(&format!("{prefix}-{i}"), "ad-1", pb::EventType::Click)).collect();
    pb::SendEventsRequest { events, sequence, ..Default::default() }
}

fn quiet_config(dir: &std::path::Path) -> adflow_gateway::Config {
    let mut cfg = config(dir);
    cfg.workers.in_process = 0; // the tests drive their own worker sessions
    cfg
}

/// `0a 05 01`: field 1, length-delimited, 5 bytes announced, 1 present.
const TRUNCATED: &[u8] = &[0x0a, 0x05, 0x01];

#[tokio::test]
async fn a_malformed_batch_inside_a_stream_ends_it_with_invalid_argument_after_the_earlier_replies() {
    let dir = tempfile::tempdir().unwrap();
    let gw = TestGateway::start(quiet_config(dir.path())).await;
    let msgs = vec![enc(&good_batch("s1", 1)), Bytes::from_static(TRUNCATED), enc(&good_batch("s3", 3))];
    let (replies, status): (Vec<pb::IngestReply>, _) =
        bidi(gw.channel().await, "/adflow.v1.EventIngest/StreamEvents", msgs).await;
    assert_eq!(replies.len(), 1, "the batch before the bad one is answered: {replies:?}");
    assert_eq!((replies[0].sequence, replies[0].accepted), (1, 3));
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("message 2 of the stream"), "{status:?}");
    assert!(status.message().contains("runs past the end"), "{status:?}");
    // Nothing after the bad message was taken: the third batch is new, the first a duplicate.
    let mut ingest = gw.ingest().await;
    let r = ingest.send_events(good_batch("s3", 0)).await.unwrap().into_inner();
    assert_eq!(r.accepted, 3);
    let r = ingest.send_events(good_batch("s1", 0)).await.unwrap().into_inner();
    assert_eq!(r.duplicates, 3);
    gw.stop().await;
}

#[tokio::test]
async fn an_oversized_batch_inside_a_stream_ends_it_with_resource_exhausted_naming_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let gw = TestGateway::start(quiet_config(dir.path())).await;
    let limit = gw.cfg.server.max_message_bytes;
    let mut huge = good_batch("big", 2);
    huge.events[0].attributes.insert("blob".into(), "x".repeat(20 << 20));
    let msgs = vec![enc(&good_batch("o1", 1)), enc(&huge), enc(&good_batch("o3", 3))];
    let (replies, status): (Vec<pb::IngestReply>, _) =
        bidi(gw.channel().await, "/adflow.v1.EventIngest/StreamEvents", msgs).await;
    assert_eq!(replies.iter().map(|r| r.sequence).collect::<Vec<_>>(), [1]);
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains(&format!("{limit} bytes")), "{status:?}");
    gw.stop().await;
}

fn hello() -> Bytes {
    let h = pb::Hello { worker_id: "hostile".into(), partitions: vec![], credits: 10 };
    enc(&pb::WorkerMessage { kind: Some(worker_message::Kind::Hello(h)) })
}

/// A `WorkerMessage` of acks without results, encoded by hand (2.5M `pb::Ack`s would
/// take the test itself hundreds of MB).
fn acks(ids: impl Iterator<Item = u64>) -> Bytes {
    let mut batch = Vec::new();
    for id in ids {
        let n = prost::encoding::encoded_len_varint(id);
        batch.extend_from_slice(&[0x0a, 1 + n as u8, 0x08]); // Ack { lease_id = 1 }
        prost::encoding::encode_varint(id, &mut batch);
    }
    let mut msg = vec![0x12]; // WorkerMessage.acks
    prost::encoding::encode_varint(batch.len() as u64, &mut msg);
    msg.extend_from_slice(&batch);
    msg.into()
}

#[tokio::test]
async fn a_malformed_worker_message_after_hello_ends_subscribe_with_invalid_argument() {
    let dir = tempfile::tempdir().unwrap();
    let gw = TestGateway::start(quiet_config(dir.path())).await;
    // Field 2 (acks), 5 bytes announced, 1 present.
    let bad = Bytes::from_static(&[0x12, 0x05, 0x01]);
    let (replies, status): (Vec<pb::GatewayMessage>, _) =
        bidi(gw.channel().await, "/adflow.v1.WorkerService/Subscribe", vec![hello(), bad]).await;
    assert!(matches!(replies[..], [pb::GatewayMessage { kind: Some(gateway_message::Kind::Welcome(_)) }]));
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("WorkerMessage"), "{status:?}");
    gw.stop().await;
}

#[tokio::test]
async fn an_oversized_worker_message_ends_subscribe_with_resource_exhausted() {
    let dir = tempfile::tempdir().unwrap();
    let gw = TestGateway::start(quiet_config(dir.path())).await;
    let mut big = vec![0x12, 0x84, 0x80, 0x80, 0x0a]; // acks, ~20 MiB announced
    big.resize(20 << 20, 0);
    let (replies, status): (Vec<pb::GatewayMessage>, _) =
        bidi(gw.channel().await, "/adflow.v1.WorkerService/Subscribe", vec![hello(), big.into()]).await;
    assert_eq!(replies.len(), 1, "only the Welcome");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("limit"), "{status:?}");
    gw.stop().await;
}

/// Every unary RPC of every adflow service, with a request of `body`.
const UNARY: &[&str] = &[
    "/adflow.v1.EventIngest/SendEvent",
    "/adflow.v1.EventIngest/SendEvents",
    "/adflow.v1.AdService/SubmitAd",
    "/adflow.v1.AdService/SubmitAds",
    "/adflow.v1.AdService/GetAd",
    "/adflow.v1.AdService/ListAds",
    "/adflow.v1.AdService/CancelAd",
    "/adflow.v1.Analytics/GetAdStats",
    "/adflow.v1.Analytics/TopAds",
    "/adflow.v1.Analytics/EventsByCampaign",
    "/adflow.v1.QueueControl/GetStats",
    "/adflow.v1.QueueControl/Peek",
    "/adflow.v1.QueueControl/SetPriority",
    "/adflow.v1.QueueControl/Reprioritize",
    "/adflow.v1.QueueControl/PausePartition",
    "/adflow.v1.QueueControl/ResumePartition",
    "/adflow.v1.QueueControl/GetPolicy",
    "/adflow.v1.QueueControl/SetPolicy",
    "/adflow.v1.QueueControl/ListDeadLetters",
    "/adflow.v1.QueueControl/RequeueDeadLetters",
    "/adflow.v1.QueueControl/PurgePartition",
    "/adflow.v1.QueueControl/ListWorkers",
    "/adflow.v1.AgentService/Execute",
    "/adflow.v1.AgentService/ListCommands",
];

#[tokio::test]
async fn undecodable_requests_answer_invalid_argument_on_every_service() {
    let dir = tempfile::tempdir().unwrap();
    let gw = TestGateway::start(quiet_config(dir.path())).await;
    let ch = gw.channel().await;
    let mut wrong = Vec::new();
    for path in UNARY {
        // Replies are decoded as an empty message: any reply decodes, only the status matters.
        match unary::<()>(ch.clone(), path, Bytes::from_static(TRUNCATED)).await {
            Err(s) if s.code() == Code::InvalidArgument && s.message().contains("malformed") => {}
            other => wrong.push(format!("{path}: {other:?}")),
        }
    }
    let mut g = client(ch.clone());
    g.ready().await.unwrap();
    let watch = http::uri::PathAndQuery::from_static("/adflow.v1.AdService/WatchAd");
    let r = g
        .server_streaming(tonic::Request::new(Bytes::from_static(TRUNCATED)), watch, Raw::<()>::default())
        .await;
    match r {
        Err(s) if s.code() == Code::InvalidArgument => {}
        Err(s) => wrong.push(format!("WatchAd: {s:?}")),
        Ok(mut s) => match s.get_mut().message().await {
            Err(s) if s.code() == Code::InvalidArgument => {}
            other => wrong.push(format!("WatchAd: {other:?}")),
        },
    }
    let (_, s): (Vec<pb::GatewayMessage>, _) =
        bidi(ch.clone(), "/adflow.v1.WorkerService/Subscribe", vec![Bytes::from_static(TRUNCATED)]).await;
    if s.code() != Code::InvalidArgument {
        wrong.push(format!("Subscribe: {s:?}"));
    }
    assert!(wrong.is_empty(), "not INVALID_ARGUMENT with a clear message:\n{}", wrong.join("\n"));
    // The message names the type and the field.
    let s =
        unary::<()>(ch.clone(), "/adflow.v1.AdService/GetAd", Bytes::from_static(&[0x0a, 0x02, 0xff, 0xfe]))
            .await
            .unwrap_err();
    assert_eq!(s.code(), Code::InvalidArgument);
    assert!(s.message().contains("GetAdRequest.id"), "{s:?}");
    // tonic's own health service: INVALID_ARGUMENT too (it said INTERNAL).
    let s = unary::<()>(ch.clone(), "/grpc.health.v1.Health/Check", Bytes::from_static(TRUNCATED))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
    gw.stop().await;
}

#[tokio::test]
async fn a_send_event_with_a_million_merged_event_parts_is_parsed_once() {
    let dir = tempfile::tempdir().unwrap();
    let gw = TestGateway::start(quiet_config(dir.path())).await;
    let first = event("merged-1", "ad-7", pb::EventType::Click);
    let mut req = pb::SendEventRequest { event: Some(first.clone()), ack_mode: 0 }.encode_to_vec();
    // 1M more parts of the `event` field, each `{type: IMPRESSION}`: 4 bytes each.
    const PARTS: usize = 1_000_000;
    req.reserve(4 * PARTS);
    for _ in 0..PARTS {
        req.extend_from_slice(&[0x0a, 0x02, 0x10, pb::EventType::Impression as u8]);
    }
    assert!(req.len() > 4_000_000);
    let want = pb::SendEventRequest::decode(&req[..]).unwrap().event.unwrap();
    assert_eq!(want.r#type, pb::EventType::Impression as i32, "a later part wins, as protobuf merges");
    let r: pb::IngestReply =
        unary(gw.channel().await, "/adflow.v1.EventIngest/SendEvent", req.into()).await.unwrap();
    assert_eq!(r.accepted, 1);
    let events_dir = gw.events_dir();
    gw.stop().await;
    let stored = stored(&events_dir).await;
    assert_eq!(stored.len(), 1);
    assert_eq!(pb::AdEvent::decode(&stored[0].raw[..]).unwrap(), want, "stored as protobuf merges it");
}

#[tokio::test]
async fn an_event_with_a_six_byte_field_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let gw = TestGateway::start(quiet_config(dir.path())).await;
    let e = event("long-key", "ad-7", pb::EventType::Click);
    let mut raw = e.encode_to_vec();
    // event_id again (field 1, LEN) with its key 0x0a padded to 6 bytes: prost reads it,
    // upb and C++ protobuf refuse it.
    raw.extend_from_slice(&[0x8a, 0x80, 0x80, 0x80, 0x80, 0x00, 0x01, b'x']);
    let req = pb::SendEventRequest { event: None, ack_mode: 0 }.encode_to_vec();
    let mut body = req;
    body.push(0x0a);
    prost::encoding::encode_varint(raw.len() as u64, &mut body);
    body.extend_from_slice(&raw);
    let s = unary::<pb::IngestReply>(gw.channel().await, "/adflow.v1.EventIngest/SendEvent", body.into())
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
    assert!(s.message().contains("6 bytes"), "{s:?}");
    // The same key in a request envelope refuses the request.
    let s = unary::<pb::IngestReply>(
        gw.channel().await,
        "/adflow.v1.EventIngest/SendEvents",
        Bytes::from_static(&[0x98, 0x80, 0x80, 0x80, 0x80, 0x00, 0x01]),
    )
    .await
    .unwrap_err();
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
    gw.stop().await;
}

#[tokio::test]
async fn a_worker_message_over_the_item_limit_is_refused_before_it_is_decoded() {
    let dir = tempfile::tempdir().unwrap();
    let gw = TestGateway::start(quiet_config(dir.path())).await;
    let limit = adflow_proto::codec::MAX_WORKER_ITEMS as u64;
    // 2.5M acks of unknown leases, ~15 MB: under the size limit, over the item limit.
    let flood = acks((0..2_500_000).map(|i| 16_384 + i % 100_000)); // 6 bytes each
    assert!(flood.len() > 15_000_000 && flood.len() < gw.cfg.server.max_message_bytes);
    let (replies, status): (Vec<pb::GatewayMessage>, _) =
        bidi(gw.channel().await, "/adflow.v1.WorkerService/Subscribe", vec![hello(), flood]).await;
    assert_eq!(
        replies.len(),
        1,
        "only the Welcome: {:?}",
        replies.iter().map(|m| m.encoded_len()).collect::<Vec<_>>()
    );
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("2500000") && status.message().contains(&limit.to_string()),
        "{status:?}"
    );
    // One item over the limit is refused the same way.
    let over = acks(1..limit + 2);
    let (replies, status): (Vec<pb::GatewayMessage>, _) =
        bidi(gw.channel().await, "/adflow.v1.WorkerService/Subscribe", vec![hello(), over]).await;
    assert_eq!((replies.len(), status.code()), (1, Code::InvalidArgument), "{status:?}");
    gw.stop().await;
}

#[tokio::test]
async fn refusals_of_a_full_ack_batch_are_summarised_not_echoed() {
    let dir = tempfile::tempdir().unwrap();
    let gw = TestGateway::start(quiet_config(dir.path())).await;
    let limit = adflow_proto::codec::MAX_WORKER_ITEMS as u64;
    let batch = acks(1u64 << 40..(1u64 << 40) + limit);
    let mut g = client(gw.channel().await);
    g.ready().await.unwrap();
    let path = http::uri::PathAndQuery::from_static("/adflow.v1.WorkerService/Subscribe");
    let requests = stream::iter(vec![hello(), batch]).chain(stream::pending());
    let mut inbound = g
        .streaming(tonic::Request::new(requests), path, Raw::<pb::GatewayMessage>::default())
        .await
        .unwrap()
        .into_inner();
    let welcome = inbound.message().await.unwrap().unwrap();
    assert!(matches!(welcome.kind, Some(gateway_message::Kind::Welcome(_))));
    let reply =
        tokio::time::timeout(Duration::from_secs(30), inbound.message()).await.unwrap().unwrap().unwrap();
    let size = reply.encoded_len();
    let Some(gateway_message::Kind::Refusals(r)) = reply.kind else {
        panic!("expected refusals, got {reply:?}")
    };
    assert_eq!(r.total as u64, limit, "every refused answer is counted");
    assert_eq!(r.refusals.len(), adflow_proto::codec::MAX_REFUSAL_DETAILS, "only the first are detailed");
    assert_eq!(r.refusals[0].lease_id, 1 << 40);
    assert_eq!(r.refusals[0].code, Code::NotFound as i32);
    assert!(size < 16 << 10, "the reply to {limit} unknown leases is {size} bytes");
    gw.stop().await;
}
