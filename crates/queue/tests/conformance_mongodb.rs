//! The queue conformance suite on MongoDB (ADFLOW_TEST_MONGODB_URI, set by .ci/run with a
//! MongoDB wire-compatible server). Each fresh queue gets its own database.

use adflow_queue::conformance::{Harness, run_all};
use adflow_queue::{AdQueue, MongoQueue, MongoQueueConfig, QueueConfig};
use async_trait::async_trait;
use std::sync::{Arc, Mutex};

struct Mongo {
    uri: String,
    last: Mutex<Option<(QueueConfig, MongoQueueConfig)>>,
}

impl Mongo {
    async fn open(&self) -> Arc<dyn AdQueue> {
        let (cfg, mcfg) = self.last.lock().unwrap().clone().expect("a fresh queue first");
        Arc::new(MongoQueue::open(&cfg, &mcfg).await.expect("open mongodb queue"))
    }
}

#[async_trait]
impl Harness for Mongo {
    async fn fresh(&self, cfg: QueueConfig) -> Arc<dyn AdQueue> {
        let mcfg = MongoQueueConfig {
            uri: self.uri.clone(),
            database: format!("adflow_test_{}", uuid::Uuid::new_v4().simple()),
        };
        *self.last.lock().unwrap() = Some((cfg, mcfg));
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
async fn mongodb_queue_passes_the_conformance_suite() {
    let Ok(uri) = std::env::var("ADFLOW_TEST_MONGODB_URI") else {
        eprintln!(
            "skipped: set ADFLOW_TEST_MONGODB_URI (e.g. mongodb://127.0.0.1:27019/?directConnection=true) to run against MongoDB"
        );
        return;
    };
    run_all(&Mongo { uri, last: Mutex::new(None) }).await;
}
