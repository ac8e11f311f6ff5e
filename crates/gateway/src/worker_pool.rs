//! The in-process workers: the same `adflow-worker` loop as the standalone binary,
//! connected to this gateway over loopback. The pool can be resized at run time (the
//! agent's "scale workers to N"); a stopped worker hands its leases back first.

use adflow_worker::run::{WorkerConfig, WorkerStats, run};
use std::sync::Arc;
use tokio::sync::{Mutex, watch};
use tokio::task::JoinHandle;

/// A resizable set of in-process workers.
pub struct WorkerPool {
    template: WorkerConfig,
    workers: Mutex<Vec<(watch::Sender<bool>, JoinHandle<()>)>>,
    next: std::sync::atomic::AtomicUsize,
}

impl WorkerPool {
    /// An empty pool whose workers use `template` (their ids are numbered).
    pub fn new(template: WorkerConfig) -> Arc<Self> {
        Arc::new(Self { template, workers: Mutex::new(Vec::new()), next: Default::default() })
    }

    /// Workers running now.
    pub async fn size(&self) -> usize {
        self.workers.lock().await.len()
    }

    /// Starts or stops workers until `n` run; returns (before, after).
    pub async fn scale(&self, n: usize) -> (usize, usize) {
        let mut w = self.workers.lock().await;
        let before = w.len();
        while w.len() < n {
            let i = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let mut cfg = self.template.clone();
            cfg.worker_id = format!("in-process-{i}");
            let (tx, rx) = watch::channel(false);
            w.push((tx, tokio::spawn(run(cfg, rx, Arc::new(WorkerStats::default())))));
        }
        while w.len() > n {
            if let Some((tx, join)) = w.pop() {
                let _ = tx.send(true);
                let _ = join.await;
            }
        }
        (before, w.len())
    }
}
