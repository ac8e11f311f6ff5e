//! The ad queue: priority partitions with anti-starvation, leases with expiry and
//! redelivery, dead letters, and persistence that survives a restart.
//!
//! `index` is the pure scheduling structure; `embedded` wraps it with the ad records,
//! leases, watchers and a redb-backed journal of ad states. The gateway talks to the
//! `AdQueue` trait; `redis_queue` is the same contract shared by many gateways through Redis.

#[cfg(feature = "conformance")]
pub mod conformance;
pub mod embedded;
pub mod index;
pub mod journal;
pub mod mongo_queue;
pub mod policy;
pub mod redis_queue;
mod watchers;

pub use embedded::EmbeddedQueue;
pub use mongo_queue::{MongoQueue, MongoQueueConfig};
pub use policy::QueueConfig;
pub use redis_queue::{RedisQueue, RedisQueueConfig};

use adflow_proto::v1::{self as pb, AdStatus};
use async_trait::async_trait;
use index::PartitionMask;
use tokio::sync::{mpsc, watch};

/// Errors of queue operations.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// No ad has this id.
    #[error("ad {0} not found")]
    NotFound(String),
    /// The id is not a UUID.
    #[error("id {0:?} is not a valid ad id (a UUID)")]
    BadId(String),
    /// The ad is not in a state that allows the operation.
    #[error("ad {id} is {status}: {what}")]
    WrongState {
        /// The ad.
        id: String,
        /// Its status name.
        status: &'static str,
        /// What was refused.
        what: &'static str,
    },
    /// A field is out of range.
    #[error("{field}: {message}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// Why.
        message: String,
    },
    /// The lease does not exist.
    #[error("lease {0} does not exist")]
    UnknownLease(u64),
    /// The lease is not the ad's newest one (expired, released or settled) or not yours.
    #[error("lease {0} is not the ad's current lease (it expired, was released, or the ad was settled)")]
    StaleLease(u64),
    /// Persistence failed.
    #[error(transparent)]
    Journal(#[from] journal::JournalError),
    /// The shared backend (Redis) could not be reached or answered an error.
    #[error("the queue backend failed: {0}")]
    Backend(String),
}

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
pub(crate) fn parse_id(id: &str) -> Result<index::AdKey, QueueError> {
    uuid::Uuid::parse_str(id).map(|u| u.as_u128()).map_err(|_| QueueError::BadId(id.to_owned()))
}

/// A ListAds page size: 0 means 100, at most 1000.
pub(crate) fn page_size(n: u32) -> Result<usize, QueueError> {
    match n {
        0 => Ok(100),
        1..=1000 => Ok(n as usize),
        _ => Err(QueueError::Invalid { field: "page_size", message: format!("{n} is above 1000") }),
    }
}

/// A lease extension is 1 s to 1 h.
pub(crate) fn check_extension(seconds: u32) -> Result<(), QueueError> {
    if !(1..=3600).contains(&seconds) {
        return Err(QueueError::Invalid {
            field: "seconds",
            message: format!("{seconds} is outside 1..=3600"),
        });
    }
    Ok(())
}

/// Families in report order: largest queue first, then by name.
pub(crate) fn sort_families(v: &mut [FamilyStats]) {
    v.sort_by(|a, b| b.queued.cmp(&a.queued).then_with(|| a.family.cmp(&b.family)));
}

/// Whether an ad's status counts toward an estimated completion (queued or leased).
pub(crate) fn is_pending(status: i32) -> bool {
    matches!(AdStatus::try_from(status), Ok(AdStatus::Queued | AdStatus::Processing))
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
    ad.estimated_completion_ms = if is_pending(ad.status) { eta_ms(ad.queue_position, per_s) } else { 0 };
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

/// The queue contract shared by every backend: submission and reads, worker leases, and
/// the operator controls of QueueControl (which the agent also uses).
#[async_trait]
pub trait AdQueue: Send + Sync + 'static {
    /// Stores and enqueues validated ads; returns once they are durable.
    /// `traceparent` (W3C, may be empty) travels with the ads to the workers.
    async fn submit(
        &self,
        specs: Vec<pb::AdSpec>,
        traceparent: &str,
        now: i64,
    ) -> Result<Vec<pb::SubmitAdResponse>, QueueError>;
    /// One ad with its computed fields.
    async fn get(&self, id: &str, now: i64) -> Result<pb::Ad, QueueError>;
    /// Ads matching a filter, newest first, after `page_token`.
    async fn list(&self, req: &pb::ListAdsRequest, now: i64) -> Result<pb::ListAdsResponse, QueueError>;
    /// Cancels an ad that is not final.
    async fn cancel(&self, id: &str, now: i64) -> Result<pb::Ad, QueueError>;
    /// The ad now, and a channel of its later states (closed after a final one).
    async fn watch(&self, id: &str, now: i64) -> Result<(pb::Ad, mpsc::Receiver<pb::Ad>), QueueError>;
    /// Leases up to `n` ads from the partitions in `mask` to worker session `session`.
    async fn lease(&self, session: u64, mask: PartitionMask, n: usize, now: i64) -> Vec<Leased>;
    /// Settles a lease with its analysis; returns the ad's trace context.
    async fn ack(
        &self,
        session: u64,
        lease_id: u64,
        result: pb::AnalysisResult,
        now: i64,
    ) -> Result<String, QueueError>;
    /// Settles several leases of one session; one result per item, in order. Backends
    /// with round trips override it to settle the batch at once.
    async fn ack_many(
        &self,
        session: u64,
        items: Vec<(u64, pb::AnalysisResult)>,
        now: i64,
    ) -> Vec<Result<String, QueueError>> {
        let mut out = Vec::with_capacity(items.len());
        for (lease_id, result) in items {
            out.push(self.ack(session, lease_id, result, now).await);
        }
        out
    }
    /// Gives a lease back: requeue (`retry`, while attempts remain) or dead-letter.
    async fn nack(
        &self,
        session: u64,
        lease_id: u64,
        retry: bool,
        error: &str,
        now: i64,
    ) -> Result<(), QueueError>;
    /// Moves a lease's deadline to now + `seconds`.
    async fn extend(&self, session: u64, lease_id: u64, seconds: u32, now: i64) -> Result<i64, QueueError>;
    /// Requeues every lease of a session that ended; returns how many.
    async fn release_session(&self, session: u64, now: i64) -> usize;
    /// Redelivers or dead-letters leases past their deadline; returns what expired.
    async fn expire(&self, now: i64) -> Vec<Expired>;
    /// Queue statistics.
    async fn stats(&self, now: i64) -> Result<pb::QueueStats, QueueError>;
    /// The next `n` ads in serving order.
    async fn peek(&self, n: usize, now: i64) -> Result<Vec<pb::QueuedAd>, QueueError>;
    /// Changes one queued ad's priority; returns (old, new).
    async fn set_priority(&self, id: &str, priority: u8, now: i64) -> Result<(u8, u8), QueueError>;
    /// Changes the priority of queued ads matching `filter`; returns (changed, matched).
    async fn reprioritize(
        &self,
        filter: &pb::AdFilter,
        priority: u8,
        dry_run: bool,
        now: i64,
    ) -> Result<(u64, u64), QueueError>;
    /// Pauses or resumes a partition.
    async fn set_paused(&self, priority: u8, paused: bool) -> Result<pb::PartitionState, QueueError>;
    /// The policy in force.
    async fn policy(&self) -> Result<pb::Policy, QueueError>;
    /// Changes the policy.
    async fn set_policy(&self, update: &pb::SetPolicyRequest) -> Result<pb::Policy, QueueError>;
    /// Dead letters, newest first, and their total.
    async fn dead_letters(&self, limit: usize) -> Result<(Vec<pb::DeadLetter>, u64), QueueError>;
    /// Requeues the named dead letters (all when empty).
    async fn requeue_dead(&self, ids: &[String], now: i64) -> Result<u64, QueueError>;
    /// Cancels every queued ad of a partition.
    async fn purge(&self, priority: u8, now: i64) -> Result<u64, QueueError>;
    /// Per-family counts of the active ads, largest queue first.
    async fn family_stats(&self, now: i64) -> Result<Vec<FamilyStats>, QueueError>;
    /// Appends an operator-agent audit entry; durable on return.
    async fn audit_append(&self, entry: &pb::AuditEntry) -> Result<(), QueueError>;
    /// Audit entries older than `before` (a command id; newest when None), newest first.
    async fn audit_list(&self, before: Option<&str>, limit: usize)
    -> Result<Vec<pb::AuditEntry>, QueueError>;
    /// Changes whenever new work may be available (wakes idle workers).
    fn work_signal(&self) -> watch::Receiver<u64>;
    /// Flushes and closes.
    async fn close(&self);
}
