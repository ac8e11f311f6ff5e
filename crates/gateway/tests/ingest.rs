//! EventIngest end to end: counts, reasons, durability, dedup, backpressure, streams.

mod common;

use adflow_domain::pb::{self, AckMode, EventType, RejectReason};
use common::*;
use std::collections::HashSet;
use tonic::Code;

#[tokio::test]
async fn a_mixed_batch_gets_exact_counts_and_invalid_events_never_reach_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let gw = TestGateway::start(config(dir.path())).await;
    let mut c = gw.ingest().await;
    let mut no_ad = event("bad-1", "", EventType::Click);
    no_ad.ad_id.clear();
    let mut bad_type = event("bad-2", "ad-1", EventType::Click);
    bad_type.r#type = 0;
    let mut long_id = event(&"x".repeat(200), "ad-1", EventType::Click);
    long_id.country = "US".into();
    let events = vec![
        event("ok-1", "ad-1", EventType::Impression),
        event("ok-2", "ad-1", EventType::Click),
        no_ad,
        event("ok-1", "ad-1", EventType::Impression),
        bad_type,
        event("ok-3", "ad-2", EventType::Conversion),
        long_id,
    ];
    let r = c.send_events(batch(events)).await.unwrap().into_inner();
    assert_eq!((r.accepted, r.duplicates, r.rejected), (3, 1, 3));
    let got: Vec<_> = r.rejections.iter().map(|x| (x.index, x.field.as_str(), x.reason)).collect();
    assert_eq!(
        got,
        vec![
            (2, "ad_id", RejectReason::MissingField as i32),
            (4, "type", RejectReason::MissingField as i32),
            (6, "event_id", RejectReason::OutOfRange as i32),
        ]
    );
    assert_eq!(r.rejections[2].message, "event_id is 200 bytes, the limit is 128");
    assert_eq!(r.ack_mode, AckMode::Durable as i32);
    let dir_events = gw.events_dir();
    gw.stop().await;
    let ids: Vec<_> = stored(&dir_events).await.into_iter().map(|e| e.event().unwrap().event_id).collect();
    assert_eq!(ids, vec!["ok-1", "ok-2", "ok-3"]);
}

#[tokio::test]
async fn a_single_invalid_event_is_refused_with_the_field_named() {
    let dir = tempfile::tempdir().unwrap();
    let gw = TestGateway::start(config(dir.path())).await;
    let mut c = gw.ingest().await;
    let mut e = event("e1", "ad-1", EventType::Click);
    e.country = "usa".into();
    let err = c.send_event(pb::SendEventRequest { event: Some(e), ..Default::default() }).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("country"), "{}", err.message());
    let err = c.send_event(pb::SendEventRequest::default()).await.unwrap_err();
    assert_eq!((err.code(), err.message()), (Code::InvalidArgument, "event is required"));
    let err = c.send_events(batch(vec![])).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let many = (0..10_001).map(|i| event(&format!("m{i}"), "ad", EventType::Impression)).collect();
    let err = c.send_events(batch(many)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("10001 events, the limit is 10000"), "{}", err.message());
    let ok = c
        .send_event(pb::SendEventRequest {
            event: Some(event("e2", "ad-1", EventType::Click)),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ok.accepted, 1);
    gw.stop().await;
}

#[tokio::test]
async fn durable_acked_events_are_all_read_back_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let gw = TestGateway::start(config(dir.path())).await;
    let mut tasks = Vec::new();
    for t in 0..8 {
        let mut c = gw.ingest().await;
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for b in 0..10 {
                let evs: Vec<_> = (0..50)
                    .map(|i| event(&format!("d-{t}-{b}-{i}"), "ad-1", EventType::Impression))
                    .collect();
                let r = c.send_events(batch(evs.clone())).await.unwrap().into_inner();
                assert_eq!(r.accepted, 50);
                acked.extend(evs.into_iter().map(|e| e.event_id));
            }
            acked
        }));
    }
    let mut acked = HashSet::new();
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    let cfg = gw.cfg.clone();
    gw.stop().await;
    let gw = TestGateway::start(cfg.clone()).await;
    // The dedup window was rebuilt from the store: resending is harmless.
    let mut c = gw.ingest().await;
    let again: Vec<_> =
        (0..50).map(|i| event(&format!("d-3-4-{i}"), "ad-1", EventType::Impression)).collect();
    let r = c.send_events(batch(again)).await.unwrap().into_inner();
    assert_eq!((r.accepted, r.duplicates), (0, 50));
    gw.stop().await;
    let ids: Vec<_> =
        stored(&cfg.storage.file.dir).await.into_iter().map(|e| e.event().unwrap().event_id).collect();
    assert_eq!(ids.len(), 4000, "no event stored twice, none lost");
    assert_eq!(ids.iter().cloned().collect::<HashSet<_>>(), acked);
}

#[tokio::test]
async fn resending_the_same_ids_gives_duplicates_and_no_second_copy() {
    let dir = tempfile::tempdir().unwrap();
    let gw = TestGateway::start(config(dir.path())).await;
    let mut c = gw.ingest().await;
    let evs: Vec<_> = (0..20).map(|i| event(&format!("r{i}"), "ad-1", EventType::Click)).collect();
    let first = c.send_events(batch(evs.clone())).await.unwrap().into_inner();
    assert_eq!((first.accepted, first.duplicates), (20, 0));
    let second = c.send_events(batch(evs.clone())).await.unwrap().into_inner();
    assert_eq!((second.accepted, second.duplicates), (0, 20));
    let one = c
        .send_event(pb::SendEventRequest { event: Some(evs[3].clone()), ack_mode: AckMode::Accepted as i32 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((one.accepted, one.duplicates), (0, 1));
    let d = gw.events_dir();
    gw.stop().await;
    assert_eq!(stored(&d).await.len(), 20);
}

#[tokio::test]
async fn a_full_pipeline_answers_resource_exhausted_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    // The batcher lingers 1.5 s for a batch that never fills, so the queue stays full.
    cfg.ingest.queue_capacity_events = 100;
    cfg.ingest.max_events_per_request = 100;
    cfg.ingest.max_batch_events = 1_000_000;
    cfg.ingest.max_batch_delay_ms = 1_500;
    let gw = TestGateway::start(cfg).await;
    let mut c = gw.ingest().await;
    let fill = |p: &str| {
        let evs = (0..100).map(|i| event(&format!("{p}{i}"), "ad-1", EventType::Impression)).collect();
        pb::SendEventsRequest { events: evs, ack_mode: AckMode::Accepted as i32, sequence: 0 }
    };
    let r = c.send_events(fill("a")).await.unwrap().into_inner();
    assert_eq!(r.accepted, 100);
    let err = c.send_events(fill("b")).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(err.message().contains("100 of 100 events"), "{}", err.message());
    // The refused events left no trace in the dedup window: once room frees up, they go in.
    let mut accepted = 0;
    for _ in 0..100 {
        match c.send_events(fill("b")).await {
            Ok(r) => {
                accepted = r.into_inner().accepted;
                break;
            }
            Err(e) => {
                assert_eq!(e.code(), Code::ResourceExhausted);
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
    assert_eq!(accepted, 100);
    let d = gw.events_dir();
    gw.stop().await;
    assert_eq!(stored(&d).await.len(), 200);
}

#[tokio::test]
async fn a_stream_gets_one_reply_per_batch_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let gw = TestGateway::start(config(dir.path())).await;
    let mut c = gw.ingest().await;
    let batches: Vec<_> = (0..20u64)
        .map(|s| {
            let mut evs: Vec<_> =
                (0..30).map(|i| event(&format!("s-{s}-{i}"), "ad-1", EventType::Impression)).collect();
            evs[0].ad_id.clear(); // one reject per batch
            if s > 0 {
                evs[1].event_id = format!("s-{}-5", s - 1); // one duplicate of the previous batch
            }
            pb::SendEventsRequest { events: evs, ack_mode: 0, sequence: 1000 + s }
        })
        .collect();
    let mut replies = c.stream_events(tokio_stream::iter(batches)).await.unwrap().into_inner();
    let mut seen = Vec::new();
    while let Some(r) = replies.message().await.unwrap() {
        seen.push((r.sequence, r.accepted, r.duplicates, r.rejected));
    }
    let want: Vec<_> =
        (0..20u64).map(|s| (1000 + s, if s > 0 { 28 } else { 29 }, (s > 0) as u32, 1)).collect();
    assert_eq!(seen, want);
    let d = gw.events_dir();
    gw.stop().await;
    assert_eq!(stored(&d).await.len(), 29 + 19 * 28);
}

#[tokio::test]
async fn shutdown_writes_every_event_accepted_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.ingest.max_batch_delay_ms = 300;
    cfg.ingest.max_batch_events = 1_000_000;
    let gw = TestGateway::start(cfg).await;
    let mut c = gw.ingest().await;
    for b in 0..10 {
        let evs = (0..100).map(|i| event(&format!("g-{b}-{i}"), "ad-1", EventType::Impression)).collect();
        let r = c
            .send_events(pb::SendEventsRequest {
                events: evs,
                ack_mode: AckMode::Accepted as i32,
                sequence: 0,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.ack_mode, AckMode::Accepted as i32);
    }
    let d = gw.events_dir();
    gw.stop().await;
    assert_eq!(stored(&d).await.len(), 1000);
}

#[tokio::test]
async fn a_torn_segment_tail_is_recovered_by_the_gateway_with_every_earlier_record() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let gw = TestGateway::start(cfg.clone()).await;
    let mut c = gw.ingest().await;
    let evs: Vec<_> = (0..10).map(|i| event(&format!("t{i}"), "ad-1", EventType::Click)).collect();
    c.send_events(batch(evs)).await.unwrap();
    c.send_events(batch(vec![event("t-last", "ad-1", EventType::Click)])).await.unwrap();
    gw.stop().await;
    let seg = std::fs::read_dir(&cfg.storage.file.dir).unwrap().next().unwrap().unwrap().path();
    let len = std::fs::metadata(&seg).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&seg).unwrap().set_len(len - 7).unwrap();

    let gw = TestGateway::start(cfg.clone()).await;
    let mut c = gw.ingest().await;
    // The torn event was never fully written, so it can be sent again.
    let r = c.send_events(batch(vec![event("t-last", "ad-1", EventType::Click)])).await.unwrap().into_inner();
    assert_eq!(r.accepted, 1);
    gw.stop().await;
    let ids: Vec<_> =
        stored(&cfg.storage.file.dir).await.into_iter().map(|e| e.event().unwrap().event_id).collect();
    let want: Vec<_> = (0..10).map(|i| format!("t{i}")).chain(["t-last".to_string()]).collect();
    assert_eq!(ids, want);
}

/// A batch many times the HTTP/2 stream window (512 KiB by default) still flows: the
/// window bounds what is buffered, not how large a message may be.
#[tokio::test]
async fn a_batch_far_larger_than_the_flow_control_window_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let gw = TestGateway::start(config(dir.path())).await;
    assert!(gw.cfg.server.http2_stream_window_kib <= 1024);
    let mut c = gw.ingest().await;
    let evs: Vec<_> = (0..10_000)
        .map(|i| {
            let mut e = event(&format!("wide-{i}"), "ad-1", EventType::Click);
            e.attributes.insert("pad".into(), "x".repeat(250));
            e
        })
        .collect();
    let b = batch(evs);
    assert!(prost::Message::encoded_len(&b) > (4 * gw.cfg.server.http2_stream_window_kib as usize) << 10);
    let ok = c.send_events(b).await.unwrap().into_inner();
    assert_eq!(ok.accepted, 10_000);
    gw.stop().await;
}

#[tokio::test]
async fn a_message_over_the_size_limit_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.server.max_message_bytes = 4096;
    let gw = TestGateway::start(cfg).await;
    let mut c = gw.ingest().await;
    let evs: Vec<_> = (0..100).map(|i| event(&format!("big-{i}"), "ad-1", EventType::Click)).collect();
    let err = c.send_events(batch(evs)).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{}", err.message());
    assert!(err.message().contains("4096"), "{}", err.message());
    assert!(err.message().contains("server.max_message_bytes"), "{}", err.message());
    // Small requests still work.
    let ok = c.send_events(batch(vec![event("small", "ad-1", EventType::Click)])).await.unwrap().into_inner();
    assert_eq!(ok.accepted, 1);
    gw.stop().await;
}
