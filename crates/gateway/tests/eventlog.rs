//! EventLog through a real gateway, as a downstream consumer uses it (issue 16): reads
//! from every kind of start, filters, resumable cursors, follow mode seeing new commits
//! in order, consumer groups resuming after a gateway restart, the reader role, the disk
//! watermark refusing ingest, and hostile arguments refused with their reason.

mod common;

use adflow_domain::pb::{self, EventType};
use adflow_gateway::auth::{ApiKey, Role, hash_key};
use common::{TestGateway, batch, config, event};
use pb::event_log_client::EventLogClient;
use pb::read_request::Start;
use std::time::Duration;
use tokio_stream::StreamExt;
use tonic::Code;
use tonic::transport::Channel;

type Log = EventLogClient<Channel>;

async fn log(gw: &TestGateway) -> Log {
    EventLogClient::new(gw.channel().await)
}

/// Sends events `from..to` (ad "ad-<i % 3>", campaign "cmp-1", a click every 4th).
async fn send(gw: &TestGateway, ids: std::ops::Range<usize>) {
    let mut c = gw.ingest().await;
    let all: Vec<usize> = ids.collect();
    for chunk in all.chunks(200) {
        let events = chunk
            .iter()
            .map(|i| {
                let t = if i % 4 == 0 { EventType::Click } else { EventType::Impression };
                event(&format!("log-{i:05}"), &format!("ad-{}", i % 3), t)
            })
            .collect();
        let r = c.send_events(batch(events)).await.unwrap().into_inner();
        assert_eq!(r.accepted as usize, chunk.len());
    }
}

fn ids(b: &pb::ReadBatch) -> Vec<String> {
    b.events.iter().map(|e| e.event.as_ref().unwrap().event_id.clone()).collect()
}

/// Reads a non-following stream to its end: every id and the last cursor.
async fn read_all(c: &mut Log, req: pb::ReadRequest) -> (Vec<String>, String, Vec<pb::ReadBatch>) {
    let mut s = c.read(req).await.unwrap().into_inner();
    let (mut out, mut cursor, mut batches) = (Vec::new(), String::new(), Vec::new());
    while let Some(b) = s.next().await {
        let b = b.unwrap();
        assert!(b.events.len() <= 10_000);
        out.extend(ids(&b));
        cursor = b.cursor.clone();
        batches.push(b);
    }
    (out, cursor, batches)
}

fn expected(r: std::ops::Range<usize>) -> Vec<String> {
    r.map(|i| format!("log-{i:05}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_from_every_start_with_filters_and_resumable_cursors() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.storage.file.segment_bytes = 16 << 10; // many segments
    let gw = TestGateway::start(cfg).await;
    send(&gw, 0..1000).await;
    let mut c = log(&gw).await;

    // Oldest, in pages of 64: everything once, in commit order.
    let req = pb::ReadRequest { max_batch_events: 64, ..Default::default() };
    let (got, end, batches) = read_all(&mut c, req).await;
    assert_eq!(got, expected(0..1000));
    assert!(batches.iter().all(|b| b.events.len() <= 64));
    assert!(batches.last().unwrap().caught_up);

    // Resuming from any batch's cursor continues right after it: no gap, no repeat.
    let mid = &batches[5];
    let start = Some(Start::Cursor(mid.cursor.clone()));
    let (rest, _, _) = read_all(&mut c, pb::ReadRequest { start, ..Default::default() }).await;
    assert_eq!(rest, expected(6 * 64..1000));

    // Newest: nothing now; after more commits, just those.
    let start = Some(Start::Position(pb::StartPosition::Newest as i32));
    let (none, newest, _) = read_all(&mut c, pb::ReadRequest { start, ..Default::default() }).await;
    assert!(none.is_empty());
    assert_eq!(newest, end, "the newest position is where the full read ended");
    send(&gw, 1000..1010).await;
    let (later, _, _) =
        read_all(&mut c, pb::ReadRequest { start: Some(Start::Cursor(newest)), ..Default::default() }).await;
    assert_eq!(later, expected(1000..1010));

    // A time after everything: nothing; before everything: everything.
    let future = Some(Start::FromTimeMs(common::now_ms() + 60_000));
    assert!(read_all(&mut c, pb::ReadRequest { start: future, ..Default::default() }).await.0.is_empty());
    let past = Some(Start::FromTimeMs(0));
    assert_eq!(read_all(&mut c, pb::ReadRequest { start: past, ..Default::default() }).await.0.len(), 1010);

    // Filters: one ad's clicks.
    let req = pb::ReadRequest {
        ad_ids: vec!["ad-1".into()],
        event_types: vec![EventType::Click as i32],
        ..Default::default()
    };
    let want: Vec<String> =
        (0..1010).filter(|i| i % 3 == 1 && i % 4 == 0).map(|i| format!("log-{i:05}")).collect();
    assert_eq!(read_all(&mut c, req).await.0, want);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_mode_streams_new_commits_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let gw = TestGateway::start(config(dir.path())).await;
    send(&gw, 0..10).await;
    let mut c = log(&gw).await;
    let req = pb::ReadRequest { follow: true, ..Default::default() };
    let mut s = c.read(req).await.unwrap().into_inner();
    let mut got = Vec::new();
    while got.len() < 10 {
        got.extend(ids(&s.next().await.unwrap().unwrap()));
    }
    // New commits arrive on the open stream, in order, while it stays open.
    for round in 0..5 {
        let from = 10 + round * 50;
        send(&gw, from..from + 50).await;
        while got.len() < from + 50 {
            let b = tokio::time::timeout(Duration::from_secs(10), s.next())
                .await
                .expect("a batch")
                .unwrap()
                .unwrap();
            got.extend(ids(&b));
        }
    }
    assert_eq!(got, expected(0..260));
    drop(s);
    gw.stop().await;
}

/// Follows from NEWEST with `max_batch_events` `batch` until `n` events arrived; after its
/// first batch it reads nothing until `go` fires (flow control holds it back meanwhile).
async fn follow_n(ch: Channel, batch: u32, n: usize, go: tokio::sync::watch::Receiver<bool>) -> Vec<String> {
    let mut c = EventLogClient::new(ch);
    let req = pb::ReadRequest {
        follow: true,
        max_batch_events: batch,
        start: Some(Start::Position(pb::StartPosition::Newest as i32)),
        ..Default::default()
    };
    let mut s = c.read(req).await.unwrap().into_inner();
    // The first batch says where the log ends: from then on every commit is ours.
    let mut got = ids(&s.next().await.unwrap().unwrap());
    let mut go = go;
    go.wait_for(|g| *g).await.unwrap();
    while got.len() < n {
        let b =
            tokio::time::timeout(Duration::from_secs(20), s.next()).await.expect("a batch").unwrap().unwrap();
        assert!(batch == 0 || b.events.len() <= batch as usize);
        got.extend(ids(&b));
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_see_every_commit_once_in_order_across_rotations_and_a_full_tail() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    // Small segments (many rotations) and the smallest in-memory tail (1 MiB), which the
    // held-back follower falls out of: it reads from disk, then from memory again.
    cfg.storage.file.segment_bytes = 64 << 10;
    cfg.storage.file.tail_cache_mb = 1;
    let gw = std::sync::Arc::new(TestGateway::start(cfg).await);
    let n = 30_000;
    let ((_keep, now), later) = (tokio::sync::watch::channel(true), tokio::sync::watch::channel(false));
    let mut followers = Vec::new();
    for (batch, go) in [(3, now.clone()), (7, now), (0, later.1.clone())] {
        let ch = gw.channel().await;
        followers.push(tokio::spawn(follow_n(ch, batch, n, go)));
    }
    tokio::time::sleep(Duration::from_millis(300)).await; // every follower has its first batch
    let writers: Vec<_> = (0..3)
        .map(|w| {
            let gw = gw.clone();
            tokio::spawn(async move { send(&gw, w * n / 3..(w + 1) * n / 3).await })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    let mut c = log(&gw).await;
    let (stored, _, _) = read_all(&mut c, pb::ReadRequest::default()).await;
    assert_eq!(stored.len(), n);
    let bytes: u64 = std::fs::read_dir(gw.events_dir())
        .unwrap()
        .filter_map(|e| e.ok()?.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum();
    assert!(bytes > 2 << 20, "the held-back follower must fall out of the 1 MiB tail ({bytes} bytes stored)");
    later.0.send_replace(true);
    for f in followers {
        assert_eq!(f.await.unwrap(), stored, "a follower missed, repeated or reordered events");
    }
    std::sync::Arc::into_inner(gw).expect("every task ended").stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_group_resumes_at_its_committed_cursor_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let gw = TestGateway::start(cfg.clone()).await;
    send(&gw, 0..300).await;
    let mut c = log(&gw).await;
    let e = c.get_cursor(pb::GetCursorRequest { group: "billing".into() }).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    // Process 2 batches of 100, commit after each; a third is read but not committed.
    let req = pb::ReadRequest { group: "billing".into(), max_batch_events: 100, ..Default::default() };
    let mut s = c.read(req.clone()).await.unwrap().into_inner();
    for _ in 0..2 {
        let b = s.next().await.unwrap().unwrap();
        c.commit_cursor(pb::CommitCursorRequest { group: "billing".into(), cursor: b.cursor }).await.unwrap();
    }
    let uncommitted = ids(&s.next().await.unwrap().unwrap());
    assert_eq!(uncommitted, expected(200..300));
    drop(s);
    gw.stop().await;

    let gw = TestGateway::start(cfg).await;
    send(&gw, 300..350).await;
    let mut c = log(&gw).await;
    let (got, end, _) = read_all(&mut c, req).await;
    // At-least-once: the uncommitted batch again, then what is new; nothing committed twice.
    assert_eq!(got, expected(200..350));
    c.commit_cursor(pb::CommitCursorRequest { group: "billing".into(), cursor: end.clone() }).await.unwrap();
    let pos = c.get_cursor(pb::GetCursorRequest { group: "billing".into() }).await.unwrap().into_inner();
    assert_eq!((pos.cursor, pos.lost_events), (end, 0));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_arguments_are_refused_with_their_reason() {
    let dir = tempfile::tempdir().unwrap();
    let gw = TestGateway::start(config(dir.path())).await;
    send(&gw, 0..5).await;
    let mut c = log(&gw).await;
    let cases = [
        (pb::ReadRequest { max_batch_events: 1_000_000_000, ..Default::default() }, "max_batch_events"),
        (pb::ReadRequest { start: Some(Start::Cursor("x".repeat(100_000))), ..Default::default() }, "cursor"),
        (pb::ReadRequest { start: Some(Start::Cursor("nope".into())), ..Default::default() }, "cursor"),
        (pb::ReadRequest { start: Some(Start::Cursor("99:0".into())), ..Default::default() }, "past the end"),
        (pb::ReadRequest { start: Some(Start::Position(77)), ..Default::default() }, "position"),
        (pb::ReadRequest { group: "../../etc/passwd".into(), ..Default::default() }, "group name"),
        (pb::ReadRequest { group: "g".repeat(65), ..Default::default() }, "group name"),
        (pb::ReadRequest { group: "..".into(), ..Default::default() }, "group name"),
        (pb::ReadRequest { ad_ids: vec!["a".into(); 101], ..Default::default() }, "ad_ids"),
        (pb::ReadRequest { event_types: vec![99], ..Default::default() }, "event_types"),
    ];
    for (req, says) in cases {
        let e = c.read(req).await.expect_err("refused");
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(e.message().contains(says), "{says}: {}", e.message());
        assert!(e.message().len() < 300, "the message echoes at most a little of the input");
    }
    let e = c
        .commit_cursor(pb::CommitCursorRequest { group: "ok".into(), cursor: "5:99999999".into() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_readers_and_operators_read_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.auth.enabled = true;
    cfg.auth.keys = vec![
        ApiKey { name: "game".into(), role: Role::Client, sha256: hash_key("client-key") },
        ApiKey { name: "warehouse".into(), role: Role::Reader, sha256: hash_key("reader-key") },
        ApiKey { name: "ops".into(), role: Role::Operator, sha256: hash_key("ops-key") },
    ];
    let gw = TestGateway::start(cfg).await;
    let ch = gw.channel().await;
    for (key, code) in [
        ("client-key", Some(Code::PermissionDenied)),
        ("reader-key", None),
        ("ops-key", None),
        ("wrong", Some(Code::Unauthenticated)),
    ] {
        let mut req = tonic::Request::new(pb::ReadRequest::default());
        req.metadata_mut().insert("x-api-key", key.parse().unwrap());
        let got = EventLogClient::new(ch.clone()).read(req).await.err().map(|e| e.code());
        assert_eq!(got, code, "key {key}");
    }
    // A reader cannot ingest.
    let mut req = tonic::Request::new(batch(vec![event("r-1", "ad", EventType::Click)]));
    req.metadata_mut().insert("x-api-key", "reader-key".parse().unwrap());
    let e = pb::event_ingest_client::EventIngestClient::new(ch).send_events(req).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_the_free_disk_watermark_ingest_is_refused_before_the_disk_fills() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    // More free space than any disk has: the watermark is crossed from the start.
    cfg.storage.file.min_free_mb = 1 << 40;
    let gw = TestGateway::start(cfg).await;
    let e =
        gw.ingest().await.send_events(batch(vec![event("w-1", "ad", EventType::Click)])).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("disk nearly full"), "{}", e.message());
    assert!(e.metadata().get("grpc-retry-pushback-ms").is_some());
    // Nothing was taken: reading the log finds no event.
    let (got, _, _) = read_all(&mut log(&gw).await, pb::ReadRequest::default()).await;
    assert!(got.is_empty());
    gw.stop().await;
}
