//! AdService on the Redis queue: submission (one SUBMIT script per shard a batch
//! touches), reads (GET, FETCH, the `P:all` listing index; `list` for several shards),
//! cancel and watch (`P:watch:<id>` marks the ad so the scripts publish its changes on
//! `P:ad`). An ad is looked for in its own shard first.
//!
//! With K > 1 a batch is one SUBMIT per shard it touches, run at once: each is atomic,
//! the batch is not. If one fails (its node unreachable) the call fails, and the ads of
//! the shards that answered are queued: a client that retries submits those again (ids
//! are new per call, as for any retry of a call whose answer was lost).

use super::fields::AdFields;
use super::reads::{Counts, positions};
use super::{RedisQueue, parse, redis_error};
use crate::error::Refused;
use crate::model;
use crate::{Ads, QueueError};
use adflow_proto::v1::{self as pb, AdStatus};
use async_trait::async_trait;
use prost::Message;
use redis::{Script, Value};
use tokio::sync::mpsc;

#[async_trait]
impl Ads for RedisQueue {
    async fn submit(
        &self,
        specs: Vec<pb::AdSpec>,
        traceparent: &str,
        now: i64,
    ) -> Result<Vec<pb::SubmitAdResponse>, QueueError> {
        if specs.is_empty() {
            return Ok(Vec::new());
        }
        let inner = &self.inner;
        let k = inner.k();
        // One SUBMIT per shard with ads in this batch; the others only count.
        let mut invs: Vec<Option<redis::ScriptInvocation<'_>>> = (0..k).map(|_| None).collect();
        let mut ids = Vec::with_capacity(specs.len());
        let mut prs = Vec::with_capacity(specs.len());
        for spec in specs {
            let id = uuid::Uuid::now_v7().to_string();
            let (pr, mw, fam) = (spec.priority, spec.max_wait_seconds, spec.game_family.to_lowercase());
            let ad = pb::Ad {
                id: String::new(),
                spec: Some(spec),
                priority: pr,
                created_at_ms: now,
                ..Default::default()
            };
            let inv = invs[inner.shard_of(&id)].get_or_insert_with(|| {
                let mut inv = Script::key(&inner.scripts.submit, &inner.shards[inner.shard_of(&id)]);
                inv.arg(now);
                inv
            });
            inv.arg(&id).arg(ad.encode_to_vec()).arg(pr).arg(mw).arg(fam).arg(traceparent);
            ids.push(id);
            prs.push(pr);
        }
        let calls = invs.into_iter().enumerate().map(|(s, inv)| {
            let mut con = inner.con.clone();
            async move {
                match inv {
                    Some(inv) => inv.invoke_async::<Counts>(&mut con).await.map_err(redis_error),
                    None => inner.call_on(s, &inner.scripts.submit).arg(0).run::<Counts>().await,
                }
            }
        });
        let counts = futures::future::try_join_all(calls).await?;
        // Every shard's queued ads count; the pauses are shard 0's.
        let mut queued = vec![0u64; counts[0].queued.len()];
        for c in &counts {
            for (q, n) in queued.iter_mut().zip(&c.queued) {
                *q += n;
            }
        }
        let positions = positions(queued, &counts[0].paused, &prs);
        let per_s = inner.rate(now).await;
        Ok(ids
            .into_iter()
            .zip(positions)
            .map(|(id, pos)| {
                let queue_position = pos.max(0) as u64;
                pb::SubmitAdResponse {
                    id,
                    status: AdStatus::Queued as i32,
                    queue_position,
                    estimated_completion_ms: model::eta_ms(queue_position, per_s),
                }
            })
            .collect())
    }

    async fn get(&self, id: &str, now: i64) -> Result<pb::Ad, QueueError> {
        self.inner.get(id, now).await
    }

    async fn list(&self, req: &pb::ListAdsRequest, now: i64) -> Result<pb::ListAdsResponse, QueueError> {
        if self.inner.k() > 1 {
            return self.list_sharded(req, now).await;
        }
        let size = model::page_size(req.page_size)?;
        let mut con = self.inner.con.clone();
        let all = self.inner.key("all");
        let mut max = "+inf".to_owned();
        if !req.page_token.is_empty() {
            crate::parse_id(&req.page_token)?;
            let score: Option<i64> = redis::cmd("ZSCORE")
                .arg(&all)
                .arg(&req.page_token)
                .query_async(&mut con)
                .await
                .map_err(redis_error)?;
            let s = score.ok_or_else(|| QueueError::Invalid {
                field: "page_token",
                message: format!("{} is not a token this listing returned", req.page_token),
            })?;
            max = format!("({s}");
        }
        let family = req.game_family.to_lowercase();
        let mut ads = Vec::new();
        let mut scanned = 0usize;
        loop {
            let chunk: Vec<(String, i64)> = redis::cmd("ZREVRANGEBYSCORE")
                .arg(&all)
                .arg(&max)
                .arg("-inf")
                .arg("WITHSCORES")
                .arg("LIMIT")
                .arg(0)
                .arg(500)
                .query_async(&mut con)
                .await
                .map_err(redis_error)?;
            let Some(last) = chunk.last() else { break };
            max = format!("({}", last.1);
            let names: Vec<&str> = chunk.iter().map(|(i, _)| i.as_str()).collect();
            let rows: Vec<AdFields> = self.inner.call(&self.inner.scripts.fetch).arg(&names).run().await?;
            let mut gone = Vec::new();
            for ((id, _), f) in chunk.iter().zip(rows) {
                scanned += 1;
                let Some(ad) = f.into_ad(id) else {
                    gone.push(id.clone());
                    continue;
                };
                let fam_ok = family.is_empty()
                    || ad.spec.as_ref().is_some_and(|s| s.game_family.to_lowercase() == family);
                if (req.status == 0 || ad.status == req.status)
                    && (req.priority == 0 || ad.priority == req.priority)
                    && fam_ok
                {
                    ads.push(self.inner.snapshot(ad, -1, now).await);
                    if ads.len() == size {
                        break;
                    }
                }
            }
            if !gone.is_empty() {
                // Finished ads past their retention: drop them from the listing index.
                let _: Result<(), _> = redis::cmd("ZREM").arg(&all).arg(&gone).query_async(&mut con).await;
            }
            // A page scans a bounded number of ads; the token lets the caller go on.
            if ads.len() == size || scanned >= 20_000 || chunk.len() < 500 {
                break;
            }
        }
        let more = ads.len() == size || scanned >= 20_000;
        let next_page_token = match (more, ads.last()) {
            (true, Some(a)) => a.id.clone(),
            _ => String::new(),
        };
        // Queue positions for queued ads (one round trip each; pages are small).
        for a in ads.iter_mut().filter(|a| a.status == AdStatus::Queued as i32) {
            if let Ok(fresh) = self.inner.get(&a.id, now).await {
                a.queue_position = fresh.queue_position;
                a.estimated_completion_ms = fresh.estimated_completion_ms;
            }
        }
        Ok(pb::ListAdsResponse { ads, next_page_token })
    }

    async fn cancel(&self, id: &str, now: i64) -> Result<pb::Ad, QueueError> {
        crate::parse_id(id)?;
        for shard in self.inner.lookup_order(id) {
            let v: Vec<Value> = self
                .inner
                .call_on(shard, &self.inner.scripts.cancel)
                .arg(id)
                .arg(now)
                .arg(self.inner.ttl)
                .run()
                .await?;
            let mut it = v.into_iter();
            let code: i64 = parse(it.next().unwrap_or(Value::Nil))?;
            match code {
                0 => {
                    let f: AdFields = parse(it.next().unwrap_or(Value::Nil))?;
                    let ad = f.into_ad(id).ok_or_else(|| QueueError::NotFound(id.to_owned()))?;
                    return Ok(self.inner.snapshot(ad, -1, now).await);
                }
                2 => {
                    let st = parse(it.next().unwrap_or(Value::Nil))?;
                    return Err(QueueError::wrong_state(id, st, Refused::Cancel));
                }
                _ => {}
            }
        }
        Err(QueueError::NotFound(id.to_owned()))
    }

    async fn watch(&self, id: &str, now: i64) -> Result<(pb::Ad, mpsc::Receiver<pb::Ad>), QueueError> {
        crate::parse_id(id)?;
        // Mark the ad watched before reading it, so no change falls between the two.
        let home = self.inner.shard_of(id);
        self.mark_watched(home, id).await?;
        let (mut ad, shard) = self.inner.get_with_shard(id, now).await?;
        if shard != home {
            // Submitted while the queue had fewer shards: mark it where it lives, read again.
            self.mark_watched(shard, id).await?;
            ad = self.inner.get(id, now).await?;
        }
        let rx = self.inner.watchers.register(&ad);
        Ok((ad, rx))
    }
}

impl RedisQueue {
    /// Marks ad `id` watched on `shard`, so its scripts publish the ad's changes.
    async fn mark_watched(&self, shard: usize, id: &str) -> Result<(), QueueError> {
        let mut con = self.inner.con.clone();
        let mut p = redis::pipe();
        for key in [self.inner.key_on(shard, &format!("watch:{id}")), self.inner.key_on(shard, "watching")] {
            p.cmd("SET").arg(key).arg(1).arg("EX").arg(86_400).ignore();
        }
        p.query_async::<()>(&mut con).await.map_err(redis_error)
    }
}
