//! The MongoDB queue's read-only views (stats, peek, families, dead letters, the shared
//! policy) and the operator agent's audit log (collection `audit`, by sequence).

use super::document::{bin, bytes, geti, to_ad};
use super::{MongoQueue, bad_data, mongo_error};
use crate::fields::*;
use crate::index::MAX_PRIORITY;
use crate::model::{self, StatsCounts};
use crate::status::{DEAD, PROCESSING, QUEUED};
use crate::{Audit, FamilyStats, QueueError, Reports};
use adflow_proto::v1 as pb;
use async_trait::async_trait;
use futures::TryStreamExt;
use mongodb::bson::{Document, doc};
use prost::Message;
use std::collections::HashMap;

#[async_trait]
impl Reports for MongoQueue {
    async fn stats(&self, now: i64) -> Result<pb::QueueStats, QueueError> {
        let paused = self.inner.paused().await?;
        let mut partitions = Vec::new();
        for p in (1..=MAX_PRIORITY).rev() {
            let f = doc! {ST: QUEUED, PR: p as i64};
            let queued = self.inner.ads.count_documents(f.clone()).await.map_err(mongo_error)?;
            let oldest = self.inner.ads.find_one(f).sort(doc! {SEQ: 1}).await.map_err(mongo_error)?;
            let oldest_enqueued = oldest.map(|d| geti(&d, ENQ));
            partitions.push(model::partition(p, queued, paused.contains(&p), oldest_enqueued, now));
        }
        let total: u64 = partitions.iter().map(|p| p.queued).sum();
        let mut sum_enq = 0i128;
        let mut cur = self
            .inner
            .ads
            .aggregate(vec![
                doc! {"$match": {ST: QUEUED}},
                doc! {"$group": {"_id": format!("${ST}"), "s": {"$sum": format!("${ENQ}")}}},
            ])
            .await
            .map_err(mongo_error)?;
        while let Some(d) = cur.try_next().await.map_err(mongo_error)? {
            sum_enq += geti(&d, "s") as i128;
        }
        let in_flight = self.inner.ads.count_documents(doc! {ST: PROCESSING}).await.map_err(mongo_error)?;
        let dead = self.inner.ads.count_documents(doc! {ST: DEAD}).await.map_err(mongo_error)?;
        let minute = self.inner.rate(now).await?;
        let counters = self
            .inner
            .meta
            .find_one(doc! {"_id": "counters"})
            .await
            .map_err(mongo_error)?
            .unwrap_or_default();
        Ok(StatsCounts {
            average_wait_ms: if total > 0 {
                (now as i128 - sum_enq / total as i128).max(0) as i64
            } else {
                0
            },
            partitions,
            in_flight,
            dead_letters: dead,
            completed_last_minute: minute,
            completed_total: geti(&counters, "done") as u64,
        }
        .into_stats())
    }

    async fn peek(&self, n: usize, now: i64) -> Result<Vec<pb::QueuedAd>, QueueError> {
        let (index, rules, docs) = self.candidates(n, now, crate::index::ALL_PARTITIONS).await?;
        Ok(index
            .peek(n, now, rules)
            .into_iter()
            .filter_map(|p| {
                let ad = to_ad(docs.get(&p.key)?);
                Some(model::queued_ad(&p, ad.id, ad.spec.unwrap_or_default(), now))
            })
            .collect())
    }

    async fn policy(&self) -> Result<pb::Policy, QueueError> {
        self.inner.policy().await
    }

    async fn dead_letters(&self, limit: usize) -> Result<(Vec<pb::DeadLetter>, u64), QueueError> {
        let total = self.inner.ads.count_documents(doc! {ST: DEAD}).await.map_err(mongo_error)?;
        let mut items = Vec::new();
        if limit > 0 {
            let mut cur = self
                .inner
                .ads
                .find(doc! {ST: DEAD})
                .sort(doc! {FIN: -1})
                .limit(limit as i64)
                .await
                .map_err(mongo_error)?;
            while let Some(d) = cur.try_next().await.map_err(mongo_error)? {
                let ad = to_ad(&d);
                items.push(model::dead_letter(&ad, ad.finished_at_ms));
            }
        }
        Ok((items, total))
    }

    async fn family_stats(&self, now: i64) -> Result<Vec<FamilyStats>, QueueError> {
        let mut by: HashMap<String, (FamilyStats, i128)> = HashMap::new();
        for st in [QUEUED, PROCESSING, DEAD] {
            let pipeline = vec![
                doc! {"$match": {ST: st}},
                doc! {"$group": {"_id": format!("${FAM}"), "n": {"$sum": 1}, "s": {"$sum": format!("${ENQ}")}}},
            ];
            let mut cur = self.inner.ads.aggregate(pipeline).await.map_err(mongo_error)?;
            while let Some(d) = cur.try_next().await.map_err(mongo_error)? {
                let fam = d.get_str("_id").unwrap_or_default().to_owned();
                let e = by
                    .entry(fam.clone())
                    .or_insert_with(|| (FamilyStats { family: fam, ..Default::default() }, 0));
                let n = geti(&d, "n") as u64;
                match st {
                    QUEUED => {
                        e.0.queued = n;
                        e.1 = geti(&d, "s") as i128;
                    }
                    PROCESSING => e.0.processing = n,
                    _ => e.0.dead_letters = n,
                }
            }
        }
        let mut out: Vec<FamilyStats> = by
            .into_values()
            .map(|(mut f, sum)| {
                f.average_wait_ms =
                    if f.queued > 0 { (now as i128 - sum / f.queued as i128).max(0) as i64 } else { 0 };
                f
            })
            .collect();
        model::sort_families(&mut out);
        Ok(out)
    }
}

#[async_trait]
impl Audit for MongoQueue {
    async fn audit_append(&self, entry: &pb::AuditEntry) -> Result<(), QueueError> {
        crate::parse_id(&entry.command_id)?;
        let seq = self.inner.counter("auditseq", 1).await?;
        self.inner
            .audit
            .insert_one(doc! {"_id": &entry.command_id, "seq": seq, "e": bin(entry.encode_to_vec())})
            .await
            .map_err(mongo_error)?;
        Ok(())
    }

    async fn audit_list(
        &self,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Vec<pb::AuditEntry>, QueueError> {
        let mut f = Document::new();
        if let Some(b) = before {
            crate::parse_id(b)?;
            let Some(d) = self.inner.audit.find_one(doc! {"_id": b}).await.map_err(mongo_error)? else {
                return Ok(Vec::new());
            };
            f.insert("seq", doc! {"$lt": geti(&d, "seq")});
        }
        let mut cur =
            self.inner.audit.find(f).sort(doc! {"seq": -1}).limit(limit as i64).await.map_err(mongo_error)?;
        let mut out = Vec::new();
        while let Some(d) = cur.try_next().await.map_err(mongo_error)? {
            out.push(
                pb::AuditEntry::decode(bytes(&d, "e"))
                    .map_err(|e| bad_data(format!("undecodable audit entry: {e}")))?,
            );
        }
        Ok(out)
    }
}
