//! Worker leases on the Redis queue: each call is one script (LEASE, ACK, ACK_MANY, NACK,
//! EXTEND, RELEASE, EXPIRE), so a lease is claimed and settled atomically across gateways.

use super::fields::AdFields;
use super::{RedisQueue, bad_reply, parse, redis_kind, refusal};
use crate::index::PartitionMask;
use crate::{Expired, Leased, Leases, QueueError};
use adflow_proto::v1 as pb;
use async_trait::async_trait;
use prost::Message;
use redis::Value;
use tokio::sync::watch;

#[async_trait]
impl Leases for RedisQueue {
    async fn lease(&self, session: u64, mask: PartitionMask, n: usize, now: i64) -> Vec<Leased> {
        if n == 0 {
            return Vec::new();
        }
        let sess = self.inner.session(session);
        let r: Result<Vec<(u64, i64, String, AdFields)>, _> =
            self.inner.call(&self.inner.scripts.lease).arg(now).arg(n).arg(mask).arg(&sess).run().await;
        let rows = match r {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!(error = %e, "leasing from the redis queue failed");
                return Vec::new();
            }
        };
        let mut out = Vec::with_capacity(rows.len());
        for (lease_id, deadline_ms, id, f) in rows {
            let trace = f.trace.clone().unwrap_or_default();
            let Some(ad) = f.into_ad(&id) else { continue };
            let ad = self.inner.snapshot(ad, -1, now).await;
            out.push(Leased { lease_id, attempt: ad.attempts, deadline_ms, traceparent: trace, ad });
        }
        out
    }

    async fn ack(
        &self,
        session: u64,
        lease_id: u64,
        result: pb::AnalysisResult,
        now: i64,
    ) -> Result<String, QueueError> {
        let sess = self.inner.session(session);
        let an = result.encode_to_vec();
        let v: Vec<Value> = self
            .inner
            .call(&self.inner.scripts.ack)
            .arg(lease_id)
            .arg(&sess)
            .arg(now)
            .arg(&an)
            .arg(self.inner.ttl)
            .run()
            .await?;
        let mut it = v.into_iter();
        match parse::<i64>(it.next().unwrap_or(Value::Nil))? {
            0 => parse(it.next().unwrap_or(Value::Nil)),
            code => Err(refusal(code, lease_id)),
        }
    }

    async fn ack_many(
        &self,
        session: u64,
        items: Vec<(u64, pb::AnalysisResult)>,
        now: i64,
    ) -> Vec<Result<String, QueueError>> {
        if items.is_empty() {
            return Vec::new();
        }
        let mut inv = self.inner.scripts.ack_many.key(&self.inner.prefix);
        inv.arg(self.inner.session(session)).arg(now).arg(self.inner.ttl);
        for (lease_id, result) in &items {
            inv.arg(*lease_id).arg(result.encode_to_vec());
        }
        let mut con = self.inner.con.clone();
        let rows: Result<Vec<Vec<Value>>, _> = inv.invoke_async(&mut con).await;
        match rows {
            Ok(rows) => items
                .iter()
                .zip(rows)
                .map(|((lease_id, _), row)| {
                    let mut it = row.into_iter();
                    match parse::<i64>(it.next().unwrap_or(Value::Nil))? {
                        0 => parse(it.next().unwrap_or(Value::Nil)),
                        code => Err(refusal(code, *lease_id)),
                    }
                })
                .collect(),
            Err(e) => {
                let (kind, message) = (redis_kind(&e), format!("redis: {e}"));
                items.iter().map(|_| Err(QueueError::Backend { kind, message: message.clone() })).collect()
            }
        }
    }

    async fn nack(
        &self,
        session: u64,
        lease_id: u64,
        retry: bool,
        error: &str,
        now: i64,
    ) -> Result<(), QueueError> {
        let sess = self.inner.session(session);
        let v: Vec<i64> = self
            .inner
            .call(&self.inner.scripts.nack)
            .arg(lease_id)
            .arg(&sess)
            .arg(retry as u8)
            .arg(error)
            .arg(now)
            .run()
            .await?;
        match v.first() {
            Some(0) => Ok(()),
            Some(&code) => Err(refusal(code, lease_id)),
            None => Err(bad_reply("empty nack reply")),
        }
    }

    async fn extend(&self, session: u64, lease_id: u64, seconds: u32, now: i64) -> Result<i64, QueueError> {
        crate::model::check_extension(seconds)?;
        let sess = self.inner.session(session);
        let deadline = now + seconds as i64 * 1000;
        let v: Vec<i64> =
            self.inner.call(&self.inner.scripts.extend).arg(lease_id).arg(&sess).arg(deadline).run().await?;
        match v.first() {
            Some(0) => Ok(deadline),
            Some(&code) => Err(refusal(code, lease_id)),
            None => Err(bad_reply("empty extend reply")),
        }
    }

    async fn release_session(&self, session: u64, now: i64) -> usize {
        let sess = self.inner.session(session);
        match self.inner.call(&self.inner.scripts.release).arg(&sess).arg(now).run::<usize>().await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, session, "releasing a session's leases failed; they expire instead");
                0
            }
        }
    }

    async fn expire(&self, now: i64) -> Vec<Expired> {
        match self
            .inner
            .call(&self.inner.scripts.expire)
            .arg(now)
            .arg(1000)
            .run::<Vec<(String, u64, u8, String)>>()
            .await
        {
            Ok(rows) => rows
                .into_iter()
                .map(|(ad_id, lease_id, dead, traceparent)| Expired {
                    ad_id,
                    lease_id,
                    dead_lettered: dead == 1,
                    traceparent,
                })
                .collect(),
            Err(e) => {
                tracing::warn!(error = %e, "expiring leases in the redis queue failed");
                Vec::new()
            }
        }
    }

    fn work_signal(&self) -> watch::Receiver<u64> {
        self.inner.signal.subscribe()
    }
}
