//! Worker leases on the MongoDB queue: the candidates (partition heads and the most
//! overdue ads) go through the scheduling `Index`, and each pick is claimed with a
//! compare-and-set on `st: QUEUED`; acks, nacks and extensions are CAS on the lease.

use super::document::{bin, geti, to_ad};
use super::{MongoQueue, mongo_error};
use crate::fields::*;
use crate::index::{Index, MAX_PRIORITY, PartitionMask, Rules};
use crate::status::{COMPLETED, DEAD, PROCESSING, QUEUED};
use crate::{Expired, Leased, Leases, QueueError, policy};
use adflow_proto::v1 as pb;
use async_trait::async_trait;
use futures::TryStreamExt;
use mongodb::bson::{Document, doc};
use mongodb::options::ReturnDocument;
use prost::Message;
use std::collections::HashMap;
use tokio::sync::watch;

impl MongoQueue {
    /// Candidates (queued heads of each partition and the most overdue) in an Index.
    pub(super) async fn candidates(
        &self,
        n: usize,
        now: i64,
        mask: PartitionMask,
    ) -> Result<(Index, Rules, HashMap<u128, Document>), QueueError> {
        let pol = self.inner.policy().await?;
        let paused = self.inner.paused().await?;
        let mut index = Index::default();
        for p in &paused {
            index.set_paused(*p, true);
        }
        let allowed: Vec<i64> =
            (1..=MAX_PRIORITY).filter(|p| mask & (1 << (p - 1)) != 0).map(i64::from).collect();
        let mut docs: HashMap<u128, Document> = HashMap::new();
        let mut add = |d: Document, index: &mut Index| {
            let Ok(key) = uuid::Uuid::parse_str(d.get_str("_id").unwrap_or_default()).map(|u| u.as_u128())
            else {
                return;
            };
            index.push(key, geti(&d, PR) as u8, geti(&d, SEQ) as u64, geti(&d, ENQ), geti(&d, DL));
            docs.insert(key, d);
        };
        if pol.anti_starvation {
            let mut cur = self
                .inner
                .ads
                .find(doc! {ST: QUEUED, DL: {"$lte": now}, PR: {"$in": &allowed}})
                .sort(doc! {DL: 1})
                .limit(n as i64)
                .await
                .map_err(mongo_error)?;
            while let Some(d) = cur.try_next().await.map_err(mongo_error)? {
                add(d, &mut index);
            }
        }
        for p in &allowed {
            if paused.contains(&(*p as u8)) {
                continue;
            }
            let mut cur = self
                .inner
                .ads
                .find(doc! {ST: QUEUED, PR: p})
                .sort(doc! {SEQ: 1})
                .limit(n as i64)
                .await
                .map_err(mongo_error)?;
            while let Some(d) = cur.try_next().await.map_err(mongo_error)? {
                add(d, &mut index);
            }
        }
        Ok((index, policy::rules(&pol), docs))
    }

    async fn try_lease(
        &self,
        session: u64,
        mask: PartitionMask,
        n: usize,
        now: i64,
    ) -> Result<Vec<Leased>, QueueError> {
        let (mut index, rules, mut docs) = self.candidates(n, now, mask).await?;
        let pol = self.inner.policy().await?;
        let sess = self.session(session);
        let mut out = Vec::new();
        if index.is_empty() {
            return Ok(out);
        }
        // A block of lease ids for this call (unused ones are simply skipped).
        let last = self.inner.counter("lseq", n as i64).await?;
        let mut next_id = last - n as i64 + 1;
        while out.len() < n {
            let Some((key, _)) = index.pop(now, rules, mask) else { break };
            let Some(d) = docs.remove(&key) else { continue };
            let id = d.get_str("_id").unwrap_or_default().to_owned();
            let lease_id = next_id;
            next_id += 1;
            let deadline = now + pol.lease_seconds as i64 * 1000;
            let claimed = self
                .inner
                .ads
                .find_one_and_update(
                    doc! {"_id": &id, ST: QUEUED},
                    doc! {"$set": {ST: PROCESSING, START: now, LEASE: lease_id, SESS: &sess, LDL: deadline},
                    "$inc": {ATT: 1i64}},
                )
                .return_document(ReturnDocument::After)
                .await
                .map_err(mongo_error)?;
            // None: another gateway claimed it first.
            let Some(d) = claimed else { continue };
            self.inner.notify(&id, PROCESSING).await;
            let mut ad = to_ad(&d);
            ad.wait_ms = (now - ad.enqueued_at_ms).max(0);
            out.push(Leased {
                lease_id: lease_id as u64,
                attempt: ad.attempts,
                deadline_ms: deadline,
                traceparent: d.get_str(TRACE).unwrap_or_default().to_owned(),
                ad,
            });
        }
        Ok(out)
    }
}

#[async_trait]
impl Leases for MongoQueue {
    async fn lease(&self, session: u64, mask: PartitionMask, n: usize, now: i64) -> Vec<Leased> {
        if n == 0 {
            return Vec::new();
        }
        match self.try_lease(session, mask, n, now).await {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, "leasing from the mongodb queue failed");
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
        let sess = self.session(session);
        let d = self
            .inner
            .ads
            .find_one_and_update(
                doc! {LEASE: lease_id as i64, SESS: &sess, ST: PROCESSING},
                doc! {"$set": {ST: COMPLETED, FIN: now, AN: bin(result.encode_to_vec())},
                "$unset": {LEASE: "", SESS: "", LDL: ""}},
            )
            .await
            .map_err(mongo_error)?;
        let Some(d) = d else {
            return Err(match self.inner.current(&sess, lease_id).await {
                Ok(_) => QueueError::StaleLease(lease_id),
                Err(e) => e,
            });
        };
        self.inner
            .done
            .update_one(doc! {"_id": now / 1000}, doc! {"$inc": {"n": 1i64}})
            .upsert(true)
            .await
            .map_err(mongo_error)?;
        self.inner.counter("done", 1).await?;
        self.inner.notify(d.get_str("_id").unwrap_or_default(), COMPLETED).await;
        Ok(d.get_str(TRACE).unwrap_or_default().to_owned())
    }

    async fn nack(
        &self,
        session: u64,
        lease_id: u64,
        retry: bool,
        error: &str,
        now: i64,
    ) -> Result<(), QueueError> {
        let d = self.inner.current(&self.session(session), lease_id).await?;
        let pol = self.inner.policy().await?;
        match self.inner.settle_retry(&d, retry, error, now, &pol).await? {
            Some(_) => Ok(()),
            None => Err(QueueError::StaleLease(lease_id)),
        }
    }

    async fn extend(&self, session: u64, lease_id: u64, seconds: u32, now: i64) -> Result<i64, QueueError> {
        crate::model::check_extension(seconds)?;
        let sess = self.session(session);
        let deadline = now + seconds as i64 * 1000;
        let r = self
            .inner
            .ads
            .update_one(
                doc! {LEASE: lease_id as i64, SESS: &sess, ST: PROCESSING},
                doc! {"$set": {LDL: deadline}},
            )
            .await
            .map_err(mongo_error)?;
        if r.matched_count == 0 {
            self.inner.current(&sess, lease_id).await?;
            return Err(QueueError::StaleLease(lease_id));
        }
        Ok(deadline)
    }

    async fn release_session(&self, session: u64, now: i64) -> usize {
        let sess = self.session(session);
        let run = async {
            let pol = self.inner.policy().await?;
            let mut cur =
                self.inner.ads.find(doc! {SESS: &sess, ST: PROCESSING}).await.map_err(mongo_error)?;
            let mut held = Vec::new();
            while let Some(d) = cur.try_next().await.map_err(mongo_error)? {
                held.push(d);
            }
            let mut n = 0;
            for d in held {
                let r = self.inner.settle_retry(
                    &d,
                    true,
                    "worker disconnected while holding the lease",
                    now,
                    &pol,
                );
                if r.await?.is_some() {
                    n += 1;
                }
            }
            Ok::<_, QueueError>(n)
        };
        match run.await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, session, "releasing a session's leases failed; they expire instead");
                0
            }
        }
    }

    async fn expire(&self, now: i64) -> Vec<Expired> {
        // Completions per second are only read for the last minute: trim once a minute.
        let sec = now / 1000;
        let last = self.inner.trimmed.load(std::sync::atomic::Ordering::Relaxed);
        if sec - last >= 60 {
            self.inner.trimmed.store(sec, std::sync::atomic::Ordering::Relaxed);
            if let Err(e) = self.inner.done.delete_many(doc! {"_id": {"$lt": sec - 120}}).await {
                tracing::warn!(error = %e, "trimming old completion counts failed");
            }
        }
        let run = async {
            let pol = self.inner.policy().await?;
            let mut cur = self
                .inner
                .ads
                .find(doc! {ST: PROCESSING, LDL: {"$lte": now}})
                .limit(1000)
                .await
                .map_err(mongo_error)?;
            let mut due = Vec::new();
            while let Some(d) = cur.try_next().await.map_err(mongo_error)? {
                due.push(d);
            }
            let mut out = Vec::new();
            for d in due {
                let lease = geti(&d, LEASE);
                let msg = format!("lease {lease} expired after {} s", pol.lease_seconds);
                if let Some(st) = self.inner.settle_retry(&d, true, &msg, now, &pol).await? {
                    out.push(Expired {
                        ad_id: d.get_str("_id").unwrap_or_default().to_owned(),
                        lease_id: lease as u64,
                        dead_lettered: st == DEAD,
                        traceparent: d.get_str(TRACE).unwrap_or_default().to_owned(),
                    });
                }
            }
            Ok::<_, QueueError>(out)
        };
        match run.await {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, "expiring leases in the mongodb queue failed");
                Vec::new()
            }
        }
    }

    fn work_signal(&self) -> watch::Receiver<u64> {
        self.inner.signal.subscribe()
    }
}
