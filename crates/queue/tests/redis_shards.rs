//! What the Redis queue's shards mean for the keys: one shard keeps exactly the layout of
//! the unsharded queue; three shards land on three nodes of a three-node cluster; the
//! shard count can grow from one with ads in the queue, and a count that would strand
//! ads is refused by name. Real Redis from ADFLOW_TEST_REDIS_URL /
//! ADFLOW_TEST_REDIS_CLUSTER (started by .ci/run); skipped without them.

use adflow_proto::v1 as pb;
use adflow_queue::index::ALL_PARTITIONS;
use adflow_queue::redis_queue::{shard_of, shard_prefix};
use adflow_queue::{Ads, Controls, Leases, QueueConfig, QueueError, RedisQueue, RedisQueueConfig, Reports};
use std::collections::BTreeSet;

fn url() -> Option<String> {
    let url = std::env::var("ADFLOW_TEST_REDIS_URL").ok();
    if url.is_none() {
        eprintln!("skipped: set ADFLOW_TEST_REDIS_URL (e.g. redis://127.0.0.1:6390/) to run against Redis");
    }
    url
}

fn spec(title: &str, priority: u32) -> pb::AdSpec {
    pb::AdSpec { title: title.into(), game_family: "Puzzle".into(), priority, ..Default::default() }
}

async fn keys(url: &str, pattern: &str) -> Vec<String> {
    let mut con = redis::Client::open(url).unwrap().get_multiplexed_async_connection().await.unwrap();
    let mut out = Vec::new();
    let mut cursor = 0u64;
    loop {
        let (next, page): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut con)
            .await
            .unwrap();
        out.extend(page);
        if next == 0 {
            return out;
        }
        cursor = next;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_shard_keeps_the_key_layout_of_the_unsharded_queue() {
    let Some(url) = url() else { return };
    let tag = format!("adflow-test-{}", uuid::Uuid::new_v4().simple());
    let prefix = format!("{{{tag}}}");
    let rcfg = RedisQueueConfig { url: url.clone(), prefix: prefix.clone(), ..Default::default() };
    let cfg = QueueConfig { max_attempts: 2, ..Default::default() };
    let q = RedisQueue::open(&cfg, &rcfg).await.unwrap();
    let ids: Vec<String> = q
        .submit(vec![spec("a", 5), spec("b", 3), spec("c", 1), spec("d", 1)], "", 1_000)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    let l = q.lease(1, ALL_PARTITIONS, 2, 1_001).await;
    q.ack(1, l[0].lease_id, pb::AnalysisResult::default(), 1_002).await.unwrap();
    q.nack(1, l[1].lease_id, false, "no", 1_003).await.unwrap();
    assert_eq!(q.lease(1, ALL_PARTITIONS, 1, 1_004).await.len(), 1, "one lease stays open");
    q.set_paused(2, true).await.unwrap();
    let mut names = BTreeSet::new();
    for k in keys(&url, &format!("*{tag}*")).await {
        let rest =
            k.strip_prefix(&format!("{prefix}:")).unwrap_or_else(|| panic!("{k} is outside the prefix"));
        let name = if let Some(id) = rest.strip_prefix("ad:") {
            assert!(ids.contains(&id.to_owned()), "{k}");
            "ad:<id>".to_owned()
        } else if rest.starts_with("sess:") {
            "sess:<session>".to_owned()
        } else if rest.starts_with("done:") {
            "done:<second>".to_owned()
        } else {
            rest.to_owned()
        };
        names.insert(name);
    }
    let want: BTreeSet<String> = [
        "ad:<id>",
        "all",
        "dead",
        "done",
        "done:<second>",
        "due",
        "fam",
        "leases",
        "lmap",
        "lseq",
        "paused",
        "policy",
        "q:1",
        "seq",
        "sess:<session>",
        "sumenq",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(names, want, "the keys of a one-shard queue are those the unsharded queue had");
    let mut con =
        redis::Client::open(url.as_str()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let fields: Vec<String> =
        redis::cmd("HKEYS").arg(format!("{prefix}:policy")).query_async(&mut con).await.unwrap();
    assert!(!fields.contains(&"ver".to_owned()), "no shard version field: {fields:?}");
    assert!(l[0].lease_id >> 6 >= 1 && l[0].lease_id & 63 == 0, "lease ids name shard 0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shard_count_grows_from_one_and_a_count_that_strands_ads_is_refused() {
    let Some(url) = url() else { return };
    let prefix = format!("{{adflow-test-{}}}", uuid::Uuid::new_v4().simple());
    let rcfg =
        |shards| RedisQueueConfig { url: url.clone(), prefix: prefix.clone(), shards, ..Default::default() };
    let cfg = QueueConfig::default();
    match RedisQueue::open(&cfg, &rcfg(0)).await {
        Err(QueueError::Invalid { field: "queue.redis.shards", message }) => {
            assert!(message.contains("1..=64"))
        }
        other => panic!("0 shards: {:?}", other.err()),
    }
    let one = RedisQueue::open(&cfg, &rcfg(1)).await.unwrap();
    let old: Vec<String> = one
        .submit((0..12).map(|i| spec(&format!("o{i}"), 3)).collect(), "", 1_000)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    drop(one);
    let three = RedisQueue::open(&cfg, &rcfg(3)).await.expect("1 -> 3 shards with ads queued");
    let elsewhere: Vec<&String> = old.iter().filter(|id| shard_of(id, 3) != 0).collect();
    assert!(!elsewhere.is_empty());
    for id in &old {
        assert_eq!(
            three.get(id, 1_001).await.unwrap().status,
            pb::AdStatus::Queued as i32,
            "found in shard 0"
        );
    }
    assert_eq!(three.cancel(elsewhere[0], 1_002).await.unwrap().status, pb::AdStatus::Cancelled as i32);
    let new: Vec<String> = three
        .submit((0..12).map(|i| spec(&format!("n{i}"), 3)).collect(), "", 2_000)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert!(new.iter().any(|id| shard_of(id, 3) != 0));
    assert_eq!(three.stats(2_001).await.unwrap().total_queued, 23);
    for shards in [1, 2] {
        match RedisQueue::open(&cfg, &rcfg(shards)).await {
            Err(QueueError::Invalid { field: "queue.redis.shards", message }) => {
                assert!(message.contains("has 3 shards") && message.contains("drain"), "{message}")
            }
            other => panic!("{shards} shards over a 3-shard queue with ads: {:?}", other.err()),
        }
    }
    let l = three.lease(1, ALL_PARTITIONS, 100, 2_002).await;
    let titles: Vec<String> = l.iter().map(|x| x.ad.spec.clone().unwrap().title).collect();
    assert_eq!(titles.len(), 23);
    assert!(titles[..11].iter().all(|t| t.starts_with('o')), "the older shard-0 ads first: {titles:?}");
    for r in three
        .ack_many(1, l.iter().map(|x| (x.lease_id, pb::AnalysisResult::default())).collect(), 2_003)
        .await
    {
        r.unwrap();
    }
    drop(three);
    let two = RedisQueue::open(&cfg, &rcfg(2)).await.expect("a drained queue may change its shard count");
    for id in old.iter().filter(|id| *id != elsewhere[0]) {
        let ad = two.get(id, 2_004).await.unwrap();
        assert_eq!(ad.status, pb::AdStatus::Completed as i32, "shard 0 is kept");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_shards_land_on_the_three_nodes_of_a_cluster() {
    let Ok(nodes) = std::env::var("ADFLOW_TEST_REDIS_CLUSTER") else {
        eprintln!(
            "skipped: set ADFLOW_TEST_REDIS_CLUSTER (comma-separated node URLs) to run against a Redis Cluster"
        );
        return;
    };
    let nodes: Vec<String> = nodes.split(',').map(|s| s.trim().to_owned()).collect();
    let tag = format!("adflow-test-{}", uuid::Uuid::new_v4().simple());
    let rcfg = RedisQueueConfig {
        cluster_nodes: nodes.clone(),
        prefix: format!("{{{tag}}}"),
        shards: 3,
        ..Default::default()
    };
    let q = RedisQueue::open(&QueueConfig::default(), &rcfg).await.unwrap();
    q.submit((0..90).map(|i| spec(&format!("c{i}"), 1 + i % 5)).collect(), "", 1_000).await.unwrap();
    let mut holders = Vec::new();
    for i in 0..3 {
        let p = shard_prefix(&rcfg.prefix, i, 3);
        let mut con =
            redis::Client::open(nodes[0].as_str()).unwrap().get_multiplexed_async_connection().await.unwrap();
        let slot: u16 =
            redis::cmd("CLUSTER").arg("KEYSLOT").arg(format!("{p}:all")).query_async(&mut con).await.unwrap();
        let mut with_keys = Vec::new();
        for n in &nodes {
            if !keys(n, &format!("{p}:q:*")).await.is_empty() {
                with_keys.push(n.clone());
            }
        }
        assert_eq!(with_keys.len(), 1, "shard {i} ({p}, slot {slot}) lives on one node: {with_keys:?}");
        holders.push(with_keys.remove(0));
    }
    holders.sort();
    holders.dedup();
    assert_eq!(holders.len(), 3, "three shards on three nodes");
    let l = q.lease(1, ALL_PARTITIONS, 90, 1_001).await;
    assert_eq!(l.len(), 90);
    assert_eq!(q.stats(1_002).await.unwrap().in_flight, 90);
}
