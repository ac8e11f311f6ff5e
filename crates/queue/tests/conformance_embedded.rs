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

#[test]
fn a_queue_path_another_gateway_holds_is_named_with_the_way_out() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = QueueConfig { path: dir.path().join("queue.redb"), ..Default::default() };
    let first = EmbeddedQueue::open(&cfg).expect("the first gateway opens the queue");
    let Err(e) = EmbeddedQueue::open(&cfg) else { panic!("a second open of a held queue.path succeeded") };
    let msg = e.to_string();
    assert!(msg.contains(&cfg.path.display().to_string()), "names the file: {msg}");
    assert!(msg.contains("another process"), "says another process holds it: {msg}");
    assert!(msg.contains("queue.path") && msg.contains("stop"), "says what to do: {msg}");
    drop(first);
    EmbeddedQueue::open(&cfg).expect("once the first gateway is gone, the path opens");
}
