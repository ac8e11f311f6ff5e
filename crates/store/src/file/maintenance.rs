//! The file store's background upkeep: the free-space watermark every second and a
//! retention sweep every 10 s (see `retention`), on the blocking pool, until `stop`.

use super::groups::Groups;
use super::log::TimeIndex;
use super::{FileConfig, Writer, list_segments, retention};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Seconds between retention sweeps.
const SWEEP_EVERY: u64 = 10;

/// The running upkeep task and what it found.
pub(super) struct Upkeep {
    refusal: Arc<Mutex<Option<String>>>,
    /// Whether `refusal` holds a reason: read on every ingest request without the lock.
    refusing: Arc<std::sync::atomic::AtomicBool>,
    stop: watch::Sender<bool>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Upkeep {
    /// Checks the watermark once now, then keeps checking it and sweeping in the background.
    pub fn start(
        cfg: FileConfig,
        writer: Arc<Mutex<Writer>>,
        groups: Arc<Groups>,
        index: Arc<TimeIndex>,
    ) -> Self {
        let first = retention::watermark(&cfg);
        let refusing = Arc::new(std::sync::atomic::AtomicBool::new(first.is_some()));
        let refusal = Arc::new(Mutex::new(first));
        let (stop, mut stopped) = watch::channel(false);
        let (r, flag) = (refusal.clone(), refusing.clone());
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            let mut n = 0u64;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stopped.changed() => return,
                }
                let (cfg, r, groups, index, writer) =
                    (cfg.clone(), r.clone(), groups.clone(), index.clone(), writer.clone());
                let flag = flag.clone();
                let sweep = n.is_multiple_of(SWEEP_EVERY);
                n += 1;
                let _ = tokio::task::spawn_blocking(move || {
                    let refusal = retention::watermark(&cfg);
                    let mut current = r.lock().unwrap_or_else(|p| p.into_inner());
                    if *current != refusal {
                        match &refusal {
                            Some(why) => {
                                tracing::error!(%why, "refusing new events until disk space is freed")
                            }
                            None => tracing::info!(
                                "disk space back above storage.file.min_free_mb; accepting events"
                            ),
                        }
                        flag.store(refusal.is_some(), std::sync::atomic::Ordering::Relaxed);
                        *current = refusal;
                    }
                    drop(current);
                    if sweep {
                        upkeep_sweep(&cfg, &writer, &groups, &index);
                    }
                })
                .await;
            }
        });
        Self { refusal, refusing, stop, task: Mutex::new(Some(task)) }
    }

    /// Why writes are refused now, if they are.
    pub fn refusal(&self) -> Option<String> {
        if !self.refusing.load(std::sync::atomic::Ordering::Relaxed) {
            return None;
        }
        self.refusal.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Stops the background task and waits for it.
    pub async fn stop(&self) {
        let _ = self.stop.send(true);
        let task = self.task.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = task {
            let _ = t.await;
        }
    }
}

fn upkeep_sweep(cfg: &FileConfig, writer: &Mutex<Writer>, groups: &Groups, index: &TimeIndex) {
    let active = writer.lock().unwrap_or_else(|p| p.into_inner()).segment;
    let now = adflow_domain::now_ms();
    if let Err(e) = retention::sweep(cfg, active, now, groups, index) {
        tracing::warn!(error = %e, "retention sweep failed; retrying in 10 s");
    }
    let first = list_segments(&cfg.dir).ok().and_then(|s| s.first().copied());
    if let Some(s) = first
        && let Ok(Some(t)) = index.first_time(&cfg.dir, s, s != active)
    {
        metrics::gauge!("store_oldest_record_age_seconds").set((now - t).max(0) as f64 / 1000.0);
    }
}
