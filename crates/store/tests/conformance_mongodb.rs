//! The shared conformance suite against a MongoDB-wire server (ADFLOW_TEST_MONGODB_URI, set by .ci/run).

use adflow_store::EventStore;
use adflow_store::conformance::{Harness, run_all};
use adflow_store::mongo_store::{MongoConfig, MongoStore};
use async_trait::async_trait;
use std::sync::{Arc, Mutex};

struct MongoHarness {
    uri: String,
    colls: Mutex<Vec<String>>,
}

impl MongoHarness {
    fn cfg(&self, coll: &str) -> MongoConfig {
        MongoConfig { uri: self.uri.clone(), database: "adflow_test".into(), collection: coll.into() }
    }
}

#[async_trait]
impl Harness for MongoHarness {
    async fn fresh(&self) -> Arc<dyn EventStore> {
        let coll = format!("events_{}", uuid::Uuid::new_v4().simple());
        self.colls.lock().unwrap().push(coll.clone());
        Arc::new(MongoStore::open(self.cfg(&coll)).await.expect("connect to mongodb"))
    }

    async fn reopen(&self, store: Arc<dyn EventStore>) -> Arc<dyn EventStore> {
        store.close().await.expect("close");
        let coll = self.colls.lock().unwrap().last().expect("a fresh store first").clone();
        Arc::new(MongoStore::open(self.cfg(&coll)).await.expect("reconnect"))
    }
}

#[tokio::test]
async fn mongodb_backend_passes_the_conformance_suite() {
    let Ok(uri) = std::env::var("ADFLOW_TEST_MONGODB_URI") else {
        eprintln!(
            "skipped: set ADFLOW_TEST_MONGODB_URI (e.g. mongodb://127.0.0.1:27019/?directConnection=true)"
        );
        return;
    };
    run_all(&MongoHarness { uri, colls: Mutex::new(Vec::new()) }).await;
}

#[tokio::test]
async fn replaying_a_batch_into_mongodb_is_harmless() {
    let Ok(uri) = std::env::var("ADFLOW_TEST_MONGODB_URI") else {
        eprintln!("skipped: set ADFLOW_TEST_MONGODB_URI to run against a MongoDB-wire server");
        return;
    };
    let h = MongoHarness { uri, colls: Mutex::new(Vec::new()) };
    let s = h.fresh().await;
    let evs: Vec<_> = (0..10).map(adflow_store::conformance::sample).collect();
    s.append(&evs[..6]).await.unwrap();
    // A retry of a batch that was partly written before a failure: no error, no second copy.
    s.append(&evs).await.unwrap();
    assert_eq!(adflow_store::conformance::read_all(&*s, 100).await, evs);
}
