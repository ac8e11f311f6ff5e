//! Reads over every shard: one ad (looked up in its own shard first), its position
//! across the shards, the partition counts, the summed statistics and the processing
//! rate, and the watchers' delivery.

use super::fields::AdFields;
use super::scripts::ENQ_BASE_MS;
use super::{Inner, parse};
use crate::QueueError;
use crate::index::MAX_PRIORITY;
use crate::model::{self, StatsCounts};
use crate::status;
use adflow_proto::v1 as pb;
use redis::Value;

/// One shard's queued ads per partition (index p-1) and its paused partitions.
pub(super) struct Counts {
    /// Queued ads of priorities 1..=5.
    pub(super) queued: Vec<u64>,
    /// Paused priorities.
    pub(super) paused: Vec<u8>,
}

impl redis::FromRedisValue for Counts {
    fn from_redis_value(v: Value) -> Result<Self, redis::ParsingError> {
        let (queued, paused): (Vec<u64>, Vec<u8>) = redis::FromRedisValue::from_redis_value(v)?;
        if queued.len() != MAX_PRIORITY as usize {
            return Err(format!("{} partition counts, want {MAX_PRIORITY}", queued.len()).into());
        }
        Ok(Self { queued, paused })
    }
}

/// Queue positions of new ads of priorities `prs` (in submission order) behind the
/// ads queued in `queued` (summed over the shards, index p-1), with `paused` paused: what
/// a single queue's SUBMIT computed, over every shard. In a paused partition, every ad
/// of every unpaused one is served first.
pub(super) fn positions(mut queued: Vec<u64>, paused: &[u8], prs: &[u32]) -> Vec<i64> {
    let paused = |p: usize| paused.contains(&(p as u8));
    prs.iter()
        .map(|&pr| {
            let pr = pr.clamp(1, MAX_PRIORITY as u32) as usize;
            let first = if paused(pr) { 1 } else { pr + 1 };
            let mut pos = queued[pr - 1];
            for p in first..=MAX_PRIORITY as usize {
                if p != pr && !paused(p) {
                    pos += queued[p - 1];
                }
            }
            queued[pr - 1] += 1;
            pos as i64
        })
        .collect()
}

impl Inner {
    /// Completions per second over the last minute, read at most once a second.
    pub(super) async fn rate(&self, now: i64) -> f64 {
        {
            let r = self.rate.lock().unwrap_or_else(|p| p.into_inner());
            if (now - r.0).abs() < 1000 {
                return r.1;
            }
        }
        let per_s = match self.stats(now).await {
            Ok(s) => s.processing_rate_per_s,
            Err(_) => 0.0,
        };
        *self.rate.lock().unwrap_or_else(|p| p.into_inner()) = (now, per_s);
        per_s
    }

    /// Fills the computed fields of an ad.
    pub(super) async fn snapshot(&self, mut ad: pb::Ad, position: i64, now: i64) -> pb::Ad {
        let per_s = if status::is_pending(ad.status) { self.rate(now).await } else { 0.0 };
        model::fill_computed(&mut ad, position.max(0) as u64, per_s, now);
        ad
    }

    /// Ad `id` with its computed fields, and the shard it lives in.
    pub(super) async fn get_with_shard(&self, id: &str, now: i64) -> Result<(pb::Ad, usize), QueueError> {
        crate::parse_id(id)?;
        for shard in self.lookup_order(id) {
            let v: Vec<Value> = self.call_on(shard, &self.scripts.get).arg(id).run().await?;
            let mut it = v.into_iter();
            let (Some(f), Some(pos), Some(rank)) = (it.next(), it.next(), it.next()) else { continue };
            let ad = parse::<AdFields>(f)?.into_ad(id).ok_or_else(|| QueueError::NotFound(id.to_owned()))?;
            let (mut pos, rank): (i64, i64) = (parse(pos)?, parse(rank)?);
            if pos >= 0 && self.k() > 1 {
                pos = self.position_across(shard, ad.priority, pos, rank).await?;
            }
            return Ok((self.snapshot(ad, pos, now).await, shard));
        }
        Err(QueueError::NotFound(id.to_owned()))
    }

    /// Ad `id` with its computed fields.
    pub(super) async fn get(&self, id: &str, now: i64) -> Result<pb::Ad, QueueError> {
        Ok(self.get_with_shard(id, now).await?.0)
    }

    /// A queued ad's position over every shard, from its position `pos` and partition
    /// rank `rank` in its own shard `home`: each other shard's ads of the partitions
    /// served before its own, plus as many of its own partition as are ahead of it in its
    /// shard (ads spread evenly over the shards, so that is the estimate for each).
    async fn position_across(
        &self,
        home: usize,
        priority: u32,
        pos: i64,
        rank: i64,
    ) -> Result<i64, QueueError> {
        let counts = self.counts(|s| s != home).await?;
        let pr = priority.clamp(1, MAX_PRIORITY as u32) as usize;
        let mut n = pos;
        for (_, c) in &counts {
            let paused = |p: usize| c.paused.contains(&(p as u8));
            let first = if paused(pr) { 1 } else { pr + 1 };
            n += rank.min(c.queued[pr - 1] as i64);
            for p in first..=MAX_PRIORITY as usize {
                if p != pr && !paused(p) {
                    n += c.queued[p - 1] as i64;
                }
            }
        }
        Ok(n)
    }

    /// The partition counts of every shard `which` takes.
    pub(super) async fn counts(
        &self,
        which: impl Fn(usize) -> bool,
    ) -> Result<Vec<(usize, Counts)>, QueueError> {
        let calls = (0..self.k()).filter(|&s| which(s)).map(|s| async move {
            let c: Counts = self.call_on(s, &self.scripts.submit).arg(0).run().await?;
            Ok::<_, QueueError>((s, c))
        });
        futures::future::try_join_all(calls).await
    }

    /// The statistics summed over the shards (pauses as shard 0 holds them).
    pub(super) async fn stats(&self, now: i64) -> Result<pb::QueueStats, QueueError> {
        type Raw = (Vec<(u64, u8, i64)>, u64, u64, i64, u64, u64);
        let calls = (0..self.k()).map(|s| self.call_on(s, &self.scripts.stats).arg(now).run::<Raw>());
        let all = futures::future::try_join_all(calls).await?;
        let mut parts = vec![(0u64, 0u8, -1i64); MAX_PRIORITY as usize];
        let (mut in_flight, mut dead, mut sum, mut done, mut minute) = (0, 0, 0, 0, 0);
        for (shard, (p, f, d, s, t, m)) in all.into_iter().enumerate() {
            for (acc, (queued, paused, oldest)) in parts.iter_mut().zip(p) {
                acc.0 += queued;
                if shard == 0 {
                    acc.1 = paused;
                }
                if oldest >= 0 && (acc.2 < 0 || oldest < acc.2) {
                    acc.2 = oldest;
                }
            }
            (in_flight, dead, sum, done, minute) = (in_flight + f, dead + d, sum + s, done + t, minute + m);
        }
        let partitions: Vec<pb::PartitionStats> = parts
            .into_iter()
            .zip((1..=MAX_PRIORITY).rev())
            .map(|((queued, paused, oldest), p)| {
                model::partition(p, queued, paused == 1, (oldest >= 0).then_some(oldest), now)
            })
            .collect();
        let n = partitions.iter().map(|p| p.queued).sum::<u64>();
        let avg_enq = if n > 0 { ENQ_BASE_MS + sum / n as i64 } else { now };
        Ok(StatsCounts {
            partitions,
            average_wait_ms: (now - avg_enq).max(0),
            in_flight,
            dead_letters: dead,
            completed_last_minute: minute,
            completed_total: done,
        }
        .into_stats())
    }

    /// Sends an ad's change to this gateway's watchers of it. `status` is the status the
    /// change produced: the ad read back may already be further along, and every status
    /// must still be seen once, in order.
    pub(super) async fn notify_watchers(&self, id: &str, status: i32) {
        if !self.watchers.wants(id, status) {
            return;
        }
        let Ok(mut ad) = self.get(id, adflow_domain::now_ms()).await else { return };
        ad.status = status;
        self.watchers.deliver(id, ad);
    }
}

#[cfg(test)]
mod tests {
    use super::positions;

    #[test]
    fn positions_count_higher_partitions_then_fifo_and_skip_paused_ones() {
        // 2 queued at priority 5, 1 at 3; new ads at 5, 3, 5, 1.
        assert_eq!(positions(vec![0, 0, 1, 0, 2], &[], &[5, 3, 5, 1]), vec![2, 4, 3, 6]);
        // Priority 5 paused: a priority-3 ad has only priority 4 and its own ahead.
        assert_eq!(positions(vec![0, 0, 1, 0, 2], &[5], &[3]), vec![1]);
        // An ad of a paused partition waits for every unpaused one.
        assert_eq!(positions(vec![1, 0, 1, 0, 2], &[5], &[5]), vec![4]);
    }
}
