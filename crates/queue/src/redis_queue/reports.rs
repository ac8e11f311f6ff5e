//! The Redis queue's read-only views (stats, peek, families, dead letters, the shared
//! policy) and the operator agent's audit log (`P:audit`, `P:auditdata`).

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
        let (paused, rows): Raw = self.inner.call(&self.inner.scripts.peek).arg(n).arg(now).run().await?;
        let pol = self.policy().await?;
        // The candidates go through the same scheduling index as the embedded queue.
        let mut index = Index::default();
        for p in paused {
            index.set_paused(p, true);
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
        let mut con = self.inner.con.clone();
        let key = self.inner.key("dead");
        let mut p = redis::pipe();
        p.cmd("ZREVRANGE").arg(&key).arg(0).arg(limit as i64 - 1).arg("WITHSCORES").cmd("ZCARD").arg(&key);
        let (ids, total): (Vec<(String, i64)>, u64) = p.query_async(&mut con).await.map_err(redis_error)?;
        let items = if limit == 0 || ids.is_empty() { Vec::new() } else { self.dead_page(ids).await? };
        Ok((items, total))
    }

    async fn family_stats(&self, now: i64) -> Result<Vec<FamilyStats>, QueueError> {
        let mut con = self.inner.con.clone();
        let all: HashMap<String, i64> = redis::cmd("HGETALL")
            .arg(self.inner.key("fam"))
            .query_async(&mut con)
            .await
            .map_err(redis_error)?;
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
