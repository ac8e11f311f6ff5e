//! When checkpoints are written: every `interval_secs` while commits arrive, sooner once
//! `max_replay_events` commits piled up since the last one (a crash then replays at most
//! about that many events), never sooner than 1 s after the last one ended, and once
//! more at shutdown. With the journal a save costs about 8 bytes per new id, so it can
//! be frequent: the replay after a crash, not the saves, sets the restart time.
//! Saving runs on the blocking pool; its time, size and failures are metrics.

use super::{Checkpoints, Mark};
use crate::pipeline::Window;
use adflow_domain::analytics::Analytics;
use adflow_domain::now_ms;
use serde::{Deserialize, Serialize};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Checkpoint settings (`[checkpoint]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CheckpointConfig {
    /// Write checkpoints (file backend; default true).
    pub enabled: bool,
    /// Longest time between checkpoints while events are committed (default 5 s).
    pub interval_secs: u64,
    /// Checkpoint sooner once this many events were committed since the last one.
    pub max_replay_events: u64,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        Self { enabled: true, interval_secs: 5, max_replay_events: 500_000 }
    }
}

/// Shortest time between two checkpoints.
const MIN_SPACING: Duration = Duration::from_secs(1);

/// The state a checkpoint saves.
#[derive(Clone)]
pub struct Sources {
    /// The analytics counters.
    pub analytics: Arc<RwLock<Analytics>>,
    /// The position they are counted through.
    pub mark: Mark,
    /// The dedup window, when local.
    pub dedup: Option<Arc<Window>>,
}

impl Sources {
    /// Saves now, on the blocking pool, recording the metrics and logging a failure.
    pub async fn save(&self, cp: &Arc<Checkpoints>, why: &'static str) {
        let (cp, me) = (cp.clone(), self.clone());
        let started = Instant::now();
        let res = tokio::task::spawn_blocking(move || {
            cp.save(&me.analytics, &me.mark, me.dedup.as_deref(), now_ms())
        })
        .await;
        let took = started.elapsed();
        match res {
            Ok(Ok(Some(s))) => {
                metrics::histogram!("checkpoint_duration_seconds").record(took.as_secs_f64());
                metrics::gauge!("checkpoint_bytes").set(s.bytes as f64);
                metrics::gauge!("checkpoint_last_success_timestamp_seconds").set(now_ms() as f64 / 1000.0);
                tracing::debug!(why, bytes = s.bytes, cursor = %s.cursor.0, elapsed_ms = took.as_millis() as u64, "checkpoint written");
            }
            Ok(Ok(None)) => {}
            Ok(Err(e)) => {
                metrics::counter!("checkpoint_failures_total").increment(1);
                tracing::warn!(why, error = %e, "checkpoint not written; a restart reads more of the store");
            }
            Err(e) => {
                metrics::counter!("checkpoint_failures_total").increment(1);
                tracing::error!(why, error = %e, "checkpoint task failed");
            }
        }
    }
}

/// Writes checkpoints on schedule until `stop` turns true; `committed` counts commits.
pub async fn run(
    cp: Arc<Checkpoints>,
    src: Sources,
    cfg: CheckpointConfig,
    committed: impl Fn() -> u64 + Send + 'static,
    mut stop: watch::Receiver<bool>,
) {
    let interval = Duration::from_secs(cfg.interval_secs.max(1));
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let (mut last_at, mut last_n) = (Instant::now(), committed());
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let n = committed();
        let since = last_at.elapsed();
        let due = (n != last_n && since >= interval)
            || (n.saturating_sub(last_n) >= cfg.max_replay_events && since >= MIN_SPACING);
        if due {
            src.save(&cp, "schedule").await;
            (last_at, last_n) = (Instant::now(), n);
        }
    }
}
