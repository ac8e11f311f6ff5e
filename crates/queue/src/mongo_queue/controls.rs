//! The operator's changes on the MongoDB queue: priorities, pauses, the shared policy
//! (deadlines recomputed when the max wait changes), requeue and purge.

use super::document::geti;
use super::{Inner, MongoQueue, mongo_error};
use crate::error::{self, Refused};
use crate::fields::*;
use crate::status::{CANCELLED, DEAD, QUEUED};
use crate::{Controls, QueueError, policy};
use adflow_proto::v1 as pb;
use async_trait::async_trait;
use futures::TryStreamExt;
use mongodb::bson::doc;

#[async_trait]
impl Controls for MongoQueue {
    async fn set_priority(&self, id: &str, priority: u8, _now: i64) -> Result<(u8, u8), QueueError> {
        error::priority(priority)?;
        let d = self.inner.find(id).await?;
        let r = self
            .inner
            .ads
            .find_one_and_update(doc! {"_id": id, ST: QUEUED}, doc! {"$set": {PR: priority as i64}})
            .await
            .map_err(mongo_error)?;
        match r {
            Some(old) => {
                self.inner.bump().await;
                Ok((geti(&old, PR) as u8, priority))
            }
            None => Err(QueueError::wrong_state(id, geti(&d, ST) as i32, Refused::Reprioritize)),
        }
    }

    async fn reprioritize(
        &self,
        filter: &pb::AdFilter,
        priority: u8,
        dry_run: bool,
        now: i64,
    ) -> Result<(u64, u64), QueueError> {
        error::priority(priority)?;
        let mut f = doc! {ST: QUEUED, ENQ: {"$lte": now - filter.older_than_seconds as i64 * 1000}};
        if filter.current_priority != 0 {
            f.insert(PR, filter.current_priority as i64);
        }
        if !filter.game_family.is_empty() {
            f.insert(FAM, filter.game_family.to_lowercase());
        }
        let matched = self.inner.ads.count_documents(f.clone()).await.map_err(mongo_error)?;
        // Changed: the matched ads not already at the new priority.
        match filter.current_priority {
            0 => {
                f.insert(PR, doc! {"$ne": priority as i64});
            }
            p if p as u8 == priority => return Ok((0, matched)),
            _ => {}
        }
        if dry_run {
            let changed = self.inner.ads.count_documents(f).await.map_err(mongo_error)?;
            return Ok((changed, matched));
        }
        let r =
            self.inner.ads.update_many(f, doc! {"$set": {PR: priority as i64}}).await.map_err(mongo_error)?;
        if r.modified_count > 0 {
            self.inner.bump().await;
        }
        Ok((r.modified_count, matched))
    }

    async fn set_paused(&self, priority: u8, paused: bool) -> Result<pb::PartitionState, QueueError> {
        error::priority(priority)?;
        let op = if paused { "$addToSet" } else { "$pull" };
        self.inner
            .meta
            .update_one(doc! {"_id": "paused"}, doc! {op: {"p": priority as i64}})
            .upsert(true)
            .await
            .map_err(mongo_error)?;
        self.inner.bump().await;
        let queued = self
            .inner
            .ads
            .count_documents(doc! {ST: QUEUED, PR: priority as i64})
            .await
            .map_err(mongo_error)?;
        Ok(pb::PartitionState { priority: priority as u32, paused, queued })
    }

    async fn set_policy(&self, update: &pb::SetPolicyRequest) -> Result<pb::Policy, QueueError> {
        let cur = self.inner.policy().await?;
        let next = policy::updated(&cur, update)?;
        let set = super::policy_doc(&next);
        self.inner
            .meta
            .update_one(doc! {"_id": "policy"}, doc! {"$set": set})
            .upsert(true)
            .await
            .map_err(mongo_error)?;
        if next.max_wait_seconds != cur.max_wait_seconds {
            // Queued ads that follow the policy's max wait get new deadlines.
            let mut c = self.inner.ads.find(doc! {ST: QUEUED, MW: 0i64}).await.map_err(mongo_error)?;
            let mut docs = Vec::new();
            while let Some(d) = c.try_next().await.map_err(mongo_error)? {
                docs.push(d);
            }
            for d in docs {
                let dl = geti(&d, ENQ) + next.max_wait_seconds as i64 * 1000;
                let id = d.get_str("_id").unwrap_or_default();
                self.inner
                    .ads
                    .update_one(doc! {"_id": id}, doc! {"$set": {DL: dl}})
                    .await
                    .map_err(mongo_error)?;
            }
        }
        self.inner.bump().await;
        Ok(next)
    }

    async fn requeue_dead(&self, ids: &[String], now: i64) -> Result<u64, QueueError> {
        for id in ids {
            crate::parse_id(id)?;
        }
        let pol = self.inner.policy().await?;
        let f = if ids.is_empty() {
            doc! {ST: DEAD}
        } else {
            doc! {ST: DEAD, "_id": {"$in": ids}}
        };
        let mut cur = self.inner.ads.find(f).sort(doc! {FIN: 1}).await.map_err(mongo_error)?;
        let mut docs = Vec::new();
        while let Some(d) = cur.try_next().await.map_err(mongo_error)? {
            docs.push(d);
        }
        let mut n = 0;
        for d in docs {
            let seq = self.inner.counter("seq", 1).await?;
            let id = d.get_str("_id").unwrap_or_default();
            let set = doc! {ST: QUEUED, ATT: 0i64, ENQ: now, FIN: 0i64, SEQ: seq,
            DL: Inner::deadline(&pol, &d, now)};
            let r = self
                .inner
                .ads
                .update_one(doc! {"_id": id, ST: DEAD}, doc! {"$set": set})
                .await
                .map_err(mongo_error)?;
            n += r.modified_count;
            if r.modified_count > 0 {
                self.inner.notify(id, QUEUED).await;
            }
        }
        if n > 0 {
            self.inner.bump().await;
        }
        Ok(n)
    }

    async fn purge(&self, priority: u8, now: i64) -> Result<u64, QueueError> {
        error::priority(priority)?;
        let r = self
            .inner
            .ads
            .update_many(
                doc! {ST: QUEUED, PR: priority as i64},
                doc! {"$set": {ST: CANCELLED, FIN: now, ERR: format!("purged from partition {priority}")}},
            )
            .await
            .map_err(mongo_error)?;
        Ok(r.modified_count)
    }
}
