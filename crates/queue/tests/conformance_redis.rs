//! The queue conformance suite on Redis, with one shard (the layout of every queue so
//! far) and with three (`queue.redis.shards`): on a single server
//! (ADFLOW_TEST_REDIS_URL) and on a three-node Redis Cluster (ADFLOW_TEST_REDIS_CLUSTER,
//! comma-separated seed URLs); both are started by .ci/run. Each fresh queue gets its own
//! hash-tagged prefix. With three shards the suite also runs `conformance::shards`: the
//! cross-shard rules and the spread of the shards.

use adflow_queue::conformance::{Opener, Shared, run_all, shards};
use adflow_queue::{AdQueue, Ads, Leases, QueueConfig, RedisQueue, RedisQueueConfig};
use async_trait::async_trait;
use std::sync::Arc;

struct Redis {
    base: RedisQueueConfig,
}

#[async_trait]
impl Opener for Redis {
    async fn open(&self, cfg: &QueueConfig, space: &str) -> Arc<dyn AdQueue> {
        let rcfg = RedisQueueConfig { prefix: format!("{{adflow-test-{space}}}"), ..self.base.clone() };
        Arc::new(RedisQueue::open(cfg, &rcfg).await.expect("open redis queue"))
    }
}

fn single(shards: u32) -> Option<RedisQueueConfig> {
    let Ok(url) = std::env::var("ADFLOW_TEST_REDIS_URL") else {
        eprintln!("skipped: set ADFLOW_TEST_REDIS_URL (e.g. redis://127.0.0.1:6390/) to run against Redis");
        return None;
    };
    Some(RedisQueueConfig { url, shards, ..Default::default() })
}

fn cluster(shards: u32) -> Option<RedisQueueConfig> {
    let Ok(nodes) = std::env::var("ADFLOW_TEST_REDIS_CLUSTER") else {
        eprintln!(
            "skipped: set ADFLOW_TEST_REDIS_CLUSTER (comma-separated node URLs) to run against a Redis Cluster"
        );
        return None;
    };
    Some(RedisQueueConfig {
        cluster_nodes: nodes.split(',').map(|s| s.trim().to_owned()).collect(),
        shards,
        ..Default::default()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_queue_passes_the_conformance_suite() {
    let Some(base) = single(1) else { return };
    run_all(&Shared::new(Redis { base })).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_queue_passes_the_conformance_suite_on_a_cluster() {
    let Some(base) = cluster(1) else { return };
    run_all(&Shared::new(Redis { base })).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_queue_with_three_shards_passes_the_conformance_suite() {
    let Some(base) = single(3) else { return };
    let h = Shared::new(Redis { base });
    run_all(&h).await;
    shards::run_all(&h, 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_queue_with_three_shards_passes_the_conformance_suite_on_a_cluster() {
    let Some(base) = cluster(3) else { return };
    let h = Shared::new(Redis { base });
    run_all(&h).await;
    shards::run_all(&h, 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_ads_expire_with_their_listing_entries() {
    let Ok(url) = std::env::var("ADFLOW_TEST_REDIS_URL") else {
        eprintln!("skipped: set ADFLOW_TEST_REDIS_URL to run the retention test");
        return;
    };
    use adflow_proto::v1 as pb;
    let prefix = format!("{{adflow-test-{}}}", uuid::Uuid::new_v4());
    let rcfg = RedisQueueConfig {
        url: url.clone(),
        prefix: prefix.clone(),
        finished_ttl_seconds: 1,
        ..Default::default()
    };
    let q = RedisQueue::open(&QueueConfig::default(), &rcfg).await.unwrap();
    let specs =
        (0..3).map(|i| pb::AdSpec { title: format!("t{i}"), priority: 3, ..Default::default() }).collect();
    let ids: Vec<String> = q.submit(specs, "", 1_000).await.unwrap().into_iter().map(|r| r.id).collect();
    let leased = q.lease(1, adflow_queue::index::ALL_PARTITIONS, 10, 1_001).await;
    assert_eq!(leased.len(), 3);
    for l in &leased {
        q.ack(1, l.lease_id, pb::AnalysisResult::default(), 1_002).await.unwrap();
    }
    let mut con =
        redis::Client::open(url.as_str()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let all = format!("{prefix}:all");
    let n: u64 = redis::cmd("ZCARD").arg(&all).query_async(&mut con).await.unwrap();
    assert_eq!(n, 3, "finished ads are listed while they are kept");
    tokio::time::sleep(std::time::Duration::from_millis(2_200)).await;
    q.expire(1_003).await;
    let n: u64 = redis::cmd("ZCARD").arg(&all).query_async(&mut con).await.unwrap();
    assert_eq!(n, 0, "the listing index drops ads past their retention");
    assert!(matches!(q.get(&ids[0], 1_004).await, Err(adflow_queue::QueueError::NotFound(_))));
}
