//! AdService on the MongoDB queue: submission (`insert_many`), reads, cancel (a CAS on
//! the unfinished statuses) and watch (polled by `poll_watchers`).

use super::document::{bin, geti};
use super::{MongoQueue, mongo_error};
use crate::error::Refused;
use crate::fields::*;
use crate::index::MAX_PRIORITY;
use crate::status::{CANCELLED, DEAD, PROCESSING, QUEUED};
use crate::{Ads, QueueError, model};
use adflow_proto::v1 as pb;
use async_trait::async_trait;
use futures::TryStreamExt;
use mongodb::bson::{Document, doc};
use mongodb::options::ReturnDocument;
use prost::Message;
use tokio::sync::mpsc;

#[async_trait]
impl Ads for MongoQueue {
    async fn submit(
        &self,
        specs: Vec<pb::AdSpec>,
        traceparent: &str,
        now: i64,
    ) -> Result<Vec<pb::SubmitAdResponse>, QueueError> {
        if specs.is_empty() {
            return Ok(Vec::new());
        }
        let pol = self.inner.policy().await?;
        let paused = self.inner.paused().await?;
        let mut queued = [0u64; MAX_PRIORITY as usize + 1];
        for p in 1..=MAX_PRIORITY {
            queued[p as usize] =
                self.inner.ads.count_documents(doc! {ST: QUEUED, PR: p as i64}).await.map_err(mongo_error)?;
        }
        let last = self.inner.counter("seq", specs.len() as i64).await?;
        let first = last - specs.len() as i64 + 1;
        let mut docs = Vec::with_capacity(specs.len());
        let mut out = Vec::with_capacity(specs.len());
        for (i, spec) in specs.into_iter().enumerate() {
            let id = uuid::Uuid::now_v7().to_string();
            let pr = spec.priority as u8;
            let mw = spec.max_wait_seconds as i64;
            let fam = spec.game_family.to_lowercase();
            let dl = now + if mw > 0 { mw } else { pol.max_wait_seconds as i64 } * 1000;
            let ad =
                pb::Ad { spec: Some(spec), priority: pr as u32, created_at_ms: now, ..Default::default() };
            let from = if paused.contains(&pr) { 1 } else { pr + 1 };
            let higher: u64 = (from..=MAX_PRIORITY)
                .filter(|p| *p != pr && !paused.contains(p))
                .map(|p| queued[p as usize])
                .sum();
            out.push(pb::SubmitAdResponse {
                id: id.clone(),
                status: QUEUED,
                queue_position: higher + queued[pr as usize],
                estimated_completion_ms: 0,
            });
            queued[pr as usize] += 1;
            docs.push(doc! {
                "_id": id, PB: bin(ad.encode_to_vec()), ST: QUEUED, PR: pr as i64, SEQ: first + i as i64,
                ENQ: now, MW: mw, DL: dl, ATT: 0i64, START: 0i64, FIN: 0i64, ERR: "",
                TRACE: traceparent, FAM: fam, "created": now,
            });
        }
        self.inner.ads.insert_many(docs).await.map_err(mongo_error)?;
        let per_s = self.inner.rate(now).await? as f64 / 60.0;
        if per_s > 0.0 {
            for r in &mut out {
                r.estimated_completion_ms = model::eta_ms(r.queue_position, per_s);
            }
        }
        self.inner.bump().await;
        Ok(out)
    }

    async fn get(&self, id: &str, now: i64) -> Result<pb::Ad, QueueError> {
        let d = self.inner.find(id).await?;
        self.inner.snapshot(&d, now).await
    }

    async fn list(&self, req: &pb::ListAdsRequest, now: i64) -> Result<pb::ListAdsResponse, QueueError> {
        let size = model::page_size(req.page_size)?;
        let mut filter = Document::new();
        if req.status != 0 {
            filter.insert(ST, req.status);
        }
        if req.priority != 0 {
            filter.insert(PR, req.priority as i64);
        }
        if !req.game_family.is_empty() {
            filter.insert(FAM, req.game_family.to_lowercase());
        }
        if !req.page_token.is_empty() {
            let d = self.inner.find(&req.page_token).await.map_err(|_| QueueError::Invalid {
                field: "page_token",
                message: format!("{} is not a token this listing returned", req.page_token),
            })?;
            filter.insert(SEQ, doc! {"$lt": geti(&d, SEQ)});
        }
        let per_s = self.inner.rate(now).await? as f64 / 60.0;
        let mut cur = self
            .inner
            .ads
            .find(filter)
            .sort(doc! {SEQ: -1})
            .limit(size as i64 + 1)
            .await
            .map_err(mongo_error)?;
        let mut ads = Vec::new();
        let mut more = false;
        while let Some(d) = cur.try_next().await.map_err(mongo_error)? {
            if ads.len() == size {
                more = true;
                break;
            }
            ads.push(self.inner.snapshot_at(&d, per_s, now).await?);
        }
        let next_page_token =
            if more { ads.last().map(|a| a.id.clone()).unwrap_or_default() } else { String::new() };
        Ok(pb::ListAdsResponse { ads, next_page_token })
    }

    async fn cancel(&self, id: &str, now: i64) -> Result<pb::Ad, QueueError> {
        let d = self.inner.find(id).await?;
        let st = geti(&d, ST) as i32;
        if crate::status::is_final(st) {
            return Err(QueueError::wrong_state(id, st, Refused::Cancel));
        }
        let done = self
            .inner
            .ads
            .find_one_and_update(
                doc! {"_id": id, ST: {"$in": [QUEUED, PROCESSING, DEAD]}},
                doc! {"$set": {ST: CANCELLED, FIN: now}, "$unset": {LEASE: "", SESS: "", LDL: ""}},
            )
            .return_document(ReturnDocument::After)
            .await
            .map_err(mongo_error)?;
        match done {
            Some(d) => {
                self.inner.notify(id, CANCELLED).await;
                self.inner.snapshot(&d, now).await
            }
            None => {
                let d = self.inner.find(id).await?;
                Err(QueueError::wrong_state(id, geti(&d, ST) as i32, Refused::Cancel))
            }
        }
    }

    async fn watch(&self, id: &str, now: i64) -> Result<(pb::Ad, mpsc::Receiver<pb::Ad>), QueueError> {
        let ad = self.get(id, now).await?;
        let rx = self.inner.watchers.register(&ad);
        Ok((ad, rx))
    }
}
