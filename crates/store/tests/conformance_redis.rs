//! The shared conformance suite against a real Redis (ADFLOW_TEST_REDIS_URL, set by .ci/run).

use adflow_store::EventStore;
use adflow_store::conformance::{Harness, run_all};
use adflow_store::redis_store::{RedisConfig, RedisStore};
use async_trait::async_trait;
use std::sync::{Arc, Mutex};

struct RedisHarness {
    url: String,
    cluster_nodes: Vec<String>,
    keys: Mutex<Vec<String>>,
}

impl RedisHarness {
    fn cfg(&self, key: &str) -> RedisConfig {
        RedisConfig {
            url: self.url.clone(),
            cluster_nodes: self.cluster_nodes.clone(),
            stream_key: key.into(),
            max_len: 1_000_000,
        }
    }
}

#[async_trait]
impl Harness for RedisHarness {
    async fn fresh(&self) -> Arc<dyn EventStore> {
        let key = format!("{{adflow-test}}:events:{}", uuid::Uuid::new_v4());
        self.keys.lock().unwrap().push(key.clone());
        Arc::new(RedisStore::open(self.cfg(&key)).await.expect("connect to redis"))
    }

    async fn reopen(&self, store: Arc<dyn EventStore>) -> Arc<dyn EventStore> {
        store.close().await.expect("close");
        let key = self.keys.lock().unwrap().last().expect("a fresh store first").clone();
        Arc::new(RedisStore::open(self.cfg(&key)).await.expect("reconnect"))
    }
}

#[tokio::test]
async fn redis_backend_passes_the_conformance_suite() {
    let Ok(url) = std::env::var("ADFLOW_TEST_REDIS_URL") else {
        eprintln!("skipped: set ADFLOW_TEST_REDIS_URL (e.g. redis://127.0.0.1:6390/) to run against Redis");
        return;
    };
    run_all(&RedisHarness { url, cluster_nodes: Vec::new(), keys: Mutex::new(Vec::new()) }).await;
}

#[tokio::test]
async fn redis_backend_passes_the_conformance_suite_on_a_cluster() {
    let Ok(nodes) = std::env::var("ADFLOW_TEST_REDIS_CLUSTER") else {
        eprintln!(
            "skipped: set ADFLOW_TEST_REDIS_CLUSTER (comma-separated node URLs) to run against a Redis Cluster"
        );
        return;
    };
    let cluster_nodes = nodes.split(',').map(|s| s.trim().to_owned()).collect();
    run_all(&RedisHarness { url: String::new(), cluster_nodes, keys: Mutex::new(Vec::new()) }).await;
}
