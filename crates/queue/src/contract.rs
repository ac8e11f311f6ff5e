//! The queue contract, split along its callers so each takes only what it uses: `Ads`
//! (the ads service: submit, read, cancel, watch), `Leases` (worker sessions and the
//! expiry loop), `Reports` (read-only views: stats, peek, families, dead letters, the
//! policy; the metrics exporter needs only these), `Controls` (the operator's changes)
//! and `Audit` (the operator agent's log). `Operator` is what QueueControl needs
//! (reports and controls); `AdQueue` is all of them plus `close`, what a backend
//! implements and what `crate::open` returns. Upcasting turns an `Arc<dyn AdQueue>` into
//! any of the smaller ones.

use crate::index::PartitionMask;
use crate::{Expired, FamilyStats, Leased, QueueError};
use adflow_proto::v1 as pb;
use async_trait::async_trait;
use tokio::sync::{mpsc, watch};

/// Submission and reads of ads (AdService).
#[async_trait]
pub trait Ads: Send + Sync {
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
}

/// Leases of worker sessions (WorkerService) and their expiry.
#[async_trait]
pub trait Leases: Send + Sync {
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
    /// Changes whenever new work may be available (wakes idle workers).
    fn work_signal(&self) -> watch::Receiver<u64>;
}

/// Read-only views of the queue (QueueControl reads, metrics, the agent's answers).
#[async_trait]
pub trait Reports: Send + Sync {
    /// Queue statistics.
    async fn stats(&self, now: i64) -> Result<pb::QueueStats, QueueError>;
    /// The next `n` ads in serving order.
    async fn peek(&self, n: usize, now: i64) -> Result<Vec<pb::QueuedAd>, QueueError>;
    /// Per-family counts of the active ads, largest queue first.
    async fn family_stats(&self, now: i64) -> Result<Vec<FamilyStats>, QueueError>;
    /// Dead letters, newest first, and their total.
    async fn dead_letters(&self, limit: usize) -> Result<(Vec<pb::DeadLetter>, u64), QueueError>;
    /// The policy in force.
    async fn policy(&self) -> Result<pb::Policy, QueueError>;
}

/// The operator's changes (QueueControl, the agent).
#[async_trait]
pub trait Controls: Send + Sync {
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
    /// Changes the policy.
    async fn set_policy(&self, update: &pb::SetPolicyRequest) -> Result<pb::Policy, QueueError>;
    /// Requeues the named dead letters (all when empty).
    async fn requeue_dead(&self, ids: &[String], now: i64) -> Result<u64, QueueError>;
    /// Cancels every queued ad of a partition.
    async fn purge(&self, priority: u8, now: i64) -> Result<u64, QueueError>;
}

/// The operator agent's audit log.
#[async_trait]
pub trait Audit: Send + Sync {
    /// Appends an operator-agent audit entry; durable on return.
    async fn audit_append(&self, entry: &pb::AuditEntry) -> Result<(), QueueError>;
    /// Audit entries older than `before` (a command id; newest when None), newest first.
    async fn audit_list(&self, before: Option<&str>, limit: usize)
    -> Result<Vec<pb::AuditEntry>, QueueError>;
}

/// What QueueControl uses: the reports and the controls.
pub trait Operator: Reports + Controls {}

impl<T: Reports + Controls + ?Sized> Operator for T {}

/// The whole queue, as a backend implements it.
#[async_trait]
pub trait AdQueue: Ads + Leases + Operator + Audit + 'static {
    /// Flushes and closes.
    async fn close(&self);
}
