//! The operator's changes on the Redis queue: priorities (SET_PRIORITY, REPRIORITIZE),
//! pauses, the shared policy (REDEADLINE when the max wait changes), requeue and purge.
//! One ad's change goes to its shard; the others run on every shard and sum their
//! counts; pauses and the policy change on shard 0 and are copied (`sync`).

use super::{RedisQueue, parse, redis_error};
use crate::error::{self, Refused};
use crate::{Controls, QueueError, Reports, policy};
use adflow_proto::v1 as pb;
use async_trait::async_trait;
use redis::Value;

#[async_trait]
impl Controls for RedisQueue {
    async fn set_priority(&self, id: &str, priority: u8, _now: i64) -> Result<(u8, u8), QueueError> {
        error::priority(priority)?;
        crate::parse_id(id)?;
        for shard in self.inner.lookup_order(id) {
            let v: Vec<Value> = self
                .inner
                .call_on(shard, &self.inner.scripts.set_priority)
                .arg(id)
                .arg(priority)
                .run()
                .await?;
            let mut it = v.into_iter();
            match parse::<i64>(it.next().unwrap_or(Value::Nil))? {
                0 => return Ok((parse(it.next().unwrap_or(Value::Nil))?, priority)),
                2 => {
                    let st = parse(it.next().unwrap_or(Value::Nil))?;
                    return Err(QueueError::wrong_state(id, st, Refused::Reprioritize));
                }
                _ => {}
            }
        }
        Err(QueueError::NotFound(id.to_owned()))
    }

    async fn reprioritize(
        &self,
        filter: &pb::AdFilter,
        priority: u8,
        dry_run: bool,
        now: i64,
    ) -> Result<(u64, u64), QueueError> {
        error::priority(priority)?;
        let fam = filter.game_family.to_lowercase();
        let min_wait = filter.older_than_seconds as i64 * 1000;
        let calls = (0..self.inner.k()).map(|s| {
            self.inner
                .call_on(s, &self.inner.scripts.reprioritize)
                .arg(priority)
                .arg(dry_run as u8)
                .arg(filter.current_priority)
                .arg(&fam)
                .arg(min_wait)
                .arg(now)
                .run::<(u64, u64)>()
        });
        let all = futures::future::try_join_all(calls).await?;
        Ok(all.into_iter().fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1)))
    }

    async fn set_paused(&self, priority: u8, paused: bool) -> Result<pb::PartitionState, QueueError> {
        error::priority(priority)?;
        let (mut queued,): (u64,) = self
            .inner
            .change_shared(|p| {
                p.cmd(if paused { "SADD" } else { "SREM" })
                    .arg(self.inner.key("paused"))
                    .arg(priority)
                    .ignore()
                    .cmd("ZCARD")
                    .arg(self.inner.key(&format!("q:{priority}")))
                    .cmd("PUBLISH")
                    .arg(self.inner.key("wake"))
                    .arg(1)
                    .ignore();
            })
            .await?;
        // One state per partition, whatever the shards: their queued ads summed.
        for (_, c) in self.inner.counts(|s| s != 0).await? {
            queued += c.queued[priority as usize - 1];
        }
        Ok(pb::PartitionState { priority: priority as u32, paused, queued })
    }

    async fn set_policy(&self, update: &pb::SetPolicyRequest) -> Result<pb::Policy, QueueError> {
        let cur = self.policy().await?;
        let next = policy::updated(&cur, update)?;
        self.inner
            .change_shared::<()>(|p| {
                let hset = p.cmd("HSET").arg(self.inner.key("policy"));
                for (code, v) in policy::stored(&next) {
                    hset.arg(code).arg(v);
                }
                hset.ignore();
            })
            .await?;
        // The other shards recomputed their deadlines when they took the new max wait.
        if next.max_wait_seconds != cur.max_wait_seconds {
            self.inner.call(&self.inner.scripts.redeadline).run::<i64>().await?;
        }
        Ok(next)
    }

    async fn requeue_dead(&self, ids: &[String], now: i64) -> Result<u64, QueueError> {
        for id in ids {
            crate::parse_id(id)?;
        }
        // Every shard gets every id: a shard ignores the ids it does not hold as dead.
        let calls = (0..self.inner.k()).map(|s| {
            let mut inv = self.inner.scripts.requeue_dead.key(&self.inner.shards[s]);
            inv.arg(now);
            for id in ids {
                inv.arg(id);
            }
            let mut con = self.inner.con.clone();
            async move { inv.invoke_async::<u64>(&mut con).await.map_err(redis_error) }
        });
        Ok(futures::future::try_join_all(calls).await?.into_iter().sum())
    }

    async fn purge(&self, priority: u8, now: i64) -> Result<u64, QueueError> {
        error::priority(priority)?;
        let calls = (0..self.inner.k()).map(|s| {
            self.inner
                .call_on(s, &self.inner.scripts.purge)
                .arg(priority)
                .arg(now)
                .arg(self.inner.ttl)
                .run::<u64>()
        });
        Ok(futures::future::try_join_all(calls).await?.into_iter().sum())
    }
}
