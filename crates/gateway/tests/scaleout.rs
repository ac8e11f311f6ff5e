//! Two gateways on one Redis: events from either land in one stream, dedup holds across
//! them, and they share one ad queue (an ad submitted through one is processed by a
//! worker on the other; with workers on both, every ad is processed exactly once), also
//! with the queue in three shards on a Redis Cluster.
//! Runs when ADFLOW_TEST_REDIS_URL is set (.ci/run starts a server).

mod common;

use adflow_domain::pb::{self, EventType};
use adflow_queue::policy::QueueBackend;
use adflow_queue::{MongoQueueConfig, RedisQueueConfig};
use adflow_store::Backend;
use adflow_store::mongo_store::MongoConfig;
use adflow_store::redis_store::{RedisConfig, RedisStore};
use adflow_worker::run::{WorkerConfig, WorkerStats, run};
use common::*;
use std::collections::HashSet;
use std::time::Duration;

type AdsClient = pb::ad_service_client::AdServiceClient<tonic::transport::Channel>;
type QueueControlClient = pb::queue_control_client::QueueControlClient<tonic::transport::Channel>;

#[tokio::test]
async fn dedup_holds_across_two_gateways_sharing_redis() {
    let Ok(url) = std::env::var("ADFLOW_TEST_REDIS_URL") else {
        eprintln!("skipped: set ADFLOW_TEST_REDIS_URL to run the two-gateway test");
        return;
    };
    let run = uuid::Uuid::new_v4().simple().to_string();
    // Its own hash tag per run: the analytics counters live under the stream's tag.
    let stream = format!("{{adflow-test-{run}}}:events");
    let start = |name: &str, dir: &std::path::Path| {
        let mut cfg = config(&dir.join(name));
        cfg.workers.in_process = 0;
        cfg.storage.backend = Backend::Redis;
        cfg.storage.redis = RedisConfig {
            url: url.clone(),
            stream_key: stream.clone(),
            max_len: 1_000_000,
            ..Default::default()
        };
        cfg.storage.resilience.spill_dir = dir.join(name).join("spill");
        cfg.ingest.dedup.shared = Some(true);
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
    // Analytics counters are shared: either gateway reports the 150 clicks of both.
    for gw in [&a, &b] {
        let stats = gw
            .analytics()
            .await
            .get_ad_stats(pb::GetAdStatsRequest { ad_id: "ad-1".into(), ..Default::default() })
            .await
            .unwrap()
            .into_inner()
            .stats
            .unwrap();
        assert_eq!(stats.counts.unwrap().clicks, 150, "counts of both gateways, each event once");
    }
    a.stop().await;
    b.stop().await;
    let check =
        RedisStore::open(RedisConfig { url, stream_key: stream, max_len: 1_000_000, ..Default::default() })
            .await
            .unwrap();
    let ids: Vec<_> = adflow_store::conformance::read_all(&check, 1000)
        .await
        .iter()
        .map(|e| e.event().unwrap().event_id)
        .collect();
    let unique: HashSet<_> = ids.iter().cloned().collect();
    assert_eq!((ids.len(), unique.len()), (150, 150), "one copy of each event in the shared stream");
}

/// A standalone worker (the `adflow-worker` loop) connected to `gw`.
fn spawn_worker(
    gw: &TestGateway,
    id: &str,
) -> (tokio::sync::watch::Sender<bool>, tokio::task::JoinHandle<()>, std::sync::Arc<WorkerStats>) {
    let cfg = WorkerConfig {
        gateway: adflow_client::ClientConfig::new(format!("http://{}", gw.addr)),
        worker_id: id.into(),
        partitions: Vec::new(),
        concurrency: 16,
        analysis: Default::default(),
        max_backoff: Duration::from_millis(500),
    };
    let (tx, rx) = tokio::sync::watch::channel(false);
    let stats = std::sync::Arc::new(WorkerStats::default());
    (tx, tokio::spawn(run(cfg, rx, stats.clone())), stats)
}

/// Polls until every ad is completed; asks again only for the ads not done yet (on the
/// CI's MongoDB-wire server each GetAd is a few queries, and 600 per round slowed the
/// very processing being waited for).
async fn wait_done(ads: &mut AdsClient, ids: &[String]) -> Vec<pb::Ad> {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let mut done: std::collections::HashMap<String, pb::Ad> = std::collections::HashMap::new();
    loop {
        let left: Vec<&String> = ids.iter().filter(|id| !done.contains_key(*id)).collect();
        for id in left {
            let ad = ads.get_ad(pb::GetAdRequest { id: id.clone() }).await.unwrap().into_inner();
            if ad.status == pb::AdStatus::Completed as i32 {
                done.insert(id.clone(), ad);
            }
        }
        if done.len() == ids.len() {
            return ids.iter().map(|id| done.remove(id).unwrap()).collect();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} of {} ads not completed within 120 s",
            ids.len() - done.len(),
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_share_one_redis_for_events_dedup_counters_and_queue() {
    let Ok(url) = std::env::var("ADFLOW_TEST_REDIS_URL") else {
        eprintln!("skipped: set ADFLOW_TEST_REDIS_URL to run the shared-queue test");
        return;
    };
    let run = uuid::Uuid::new_v4().simple().to_string();
    shared_queue(|cfg| {
        cfg.storage.backend = Backend::Redis;
        cfg.storage.redis = RedisConfig {
            url: url.clone(),
            stream_key: format!("{{adflow-test-{run}}}:events"),
            ..Default::default()
        };
        cfg.ingest.dedup.shared = Some(true);
        cfg.queue.backend = QueueBackend::Redis;
        cfg.queue.redis = RedisQueueConfig {
            url: url.clone(),
            prefix: format!("{{adflow-test-q-{run}}}"),
            ..Default::default()
        };
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_share_one_mongodb_queue_and_store_without_loss_or_double_processing() {
    let Ok(uri) = std::env::var("ADFLOW_TEST_MONGODB_URI") else {
        eprintln!("skipped: set ADFLOW_TEST_MONGODB_URI to run the shared-queue test on MongoDB");
        return;
    };
    let database = format!("adflow_test_{}", uuid::Uuid::new_v4().simple());
    shared_queue(|cfg| {
        cfg.queue.backend = QueueBackend::Mongodb;
        cfg.queue.mongodb = MongoQueueConfig { uri: uri.clone(), database: database.clone() };
        cfg.storage.backend = Backend::Mongodb;
        cfg.storage.mongodb =
            MongoConfig { uri: uri.clone(), database: database.clone(), ..Default::default() };
    })
    .await;
}

/// Both gateways on the CI Redis Cluster for events, dedup, counters and a queue of
/// `shards` shards (skipped without ADFLOW_TEST_REDIS_CLUSTER).
async fn on_the_cluster(shards: u32) {
    let Ok(nodes) = std::env::var("ADFLOW_TEST_REDIS_CLUSTER") else {
        eprintln!("skipped: set ADFLOW_TEST_REDIS_CLUSTER to run the two-gateway tests on a Redis Cluster");
        return;
    };
    let nodes: Vec<String> = nodes.split(',').map(|s| s.trim().to_owned()).collect();
    let run = uuid::Uuid::new_v4().simple().to_string();
    shared_queue(|cfg| {
        cfg.storage.backend = Backend::Redis;
        cfg.storage.redis = RedisConfig {
            cluster_nodes: nodes.clone(),
            stream_key: format!("{{adflow-test-{run}}}:events"),
            ..Default::default()
        };
        cfg.ingest.dedup.shared = Some(true);
        cfg.queue.backend = QueueBackend::Redis;
        cfg.queue.redis = RedisQueueConfig {
            cluster_nodes: nodes.clone(),
            prefix: format!("{{adflow-test-q-{run}}}"),
            shards,
            ..Default::default()
        };
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_share_a_redis_cluster_for_events_dedup_counters_and_queue() {
    on_the_cluster(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_share_a_three_shard_queue_on_a_redis_cluster() {
    on_the_cluster(3).await;
}

/// Two gateways configured by `setup` share the queue: phase 1 submits through A with the
/// only worker on B; phase 2 runs workers on both while both take submissions.
async fn shared_queue(setup: impl Fn(&mut adflow_gateway::Config)) {
    let dir = tempfile::tempdir().unwrap();
    let start = |name: &str| {
        let mut cfg = config(&dir.path().join(name));
        cfg.workers.in_process = 0;
        cfg.storage.resilience.spill_dir = dir.path().join(name).join("spill");
        setup(&mut cfg);
        TestGateway::start(cfg)
    };
    let a = start("a").await;
    let b = start("b").await;
    let mut ads_a = AdsClient::new(a.channel().await);
    let mut ads_b = AdsClient::new(b.channel().await);

    // 0. Events through both: a resend through the other gateway stores nothing twice,
    // and both gateways report the same totals.
    let ad = format!("ad-{}", uuid::Uuid::new_v4().simple());
    let evs: Vec<_> = (0..40).map(|i| event(&format!("{ad}-{i}"), &ad, EventType::Click)).collect();
    let r = a.ingest().await.send_events(batch(evs.clone())).await.unwrap().into_inner();
    assert_eq!(r.accepted, 40);
    let r = b.ingest().await.send_events(batch(evs)).await.unwrap().into_inner();
    assert_eq!(r.accepted + r.duplicates, 40);
    for gw in [&a, &b] {
        let req = pb::GetAdStatsRequest { ad_id: ad.clone(), ..Default::default() };
        let stats = gw.analytics().await.get_ad_stats(req).await.unwrap().into_inner().stats.unwrap();
        assert_eq!(stats.counts.unwrap().clicks, 40, "shared counters, each event once");
    }

    // 1. Submitted through A, processed by the only worker, which is connected to B.
    let (stop_b1, join_b1, stats_b1) = spawn_worker(&b, "worker-on-b-1");
    let mut first = Vec::new();
    for i in 0..20 {
        let s = pb::AdSpec {
            title: format!("Shared queue ad {i}"),
            description: "Collect the dragon egg before the winter festival ends.".into(),
            game_family: "RPG-Fantasy".into(),
            genre: "rpg".into(),
            call_to_action: "Play now".into(),
            priority: 1 + i % 5,
            ..Default::default()
        };
        first.push(ads_a.submit_ad(pb::SubmitAdRequest { ad: Some(s) }).await.unwrap().into_inner().id);
    }
    for ad in wait_done(&mut ads_a, &first).await {
        let an = ad.analysis.expect("analysed");
        assert_eq!(an.worker_id, "worker-on-b-1", "the ad came from A and was analysed through B");
        assert_eq!(ad.attempts, 1);
    }
    assert_eq!(stats_b1.acked.load(std::sync::atomic::Ordering::Relaxed), 20);

    // 2. Workers on both gateways, ads submitted through both, concurrently.
    let (stop_a1, join_a1, stats_a1) = spawn_worker(&a, "worker-on-a-1");
    let (stop_a2, join_a2, stats_a2) = spawn_worker(&a, "worker-on-a-2");
    let (stop_b2, join_b2, stats_b2) = spawn_worker(&b, "worker-on-b-2");
    let mut submitters = Vec::new();
    for (k, ch) in [(0, a.channel().await), (1, b.channel().await)] {
        submitters.push(tokio::spawn(async move {
            let mut c = AdsClient::new(ch);
            let mut ids = Vec::new();
            for round in 0..10 {
                let specs = (0..30)
                    .map(|i| pb::AdSpec {
                        title: format!("Gateway {k} round {round} ad {i}"),
                        description: "Build a castle, raise an army, defend the realm.".into(),
                        game_family: if i % 2 == 0 { "Strategy".into() } else { "Puzzle".into() },
                        genre: "strategy".into(),
                        call_to_action: "Install".into(),
                        priority: 1 + (i % 5) as u32,
                        ..Default::default()
                    })
                    .collect();
                let r = c.submit_ads(pb::SubmitAdsRequest { ads: specs }).await.unwrap().into_inner();
                assert_eq!(r.accepted, 30);
                ids.extend(r.results.into_iter().map(|x| x.accepted.unwrap().id));
            }
            ids
        }));
    }
    let mut second = Vec::new();
    for s in submitters {
        second.extend(s.await.unwrap());
    }
    assert_eq!(second.len(), 600);
    let done = wait_done(&mut ads_b, &second).await;
    assert!(done.iter().all(|a| a.attempts == 1), "no ad was leased twice (no lease expired in this run)");
    let acked: u64 = [&stats_a1, &stats_a2, &stats_b1, &stats_b2]
        .iter()
        .map(|s| s.acked.load(std::sync::atomic::Ordering::Relaxed))
        .sum();
    assert_eq!(acked, 620, "every ad acked exactly once across the four workers");
    let on_a = done.iter().filter(|a| a.analysis.as_ref().unwrap().worker_id.contains("-on-a-")).count();
    assert!(on_a > 0 && on_a < 600, "both gateways' workers took part ({on_a} of 600 on A)");
    let stats = QueueControlClient::new(a.channel().await)
        .get_stats(pb::GetStatsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!((stats.total_queued, stats.in_flight, stats.completed_total), (0, 0, 620));

    for (stop, join) in [(stop_a1, join_a1), (stop_a2, join_a2), (stop_b1, join_b1), (stop_b2, join_b2)] {
        let _ = stop.send(true);
        join.await.unwrap();
    }
    a.stop().await;
    b.stop().await;
}
