//! Worker leases on the Redis queue: each call is one script per shard it touches
//! (LEASE, ACK_MANY, NACK, EXTEND, RELEASE, EXPIRE), so a lease is claimed and settled
//! atomically across gateways. A lease id names its shard (`shards::lease_id`): acks,
//! nacks and extends go to that shard only; a batch of acks is one script per shard.
//! A claim over several shards follows the heads (see the module comment of
//! `redis_queue`, "Across shards").

use super::fields::AdFields;
use super::shards::{self, Head};
use super::{Inner, RedisQueue, bad_reply, parse, redis_kind, refusal};
use crate::index::PartitionMask;
use crate::{Expired, Leased, Leases, QueueError};
use adflow_proto::v1 as pb;
use async_trait::async_trait;
use prost::Message;
use redis::Value;
use tokio::sync::watch;

/// One lease as LEASE returns it: stored lease number, deadline, ad id, fields, class,
/// level, time (the head key of the ad when it was taken).
type Row = (u64, i64, String, AdFields, i64, i64, i64);

/// At most this many LEASE calls per claim beyond one per shard (each call takes at
/// least one ad, or moves to another shard's head: the bound is a safety net for heads
/// that other gateways change while the claim runs).
const EXTRA_ROUNDS: usize = 8;

impl Inner {
    /// One LEASE call on `shard`: up to `n` ads while they meet `bar`; n = 0 reads the head.
    async fn lease_on(
        &self,
        shard: usize,
        sess: &str,
        mask: PartitionMask,
        n: usize,
        bar: (i64, i64, i64),
        now: i64,
    ) -> Result<(Vec<(usize, Row)>, Option<Head>), QueueError> {
        let (rows, head): (Vec<Row>, Vec<Value>) = self
            .call_on(shard, &self.scripts.lease)
            .arg(now)
            .arg(n)
            .arg(mask)
            .arg(sess)
            .arg(bar.0)
            .arg(bar.1)
            .arg(bar.2)
            .run()
            .await?;
        let head = Head::from_reply(head).map_err(|e| bad_reply(format!("unexpected head: {e}")))?;
        Ok((rows.into_iter().map(|r| (shard, r)).collect(), head))
    }

    /// Claims up to `n` ads over every shard, best head first (see "Across shards").
    async fn claim(
        &self,
        sess: &str,
        mask: PartitionMask,
        n: usize,
        now: i64,
    ) -> Result<Vec<(usize, Row)>, QueueError> {
        if self.k() == 1 {
            return Ok(self.lease_on(0, sess, mask, n, (0, 0, 0), now).await?.0);
        }
        let reads = (0..self.k()).map(|s| self.lease_on(s, sess, mask, 0, (0, 0, 0), now));
        let mut heads: Vec<Option<Head>> =
            futures::future::try_join_all(reads).await?.into_iter().map(|(_, h)| h).collect();
        let mut out = Vec::new();
        for _ in 0..self.k() + EXTRA_ROUNDS {
            let Some(s) = shards::best(&heads) else { break };
            if out.len() >= n {
                break;
            }
            let bar = shards::bar(&heads, s, self.slack_ms);
            let (rows, head) = match self.lease_on(s, sess, mask, n - out.len(), bar, now).await {
                Ok(r) => r,
                // What this claim holds already is leased: hand it out.
                Err(e) if !out.is_empty() => {
                    tracing::warn!(error = %e, shard = s, "leasing from a redis queue shard failed");
                    break;
                }
                Err(e) => return Err(e),
            };
            heads[s] = head;
            out.extend(rows);
        }
        // In the global order (each shard's rows already are in its own).
        out.sort_by(|a, b| {
            let key = |(_, r): &(usize, Row)| Head {
                class: r.4,
                level: r.5,
                time: r.6,
                priority: r.3.priority.unwrap_or(0) as i64,
                id: r.2.clone(),
            };
            key(a).order(&key(b))
        });
        Ok(out)
    }
}

#[async_trait]
impl Leases for RedisQueue {
    async fn lease(&self, session: u64, mask: PartitionMask, n: usize, now: i64) -> Vec<Leased> {
        if n == 0 {
            return Vec::new();
        }
        let sess = self.inner.session(session);
        let rows = match self.inner.claim(&sess, mask, n, now).await {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!(error = %e, "leasing from the redis queue failed");
                return Vec::new();
            }
        };
        let mut out = Vec::with_capacity(rows.len());
        for (shard, (seq, deadline_ms, id, f, ..)) in rows {
            let trace = f.trace.clone().unwrap_or_default();
            let Some(ad) = f.into_ad(&id) else { continue };
            let ad = self.inner.snapshot(ad, -1, now).await;
            let lease_id = shards::lease_id(shard, seq);
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
        self.ack_many(session, vec![(lease_id, result)], now)
            .await
            .pop()
            .unwrap_or_else(|| Err(bad_reply("empty ack reply")))
    }

    async fn ack_many(
        &self,
        session: u64,
        items: Vec<(u64, pb::AnalysisResult)>,
        now: i64,
    ) -> Vec<Result<String, QueueError>> {
        let sess = self.inner.session(session);
        let k = self.inner.k();
        let mut out: Vec<Option<Result<String, QueueError>>> = (0..items.len()).map(|_| None).collect();
        // Per shard: the positions of its items, and its script call.
        let mut groups: Vec<(Vec<usize>, redis::ScriptInvocation<'_>)> = Vec::new();
        let mut group_of = vec![usize::MAX; k];
        for (i, (lease_id, result)) in items.iter().enumerate() {
            let (shard, seq) = shards::split_lease(*lease_id);
            if shard >= k {
                out[i] = Some(Err(QueueError::UnknownLease(*lease_id)));
                continue;
            }
            if group_of[shard] == usize::MAX {
                group_of[shard] = groups.len();
                let mut inv = self.inner.scripts.ack_many.key(&self.inner.shards[shard]);
                inv.arg(&sess).arg(now).arg(self.inner.ttl);
                groups.push((Vec::new(), inv));
            }
            let g = &mut groups[group_of[shard]];
            g.0.push(i);
            g.1.arg(seq).arg(result.encode_to_vec());
        }
        let calls = groups.into_iter().map(|(idx, inv)| {
            let mut con = self.inner.con.clone();
            async move { (idx, inv.invoke_async::<Vec<Vec<Value>>>(&mut con).await) }
        });
        for (idx, reply) in futures::future::join_all(calls).await {
            match reply {
                Ok(rows) => {
                    for (i, row) in idx.into_iter().zip(rows) {
                        let lease_id = items[i].0;
                        let mut it = row.into_iter();
                        out[i] = Some(match parse::<i64>(it.next().unwrap_or(Value::Nil)) {
                            Ok(0) => parse(it.next().unwrap_or(Value::Nil)),
                            Ok(code) => Err(refusal(code, lease_id)),
                            Err(e) => Err(e),
                        });
                    }
                }
                Err(e) => {
                    let (kind, message) = (redis_kind(&e), format!("redis: {e}"));
                    for i in idx {
                        out[i] = Some(Err(QueueError::Backend { kind, message: message.clone() }));
                    }
                }
            }
        }
        out.into_iter().map(|r| r.unwrap_or_else(|| Err(bad_reply("no ack reply")))).collect()
    }

    async fn nack(
        &self,
        session: u64,
        lease_id: u64,
        retry: bool,
        error: &str,
        now: i64,
    ) -> Result<(), QueueError> {
        let (shard, seq) = shards::split_lease(lease_id);
        if shard >= self.inner.k() {
            return Err(QueueError::UnknownLease(lease_id));
        }
        let sess = self.inner.session(session);
        let v: Vec<i64> = self
            .inner
            .call_on(shard, &self.inner.scripts.nack)
            .arg(seq)
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
        let (shard, seq) = shards::split_lease(lease_id);
        if shard >= self.inner.k() {
            return Err(QueueError::UnknownLease(lease_id));
        }
        let sess = self.inner.session(session);
        let deadline = now + seconds as i64 * 1000;
        let v: Vec<i64> = self
            .inner
            .call_on(shard, &self.inner.scripts.extend)
            .arg(seq)
            .arg(&sess)
            .arg(deadline)
            .run()
            .await?;
        match v.first() {
            Some(0) => Ok(deadline),
            Some(&code) => Err(refusal(code, lease_id)),
            None => Err(bad_reply("empty extend reply")),
        }
    }

    async fn release_session(&self, session: u64, now: i64) -> usize {
        let sess = self.inner.session(session);
        let calls = (0..self.inner.k())
            .map(|s| self.inner.call_on(s, &self.inner.scripts.release).arg(&sess).arg(now).run::<usize>());
        let mut n = 0;
        for r in futures::future::join_all(calls).await {
            match r {
                Ok(x) => n += x,
                Err(e) => {
                    tracing::warn!(error = %e, session, "releasing a session's leases failed; they expire instead")
                }
            }
        }
        n
    }

    async fn expire(&self, now: i64) -> Vec<Expired> {
        let calls = (0..self.inner.k()).map(|s| {
            self.inner
                .call_on(s, &self.inner.scripts.expire)
                .arg(now)
                .arg(1000)
                .run::<Vec<(String, u64, u8, String)>>()
        });
        let mut out = Vec::new();
        for (shard, r) in futures::future::join_all(calls).await.into_iter().enumerate() {
            match r {
                Ok(rows) => out.extend(rows.into_iter().map(|(ad_id, seq, dead, traceparent)| Expired {
                    ad_id,
                    lease_id: shards::lease_id(shard, seq),
                    dead_lettered: dead == 1,
                    traceparent,
                })),
                Err(e) => tracing::warn!(error = %e, shard, "expiring leases in the redis queue failed"),
            }
        }
        out
    }

    fn work_signal(&self) -> watch::Receiver<u64> {
        self.inner.signal.subscribe()
    }
}
