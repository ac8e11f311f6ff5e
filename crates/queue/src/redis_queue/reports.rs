//! The Redis queue's read-only views (stats, peek, families, dead letters, the shared
//! policy), each over every shard (summed, or merged in serving or time order), and the
//! operator agent's audit log (`P:audit`, `P:auditdata`, on shard 0).

use super::fields::AdFields;
use super::scripts::ENQ_BASE_MS;
use super::{RedisQueue, bad_reply, redis_error};
use crate::index::Index;
use crate::model;
use crate::{Audit, FamilyStats, QueueError, Reports, policy};
use adflow_proto::v1 as pb;
use async_trait::async_trait;
use prost::Message;
use std::collections::HashMap;

#[async_trait]
impl Reports for RedisQueue {
    async fn stats(&self, now: i64) -> Result<pb::QueueStats, QueueError> {
        self.inner.stats(now).await
    }

    async fn peek(&self, n: usize, now: i64) -> Result<Vec<pb::QueuedAd>, QueueError> {
        type Raw = (Vec<u8>, Vec<(String, u8, u64, i64, i64, Vec<u8>)>);
        let calls = (0..self.inner.k())
            .map(|s| self.inner.call_on(s, &self.inner.scripts.peek).arg(n).arg(now).run::<Raw>());
        let shards = futures::future::try_join_all(calls).await?;
        let pol = self.policy().await?;
        // The candidates of every shard go through the same scheduling index as the
        // embedded queue. Sequences are per shard: with several, the FIFO order is the
        // enqueue time, then the id (as claims break ties across shards).
        let mut index = Index::default();
        let mut rows = Vec::new();
        for (shard, (paused, r)) in shards.into_iter().enumerate() {
            if shard == 0 {
                for p in paused {
                    index.set_paused(p, true);
                }
            }
            rows.extend(r);
        }
        if self.inner.k() > 1 {
            rows.sort_by(|a, b| (a.3, &a.0).cmp(&(b.3, &b.0)));
            for (i, r) in rows.iter_mut().enumerate() {
                r.2 = i as u64 + 1;
            }
        }
        let mut info = HashMap::new();
        for (id, pr, seq, enq, dl, raw) in rows {
            let Ok(key) = uuid::Uuid::parse_str(&id).map(|u| u.as_u128()) else { continue };
            index.push(key, pr, seq, enq, dl);
            let spec = pb::Ad::decode(raw.as_slice()).ok().and_then(|a| a.spec).unwrap_or_default();
            info.insert(key, (id, spec));
        }
        let rules = policy::rules(&pol);
        Ok(index
            .peek(n, now, rules)
            .into_iter()
            .filter_map(|p| {
                let (id, spec) = info.remove(&p.key)?;
                Some(model::queued_ad(&p, id, spec, now))
            })
            .collect())
    }

    async fn policy(&self) -> Result<pb::Policy, QueueError> {
        let mut con = self.inner.con.clone();
        let v: Vec<Option<i64>> = redis::cmd("HMGET")
            .arg(self.inner.key("policy"))
            .arg(&policy::CODES)
            .query_async(&mut con)
            .await
            .map_err(redis_error)?;
        Ok(policy::from_stored(|code| {
            policy::CODES.iter().position(|c| *c == code).and_then(|i| v.get(i).copied().flatten())
        }))
    }

    async fn dead_letters(&self, limit: usize) -> Result<(Vec<pb::DeadLetter>, u64), QueueError> {
        let calls = (0..self.inner.k()).map(|s| {
            let mut con = self.inner.con.clone();
            let key = self.inner.key_on(s, "dead");
            async move {
                let mut p = redis::pipe();
                p.cmd("ZREVRANGE")
                    .arg(&key)
                    .arg(0)
                    .arg(limit as i64 - 1)
                    .arg("WITHSCORES")
                    .cmd("ZCARD")
                    .arg(&key);
                p.query_async::<(Vec<(String, i64)>, u64)>(&mut con).await.map_err(redis_error)
            }
        });
        let mut ids = Vec::new();
        let mut total = 0;
        for (shard, (page, n)) in futures::future::try_join_all(calls).await?.into_iter().enumerate() {
            ids.extend(page.into_iter().map(|(id, at)| (shard, id, at)));
            total += n;
        }
        // Newest first over every shard.
        ids.sort_by(|a, b| (b.2, &b.1).cmp(&(a.2, &a.1)));
        ids.truncate(limit);
        let items = if limit == 0 || ids.is_empty() { Vec::new() } else { self.dead_page(ids).await? };
        Ok((items, total))
    }

    async fn family_stats(&self, now: i64) -> Result<Vec<FamilyStats>, QueueError> {
        let calls = (0..self.inner.k()).map(|s| {
            let mut con = self.inner.con.clone();
            let key = self.inner.key_on(s, "fam");
            async move { redis::cmd("HGETALL").arg(key).query_async::<HashMap<String, i64>>(&mut con).await }
        });
        let mut all: HashMap<String, i64> = HashMap::new();
        for shard in futures::future::try_join_all(calls).await.map_err(redis_error)? {
            for (field, n) in shard {
                *all.entry(field).or_default() += n;
            }
        }
        let mut by: HashMap<String, (FamilyStats, i64)> = HashMap::new();
        for (field, n) in all {
            let Some((kind, fam)) = field.split_once(':') else { continue };
            let e = by
                .entry(fam.to_owned())
                .or_insert_with(|| (FamilyStats { family: fam.to_owned(), ..Default::default() }, 0));
            let n_u = n.max(0) as u64;
            match kind {
                "q" => e.0.queued = n_u,
                "p" => e.0.processing = n_u,
                "d" => e.0.dead_letters = n_u,
                "s" => e.1 = n,
                _ => {}
            }
        }
        let mut out: Vec<FamilyStats> = by
            .into_values()
            .filter(|(f, _)| f.queued + f.processing + f.dead_letters > 0)
            .map(|(mut f, sum)| {
                f.average_wait_ms =
                    if f.queued > 0 { (now - (ENQ_BASE_MS + sum / f.queued as i64)).max(0) } else { 0 };
                f
            })
            .collect();
        model::sort_families(&mut out);
        Ok(out)
    }
}

impl RedisQueue {
    /// The dead letters `ids` (shard, id, dead-at ms), in this order; gone ones are left out.
    async fn dead_page(&self, ids: Vec<(usize, String, i64)>) -> Result<Vec<pb::DeadLetter>, QueueError> {
        let mut ads: HashMap<String, pb::Ad> = HashMap::new();
        for shard in 0..self.inner.k() {
            let names: Vec<&str> = ids.iter().filter(|x| x.0 == shard).map(|x| x.1.as_str()).collect();
            if names.is_empty() {
                continue;
            }
            let rows: Vec<AdFields> =
                self.inner.call_on(shard, &self.inner.scripts.fetch).arg(&names).run().await?;
            for (id, f) in names.into_iter().zip(rows) {
                if let Some(ad) = f.into_ad(id) {
                    ads.insert(id.to_owned(), ad);
                }
            }
        }
        Ok(ids.iter().filter_map(|(_, id, at)| Some(model::dead_letter(ads.get(id)?, *at))).collect())
    }
}

#[async_trait]
impl Audit for RedisQueue {
    async fn audit_append(&self, entry: &pb::AuditEntry) -> Result<(), QueueError> {
        crate::parse_id(&entry.command_id)?;
        let bytes = entry.encode_to_vec();
        self.inner.call(&self.inner.scripts.audit).arg(&entry.command_id).arg(&bytes).run::<i64>().await?;
        Ok(())
    }

    async fn audit_list(
        &self,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Vec<pb::AuditEntry>, QueueError> {
        let mut con = self.inner.con.clone();
        let key = self.inner.key("audit");
        let max = match before {
            Some(b) => {
                crate::parse_id(b)?;
                let s: Option<i64> =
                    redis::cmd("ZSCORE").arg(&key).arg(b).query_async(&mut con).await.map_err(redis_error)?;
                match s {
                    Some(s) => format!("({s}"),
                    None => return Ok(Vec::new()),
                }
            }
            None => "+inf".into(),
        };
        let ids: Vec<String> = redis::cmd("ZREVRANGEBYSCORE")
            .arg(&key)
            .arg(max)
            .arg("-inf")
            .arg("LIMIT")
            .arg(0)
            .arg(limit)
            .query_async(&mut con)
            .await
            .map_err(redis_error)?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let rows: Vec<Option<Vec<u8>>> = redis::cmd("HMGET")
            .arg(self.inner.key("auditdata"))
            .arg(&ids)
            .query_async(&mut con)
            .await
            .map_err(redis_error)?;
        rows.into_iter()
            .flatten()
            .map(|b| {
                pb::AuditEntry::decode(b.as_slice())
                    .map_err(|e| bad_reply(format!("undecodable audit entry: {e}")))
            })
            .collect()
    }
}
