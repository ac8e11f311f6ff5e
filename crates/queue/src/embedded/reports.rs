//! The embedded queue's read-only views (stats, peek, families, dead letters, policy)
//! and the operator agent's audit log, both answered from memory or redb.

use super::EmbeddedQueue;
use crate::index::MAX_PRIORITY;
use crate::journal::JournalError;
use crate::model::{self, StatsCounts};
use crate::{Audit, FamilyStats, QueueError, Reports, parse_id};
use adflow_proto::v1::{self as pb, AdStatus};
use async_trait::async_trait;
use prost::Message;

#[async_trait]
impl Reports for EmbeddedQueue {
    async fn stats(&self, now: i64) -> Result<pb::QueueStats, QueueError> {
        self.durably(|st| {
            let partitions = (1..=MAX_PRIORITY)
                .rev()
                .map(|p| {
                    let (queued, paused) = (st.index.partition_len(p) as u64, st.index.is_paused(p));
                    model::partition(p, queued, paused, st.index.oldest_in(p), now)
                })
                .collect();
            let n = st.index.len() as i128;
            StatsCounts {
                partitions,
                average_wait_ms: if n > 0 { (now as i128 - st.sum_enqueued / n).max(0) as i64 } else { 0 },
                in_flight: st.leases.len() as u64,
                dead_letters: st.dead.len() as u64,
                completed_last_minute: st.rate.last_minute(now),
                completed_total: st.completed_total,
            }
            .into_stats()
        })
        .await
    }

    async fn peek(&self, n: usize, now: i64) -> Result<Vec<pb::QueuedAd>, QueueError> {
        self.durably(|st| {
            st.index
                .peek(n, now, st.rules())
                .into_iter()
                .filter_map(|p| {
                    let spec = st.ads.get(&p.key)?.ad.spec.clone().unwrap_or_default();
                    Some(model::queued_ad(&p, uuid::Uuid::from_u128(p.key).to_string(), spec, now))
                })
                .collect()
        })
        .await
    }

    async fn policy(&self) -> Result<pb::Policy, QueueError> {
        self.durably(|st| st.policy).await
    }

    async fn dead_letters(&self, limit: usize) -> Result<(Vec<pb::DeadLetter>, u64), QueueError> {
        self.durably(|st| {
            let items = st
                .dead
                .keys()
                .rev()
                .take(limit)
                .filter_map(|(at, k)| Some(model::dead_letter(&st.ads.get(k)?.ad, *at)))
                .collect();
            (items, st.dead.len() as u64)
        })
        .await
    }

    async fn family_stats(&self, now: i64) -> Result<Vec<FamilyStats>, QueueError> {
        let mut out = self
            .durably(|st| {
                let mut by: std::collections::HashMap<String, (FamilyStats, i128)> =
                    std::collections::HashMap::new();
                for r in st.ads.values() {
                    let fam = r.ad.spec.as_ref().map(|s| s.game_family.clone()).unwrap_or_default();
                    let e = by
                        .entry(fam.to_lowercase())
                        .or_insert_with(|| (FamilyStats { family: fam, ..Default::default() }, 0));
                    match AdStatus::try_from(r.ad.status) {
                        Ok(AdStatus::Queued) => {
                            e.0.queued += 1;
                            e.1 += (now - r.ad.enqueued_at_ms) as i128;
                        }
                        Ok(AdStatus::Processing) => e.0.processing += 1,
                        Ok(AdStatus::DeadLetter) => e.0.dead_letters += 1,
                        _ => {}
                    }
                }
                by.into_values()
                    .map(|(mut f, sum)| {
                        f.average_wait_ms = if f.queued > 0 { (sum / f.queued as i128) as i64 } else { 0 };
                        f
                    })
                    .collect::<Vec<_>>()
            })
            .await?;
        model::sort_families(&mut out);
        Ok(out)
    }
}

#[async_trait]
impl Audit for EmbeddedQueue {
    async fn audit_append(&self, entry: &pb::AuditEntry) -> Result<(), QueueError> {
        let key = parse_id(&entry.command_id)?;
        self.journal.audit(key, entry.encode_to_vec())?;
        Ok(self.journal.sync().await?)
    }

    async fn audit_list(
        &self,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Vec<pb::AuditEntry>, QueueError> {
        let before = before.map(parse_id).transpose()?;
        let rows = self.journal.audit_newest(before, limit)?;
        rows.into_iter()
            .map(|(_, v)| {
                pb::AuditEntry::decode(v.as_slice()).map_err(|e| JournalError::Db(e.to_string()).into())
            })
            .collect()
    }
}
