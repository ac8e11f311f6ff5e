//! The queue conformance suite on MongoDB (ADFLOW_TEST_MONGODB_URI, set by .ci/run with a
//! MongoDB wire-compatible server). Each fresh queue gets its own database.

use adflow_queue::conformance::{Opener, Shared, run_all};
use adflow_queue::{AdQueue, MongoQueue, MongoQueueConfig, QueueConfig};
use async_trait::async_trait;
use std::sync::Arc;

struct Mongo {
    uri: String,
}

#[async_trait]
impl Opener for Mongo {
    async fn open(&self, cfg: &QueueConfig, space: &str) -> Arc<dyn AdQueue> {
        let mcfg = MongoQueueConfig { uri: self.uri.clone(), database: format!("adflow_test_{space}") };
        Arc::new(MongoQueue::open(cfg, &mcfg).await.expect("open mongodb queue"))
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
    run_all(&Shared::new(Mongo { uri })).await;
}
