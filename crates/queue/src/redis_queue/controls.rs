//! The operator's changes on the Redis queue: priorities (SET_PRIORITY, REPRIORITIZE),
//! pauses, the shared policy (REDEADLINE when the max wait changes), requeue and purge.

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
        let v: Vec<Value> =
            self.inner.call(&self.inner.scripts.set_priority).arg(id).arg(priority).run().await?;
        let mut it = v.into_iter();
        match parse::<i64>(it.next().unwrap_or(Value::Nil))? {
            0 => Ok((parse(it.next().unwrap_or(Value::Nil))?, priority)),
            2 => Err(QueueError::wrong_state(
                id,
                parse(it.next().unwrap_or(Value::Nil))?,
                Refused::Reprioritize,
            )),
            _ => Err(QueueError::NotFound(id.to_owned())),
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
        let fam = filter.game_family.to_lowercase();
        let min_wait = filter.older_than_seconds as i64 * 1000;
        self.inner
            .call(&self.inner.scripts.reprioritize)
            .arg(priority)
            .arg(dry_run as u8)
            .arg(filter.current_priority)
            .arg(&fam)
            .arg(min_wait)
            .arg(now)
            .run()
            .await
    }

    async fn set_paused(&self, priority: u8, paused: bool) -> Result<pb::PartitionState, QueueError> {
        error::priority(priority)?;
        let mut p = redis::pipe();
        p.atomic()
            .cmd(if paused { "SADD" } else { "SREM" })
            .arg(self.inner.key("paused"))
            .arg(priority)
            .ignore()
            .cmd("ZCARD")
            .arg(self.inner.key(&format!("q:{priority}")))
            .cmd("PUBLISH")
            .arg(self.inner.key("wake"))
            .arg(1)
            .ignore();
        let mut con = self.inner.con.clone();
        let (queued,): (u64,) = p.query_async(&mut con).await.map_err(redis_error)?;
        Ok(pb::PartitionState { priority: priority as u32, paused, queued })
    }

    async fn set_policy(&self, update: &pb::SetPolicyRequest) -> Result<pb::Policy, QueueError> {
        let cur = self.policy().await?;
        let next = policy::updated(&cur, update)?;
        let mut con = self.inner.con.clone();
        let mut hset = redis::cmd("HSET");
        hset.arg(self.inner.key("policy"));
        for (code, v) in policy::stored(&next) {
            hset.arg(code).arg(v);
        }
        hset.query_async::<()>(&mut con).await.map_err(redis_error)?;
        if next.max_wait_seconds != cur.max_wait_seconds {
            self.inner.call(&self.inner.scripts.redeadline).run::<i64>().await?;
        }
        Ok(next)
    }

    async fn requeue_dead(&self, ids: &[String], now: i64) -> Result<u64, QueueError> {
        for id in ids {
            crate::parse_id(id)?;
        }
        let mut inv = self.inner.scripts.requeue_dead.key(&self.inner.prefix);
        inv.arg(now);
        for id in ids {
            inv.arg(id);
        }
        let mut con = self.inner.con.clone();
        inv.invoke_async(&mut con).await.map_err(redis_error)
    }

    async fn purge(&self, priority: u8, now: i64) -> Result<u64, QueueError> {
        error::priority(priority)?;
        self.inner.call(&self.inner.scripts.purge).arg(priority).arg(now).arg(&self.inner.ttl).run().await
    }
}
