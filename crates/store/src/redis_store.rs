//! The `redis` event backend: one Redis stream holds the events, one entry per commit
//! (its events as `e` = the encoded AdEvent fields, with `r` = receive time; see `log`).
//! A batch is appended in one MULTI/EXEC transaction, so a failed commit leaves none of
//! its events visible; each batch ends with one approximate XTRIM to about `max_len`
//! events (retention). The key carries a
//! hash tag so it maps to one slot on a Redis Cluster. Scans page with exclusive XRANGE.
//! With shared analytics on, the same transaction increments the counter buckets
//! (`counters`), which share the stream's hash tag. `append_marked` also sets a landed
//! marker (a key in the same slot, 10 minutes) that `landed` reads: see `resilient`.
//!
//! Reading the log back (`log_*`, `group_*`; see `log`): cursors are stream entry ids,
//! consumer group positions live in a hash next to the stream, and follow mode waits with
//! XREAD BLOCK on connections of its own.

mod log;

use crate::counters::RedisCounters;
use crate::eventlog::{GroupPosition, LogPage, Start};
use crate::redis_conn::{RedisConn, Target, connect};
use crate::{Cursor, EventStore, Health, Landed, Marker, Page, Result, StoreError, StoredEvent};
use adflow_domain::analytics::Retention;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Settings of the redis backend (`[storage.redis]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// Server URL (default "redis://127.0.0.1:6379/").
    pub url: String,
    /// Seed nodes of a Redis Cluster (e.g. ["redis://10.0.0.1:7000/"]); when set, `url`
    /// is ignored and the cluster client is used.
    pub cluster_nodes: Vec<String>,
    /// Stream key (default "{adflow}:events").
    pub stream_key: String,
    /// Approximate number of events kept (default 50000000; older ones are trimmed).
    pub max_len: u64,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379/".into(),
            cluster_nodes: Vec::new(),
            stream_key: "{adflow}:events".into(),
            max_len: 50_000_000,
        }
    }
}

impl RedisConfig {
    /// The server or cluster these settings name.
    pub fn target(&self) -> Target {
        Target { url: self.url.clone(), cluster_nodes: self.cluster_nodes.clone() }
    }
}

fn err(op: &'static str) -> impl FnOnce(redis::RedisError) -> StoreError {
    move |e| StoreError::Backend { backend: "redis", op, message: e.to_string() }
}

/// The redis-backed event store.
pub struct RedisStore {
    cfg: RedisConfig,
    con: RedisConn,
    counters: Option<Arc<RedisCounters>>,
    /// Dedicated connections for blocking reads (`log_wait`).
    waiters: log::Waiters,
    /// Recent events per stream entry (a moving average), to trim by events.
    per_entry: AtomicU64,
}

impl RedisStore {
    /// Connects (the connection manager reconnects by itself after failures).
    pub async fn open(cfg: RedisConfig) -> Result<Self> {
        Self::open_with(cfg, None).await
    }

    /// Connects; with `counters`, every batch also adds its analytics counters to the
    /// shared ones in the same transaction as its events (and this store folds them).
    pub async fn open_with(cfg: RedisConfig, counters: Option<Retention>) -> Result<Self> {
        let con = connect(&cfg.target()).await.map_err(err("connect"))?;
        let counters = counters.map(|r| Arc::new(RedisCounters::new(con.clone(), &cfg.stream_key, r)));
        if let Some(c) = &counters {
            c.start_folding();
        }
        Ok(Self { cfg, con, counters, waiters: log::Waiters::default(), per_entry: AtomicU64::new(1) })
    }

    /// The shared counters this store feeds, if enabled.
    pub fn counters(&self) -> Option<Arc<RedisCounters>> {
        self.counters.clone()
    }

    /// The key recording that a commit starting with `e` landed: in the stream key's hash
    /// slot (so it joins the events' MULTI on a cluster), then the receive time and the
    /// event id (the raw bytes' checksum for an event without one). None when no such key
    /// can be named (a stream key with a `}` but no hash tag): commits then go unmarked.
    fn landed_key(&self, e: &StoredEvent) -> Option<Vec<u8>> {
        let k = &self.cfg.stream_key;
        let mut key = match crate::counters::tag_of(k) {
            Some(tag) => tag.as_bytes().to_vec(),
            // `{k}` hashes by its tag `k`: the slot of the untagged stream key `k`.
            None if !k.contains('}') => format!("{{{k}}}").into_bytes(),
            None => return None,
        };
        key.extend_from_slice(format!(":landed:{}:", e.received_at_ms).as_bytes());
        match e.view() {
            Ok(v) => key.extend_from_slice(v.event_id.as_bytes()),
            Err(_) => key.extend_from_slice(format!("#{:08x}", crc32fast::hash(&e.raw)).as_bytes()),
        }
        Some(key)
    }

    /// One commit: the events as one stream entry, the counters, the commit script, the
    /// landed marker and the trim, in one MULTI/EXEC.
    async fn commit(&self, events: &[StoredEvent], marker: Option<(Vec<u8>, String)>) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let mut p = redis::pipe();
        p.atomic();
        // The whole commit is one entry (see `log`).
        let mut xadd = redis::cmd("XADD");
        xadd.arg(&self.cfg.stream_key).arg("*");
        log::encode(&mut xadd, events);
        p.add_command(xadd).ignore();
        if let Some(c) = &self.counters {
            c.add_to(&mut p, events);
        }
        if let Some(s) = COMMIT_SCRIPT.try_with(|s| s.clone()).ok().flatten() {
            p.cmd("EVAL").arg(&*s.body).arg(s.keys.len()).arg(&s.keys).arg(&s.args).ignore();
        }
        // `max_len` counts events, the stream counts entries (commits).
        let per_entry = self.per_entry.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |avg| {
            Some((avg * 7 + events.len() as u64).div_ceil(8).max(1))
        });
        let per_entry = per_entry.unwrap_or(1).max(1);
        let entries = (self.cfg.max_len / per_entry).max(1);
        p.cmd("XTRIM").arg(&self.cfg.stream_key).arg("MAXLEN").arg("~").arg(entries).ignore();
        if let Some((key, value)) = marker {
            // A MULTI runs on past a command that fails (an XADD on a key of another
            // type): the marker is set only if the stream is there, never with an error.
            p.cmd("EVAL").arg(MARK_LANDED).arg(2).arg(&self.cfg.stream_key).arg(key);
            p.arg(value).arg(LANDED_TTL_MS).ignore();
        }
        let mut con = self.con.clone();
        let _: () = p.query_async(&mut con).await.map_err(err("XADD"))?;
        Ok(())
    }
}

/// A landed marker's value, "<covers>:<digest, 16 hex digits>".
fn parse_landed(v: &str) -> Option<Landed> {
    let (covers, digest) = v.split_once(':')?;
    Some(Landed { covers: covers.parse().ok()?, digest: u64::from_str_radix(digest, 16).ok()? })
}

/// Sets a landed marker (KEYS[2] = ARGV[1], expiring in ARGV[2] ms) when KEYS[1] is a
/// stream, i.e. when the XADD before it in the same MULTI did not fail; never errors.
const MARK_LANDED: &str = "if redis.call('TYPE', KEYS[1]).ok == 'stream' then \
    redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2]) end return 0";

/// How long a commit's landed marker is kept (10 minutes): a retry or a spill replay of a
/// batch whose reply was lost is recognised within it.
const LANDED_TTL_MS: u64 = 600_000;

/// A script run inside a commit's MULTI/EXEC, with the events: the shared dedup settles
/// the commit's claims there, so "stored" and "its ids recorded as stored" land together
/// or not at all (a gateway killed, or Redis gone, between the EXEC and a later call would
/// otherwise leave stored ids pending, and a retry past the claim's deadline would store
/// them again). Set for the committing task with `COMMIT_SCRIPT.scope`; only the Redis
/// store runs it, and only a script that never errors belongs here (an error reply inside
/// EXEC would fail a commit that landed). Its keys must share the stream's hash slot.
#[derive(Clone, Debug)]
pub struct CommitScript {
    /// The Lua body (sent with EVAL: it must work even right after a Redis restart).
    pub body: std::sync::Arc<str>,
    /// KEYS.
    pub keys: Vec<String>,
    /// ARGV.
    pub args: Vec<String>,
}

tokio::task_local! {
    /// The script the current task's next Redis commit runs with its events.
    pub static COMMIT_SCRIPT: Option<CommitScript>;
}

#[async_trait]
impl EventStore for RedisStore {
    fn backend(&self) -> &'static str {
        "redis"
    }

    async fn append(&self, events: &[StoredEvent]) -> Result<()> {
        self.commit(events, None).await
    }

    async fn append_marked(&self, events: &[StoredEvent], marker: &Marker) -> Result<()> {
        let value = format!("{}:{:016x}", marker.landed.covers, marker.landed.digest);
        self.commit(events, self.landed_key(&marker.first).map(|k| (k, value))).await
    }

    async fn landed(&self, events: &[StoredEvent]) -> Result<Vec<Option<Landed>>> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let mut mget = redis::cmd("MGET");
        for e in events {
            match self.landed_key(e) {
                Some(k) => mget.arg(k),
                None => return Ok(vec![None; events.len()]),
            };
        }
        let mut con = self.con.clone();
        let got: Vec<Option<String>> = mget.query_async(&mut con).await.map_err(err("MGET"))?;
        Ok(got.into_iter().map(|v| v.as_deref().and_then(parse_landed)).collect())
    }

    async fn scan(&self, from: Option<Cursor>, limit: usize) -> Result<Page> {
        self.scan_since(i64::MIN, from, limit).await
    }

    /// Entry ids are the server's clock in ms, close to the receive time: start there.
    async fn scan_since(&self, since_ms: i64, from: Option<Cursor>, limit: usize) -> Result<Page> {
        let at = match &from {
            Some(c) => log::Pos::parse(&c.0)?,
            None if since_ms > 0 => {
                log::Pos { sid: log::Sid::before_ms(since_ms.saturating_sub(60_000)), event: None }
            }
            None => log::Pos { sid: log::Sid::ZERO, event: None },
        };
        let limit = limit.max(1);
        let (events, next, _) = self.range(at, limit).await?;
        let full = events.len() == limit;
        Ok(Page { events, next: full.then(|| next.cursor()) })
    }

    /// Stream positions, "<ms>-<seq>[:<i>]": see `log` for the format, time starts and gaps.
    fn check_cursor(&self, cursor: &Cursor) -> Result<()> {
        log::Pos::parse(&cursor.0).map(|_| ())
    }

    async fn log_start(&self, start: &Start) -> Result<Cursor> {
        self.start(start).await
    }

    async fn log_read(&self, from: &Cursor, limit: usize) -> Result<LogPage> {
        self.read(from, limit).await
    }

    async fn log_wait(&self, after: &Cursor, timeout: std::time::Duration) {
        self.wait(after, timeout).await
    }

    async fn group_commit(&self, group: &str, cursor: &Cursor) -> Result<()> {
        self.commit_group(group, cursor).await
    }

    async fn group_get(&self, group: &str) -> Result<Option<GroupPosition>> {
        self.get_group(group).await
    }

    async fn health(&self) -> Health {
        let mut con = self.con.clone();
        match redis::cmd("PING").query_async::<String>(&mut con).await {
            Ok(_) => Health { ok: true, detail: "ok".into(), degraded: false },
            Err(e) => Health { ok: false, detail: format!("redis: {e}"), degraded: true },
        }
    }

    async fn close(&self) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn landed_values_round_trip_and_junk_is_no_marker() {
        let l = Landed { covers: 8192, digest: 0xdead_beef_0123_4567 };
        assert_eq!(parse_landed(&format!("{}:{:016x}", l.covers, l.digest)), Some(l));
        for junk in ["", "5", "5:", "x:00", "5:zz", "-1:00"] {
            assert_eq!(parse_landed(junk), None, "{junk:?}");
        }
    }
}
