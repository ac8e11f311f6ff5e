//! What the queue hands out and reports, and the small rules every backend applies the
//! same way: id parsing, page sizes, lease extensions, an ad's computed fields (position,
//! wait, ETA), and one builder each for `QueueStats`, `PartitionStats`, `DeadLetter` and
//! `QueuedAd`, so the three backends cannot drift apart in what they report.

use crate::QueueError;
use crate::index::{self, AdKey};
use adflow_proto::v1::{self as pb, AdStatus};

/// A leased ad, ready to send to a worker.
#[derive(Clone, Debug)]
pub struct Leased {
    /// The lease id.
    pub lease_id: u64,
    /// The ad as it is now.
    pub ad: pb::Ad,
    /// 1 for the first lease.
    pub attempt: u32,
    /// Deadline, Unix ms.
    pub deadline_ms: i64,
    /// W3C trace context of the submission ("" when none).
    pub traceparent: String,
}

/// Active ads of one game family.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FamilyStats {
    /// The family.
    pub family: String,
    /// Queued ads.
    pub queued: u64,
    /// Leased ads.
    pub processing: u64,
    /// Dead letters.
    pub dead_letters: u64,
    /// Average wait of its queued ads, ms.
    pub average_wait_ms: i64,
}

/// A lease that expired.
#[derive(Clone, Debug)]
pub struct Expired {
    /// The ad.
    pub ad_id: String,
    /// The expired lease.
    pub lease_id: u64,
    /// True when the ad went to the dead letters instead of back to the queue.
    pub dead_lettered: bool,
    /// W3C trace context of the submission.
    pub traceparent: String,
}

/// Parses an ad id (a UUID) into its queue key.
pub(crate) fn parse_id(id: &str) -> Result<AdKey, QueueError> {
    uuid::Uuid::parse_str(id).map(|u| u.as_u128()).map_err(|_| QueueError::BadId(id.to_owned()))
}

/// A ListAds page size: 0 means 100, at most 1000.
pub(crate) fn page_size(n: u32) -> Result<usize, QueueError> {
    match n {
        0 => Ok(100),
        1..=1000 => Ok(n as usize),
        _ => Err(QueueError::invalid("page_size", format!("{n} is above 1000"))),
    }
}

/// A lease extension is 1 s to 1 h.
pub(crate) fn check_extension(seconds: u32) -> Result<(), QueueError> {
    if !(1..=3600).contains(&seconds) {
        return Err(QueueError::invalid("seconds", format!("{seconds} is outside 1..=3600")));
    }
    Ok(())
}

/// Families in report order: largest queue first, then by name.
pub(crate) fn sort_families(v: &mut [FamilyStats]) {
    v.sort_by(|a, b| b.queued.cmp(&a.queued).then_with(|| a.family.cmp(&b.family)));
}

/// Fills an ad's computed fields, the same way in every backend: its queue position
/// (queued ads only), how long it waited, and the estimated time to completion from the
/// completions per second over the last minute (`per_s`).
pub(crate) fn fill_computed(ad: &mut pb::Ad, position: u64, per_s: f64, now: i64) {
    let status = AdStatus::try_from(ad.status).unwrap_or(AdStatus::Unspecified);
    ad.queue_position = if status == AdStatus::Queued { position } else { 0 };
    ad.wait_ms = match status {
        AdStatus::Queued => now - ad.enqueued_at_ms,
        _ if ad.started_at_ms > 0 => ad.started_at_ms - ad.enqueued_at_ms,
        _ => 0,
    }
    .max(0);
    ad.estimated_completion_ms =
        if crate::status::is_pending(ad.status) { eta_ms(ad.queue_position, per_s) } else { 0 };
}

/// Estimated ms until the ad `position` places from the front is done (0: no rate yet).
pub(crate) fn eta_ms(position: u64, per_s: f64) -> i64 {
    if per_s > 0.0 { ((position + 1) as f64 / per_s * 1000.0) as i64 } else { 0 }
}

/// A peek pick as the operator sees it.
pub(crate) fn queued_ad(p: &index::Pick, id: String, spec: pb::AdSpec, now: i64) -> pb::QueuedAd {
    pb::QueuedAd {
        id,
        priority: p.priority as u32,
        effective_priority: p.effective as u32,
        overdue: p.overdue,
        wait_ms: (now - p.enqueued_at).max(0),
        title: spec.title,
        game_family: spec.game_family,
    }
}

/// A dead letter as the operator sees it.
pub(crate) fn dead_letter(ad: &pb::Ad, dead_at_ms: i64) -> pb::DeadLetter {
    pb::DeadLetter {
        id: ad.id.clone(),
        attempts: ad.attempts,
        last_error: ad.last_error.clone(),
        dead_at_ms,
        title: ad.spec.as_ref().map(|s| s.title.clone()).unwrap_or_default(),
        priority: ad.priority,
    }
}

/// One partition's line in the statistics; `oldest_enqueued` is its head's enqueue time.
pub(crate) fn partition(
    priority: u8,
    queued: u64,
    paused: bool,
    oldest_enqueued: Option<i64>,
    now: i64,
) -> pb::PartitionStats {
    pb::PartitionStats {
        priority: priority as u32,
        queued,
        paused,
        oldest_wait_ms: oldest_enqueued.map(|t| (now - t).max(0)).unwrap_or(0),
    }
}

/// What a backend counts for `QueueStats`; the totals and rates are derived the same way
/// everywhere (`into_stats`).
pub(crate) struct StatsCounts {
    /// One line per partition, 5 down to 1.
    pub(crate) partitions: Vec<pb::PartitionStats>,
    /// Average wait of the queued ads, ms.
    pub(crate) average_wait_ms: i64,
    /// Leased ads.
    pub(crate) in_flight: u64,
    /// Dead letters.
    pub(crate) dead_letters: u64,
    /// Completions in the last minute.
    pub(crate) completed_last_minute: u64,
    /// Completions ever.
    pub(crate) completed_total: u64,
}

impl StatsCounts {
    /// The statistics these counts give.
    pub(crate) fn into_stats(self) -> pb::QueueStats {
        pb::QueueStats {
            total_queued: self.partitions.iter().map(|p| p.queued).sum(),
            oldest_wait_ms: self.partitions.iter().map(|p| p.oldest_wait_ms).max().unwrap_or(0),
            average_wait_ms: self.average_wait_ms,
            partitions: self.partitions,
            in_flight: self.in_flight,
            dead_letters: self.dead_letters,
            completed_last_minute: self.completed_last_minute,
            processing_rate_per_s: self.completed_last_minute as f64 / 60.0,
            completed_total: self.completed_total,
            workers: 0,
        }
    }
}
