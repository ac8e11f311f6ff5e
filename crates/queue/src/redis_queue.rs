//! The Redis queue: every gateway shares one queue in Redis (or a Redis Cluster). Each
//! state change is one Lua script (`scripts`), so claim, ack, nack, expire and
//! reprioritize are atomic however many gateways run them.
//!
//! # Shards
//! The queue is split into `queue.redis.shards` = K shards (default 1), each a complete
//! queue under its own hash tag (five partitions, leases, deadlines, dead letters,
//! counters), so every script stays in one slot and a Redis Cluster spreads the shards
//! over its nodes. Shard 0 is the configured prefix itself: with K = 1 the keys are
//! exactly those of the unsharded queue. `shards` names the other prefixes, how an ad's
//! shard follows from its id (FNV-1a of the id, mod K) and how a lease id names its
//! shard (so ack, nack and extend go to one shard). Submissions are grouped by shard
//! (one script per shard touched); reads and changes of one ad go to its shard; the
//! operator's views and changes run on every shard and are merged or summed here (peek
//! merges the shards' candidates through the same `Index`). The policy and the paused
//! partitions are kept on shard 0 and copied to the others (versioned, `sync.lua`), so
//! each shard's scripts read them locally. The audit log lives on shard 0.
//!
//! # Across shards (the ordering tolerance)
//! Inside a shard, the serving order is exactly the `Index` order (overdue first,
//! aging, FIFO). A claim of n ads with K > 1 first reads every shard's head (what it
//! would serve next), then takes from the shard with the best head while that shard's
//! next ad is at least as good as the best head of the others: never a lower class
//! (overdue before waiting) or a lower effective priority, and within one level only
//! ads enqueued (overdue: due) at most `shard_fifo_slack_ms` (default 100 ms) after the
//! other head; then it moves to the next shard. The leased ads are handed out in the
//! global order. So, against one global queue and as of the heads read when the claim
//! starts: a claim never serves an ad while an ad of a higher class or effective
//! priority waits in another shard, a claim of one ad always takes the best head of
//! all shards, and within one level an ad is passed only by ads at most the slack
//! younger than it. What changes between the heads read and the lease (another
//! gateway's claim, a new submit) is seen by the next claim, as with one shard.
//!
//! Idle workers do not poll hot: scripts publish on `P:wake` (each shard on its own)
//! when work arrives, and one subscriber per gateway, on every shard's channels, turns
//! that into the local work signal. Watches work the same way through `P:ad`,
//! published only for ads some gateway watches.
//!
//! Files: this one connects, subscribes and holds the shared helpers (`Inner`); `scripts`
//! loads `lua/*.lua` behind a prelude generated from the Rust constants; `fields` decodes
//! an ad read back; `shards` holds the shard rules; `reads` reads an ad and the stats
//! over every shard, `list` lists ads over several; `ads`, `leases`, `reports` and
//! `controls` implement the traits; `sync` keeps the shards' policy and pauses equal.

mod ads;
mod controls;
mod fields;
mod leases;
mod list;
mod reads;
mod reports;
mod scripts;
mod shards;
mod sync;

use crate::error::BackendErrorKind;
use crate::watchers::Watchers;
use crate::{AdQueue, QueueConfig, QueueError, RedisQueueConfig, policy};
use adflow_store::redis_conn::{RedisConn, Target, connect};
use async_trait::async_trait;
use futures::{FutureExt, StreamExt};
use redis::{ErrorKind, RedisError, Script, ScriptInvocation, ServerErrorKind, ToRedisArgs, Value};
use scripts::Scripts;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// The shard of ad `id` in a queue of `shards` shards (FNV-1a of the id, mod `shards`).
pub fn shard_of(id: &str, shards: usize) -> usize {
    shards::of(id, shards)
}

/// The key prefix of shard `i` of `shards` for a queue whose `queue.redis.prefix` is
/// `base` (shard 0: `base` itself).
pub fn shard_prefix(base: &str, i: usize, shards: usize) -> String {
    shards::prefix(base, i, shards)
}

struct Inner {
    con: RedisConn,
    /// The key prefix of each shard (shard 0: the configured prefix).
    shards: Vec<String>,
    instance: String,
    ttl: u64,
    /// `queue.redis.shard_fifo_slack_ms`.
    slack_ms: i64,
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

/// One script call being built: the shard's prefix as its key, then its arguments in order.
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
    /// A call of `script` on shard 0 (the only one when K = 1; the audit log's).
    fn call<'a>(&'a self, script: &'a Script) -> Call<'a> {
        self.call_on(0, script)
    }

    /// A call of `script` on the keys of shard `shard`.
    fn call_on<'a>(&'a self, shard: usize, script: &'a Script) -> Call<'a> {
        Call { con: &self.con, inv: script.key(&self.shards[shard]) }
    }

    /// A key of shard 0.
    fn key(&self, suffix: &str) -> String {
        self.key_on(0, suffix)
    }

    /// A key of shard `shard`.
    fn key_on(&self, shard: usize, suffix: &str) -> String {
        format!("{}:{suffix}", self.shards[shard])
    }

    /// How many shards.
    fn k(&self) -> usize {
        self.shards.len()
    }

    /// The shard ad `id` is submitted to.
    fn shard_of(&self, id: &str) -> usize {
        shards::of(id, self.k())
    }

    /// The shards in the order to look for ad `id`: its own first, then the others (an
    /// ad submitted while the queue had fewer shards lives in another one).
    fn lookup_order(&self, id: &str) -> impl Iterator<Item = usize> + use<> {
        let (home, k) = (self.shard_of(id), self.k());
        std::iter::once(home).chain((0..k).filter(move |&s| s != home))
    }

    /// A worker session as the scripts store it. Gateways number their sessions from 1
    /// in every process; the random instance id of this handle keeps the session of
    /// another gateway, or of this one before a restart, from settling this one's leases.
    /// (Lease ids come from each shard's `P:lseq`, one counter for every gateway, and
    /// carry the shard, so they never repeat while Redis keeps its data.)
    fn session(&self, session: u64) -> String {
        format!("{}-{session}", self.instance)
    }
}

/// Listens on every shard's wake and watch channels; reconnects with backoff when the
/// link drops. (On a cluster, PUBLISH reaches the subscribers of every node.)
async fn listen(
    inner: std::sync::Weak<Inner>,
    target: Target,
    prefixes: Vec<String>,
    mut ready: Option<tokio::sync::oneshot::Sender<()>>,
) {
    let wakes: Vec<String> = prefixes.iter().map(|p| format!("{p}:wake")).collect();
    let changes: Vec<String> = prefixes.iter().map(|p| format!("{p}:ad")).collect();
    let channels: Vec<&str> = wakes.iter().chain(&changes).map(String::as_str).collect();
    let mut delay = Duration::from_millis(100);
    loop {
        let sub = async {
            let client = redis::Client::open(target.any_node())?;
            let mut ps = client.get_async_pubsub().await?;
            ps.subscribe(&channels).await?;
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
                while let Some(first) = msgs.next().await {
                    let Some(i) = inner.upgrade() else { return };
                    // The wakes already here count once: a batch submitted to K shards
                    // publishes K of them, and each would start a claim in every session.
                    let mut woken = false;
                    let mut next = Some(first);
                    while let Some(m) = next {
                        let channel = m.get_channel_name();
                        if wakes.iter().any(|w| w == channel) {
                            woken = true;
                        } else if let Ok(p) = m.get_payload::<String>()
                            && let Some((id, st)) = p.split_once(':')
                        {
                            i.notify_watchers(id, st.parse().unwrap_or(0)).await;
                        }
                        next = msgs.next().now_or_never().flatten();
                    }
                    if woken {
                        i.signal.send_modify(|v| *v = v.wrapping_add(1));
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
    /// Connects, checks the shard count against what the queue was written with, seeds
    /// the shared policy from `cfg` where Redis has none, copies shard 0's policy and
    /// pauses to the other shards, and subscribes.
    pub async fn open(cfg: &QueueConfig, rcfg: &RedisQueueConfig) -> Result<Self, QueueError> {
        rcfg.check().map_err(|(key, problem)| QueueError::invalid(key, problem))?;
        let target = rcfg.target();
        let con = connect(&target).await.map_err(redis_error)?;
        let k = rcfg.shards as usize;
        let inner = Arc::new(Inner {
            con,
            shards: (0..k).map(|i| shards::prefix(&rcfg.prefix, i, k)).collect(),
            instance: uuid::Uuid::new_v4().simple().to_string(),
            ttl: rcfg.finished_ttl_seconds.max(1),
            slack_ms: rcfg.shard_fifo_slack_ms as i64,
            scripts: Scripts::new(),
            signal: watch::channel(0).0,
            watchers: Watchers::default(),
            rate: Mutex::new((i64::MIN / 2, 0.0)),
        });
        inner.check_shard_count().await?;
        let p = cfg.policy();
        let mut pipe = redis::pipe();
        let key = inner.key("policy");
        for (code, v) in policy::stored(&p) {
            pipe.cmd("HSETNX").arg(&key).arg(code).arg(v).ignore();
        }
        let mut c = inner.con.clone();
        pipe.query_async::<()>(&mut c).await.map_err(redis_error)?;
        inner.sync_shards().await?;
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let listener =
            tokio::spawn(listen(Arc::downgrade(&inner), target, inner.shards.clone(), Some(ready_tx)));
        // Watches and wake-ups need the subscription: wait for it (briefly).
        if tokio::time::timeout(Duration::from_secs(3), ready_rx).await.is_err() {
            tracing::warn!("redis queue subscription not ready after 3 s; workers fall back to polling");
        }
        tracing::info!(prefix = %rcfg.prefix, shards = k, cluster = !rcfg.cluster_nodes.is_empty(), "redis ad queue ready");
        Ok(Self { inner, listener })
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
