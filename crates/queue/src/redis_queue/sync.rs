//! What every shard must agree on. The shard count: `P:shards` on shard 0 holds the
//! count the queue was last opened with, and a gateway with another count is refused
//! while the shards it would rename or drop hold ads (they would never be served). The policy and the paused partitions:
//! shard 0 holds them with a version (`ver` in `P:policy`), and they are copied to the
//! other shards (SYNC, which never replaces a newer version), so each shard's scripts
//! read them locally. A change is made on shard 0 first, then copied; a gateway that
//! dies in between leaves shards behind until the next change or the next gateway start,
//! which copies again. With one shard none of this runs: its keys stay as they were.

use super::{Inner, parse, redis_error, shards};
use crate::config::MAX_SHARDS;
use crate::index::MAX_PRIORITY;
use crate::{QueueError, policy};
use std::collections::HashMap;

impl Inner {
    /// Records the shard count in `P:shards` (shard 0). A change is refused while a
    /// shard the change renames or drops (1.. of the old count) holds a queued, leased or
    /// dead ad: they would never be served. From 1, nothing moves (shard 0 keeps its
    /// prefix; its ads are still served and found). With one shard the key is removed,
    /// so a one-shard queue has exactly the keys it always had.
    pub(super) async fn check_shard_count(&self) -> Result<(), QueueError> {
        let mut con = self.con.clone();
        let key = self.key("shards");
        let stored: Option<usize> =
            redis::cmd("GET").arg(&key).query_async(&mut con).await.map_err(redis_error)?;
        let (old, k) = (stored.unwrap_or(1).clamp(1, MAX_SHARDS as usize), self.k());
        if old != k {
            for i in 1..old {
                let p = shards::prefix(&self.shards[0], i, old);
                let mut pipe = redis::pipe();
                for part in 1..=MAX_PRIORITY {
                    pipe.cmd("ZCARD").arg(format!("{p}:q:{part}"));
                }
                pipe.cmd("ZCARD").arg(format!("{p}:leases")).cmd("ZCARD").arg(format!("{p}:dead"));
                // One slot per shard: on a cluster each pipeline goes to one node.
                let live: Vec<u64> = pipe.query_async(&mut con).await.map_err(redis_error)?;
                if live.iter().any(|&n| n > 0) {
                    return Err(QueueError::invalid(
                        "queue.redis.shards",
                        format!(
                            "is {k}, but the queue under {:?} has {old} shards and shard {i} ({p}) still \
                             holds ads; set it back to {old}, or drain the queue (nothing queued, in \
                             flight or dead) before changing it",
                            self.shards[0]
                        ),
                    ));
                }
            }
        }
        if k == 1 {
            if stored.is_some() {
                redis::cmd("DEL").arg(&key).query_async::<()>(&mut con).await.map_err(redis_error)?;
            }
        } else if stored != Some(k) {
            redis::cmd("SET").arg(&key).arg(k).query_async::<()>(&mut con).await.map_err(redis_error)?;
        }
        Ok(())
    }

    /// Copies shard 0's policy and pauses to the other shards, recomputing a shard's
    /// deadlines when its max wait changed.
    pub(super) async fn sync_shards(&self) -> Result<(), QueueError> {
        if self.k() == 1 {
            return Ok(());
        }
        let mut con = self.con.clone();
        let (pol, paused): (HashMap<String, String>, Vec<String>) = redis::pipe()
            .atomic()
            .cmd("HGETALL")
            .arg(self.key("policy"))
            .cmd("SMEMBERS")
            .arg(self.key("paused"))
            .query_async(&mut con)
            .await
            .map_err(redis_error)?;
        let ver: i64 = pol.get("ver").and_then(|v| v.parse().ok()).unwrap_or(0);
        let calls = (1..self.k()).map(|s| {
            let mut call = self.call_on(s, &self.scripts.sync).arg(ver);
            for code in policy::CODES {
                if let Some(v) = pol.get(code) {
                    call = call.arg(code).arg(v);
                }
            }
            let call = call.arg("|").arg(&paused);
            async move {
                if call.run::<i64>().await? == 1 {
                    self.call_on(s, &self.scripts.redeadline).run::<i64>().await?;
                }
                Ok::<_, QueueError>(())
            }
        });
        futures::future::try_join_all(calls).await?;
        Ok(())
    }

    /// Applies `change` (commands on shard 0's keys) atomically with a new version of the
    /// shared settings, then copies them to the other shards. Returns the replies of
    /// `change`'s commands that are not ignored.
    pub(super) async fn change_shared<T: redis::FromRedisValue>(
        &self,
        change: impl FnOnce(&mut redis::Pipeline),
    ) -> Result<T, QueueError> {
        let mut p = redis::pipe();
        p.atomic();
        change(&mut p);
        if self.k() > 1 {
            p.cmd("HINCRBY").arg(self.key("policy")).arg("ver").arg(1).ignore();
        }
        let mut con = self.con.clone();
        let v: redis::Value = p.query_async(&mut con).await.map_err(redis_error)?;
        self.sync_shards().await?;
        parse(v)
    }
}
