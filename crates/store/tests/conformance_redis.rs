//! The shared conformance suite against a real Redis (ADFLOW_TEST_REDIS_URL, set by .ci/run).

use adflow_store::EventStore;
use adflow_store::conformance::{Harness, run_all};
use adflow_store::redis_store::{RedisConfig, RedisStore};
use async_trait::async_trait;
use std::sync::{Arc, Mutex};

struct RedisHarness {
    url: String,
    keys: Mutex<Vec<String>>,
}

impl RedisHarness {
    fn cfg(&self, key: &str) -> RedisConfig {
        RedisConfig { url: self.url.clone(), stream_key: key.into(), max_len: 1_000_000, ..Default::default() }
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
    run_all(&RedisHarness { url, keys: Mutex::new(Vec::new()) }).await;
}
