//! One dedup suite for every place accepted event ids can live: this gateway's memory
//! (`DedupWindow`) and Redis shared by all gateways (`SharedDedup`, on one server with
//! ADFLOW_TEST_REDIS_URL and on a cluster with ADFLOW_TEST_REDIS_CLUSTER). (With the
//! mongodb backend the store itself refuses a second copy: `_id` = event id.)

use adflow_domain::dedup::{DedupWindow, key};
use adflow_gateway::shared_dedup::SharedDedup;
use adflow_store::redis_conn::Target;
use async_trait::async_trait;
use std::time::{Duration, Instant};

/// The contract the ingest pipeline relies on.
#[async_trait]
trait Ids: Send + Sync {
    /// For each id in order: true when new (and now claimed), false for a duplicate.
    async fn claim(&self, ids: &[String]) -> Vec<bool>;
    /// Forgets ids whose write failed.
    async fn forget(&self, ids: &[String]);
}

struct Memory {
    w: DedupWindow,
    start: Instant,
}

#[async_trait]
impl Ids for Memory {
    async fn claim(&self, ids: &[String]) -> Vec<bool> {
        let now = self.start.elapsed().as_millis() as i64;
        ids.iter().map(|id| self.w.insert(key(id), now)).collect()
    }

    async fn forget(&self, ids: &[String]) {
        for id in ids {
            self.w.remove(key(id));
        }
    }
}

#[async_trait]
impl Ids for SharedDedup {
    async fn claim(&self, ids: &[String]) -> Vec<bool> {
        SharedDedup::claim(self, ids).await.expect("redis answers")
    }

    async fn forget(&self, ids: &[String]) {
        SharedDedup::forget(self, ids).await;
    }
}

/// The suite: new ids, repeats (across calls and inside one call), forget, expiry.
async fn suite(name: &str, d: &dyn Ids) {
    let run = uuid::Uuid::new_v4().simple().to_string();
    let ids: Vec<String> = (0..100).map(|i| format!("{run}-{i}")).collect();
    assert!(d.claim(&ids).await.iter().all(|&n| n), "{name}: new ids are accepted");
    let again: Vec<String> = ids[90..].iter().cloned().chain([format!("{run}-new")]).collect();
    assert_eq!(
        d.claim(&again).await,
        [vec![false; 10], vec![true]].concat(),
        "{name}: repeats are duplicates, a new id is not"
    );
    let twice = vec![format!("{run}-x"), format!("{run}-x")];
    assert_eq!(d.claim(&twice).await, vec![true, false], "{name}: a repeat inside one request");
    d.forget(&ids[..5]).await;
    assert_eq!(d.claim(&ids[..6]).await, vec![true, true, true, true, true, false], "{name}: forgotten ids");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert!(d.claim(&ids[10..12]).await.iter().all(|&n| n), "{name}: ids are new again after the window");
}

#[tokio::test]
async fn the_in_memory_window_keeps_the_dedup_contract() {
    let m = Memory { w: DedupWindow::new(1_000, 100_000), start: Instant::now() };
    suite("memory", &m).await;
}

#[tokio::test]
async fn redis_keeps_the_dedup_contract() {
    let Ok(url) = std::env::var("ADFLOW_TEST_REDIS_URL") else {
        eprintln!("skipped: set ADFLOW_TEST_REDIS_URL to run the dedup suite on Redis");
        return;
    };
    let d = SharedDedup::connect(&Target { url, cluster_nodes: Vec::new() }, "{adflow-test}:dedup:", 1)
        .await
        .unwrap();
    suite("redis", &d).await;
}

#[tokio::test]
async fn a_redis_cluster_keeps_the_dedup_contract() {
    let Ok(nodes) = std::env::var("ADFLOW_TEST_REDIS_CLUSTER") else {
        eprintln!("skipped: set ADFLOW_TEST_REDIS_CLUSTER to run the dedup suite on a Redis Cluster");
        return;
    };
    let cluster_nodes = nodes.split(',').map(|s| s.trim().to_owned()).collect();
    let d = SharedDedup::connect(&Target { url: String::new(), cluster_nodes }, "{adflow-test}:dedup:", 1)
        .await
        .unwrap();
    suite("redis cluster", &d).await;
}
