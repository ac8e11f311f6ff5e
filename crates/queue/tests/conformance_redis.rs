//! The queue conformance suite on Redis: a single server (ADFLOW_TEST_REDIS_URL) and a
//! three-node Redis Cluster (ADFLOW_TEST_REDIS_CLUSTER, comma-separated seed URLs); both
//! are started by .ci/run. Each fresh queue gets its own hash-tagged prefix.

use adflow_queue::conformance::{Harness, run_all};
use adflow_queue::{AdQueue, QueueConfig, RedisQueue, RedisQueueConfig};
use async_trait::async_trait;
use std::sync::{Arc, Mutex};

struct Redis {
    base: RedisQueueConfig,
    last: Mutex<Option<(QueueConfig, RedisQueueConfig)>>,
}

impl Redis {
    async fn open(&self) -> Arc<dyn AdQueue> {
        let (cfg, rcfg) = self.last.lock().unwrap().clone().expect("a fresh queue first");
        Arc::new(RedisQueue::open(&cfg, &rcfg).await.expect("open redis queue"))
    }
}

#[async_trait]
impl Harness for Redis {
    async fn fresh(&self, cfg: QueueConfig) -> Arc<dyn AdQueue> {
        let rcfg = RedisQueueConfig {
            prefix: format!("{{adflow-test-{}}}", uuid::Uuid::new_v4()),
            ..self.base.clone()
        };
        *self.last.lock().unwrap() = Some((cfg, rcfg));
        self.open().await
    }

    async fn reopen(&self, q: Arc<dyn AdQueue>) -> Arc<dyn AdQueue> {
        q.close().await;
        drop(q);
        self.open().await
    }

    async fn peer(&self) -> Option<Arc<dyn AdQueue>> {
        Some(self.open().await)
    }

    fn leases_survive_restart(&self) -> bool {
        true
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_queue_passes_the_conformance_suite() {
    let Ok(url) = std::env::var("ADFLOW_TEST_REDIS_URL") else {
        eprintln!("skipped: set ADFLOW_TEST_REDIS_URL (e.g. redis://127.0.0.1:6390/) to run against Redis");
        return;
    };
    let base = RedisQueueConfig { url, ..Default::default() };
    run_all(&Redis { base, last: Mutex::new(None) }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_queue_passes_the_conformance_suite_on_a_cluster() {
    let Ok(nodes) = std::env::var("ADFLOW_TEST_REDIS_CLUSTER") else {
        eprintln!(
            "skipped: set ADFLOW_TEST_REDIS_CLUSTER (comma-separated node URLs) to run against a Redis Cluster"
        );
        return;
    };
    let base = RedisQueueConfig {
        cluster_nodes: nodes.split(',').map(|s| s.trim().to_owned()).collect(),
        ..Default::default()
    };
    run_all(&Redis { base, last: Mutex::new(None) }).await;
}
