//! The Redis queue: every gateway shares one queue in Redis (or a Redis Cluster). Each
//! state change is one Lua script (`scripts`), so claim, ack, nack, expire and
//! reprioritize are atomic however many gateways run them. All keys share the prefix's
//! hash tag, so on a cluster every script stays in one slot (the queue lives on one
//! shard; events and dedup keys use other tags and spread).
//!
//! Idle workers do not poll hot: scripts publish on `P:wake` when work arrives, and one
//! subscriber per gateway turns that into the local work signal. Watches work the same
//! way through `P:ad`, published only for ads some gateway watches.

mod scripts;

use crate::index::{Index, MAX_PRIORITY, PartitionMask};
use crate::policy::{self, QueueConfig};
use crate::watchers::Watchers;
use crate::{AdQueue, Expired, FamilyStats, Leased, QueueError};
use adflow_proto::v1::{self as pb, AdStatus};
use adflow_store::redis_conn::{RedisConn, Target, connect};
use async_trait::async_trait;
use futures::StreamExt;
use prost::Message;
use redis::{Script, Value};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// Settings of the Redis queue (`[queue.redis]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisQueueConfig {
    /// Server URL (default "redis://127.0.0.1:6379/").
    pub url: String,
    /// Seed nodes of a Redis Cluster; when set, `url` is ignored.
    pub cluster_nodes: Vec<String>,
    /// Key prefix with its hash tag (default "{adflow:q}").
    pub prefix: String,
    /// How long finished (completed, cancelled) ads stay readable, seconds (default 7 days).
    pub finished_ttl_seconds: u64,
}

impl Default for RedisQueueConfig {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379/".into(),
            cluster_nodes: Vec::new(),
            prefix: "{adflow:q}".into(),
            finished_ttl_seconds: 7 * 86_400,
        }
    }
}

impl RedisQueueConfig {
    fn target(&self) -> Target {
        Target { url: self.url.clone(), cluster_nodes: self.cluster_nodes.clone() }
    }
}

/// Enqueue times are summed as offsets from this instant (Unix ms) so the sums of many
/// queued ads stay exact integers; the scripts get it as `BASE`.
const ENQ_BASE_MS: i64 = 1_700_000_000_000;

struct Scripts {
    submit: Script,
    lease: Script,
    ack: Script,
    ack_many: Script,
    nack: Script,
    extend: Script,
    release: Script,
    expire: Script,
    get: Script,
    fetch: Script,
    cancel: Script,
    set_priority: Script,
    reprioritize: Script,
    requeue_dead: Script,
    purge: Script,
    stats: Script,
    peek: Script,
    redeadline: Script,
    audit: Script,
}

impl Scripts {
    fn new() -> Self {
        let s = |body: &str| Script::new(&format!("local BASE = {ENQ_BASE_MS}\n{}{body}", scripts::PRELUDE));
        Self {
            submit: s(scripts::SUBMIT),
            lease: s(scripts::LEASE),
            ack: s(scripts::ACK),
            ack_many: s(scripts::ACK_MANY),
            nack: s(scripts::NACK),
            extend: s(scripts::EXTEND),
            release: s(scripts::RELEASE),
            expire: s(scripts::EXPIRE),
            get: s(scripts::GET),
            fetch: s(scripts::FETCH),
            cancel: s(scripts::CANCEL),
            set_priority: s(scripts::SET_PRIORITY),
            reprioritize: s(scripts::REPRIORITIZE),
            requeue_dead: s(scripts::REQUEUE_DEAD),
            purge: s(scripts::PURGE),
            stats: s(scripts::STATS),
            peek: s(scripts::PEEK),
            redeadline: s(scripts::REDEADLINE),
            audit: s(scripts::AUDIT),
        }
    }
}

/// The stored fields of one ad, in the order `fields()` returns them.
type Fields = (
    Option<Vec<u8>>,
    Option<i32>,
    Option<u32>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<u32>,
    Option<String>,
    Option<Vec<u8>>,
    Option<String>,
);

struct Inner {
    con: RedisConn,
    prefix: String,
    instance: String,
    ttl: u64,
    scripts: Scripts,
    signal: watch::Sender<u64>,
    watchers: Watchers,
    /// (when measured, completions per second over the last minute).
    rate: Mutex<(i64, f64)>,
}

/// The queue shared through Redis.
pub struct RedisQueue {
    inner: Arc<Inner>,
    listener: tokio::task::JoinHandle<()>,
}

fn backend(e: impl std::fmt::Display) -> QueueError {
    QueueError::Backend(format!("redis: {e}"))
}

fn parse<T: redis::FromRedisValue>(v: Value) -> Result<T, QueueError> {
    redis::from_redis_value(v).map_err(backend)
}

/// One script argument (or several, for a list) in wire form.
fn a<T: redis::ToRedisArgs>(x: &T) -> Vec<Vec<u8>> {
    x.to_redis_args()
}

fn status_name(s: i32) -> &'static str {
    crate::embedded::status_name(s)
}

fn build_ad(id: &str, f: Fields) -> Option<pb::Ad> {
    let (raw, st, pr, enq, start, fin, att, err, an, _trace) = f;
    let mut ad = pb::Ad::decode(raw?.as_slice()).ok()?;
    ad.id = id.to_owned();
    ad.status = st.unwrap_or(0);
    ad.priority = pr.unwrap_or(ad.priority);
    ad.enqueued_at_ms = enq.unwrap_or(0);
    ad.started_at_ms = start.unwrap_or(0);
    ad.finished_at_ms = fin.unwrap_or(0);
    ad.attempts = att.unwrap_or(0);
    ad.last_error = err.unwrap_or_default();
    ad.analysis = an.filter(|b| !b.is_empty()).and_then(|b| pb::AnalysisResult::decode(b.as_slice()).ok());
    Some(ad)
}

/// Lease refusal codes returned by the scripts.
fn refusal(code: i64, lease_id: u64) -> QueueError {
    if code == 2 { QueueError::StaleLease(lease_id) } else { QueueError::UnknownLease(lease_id) }
}

impl Inner {
    async fn run<T: redis::FromRedisValue>(
        &self,
        script: &Script,
        args: &[Vec<Vec<u8>>],
    ) -> Result<T, QueueError> {
        let mut inv = script.key(&self.prefix);
        for a in args {
            inv.arg(a);
        }
        let mut con = self.con.clone();
        inv.invoke_async(&mut con).await.map_err(backend)
    }

    fn key(&self, suffix: &str) -> String {
        format!("{}:{suffix}", self.prefix)
    }

    /// A worker session as the scripts store it. Gateways number their sessions from 1
    /// in every process; the random instance id of this handle keeps the session of
    /// another gateway, or of this one before a restart, from settling this one's leases.
    /// (Lease ids come from `P:lseq`, one counter for every gateway, so they never repeat
    /// while Redis keeps its data.)
    fn session(&self, session: u64) -> String {
        format!("{}-{session}", self.instance)
    }

    /// Completions per second over the last minute, read at most once a second.
    async fn rate(&self, now: i64) -> f64 {
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
    async fn snapshot(&self, mut ad: pb::Ad, position: i64, now: i64) -> pb::Ad {
        let per_s = if crate::is_pending(ad.status) { self.rate(now).await } else { 0.0 };
        crate::fill_computed(&mut ad, position.max(0) as u64, per_s, now);
        ad
    }

    async fn get(&self, id: &str, now: i64) -> Result<pb::Ad, QueueError> {
        crate::parse_id(id)?;
        let v: Vec<Value> = self.run(&self.scripts.get, &[a(&id)]).await?;
        let mut it = v.into_iter();
        let (Some(f), Some(pos)) = (it.next(), it.next()) else {
            return Err(QueueError::NotFound(id.to_owned()));
        };
        let ad = build_ad(id, parse(f)?).ok_or_else(|| QueueError::NotFound(id.to_owned()))?;
        Ok(self.snapshot(ad, parse(pos)?, now).await)
    }

    async fn stats(&self, now: i64) -> Result<pb::QueueStats, QueueError> {
        type Raw = (Vec<(u64, u8, i64)>, u64, u64, i64, u64, u64);
        let (parts, in_flight, dead, sum, done, minute): Raw =
            self.run(&self.scripts.stats, &[a(&now)]).await?;
        let partitions: Vec<pb::PartitionStats> = parts
            .into_iter()
            .zip((1..=MAX_PRIORITY).rev())
            .map(|((queued, paused, oldest), p)| pb::PartitionStats {
                priority: p as u32,
                queued,
                paused: paused == 1,
                oldest_wait_ms: if oldest >= 0 { (now - oldest).max(0) } else { 0 },
            })
            .collect();
        let n = partitions.iter().map(|p| p.queued).sum::<u64>();
        let avg_enq = if n > 0 { ENQ_BASE_MS + sum / n as i64 } else { now };
        Ok(pb::QueueStats {
            total_queued: n,
            oldest_wait_ms: partitions.iter().map(|p| p.oldest_wait_ms).max().unwrap_or(0),
            average_wait_ms: (now - avg_enq).max(0),
            partitions,
            in_flight,
            dead_letters: dead,
            completed_last_minute: minute,
            processing_rate_per_s: minute as f64 / 60.0,
            completed_total: done,
            workers: 0,
        })
    }

    /// Sends an ad's change to this gateway's watchers of it. `status` is the status the
    /// change produced: the ad read back may already be further along, and every status
    /// must still be seen once, in order.
    async fn notify_watchers(&self, id: &str, status: i32) {
        if !self.watchers.wants(id, status) {
            return;
        }
        let Ok(mut ad) = self.get(id, adflow_domain::now_ms()).await else { return };
        ad.status = status;
        self.watchers.deliver(id, ad);
    }
}

/// Listens on the wake and watch channels; reconnects with backoff when the link drops.
async fn listen(
    inner: std::sync::Weak<Inner>,
    target: Target,
    prefix: String,
    mut ready: Option<tokio::sync::oneshot::Sender<()>>,
) {
    let (wake, changed) = (format!("{prefix}:wake"), format!("{prefix}:ad"));
    let mut delay = Duration::from_millis(100);
    loop {
        let sub = async {
            let client = redis::Client::open(target.any_node())?;
            let mut ps = client.get_async_pubsub().await?;
            ps.subscribe(&[wake.as_str(), changed.as_str()]).await?;
            Ok::<_, redis::RedisError>(ps)
        };
        match sub.await {
            Ok(ps) => {
                delay = Duration::from_millis(100);
                if let Some(r) = ready.take() {
                    let _ = r.send(());
                }
                // Anything published while we were away: wake sessions once.
                if let Some(i) = inner.upgrade() {
                    i.signal.send_modify(|v| *v = v.wrapping_add(1));
                }
                let mut msgs = ps.into_on_message();
                while let Some(m) = msgs.next().await {
                    let Some(i) = inner.upgrade() else { return };
                    if m.get_channel_name() == wake {
                        i.signal.send_modify(|v| *v = v.wrapping_add(1));
                    } else if let Ok(p) = m.get_payload::<String>()
                        && let Some((id, st)) = p.split_once(':')
                    {
                        i.notify_watchers(id, st.parse().unwrap_or(0)).await;
                    }
                }
                tracing::warn!("redis queue subscription ended; reconnecting");
            }
            Err(e) => tracing::warn!(error = %e, "redis queue subscription failed; retrying"),
        }
        if inner.strong_count() == 0 {
            return;
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

impl RedisQueue {
    /// Connects, seeds the shared policy from `cfg` where Redis has none, and subscribes.
    pub async fn open(cfg: &QueueConfig, rcfg: &RedisQueueConfig) -> Result<Self, QueueError> {
        if !rcfg.prefix.contains('{') || !rcfg.prefix.contains('}') {
            return Err(QueueError::Invalid {
                field: "queue.redis.prefix",
                message: format!("{:?} needs a hash tag like {{adflow:q}}", rcfg.prefix),
            });
        }
        let target = rcfg.target();
        let con = connect(&target).await.map_err(backend)?;
        let inner = Arc::new(Inner {
            con,
            prefix: rcfg.prefix.clone(),
            instance: uuid::Uuid::new_v4().simple().to_string(),
            ttl: rcfg.finished_ttl_seconds.max(1),
            scripts: Scripts::new(),
            signal: watch::channel(0).0,
            watchers: Watchers::default(),
            rate: Mutex::new((i64::MIN / 2, 0.0)),
        });
        let p = cfg.policy();
        let mut pipe = redis::pipe();
        let key = inner.key("policy");
        for (f, v) in [
            ("as", p.anti_starvation as u32),
            ("mw", p.max_wait_seconds),
            ("ag", p.aging_step_seconds),
            ("ma", p.max_attempts),
            ("ls", p.lease_seconds),
        ] {
            pipe.cmd("HSETNX").arg(&key).arg(f).arg(v).ignore();
        }
        let mut c = inner.con.clone();
        pipe.query_async::<()>(&mut c).await.map_err(backend)?;
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let listener =
            tokio::spawn(listen(Arc::downgrade(&inner), target, rcfg.prefix.clone(), Some(ready_tx)));
        // Watches and wake-ups need the subscription: wait for it (briefly).
        if tokio::time::timeout(Duration::from_secs(3), ready_rx).await.is_err() {
            tracing::warn!("redis queue subscription not ready after 3 s; workers fall back to polling");
        }
        tracing::info!(prefix = %rcfg.prefix, cluster = !rcfg.cluster_nodes.is_empty(), "redis ad queue ready");
        Ok(Self { inner, listener })
    }

    async fn dead_page(&self, ids: Vec<(String, i64)>) -> Result<Vec<pb::DeadLetter>, QueueError> {
        let names: Vec<&str> = ids.iter().map(|(i, _)| i.as_str()).collect();
        let rows: Vec<Fields> = self.inner.run(&self.inner.scripts.fetch, &[a(&names)]).await?;
        Ok(ids
            .iter()
            .zip(rows)
            .filter_map(|((id, at), f)| {
                let ad = build_ad(id, f)?;
                Some(pb::DeadLetter {
                    id: ad.id,
                    attempts: ad.attempts,
                    last_error: ad.last_error,
                    dead_at_ms: *at,
                    title: ad.spec.map(|s| s.title).unwrap_or_default(),
                    priority: ad.priority,
                })
            })
            .collect())
    }
}

impl Drop for RedisQueue {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

#[async_trait]
impl AdQueue for RedisQueue {
    async fn submit(
        &self,
        specs: Vec<pb::AdSpec>,
        traceparent: &str,
        now: i64,
    ) -> Result<Vec<pb::SubmitAdResponse>, QueueError> {
        if specs.is_empty() {
            return Ok(Vec::new());
        }
        let mut inv = self.inner.scripts.submit.key(&self.inner.prefix);
        inv.arg(now);
        let mut ids = Vec::with_capacity(specs.len());
        for spec in specs {
            let id = uuid::Uuid::now_v7().to_string();
            let (pr, mw, fam) = (spec.priority, spec.max_wait_seconds, spec.game_family.to_lowercase());
            let ad = pb::Ad {
                id: String::new(),
                spec: Some(spec),
                priority: pr,
                created_at_ms: now,
                ..Default::default()
            };
            inv.arg(&id).arg(ad.encode_to_vec()).arg(pr).arg(mw).arg(fam).arg(traceparent);
            ids.push(id);
        }
        let mut con = self.inner.con.clone();
        let positions: Vec<i64> = inv.invoke_async(&mut con).await.map_err(backend)?;
        let per_s = self.inner.rate(now).await;
        Ok(ids
            .into_iter()
            .zip(positions)
            .map(|(id, pos)| {
                let queue_position = pos.max(0) as u64;
                pb::SubmitAdResponse {
                    id,
                    status: AdStatus::Queued as i32,
                    queue_position,
                    estimated_completion_ms: crate::eta_ms(queue_position, per_s),
                }
            })
            .collect())
    }

    async fn get(&self, id: &str, now: i64) -> Result<pb::Ad, QueueError> {
        self.inner.get(id, now).await
    }

    async fn list(&self, req: &pb::ListAdsRequest, now: i64) -> Result<pb::ListAdsResponse, QueueError> {
        let size = crate::page_size(req.page_size)?;
        let mut con = self.inner.con.clone();
        let all = self.inner.key("all");
        let mut max = "+inf".to_owned();
        if !req.page_token.is_empty() {
            crate::parse_id(&req.page_token)?;
            let score: Option<i64> = redis::cmd("ZSCORE")
                .arg(&all)
                .arg(&req.page_token)
                .query_async(&mut con)
                .await
                .map_err(backend)?;
            let s = score.ok_or_else(|| QueueError::Invalid {
                field: "page_token",
                message: format!("{} is not a token this listing returned", req.page_token),
            })?;
            max = format!("({s}");
        }
        let family = req.game_family.to_lowercase();
        let mut ads = Vec::new();
        let mut scanned = 0usize;
        loop {
            let chunk: Vec<(String, i64)> = redis::cmd("ZREVRANGEBYSCORE")
                .arg(&all)
                .arg(&max)
                .arg("-inf")
                .arg("WITHSCORES")
                .arg("LIMIT")
                .arg(0)
                .arg(500)
                .query_async(&mut con)
                .await
                .map_err(backend)?;
            let Some(last) = chunk.last() else { break };
            max = format!("({}", last.1);
            let names: Vec<&str> = chunk.iter().map(|(i, _)| i.as_str()).collect();
            let rows: Vec<Fields> = self.inner.run(&self.inner.scripts.fetch, &[a(&names)]).await?;
            let mut gone = Vec::new();
            for ((id, _), f) in chunk.iter().zip(rows) {
                scanned += 1;
                let Some(ad) = build_ad(id, f) else {
                    gone.push(id.clone());
                    continue;
                };
                let fam_ok = family.is_empty()
                    || ad.spec.as_ref().is_some_and(|s| s.game_family.to_lowercase() == family);
                if (req.status == 0 || ad.status == req.status)
                    && (req.priority == 0 || ad.priority == req.priority)
                    && fam_ok
                {
                    ads.push(self.inner.snapshot(ad, -1, now).await);
                    if ads.len() == size {
                        break;
                    }
                }
            }
            if !gone.is_empty() {
                // Finished ads past their retention: drop them from the listing index.
                let _: Result<(), _> = redis::cmd("ZREM").arg(&all).arg(&gone).query_async(&mut con).await;
            }
            // A page scans a bounded number of ads; the token lets the caller go on.
            if ads.len() == size || scanned >= 20_000 || chunk.len() < 500 {
                break;
            }
        }
        let more = ads.len() == size || scanned >= 20_000;
        let next_page_token = match (more, ads.last()) {
            (true, Some(a)) => a.id.clone(),
            _ => String::new(),
        };
        // Queue positions for queued ads (one round trip each; pages are small).
        for a in ads.iter_mut().filter(|a| a.status == AdStatus::Queued as i32) {
            if let Ok(fresh) = self.inner.get(&a.id, now).await {
                a.queue_position = fresh.queue_position;
                a.estimated_completion_ms = fresh.estimated_completion_ms;
            }
        }
        Ok(pb::ListAdsResponse { ads, next_page_token })
    }

    async fn cancel(&self, id: &str, now: i64) -> Result<pb::Ad, QueueError> {
        crate::parse_id(id)?;
        let v: Vec<Value> =
            self.inner.run(&self.inner.scripts.cancel, &[a(&id), a(&now), a(&self.inner.ttl)]).await?;
        let mut it = v.into_iter();
        let code: i64 = parse(it.next().unwrap_or(Value::Nil))?;
        match code {
            0 => {
                let f: Fields = parse(it.next().unwrap_or(Value::Nil))?;
                let ad = build_ad(id, f).ok_or_else(|| QueueError::NotFound(id.to_owned()))?;
                Ok(self.inner.snapshot(ad, -1, now).await)
            }
            2 => Err(QueueError::WrongState {
                id: id.into(),
                status: status_name(parse(it.next().unwrap_or(Value::Nil))?),
                what: "only unfinished ads can be cancelled",
            }),
            _ => Err(QueueError::NotFound(id.to_owned())),
        }
    }

    async fn watch(&self, id: &str, now: i64) -> Result<(pb::Ad, mpsc::Receiver<pb::Ad>), QueueError> {
        crate::parse_id(id)?;
        // Mark the ad watched before reading it, so no change falls between the two.
        let mut con = self.inner.con.clone();
        let mut p = redis::pipe();
        for key in [self.inner.key(&format!("watch:{id}")), self.inner.key("watching")] {
            p.cmd("SET").arg(key).arg(1).arg("EX").arg(86_400).ignore();
        }
        p.query_async::<()>(&mut con).await.map_err(backend)?;
        let ad = self.inner.get(id, now).await?;
        let rx = self.inner.watchers.register(&ad);
        Ok((ad, rx))
    }

    async fn lease(&self, session: u64, mask: PartitionMask, n: usize, now: i64) -> Vec<Leased> {
        if n == 0 {
            return Vec::new();
        }
        let sess = self.inner.session(session);
        let r: Result<Vec<(u64, i64, String, Fields)>, _> =
            self.inner.run(&self.inner.scripts.lease, &[a(&now), a(&n), a(&mask), a(&sess)]).await;
        let rows = match r {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!(error = %e, "leasing from the redis queue failed");
                return Vec::new();
            }
        };
        let mut out = Vec::with_capacity(rows.len());
        for (lease_id, deadline_ms, id, f) in rows {
            let trace = f.9.clone().unwrap_or_default();
            let Some(ad) = build_ad(&id, f) else { continue };
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
            .run(&self.inner.scripts.ack, &[a(&lease_id), a(&sess), a(&now), a(&an), a(&self.inner.ttl)])
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
                let msg = e.to_string();
                items.iter().map(|_| Err(backend(&msg))).collect()
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
            .run(&self.inner.scripts.nack, &[a(&lease_id), a(&sess), a(&(retry as u8)), a(&error), a(&now)])
            .await?;
        match v.first() {
            Some(0) => Ok(()),
            Some(&code) => Err(refusal(code, lease_id)),
            None => Err(backend("empty nack reply")),
        }
    }

    async fn extend(&self, session: u64, lease_id: u64, seconds: u32, now: i64) -> Result<i64, QueueError> {
        crate::check_extension(seconds)?;
        let sess = self.inner.session(session);
        let deadline = now + seconds as i64 * 1000;
        let v: Vec<i64> =
            self.inner.run(&self.inner.scripts.extend, &[a(&lease_id), a(&sess), a(&deadline)]).await?;
        match v.first() {
            Some(0) => Ok(deadline),
            Some(&code) => Err(refusal(code, lease_id)),
            None => Err(backend("empty extend reply")),
        }
    }

    async fn release_session(&self, session: u64, now: i64) -> usize {
        let sess = self.inner.session(session);
        match self.inner.run::<usize>(&self.inner.scripts.release, &[a(&sess), a(&now)]).await {
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
            .run::<Vec<(String, u64, u8, String)>>(&self.inner.scripts.expire, &[a(&now), a(&1000)])
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

    async fn stats(&self, now: i64) -> Result<pb::QueueStats, QueueError> {
        self.inner.stats(now).await
    }

    async fn peek(&self, n: usize, now: i64) -> Result<Vec<pb::QueuedAd>, QueueError> {
        type Raw = (Vec<u8>, Vec<(String, u8, u64, i64, i64, Vec<u8>)>);
        let (paused, rows): Raw = self.inner.run(&self.inner.scripts.peek, &[a(&n), a(&now)]).await?;
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
                Some(crate::queued_ad(&p, id, spec, now))
            })
            .collect())
    }

    async fn set_priority(&self, id: &str, priority: u8, _now: i64) -> Result<(u8, u8), QueueError> {
        crate::embedded::check_priority(priority)?;
        crate::parse_id(id)?;
        let v: Vec<Value> = self.inner.run(&self.inner.scripts.set_priority, &[a(&id), a(&priority)]).await?;
        let mut it = v.into_iter();
        match parse::<i64>(it.next().unwrap_or(Value::Nil))? {
            0 => Ok((parse(it.next().unwrap_or(Value::Nil))?, priority)),
            2 => Err(QueueError::WrongState {
                id: id.into(),
                status: status_name(parse(it.next().unwrap_or(Value::Nil))?),
                what: "only queued ads can be reprioritized",
            }),
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
        crate::embedded::check_priority(priority)?;
        let fam = filter.game_family.to_lowercase();
        let min_wait = filter.older_than_seconds as i64 * 1000;
        self.inner
            .run(
                &self.inner.scripts.reprioritize,
                &[
                    a(&priority),
                    a(&(dry_run as u8)),
                    a(&filter.current_priority),
                    a(&fam),
                    a(&min_wait),
                    a(&now),
                ],
            )
            .await
    }

    async fn set_paused(&self, priority: u8, paused: bool) -> Result<pb::PartitionState, QueueError> {
        crate::embedded::check_priority(priority)?;
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
        let (queued,): (u64,) = p.query_async(&mut con).await.map_err(backend)?;
        Ok(pb::PartitionState { priority: priority as u32, paused, queued })
    }

    async fn policy(&self) -> Result<pb::Policy, QueueError> {
        let mut con = self.inner.con.clone();
        let v: (Option<u32>, Option<u32>, Option<u32>, Option<u32>, Option<u32>) = redis::cmd("HMGET")
            .arg(self.inner.key("policy"))
            .arg(&["as", "mw", "ag", "ma", "ls"])
            .query_async(&mut con)
            .await
            .map_err(backend)?;
        let d = QueueConfig::default().policy();
        Ok(pb::Policy {
            anti_starvation: v.0.map(|x| x == 1).unwrap_or(d.anti_starvation),
            max_wait_seconds: v.1.unwrap_or(d.max_wait_seconds),
            aging_step_seconds: v.2.unwrap_or(d.aging_step_seconds),
            max_attempts: v.3.unwrap_or(d.max_attempts),
            lease_seconds: v.4.unwrap_or(d.lease_seconds),
        })
    }

    async fn set_policy(&self, update: &pb::SetPolicyRequest) -> Result<pb::Policy, QueueError> {
        let cur = self.policy().await?;
        let next = policy::apply(&cur, update);
        policy::check(&next).map_err(|(field, message)| QueueError::Invalid { field, message })?;
        let mut con = self.inner.con.clone();
        redis::cmd("HSET")
            .arg(self.inner.key("policy"))
            .arg("as")
            .arg(next.anti_starvation as u32)
            .arg("mw")
            .arg(next.max_wait_seconds)
            .arg("ag")
            .arg(next.aging_step_seconds)
            .arg("ma")
            .arg(next.max_attempts)
            .arg("ls")
            .arg(next.lease_seconds)
            .query_async::<()>(&mut con)
            .await
            .map_err(backend)?;
        if next.max_wait_seconds != cur.max_wait_seconds {
            self.inner.run::<i64>(&self.inner.scripts.redeadline, &[]).await?;
        }
        Ok(next)
    }

    async fn dead_letters(&self, limit: usize) -> Result<(Vec<pb::DeadLetter>, u64), QueueError> {
        let mut con = self.inner.con.clone();
        let key = self.inner.key("dead");
        let mut p = redis::pipe();
        p.cmd("ZREVRANGE").arg(&key).arg(0).arg(limit as i64 - 1).arg("WITHSCORES").cmd("ZCARD").arg(&key);
        let (ids, total): (Vec<(String, i64)>, u64) = p.query_async(&mut con).await.map_err(backend)?;
        let items = if limit == 0 || ids.is_empty() { Vec::new() } else { self.dead_page(ids).await? };
        Ok((items, total))
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
        inv.invoke_async(&mut con).await.map_err(backend)
    }

    async fn purge(&self, priority: u8, now: i64) -> Result<u64, QueueError> {
        crate::embedded::check_priority(priority)?;
        self.inner.run(&self.inner.scripts.purge, &[a(&priority), a(&now), a(&self.inner.ttl)]).await
    }

    async fn family_stats(&self, now: i64) -> Result<Vec<FamilyStats>, QueueError> {
        let mut con = self.inner.con.clone();
        let all: HashMap<String, i64> =
            redis::cmd("HGETALL").arg(self.inner.key("fam")).query_async(&mut con).await.map_err(backend)?;
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
        crate::sort_families(&mut out);
        Ok(out)
    }

    async fn audit_append(&self, entry: &pb::AuditEntry) -> Result<(), QueueError> {
        crate::parse_id(&entry.command_id)?;
        let bytes = entry.encode_to_vec();
        self.inner.run::<i64>(&self.inner.scripts.audit, &[a(&entry.command_id), a(&bytes)]).await?;
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
                    redis::cmd("ZSCORE").arg(&key).arg(b).query_async(&mut con).await.map_err(backend)?;
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
            .map_err(backend)?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let rows: Vec<Option<Vec<u8>>> = redis::cmd("HMGET")
            .arg(self.inner.key("auditdata"))
            .arg(&ids)
            .query_async(&mut con)
            .await
            .map_err(backend)?;
        rows.into_iter().flatten().map(|b| pb::AuditEntry::decode(b.as_slice()).map_err(backend)).collect()
    }

    fn work_signal(&self) -> watch::Receiver<u64> {
        self.inner.signal.subscribe()
    }

    async fn close(&self) {
        self.listener.abort();
    }
}
