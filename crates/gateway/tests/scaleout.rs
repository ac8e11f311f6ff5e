//! Two gateways on one Redis: events from either land in one stream, and dedup holds
//! across them. Runs when ADFLOW_TEST_REDIS_URL is set (.ci/run starts a server).

mod common;

use adflow_domain::pb::EventType;
use adflow_store::Backend;
use adflow_store::redis_store::{RedisConfig, RedisStore};
use common::*;
use std::collections::HashSet;

#[tokio::test]
async fn dedup_holds_across_two_gateways_sharing_redis() {
    let Ok(url) = std::env::var("ADFLOW_TEST_REDIS_URL") else {
        eprintln!("skipped: set ADFLOW_TEST_REDIS_URL to run the two-gateway test");
        return;
    };
    let run = uuid::Uuid::new_v4().simple().to_string();
    let stream = format!("{{adflow-test}}:events:{run}");
    let start = |name: &str, dir: &std::path::Path| {
        let mut cfg = config(&dir.join(name));
        cfg.workers.in_process = 0;
        cfg.storage.backend = Backend::Redis;
        cfg.storage.redis = RedisConfig { url: url.clone(), stream_key: stream.clone(), max_len: 1_000_000, ..Default::default() };
        cfg.storage.resilience.spill_dir = dir.join(name).join("spill");
        cfg.ingest.dedup.shared = true;
        TestGateway::start(cfg)
    };
    let dir = tempfile::tempdir().unwrap();
    let a = start("a", dir.path()).await;
    let b = start("b", dir.path()).await;
    let (mut ca, mut cb) = (a.ingest().await, b.ingest().await);
    let first: Vec<_> = (0..100).map(|i| event(&format!("{run}-{i}"), "ad-1", EventType::Click)).collect();
    let r = ca.send_events(batch(first.clone())).await.unwrap().into_inner();
    assert_eq!((r.accepted, r.duplicates), (100, 0));
    // The same ids through the other gateway: all duplicates.
    let r = cb.send_events(batch(first.clone())).await.unwrap().into_inner();
    assert_eq!((r.accepted, r.duplicates), (0, 100));
    let more: Vec<_> = (100..150).map(|i| event(&format!("{run}-{i}"), "ad-1", EventType::Click)).collect();
    let r = cb
        .send_events(batch(more.iter().chain(first.iter().take(10)).cloned().collect()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.accepted, r.duplicates), (50, 10));
    a.stop().await;
    b.stop().await;
    let check = RedisStore::open(RedisConfig { url, stream_key: stream, max_len: 1_000_000, ..Default::default() }).await.unwrap();
    let ids: Vec<_> = adflow_store::conformance::read_all(&check, 1000)
        .await
        .iter()
        .map(|e| e.event().unwrap().event_id)
        .collect();
    let unique: HashSet<_> = ids.iter().cloned().collect();
    assert_eq!((ids.len(), unique.len()), (150, 150), "one copy of each event in the shared stream");
}
