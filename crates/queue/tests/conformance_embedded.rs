//! The queue conformance suite on the embedded (redb) backend. A crash is modelled by
//! stopping the journal without committing what is queued (`EmbeddedQueue::crash`): the
//! reopened queue sees only what redb had committed, as after a kill -9.

use adflow_queue::conformance::{Harness, run_all};
use adflow_queue::{AdQueue, EmbeddedQueue, QueueConfig};
use async_trait::async_trait;
use std::sync::{Arc, Mutex};

struct Embedded {
    dir: tempfile::TempDir,
    /// The settings and the handle of the queue opened last.
    last: Mutex<Option<(QueueConfig, Arc<EmbeddedQueue>)>>,
}

impl Embedded {
    fn open(&self, cfg: QueueConfig) -> Arc<dyn AdQueue> {
        let q = Arc::new(EmbeddedQueue::open(&cfg).expect("open embedded queue"));
        *self.last.lock().unwrap() = Some((cfg, q.clone()));
        q
    }

    /// Takes the last queue's handle and settings; `q` must be that queue.
    fn take(&self, q: Arc<dyn AdQueue>) -> (QueueConfig, Arc<EmbeddedQueue>) {
        let (cfg, mine) = self.last.lock().unwrap().take().expect("a fresh queue first");
        assert!(std::ptr::addr_eq(Arc::as_ptr(&q), Arc::as_ptr(&mine)), "reopen the queue opened last");
        drop(q);
        (cfg, mine)
    }
}

#[async_trait]
impl Harness for Embedded {
    async fn fresh(&self, mut cfg: QueueConfig) -> Arc<dyn AdQueue> {
        cfg.path = self.dir.path().join(format!("{}.redb", uuid::Uuid::new_v4()));
        self.open(cfg)
    }

    async fn reopen(&self, q: Arc<dyn AdQueue>) -> Arc<dyn AdQueue> {
        let (cfg, q) = self.take(q);
        q.close().await;
        drop(q);
        self.open(cfg)
    }

    async fn crash(&self, q: Arc<dyn AdQueue>) -> Arc<dyn AdQueue> {
        let (cfg, q) = self.take(q);
        q.crash();
        let q = Arc::try_unwrap(q).unwrap_or_else(|_| panic!("the crashed queue is still in use"));
        // Whatever the queue still holds in memory dies with it.
        drop(q);
        self.open(cfg)
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
