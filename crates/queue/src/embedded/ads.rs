//! AdService on the embedded queue: submission, reads (each waits for the group commit
//! that covers what it read), cancel and watch.

use super::EmbeddedQueue;
use super::state::Record;
use crate::error::Refused;
use crate::{Ads, QueueError, parse_id};
use adflow_proto::v1::{self as pb, AdStatus};
use async_trait::async_trait;
use tokio::sync::mpsc;

#[async_trait]
impl Ads for EmbeddedQueue {
    async fn submit(
        &self,
        specs: Vec<pb::AdSpec>,
        traceparent: &str,
        now: i64,
    ) -> Result<Vec<pb::SubmitAdResponse>, QueueError> {
        let mut out = Vec::with_capacity(specs.len());
        let seq = {
            let mut st = self.lock();
            for spec in specs {
                let id = uuid::Uuid::now_v7();
                let key = id.as_u128();
                let priority = spec.priority;
                let ad = pb::Ad {
                    id: id.to_string(),
                    spec: Some(spec),
                    status: AdStatus::Queued as i32,
                    priority,
                    created_at_ms: now,
                    enqueued_at_ms: now,
                    ..Default::default()
                };
                self.journal.put(key, &ad);
                let seq = st.next_seq;
                st.next_seq += 1;
                st.ads.insert(key, Record { ad, seq, lease: None, trace: traceparent.to_owned() });
                st.enqueue(key, seq);
                let snap = st.snapshot(&st.ads[&key].ad, now);
                out.push(pb::SubmitAdResponse {
                    id: snap.id,
                    status: AdStatus::Queued as i32,
                    queue_position: snap.queue_position,
                    estimated_completion_ms: snap.estimated_completion_ms,
                });
            }
            self.journal.written()
        };
        // Workers may start leasing now: a lease waits for its own commit, which comes
        // after (and so includes) this one.
        self.wake();
        self.journal.synced(seq).await?;
        Ok(out)
    }

    async fn get(&self, id: &str, now: i64) -> Result<pb::Ad, QueueError> {
        let key = parse_id(id)?;
        self.durably(|st| Ok(st.snapshot(&self.find(st, key, id)?, now))).await?
    }

    async fn list(&self, req: &pb::ListAdsRequest, now: i64) -> Result<pb::ListAdsResponse, QueueError> {
        let size = crate::model::page_size(req.page_size)?;
        let before = if req.page_token.is_empty() { None } else { Some(parse_id(&req.page_token)?) };
        let family = req.game_family.to_lowercase();
        self.durably(|st| {
            let mut ads = Vec::new();
            let mut last = None;
            let mut more = false;
            self.journal.scan_newest(before, |key, stored| {
                // Memory is newer than the journal's last commit for active and recent ads.
                let ad = st
                    .ads
                    .get(&key)
                    .map(|r| r.ad.clone())
                    .or_else(|| st.recent.get(&key).cloned())
                    .unwrap_or(stored);
                let fam_ok = family.is_empty()
                    || ad.spec.as_ref().is_some_and(|s| s.game_family.to_lowercase() == family);
                let ok = (req.status == 0 || ad.status == req.status)
                    && (req.priority == 0 || ad.priority == req.priority)
                    && fam_ok;
                if ok {
                    if ads.len() == size {
                        more = true;
                        return false;
                    }
                    last = Some(key);
                    ads.push(st.snapshot(&ad, now));
                }
                true
            })?;
            let next_page_token = match (more, last) {
                (true, Some(k)) => uuid::Uuid::from_u128(k).to_string(),
                _ => String::new(),
            };
            Ok(pb::ListAdsResponse { ads, next_page_token })
        })
        .await?
    }

    async fn cancel(&self, id: &str, now: i64) -> Result<pb::Ad, QueueError> {
        let key = parse_id(id)?;
        self.durably(|st| {
            let Some(r) = st.ads.get(&key) else {
                let ad = self.find(st, key, id)?;
                return Err(QueueError::wrong_state(id, ad.status, Refused::Cancel));
            };
            let lease = r.lease;
            st.dequeue(key);
            if let Some(l) = lease {
                st.drop_lease(l);
            }
            st.dead.retain(|(_, k), _| *k != key);
            let r = st.ads.get_mut(&key).expect("checked above");
            r.lease = None;
            r.ad.status = AdStatus::Cancelled as i32;
            r.ad.finished_at_ms = now;
            self.journal.put(key, &r.ad);
            let ad = r.ad.clone();
            st.notify(&self.journal, key, now);
            st.finish(key, self.recent_cap);
            Ok(st.snapshot(&ad, now))
        })
        .await?
    }

    async fn watch(&self, id: &str, now: i64) -> Result<(pb::Ad, mpsc::Receiver<pb::Ad>), QueueError> {
        let key = parse_id(id)?;
        self.durably(|st| {
            let ad = self.find(st, key, id)?;
            let rx = st.watchers.register(&ad);
            Ok((st.snapshot(&ad, now), rx))
        })
        .await?
    }
}
