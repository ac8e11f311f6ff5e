//! Shared dedup across a Redis outage: events acked while Redis is down (spilled, their
//! ids unchecked) are recorded when the spill replays, a copy resent during the outage is
//! written once, and after recovery every acked id resent is a duplicate.
//! Runs when ADFLOW_TEST_REDIS_URL is set (so redis-server is installed); it starts and
//! kills its own redis-server (AOF, fsync always) on a free port.

mod common;

use adflow_domain::pb::EventType;
use adflow_queue::policy::QueueBackend;
use adflow_store::Backend;
use adflow_store::redis_store::{RedisConfig, RedisStore};
use common::*;
use std::collections::{HashMap, HashSet};
use std::time::Duration;

fn ids_batch(from: usize, n: usize) -> adflow_domain::pb::SendEventsRequest {
    batch((from..from + n).map(|i| event(&format!("o-{i}"), "ad-1", EventType::Click)).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_acked_during_a_redis_outage_are_duplicates_after_it_and_stored_once() {
    if std::env::var("ADFLOW_TEST_REDIS_URL").is_err() {
        eprintln!("skipped: set ADFLOW_TEST_REDIS_URL (and install redis-server) to run the outage test");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let rdir = dir.path().join("redis");
    std::fs::create_dir_all(&rdir).unwrap();
    let mut redis = adflow_store::conformance::spawn_redis(port, &rdir);
    let rcfg = RedisConfig {
        url: format!("redis://127.0.0.1:{port}/"),
        stream_key: "{adflow}:events".into(),
        max_len: 1_000_000,
        ..Default::default()
    };
    let mut cfg = config(dir.path());
    cfg.workers.in_process = 0;
    cfg.queue.backend = QueueBackend::Embedded;
    cfg.storage.backend = Backend::Redis;
    cfg.storage.redis = rcfg.clone();
    cfg.storage.resilience.spill_dir = dir.path().join("spill");
    cfg.storage.resilience.attempts = 2;
    cfg.storage.resilience.retry_base_ms = 5;
    cfg.storage.resilience.breaker_cooldown_ms = 200;
    let gw = TestGateway::start(cfg).await;
    let mut c = gw.ingest().await;

    // 1. Redis up: 10 batches of 50.
    let mut acked: HashSet<String> = HashSet::new();
    for b in 0..10 {
        let r = c.send_events(ids_batch(b * 50, 50)).await.unwrap().into_inner();
        assert_eq!(r.accepted, 50);
        acked.extend((b * 50..b * 50 + 50).map(|i| format!("o-{i}")));
    }
    // 2. Redis down: 10 more batches are acked through the spill, and the client resends
    //    three of them (it did not trust the first answer): taken again, unchecked.
    redis.kill().unwrap();
    redis.wait().unwrap();
    for b in 10..20 {
        let r = c.send_events(ids_batch(b * 50, 50)).await.expect("acked through the spill").into_inner();
        assert_eq!(r.accepted + r.duplicates, 50);
        acked.extend((b * 50..b * 50 + 50).map(|i| format!("o-{i}")));
    }
    for b in [10, 14, 19] {
        let r = c.send_events(ids_batch(b * 50, 50)).await.expect("acked through the spill").into_inner();
        assert_eq!(r.accepted + r.duplicates, 50);
    }
    // 3. Redis back (with its AOF): the spill replays.
    redis = adflow_store::conformance::spawn_redis(port, &rdir);
    let check = RedisStore::open(rcfg.clone()).await.unwrap();
    for _ in 0..300 {
        if adflow_store::conformance::read_all(&check, 1000).await.len() >= acked.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Let a replay that would write second copies finish too.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let stored = adflow_store::conformance::read_all(&check, 1000).await;
    let mut copies: HashMap<String, usize> = HashMap::new();
    for e in &stored {
        *copies.entry(e.event().unwrap().event_id).or_default() += 1;
    }
    let twice: Vec<_> = copies.iter().filter(|(_, n)| **n > 1).map(|(id, _)| id.clone()).collect();
    assert!(
        twice.is_empty(),
        "{} ids stored twice, e.g. {:?}",
        twice.len(),
        twice.iter().take(3).collect::<Vec<_>>()
    );
    assert_eq!(copies.keys().cloned().collect::<HashSet<_>>(), acked, "every acked id stored");

    // 4. Every acked id resent after recovery is a duplicate, and nothing new is stored.
    for b in 0..20 {
        let r = c.send_events(ids_batch(b * 50, 50)).await.unwrap().into_inner();
        assert_eq!((r.accepted, r.duplicates), (0, 50), "batch {b} resent after the outage");
    }
    assert_eq!(adflow_store::conformance::read_all(&check, 1000).await.len(), acked.len());
    gw.stop().await;
    redis.kill().unwrap();
    let _ = redis.wait();
}
