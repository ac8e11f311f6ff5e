//! Worker leases on the embedded queue: lease (the attempt is journaled before the ad is
//! handed out), ack (batched acks do not wait for their commit), nack, extend, release
//! and expiry. Deadlines live in memory only: a lease does not outlive the process.

use super::state::LeaseInfo;
use super::{ACK_BACKLOG, EmbeddedQueue, LEASE_SEQ};
use crate::index::PartitionMask;
use crate::{Expired, Leased, Leases, QueueError};
use adflow_proto::v1::{self as pb, AdStatus};
use async_trait::async_trait;
use tokio::sync::watch;

#[async_trait]
impl Leases for EmbeddedQueue {
    async fn lease(&self, session: u64, mask: PartitionMask, n: usize, now: i64) -> Vec<Leased> {
        let leased = self.durably(|st| {
            let mut out = Vec::new();
            let rules = st.rules();
            let lease_ms = st.policy.lease_seconds as i64 * 1000;
            while out.len() < n {
                let Some((key, _)) = st.index.pop(now, rules, mask) else { break };
                let lease_id = st.next_lease;
                st.next_lease += 1;
                let deadline = now + lease_ms;
                let Some(r) = st.ads.get_mut(&key) else { continue };
                st.sum_enqueued -= r.ad.enqueued_at_ms as i128;
                r.lease = Some(lease_id);
                r.ad.status = AdStatus::Processing as i32;
                r.ad.attempts += 1;
                r.ad.started_at_ms = now;
                // The attempt is on disk before the worker has the ad (a small lease
                // record; the ad itself is written when the lease is settled).
                self.journal.leased(key, r.ad.attempts);
                let (ad, attempt, traceparent) = (r.ad.clone(), r.ad.attempts, r.trace.clone());
                st.leases.insert(lease_id, LeaseInfo { key, session, deadline });
                st.lease_deadlines.insert((deadline, lease_id), ());
                st.notify(&self.journal, key, now);
                out.push(Leased {
                    lease_id,
                    ad: st.snapshot(&ad, now),
                    attempt,
                    deadline_ms: deadline,
                    traceparent,
                });
            }
            if !out.is_empty() {
                // Committed with the leases: no id below it is handed out again.
                self.journal.set_meta(LEASE_SEQ, (st.next_lease - 1).to_le_bytes().to_vec());
            }
            out
        });
        match leased.await {
            Ok(v) => v,
            Err(e) => {
                // The leases stay in memory and expire; nothing reached a worker.
                tracing::error!(error = %e, "leases not committed; not handed out");
                Vec::new()
            }
        }
    }

    async fn ack(
        &self,
        session: u64,
        lease_id: u64,
        result: pb::AnalysisResult,
        now: i64,
    ) -> Result<String, QueueError> {
        self.durably(|st| self.ack_locked(st, session, lease_id, result, now)).await?
    }

    async fn ack_many(
        &self,
        session: u64,
        items: Vec<(u64, pb::AnalysisResult)>,
        now: i64,
    ) -> Vec<Result<String, QueueError>> {
        // A worker's batch of acks gets no answer but refusals (which change nothing), so
        // the session does not wait for the commit here: the ads are reported COMPLETED
        // (GetAd, WatchAd, stats) only once it is done, and leasing goes on meanwhile.
        let (out, seq) = {
            let mut st = self.lock();
            let out: Vec<_> = items
                .into_iter()
                .map(|(lease_id, r)| self.ack_locked(&mut st, session, lease_id, r, now))
                .collect();
            (out, self.journal.written())
        };
        // Backpressure: when commits fall behind, the acking session waits, so the
        // journal's backlog (which every lease and read waits behind) stays short.
        if self.journal.backlog() > ACK_BACKLOG
            && let Err(e) = self.journal.synced(seq).await
        {
            tracing::error!(error = %e, "queue journal failed while acks waited for it");
        }
        out
    }

    async fn nack(
        &self,
        session: u64,
        lease_id: u64,
        retry: bool,
        error: &str,
        now: i64,
    ) -> Result<(), QueueError> {
        self.durably(|st| {
            let key = Self::current_lease(st, session, lease_id)?;
            st.drop_lease(lease_id);
            self.settle_retry(st, key, retry, error.to_owned(), now);
            Ok::<_, QueueError>(())
        })
        .await??;
        self.wake();
        Ok(())
    }

    async fn extend(&self, session: u64, lease_id: u64, seconds: u32, now: i64) -> Result<i64, QueueError> {
        crate::model::check_extension(seconds)?;
        // Deadlines are memory only (a lease does not outlive the process): nothing to commit.
        let mut st = self.lock();
        Self::current_lease(&st, session, lease_id)?;
        let mut l = st.drop_lease(lease_id).expect("current lease exists");
        l.deadline = now + seconds as i64 * 1000;
        let deadline = l.deadline;
        st.lease_deadlines.insert((deadline, lease_id), ());
        st.leases.insert(lease_id, l);
        Ok(deadline)
    }

    async fn release_session(&self, session: u64, now: i64) -> usize {
        let released = self.durably(|st| {
            let mine: Vec<u64> =
                st.leases.iter().filter(|(_, l)| l.session == session).map(|(id, _)| *id).collect();
            for id in &mine {
                if let Some(l) = st.drop_lease(*id) {
                    let why = "worker disconnected while holding the lease".to_owned();
                    self.settle_retry(st, l.key, true, why, now);
                }
            }
            mine.len()
        });
        let n = released.await.unwrap_or_else(|e| {
            tracing::error!(error = %e, session, "released leases not committed");
            0
        });
        if n > 0 {
            self.wake();
        }
        n
    }

    async fn expire(&self, now: i64) -> Vec<Expired> {
        let expired = self.durably(|st| {
            let due: Vec<u64> = st.lease_deadlines.range(..(now + 1, 0)).map(|(&(_, id), _)| id).collect();
            let mut out = Vec::with_capacity(due.len());
            for id in &due {
                if let Some(l) = st.drop_lease(*id) {
                    let secs = st.policy.lease_seconds;
                    self.settle_retry(st, l.key, true, format!("lease {id} expired after {secs} s"), now);
                    if let Some(r) = st.ads.get(&l.key) {
                        out.push(Expired {
                            ad_id: r.ad.id.clone(),
                            lease_id: *id,
                            dead_lettered: r.ad.status == AdStatus::DeadLetter as i32,
                            traceparent: r.trace.clone(),
                        });
                    }
                }
            }
            out
        });
        let out = expired.await.unwrap_or_else(|e| {
            tracing::error!(error = %e, "expired leases not committed");
            Vec::new()
        });
        if !out.is_empty() {
            self.wake();
        }
        out
    }

    fn work_signal(&self) -> watch::Receiver<u64> {
        self.signal.subscribe()
    }
}
