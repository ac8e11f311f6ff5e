//! The queue conformance suite on the embedded (redb) backend.

use adflow_queue::conformance::{Harness, run_all};
use adflow_queue::{AdQueue, EmbeddedQueue, QueueConfig};
use async_trait::async_trait;
use std::sync::{Arc, Mutex};

struct Embedded {
    dir: tempfile::TempDir,
    last: Mutex<Option<QueueConfig>>,
}

#[async_trait]
impl Harness for Embedded {
    async fn fresh(&self, mut cfg: QueueConfig) -> Arc<dyn AdQueue> {
        cfg.path = self.dir.path().join(format!("{}.redb", uuid::Uuid::new_v4()));
        *self.last.lock().unwrap() = Some(cfg.clone());
        Arc::new(EmbeddedQueue::open(&cfg).expect("open embedded queue"))
    }

    async fn reopen(&self, q: Arc<dyn AdQueue>) -> Arc<dyn AdQueue> {
        q.close().await;
        drop(q);
        let cfg = self.last.lock().unwrap().clone().expect("a fresh queue first");
        Arc::new(EmbeddedQueue::open(&cfg).expect("reopen embedded queue"))
    }

    async fn peer(&self) -> Option<Arc<dyn AdQueue>> {
        None
    }

    fn leases_survive_restart(&self) -> bool {
        false
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_queue_passes_the_conformance_suite() {
    run_all(&Embedded { dir: tempfile::tempdir().unwrap(), last: Mutex::new(None) }).await;
}
