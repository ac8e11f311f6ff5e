//! The operator's changes on the embedded queue: priorities, pauses, the policy, dead
//! letter requeue and purge. Each is one critical section, journaled, then committed.

use super::EmbeddedQueue;
use crate::error::{self, Refused};
use crate::index::{AdKey, MAX_PRIORITY};
use crate::{Controls, QueueError, parse_id, policy};
use adflow_proto::v1::{self as pb, AdStatus};
use async_trait::async_trait;
use prost::Message;

#[async_trait]
impl Controls for EmbeddedQueue {
    async fn set_priority(&self, id: &str, priority: u8, now: i64) -> Result<(u8, u8), QueueError> {
        error::priority(priority)?;
        let key = parse_id(id)?;
        let old = self
            .durably(|st| {
                let Some(old) = st.index.set_priority(key, priority) else {
                    let ad = self.find(st, key, id)?;
                    return Err(QueueError::wrong_state(id, ad.status, Refused::Reprioritize));
                };
                if let Some(r) = st.ads.get_mut(&key) {
                    r.ad.priority = priority as u32;
                    self.journal.put(key, &r.ad);
                }
                st.notify(&self.journal, key, now);
                Ok(old)
            })
            .await??;
        self.wake();
        Ok((old, priority))
    }

    async fn reprioritize(
        &self,
        filter: &pb::AdFilter,
        priority: u8,
        dry_run: bool,
        now: i64,
    ) -> Result<(u64, u64), QueueError> {
        error::priority(priority)?;
        let family = filter.game_family.to_lowercase();
        let min_wait = filter.older_than_seconds as i64 * 1000;
        let counts = self
            .durably(|st| {
                let matched: Vec<(AdKey, u8)> = st
                    .index
                    .iter()
                    .filter(|&(k, p, at)| {
                        (filter.current_priority == 0 || p as u32 == filter.current_priority)
                            && now - at >= min_wait
                            && (family.is_empty()
                                || st
                                    .ads
                                    .get(&k)
                                    .and_then(|r| r.ad.spec.as_ref())
                                    .is_some_and(|s| s.game_family.to_lowercase() == family))
                    })
                    .map(|(k, p, _)| (k, p))
                    .collect();
                let changed: Vec<AdKey> =
                    matched.iter().filter(|(_, p)| *p != priority).map(|(k, _)| *k).collect();
                if !dry_run {
                    for &k in &changed {
                        st.index.set_priority(k, priority);
                        if let Some(r) = st.ads.get_mut(&k) {
                            r.ad.priority = priority as u32;
                            self.journal.put(k, &r.ad);
                        }
                    }
                }
                (changed.len() as u64, matched.len() as u64)
            })
            .await?;
        if !dry_run {
            self.wake();
        }
        Ok(counts)
    }

    async fn set_paused(&self, priority: u8, paused: bool) -> Result<pb::PartitionState, QueueError> {
        error::priority(priority)?;
        let queued = self
            .durably(|st| {
                st.index.set_paused(priority, paused);
                let flags = (1..=MAX_PRIORITY).map(|p| st.index.is_paused(p) as u8).collect();
                self.journal.set_meta("paused", flags);
                st.index.partition_len(priority) as u64
            })
            .await?;
        self.wake();
        Ok(pb::PartitionState { priority: priority as u32, paused, queued })
    }

    async fn set_policy(&self, update: &pb::SetPolicyRequest) -> Result<pb::Policy, QueueError> {
        let next = self
            .durably(|st| {
                let next = policy::updated(&st.policy, update)?;
                let deadlines_change = next.max_wait_seconds != st.policy.max_wait_seconds;
                st.policy = next;
                self.journal.set_meta("policy", next.encode_to_vec());
                if deadlines_change {
                    // Ads without their own max wait follow the policy's: recompute their deadlines.
                    let keys: Vec<(AdKey, u64)> = st
                        .ads
                        .iter()
                        .filter(|(k, _)| st.index.contains(**k))
                        .map(|(k, r)| (*k, r.seq))
                        .collect();
                    for (k, seq) in keys {
                        st.dequeue(k);
                        st.enqueue(k, seq);
                    }
                }
                Ok::<_, QueueError>(next)
            })
            .await??;
        self.wake();
        Ok(next)
    }

    async fn requeue_dead(&self, ids: &[String], now: i64) -> Result<u64, QueueError> {
        let wanted: Option<Vec<AdKey>> = if ids.is_empty() {
            None
        } else {
            Some(ids.iter().map(|i| parse_id(i)).collect::<Result<_, _>>()?)
        };
        let n = self
            .durably(|st| {
                let picked: Vec<(i64, AdKey)> = st
                    .dead
                    .keys()
                    .filter(|(_, k)| wanted.as_ref().is_none_or(|w| w.contains(k)))
                    .copied()
                    .collect();
                for (at, key) in &picked {
                    st.dead.remove(&(*at, *key));
                    let seq = st.next_seq;
                    st.next_seq += 1;
                    if let Some(r) = st.ads.get_mut(key) {
                        r.seq = seq;
                        r.ad.status = AdStatus::Queued as i32;
                        r.ad.attempts = 0;
                        r.ad.enqueued_at_ms = now;
                        r.ad.finished_at_ms = 0;
                        self.journal.put(*key, &r.ad);
                    }
                    st.enqueue(*key, seq);
                    st.notify(&self.journal, *key, now);
                }
                picked.len() as u64
            })
            .await?;
        self.wake();
        Ok(n)
    }

    async fn purge(&self, priority: u8, now: i64) -> Result<u64, QueueError> {
        error::priority(priority)?;
        self.durably(|st| {
            let keys = st.index.keys_in(priority);
            for &key in &keys {
                st.dequeue(key);
                if let Some(r) = st.ads.get_mut(&key) {
                    r.ad.status = AdStatus::Cancelled as i32;
                    r.ad.finished_at_ms = now;
                    r.ad.last_error = format!("purged from partition {priority}");
                    self.journal.put(key, &r.ad);
                }
                st.notify(&self.journal, key, now);
                st.finish(key, self.recent_cap);
            }
            keys.len() as u64
        })
        .await
    }
}
