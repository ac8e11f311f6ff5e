//! The Redis queue: every gateway shares one queue in Redis (or a Redis Cluster). Each
//! state change is one Lua script (`scripts`), so claim, ack, nack, expire and
//! reprioritize are atomic however many gateways run them. All keys share the prefix's
//! hash tag, so on a cluster every script stays in one slot (the queue lives on one
//! shard; events and dedup keys use other tags and spread).
//!
//! Idle workers do not poll hot: scripts publish on `P:wake` when work arrives, and one
//! subscriber per gateway turns that into the local work signal. Watches work the same
//! way through `P:ad`, published only for ads some gateway watches.
//!
//! Files: this one connects, subscribes and holds the shared helpers (`Inner`); `scripts`
//! loads `lua/*.lua` behind a prelude generated from the Rust constants; `fields` decodes
//! an ad read back; `ads`, `leases`, `reports` and `controls` implement the traits.

mod ads;
mod controls;
mod fields;
mod leases;
mod reports;
mod scripts;

use crate::error::BackendErrorKind;
use crate::index::MAX_PRIORITY;
use crate::model::{self, StatsCounts};
use crate::watchers::Watchers;
use crate::{AdQueue, QueueConfig, QueueError, RedisQueueConfig, policy, status};
use adflow_proto::v1 as pb;
use adflow_store::redis_conn::{RedisConn, Target, connect};
use async_trait::async_trait;
use fields::AdFields;
use futures::StreamExt;
use redis::{ErrorKind, RedisError, Script, ScriptInvocation, ServerErrorKind, ToRedisArgs, Value};
use scripts::{ENQ_BASE_MS, Scripts};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

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

/// A Redis error with its kind: the server unreachable, slow, failing over or loading
/// is transient (UNAVAILABLE); a script error or a reply of the wrong type is a bug
/// (INTERNAL).
fn redis_error(e: RedisError) -> QueueError {
    QueueError::Backend { kind: redis_kind(&e), message: format!("redis: {e}") }
}

/// Whether a Redis error is transient (see `redis_error`).
fn redis_kind(e: &RedisError) -> BackendErrorKind {
    let transient = e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || matches!(
            e.kind(),
            ErrorKind::ClusterConnectionNotFound
                | ErrorKind::Server(
                    ServerErrorKind::BusyLoading
                        | ServerErrorKind::TryAgain
                        | ServerErrorKind::ClusterDown
                        | ServerErrorKind::MasterDown
                        | ServerErrorKind::ReadOnly
                )
        );
    if transient { BackendErrorKind::Unavailable } else { BackendErrorKind::Internal }
}

/// A reply this code did not expect: a bug in a script or here.
fn bad_reply(what: impl std::fmt::Display) -> QueueError {
    QueueError::internal(format!("redis: {what}"))
}

/// Decodes one part of a script's reply.
fn parse<T: redis::FromRedisValue>(v: Value) -> Result<T, QueueError> {
    redis::from_redis_value(v).map_err(|e| bad_reply(format!("unexpected reply: {e}")))
}

/// One script call being built: the prefix as its key, then its arguments in order.
struct Call<'a> {
    con: &'a RedisConn,
    inv: ScriptInvocation<'a>,
}

impl Call<'_> {
    /// Appends an argument (a list appends each element).
    fn arg(mut self, x: impl ToRedisArgs) -> Self {
        self.inv.arg(x);
        self
    }

    /// Runs the script and decodes its reply.
    async fn run<T: redis::FromRedisValue>(self) -> Result<T, QueueError> {
        let mut con = self.con.clone();
        self.inv.invoke_async(&mut con).await.map_err(redis_error)
    }
}

/// Lease refusal codes returned by the scripts.
fn refusal(code: i64, lease_id: u64) -> QueueError {
    if code == 2 { QueueError::StaleLease(lease_id) } else { QueueError::UnknownLease(lease_id) }
}

impl Inner {
    /// A call of `script` on this queue's keys.
    fn call<'a>(&'a self, script: &'a Script) -> Call<'a> {
        Call { con: &self.con, inv: script.key(&self.prefix) }
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
        let per_s = if status::is_pending(ad.status) { self.rate(now).await } else { 0.0 };
        model::fill_computed(&mut ad, position.max(0) as u64, per_s, now);
        ad
    }

    async fn get(&self, id: &str, now: i64) -> Result<pb::Ad, QueueError> {
        crate::parse_id(id)?;
        let v: Vec<Value> = self.call(&self.scripts.get).arg(id).run().await?;
        let mut it = v.into_iter();
        let (Some(f), Some(pos)) = (it.next(), it.next()) else {
            return Err(QueueError::NotFound(id.to_owned()));
        };
        let ad = parse::<AdFields>(f)?.into_ad(id).ok_or_else(|| QueueError::NotFound(id.to_owned()))?;
        Ok(self.snapshot(ad, parse(pos)?, now).await)
    }

    async fn stats(&self, now: i64) -> Result<pb::QueueStats, QueueError> {
        type Raw = (Vec<(u64, u8, i64)>, u64, u64, i64, u64, u64);
        let (parts, in_flight, dead, sum, done, minute): Raw =
            self.call(&self.scripts.stats).arg(now).run().await?;
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
            return Err(QueueError::invalid(
                "queue.redis.prefix",
                format!("{:?} needs a hash tag like {{adflow:q}}", rcfg.prefix),
            ));
        }
        let target = rcfg.target();
        let con = connect(&target).await.map_err(redis_error)?;
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
        for (code, v) in policy::stored(&p) {
            pipe.cmd("HSETNX").arg(&key).arg(code).arg(v).ignore();
        }
        let mut c = inner.con.clone();
        pipe.query_async::<()>(&mut c).await.map_err(redis_error)?;
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
        let rows: Vec<AdFields> = self.inner.call(&self.inner.scripts.fetch).arg(&names).run().await?;
        Ok(ids
            .iter()
            .zip(rows)
            .filter_map(|((id, at), f)| Some(model::dead_letter(&f.into_ad(id)?, *at)))
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
    async fn close(&self) {
        self.listener.abort();
    }
}
