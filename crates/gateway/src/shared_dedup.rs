//! Dedup shared by every gateway: accepted event ids live in Redis under `<prefix><id>`,
//! so a retry that reaches another gateway is still a duplicate.
//!
//! "Duplicate" means "stored", so a claim has two states (the protocol):
//! 1. **claim** (one script call per request): an absent id is set to `p:<token>` (pending,
//!    owned by this gateway) with a short expiry (`claim_secs`); the id is new.
//!    `s` means stored: a duplicate. `p:<other>` means another commit holds the first
//!    copy: a durable request polls until it turns `s` (duplicate), or disappears (that
//!    commit failed or its gateway died; the id is claimed again), and answers
//!    UNAVAILABLE if it stays pending past the claim expiry. An accepted-mode request
//!    counts a pending id as a duplicate at once (it was only promised "queued").
//! 2. **settle** (one script call per commit, before any client hears "stored"): the
//!    batch's ids become `s` with the window's expiry. A batch parked in the local spill
//!    buffer (backend down) keeps its ids `p:<token>` for the whole window instead, and
//!    the spill replay (`ReplayGuard`) turns them into `s` once they are in the backend.
//! 3. **forget** (failed commit): ids still `p:<token>` are deleted, so the retry is new.
//!
//! While Redis cannot answer, events are accepted unchecked (availability first). Their ids
//! are settled after the commit like any others; if Redis is still down then, they are kept
//! in a bounded backlog and written as soon as it answers. Spilled events are checked when
//! the spill replays: an id some gateway stored meanwhile is skipped, never written twice.
//! The token is stable across restarts of a gateway (kept beside its spill buffer), so a
//! replay after a crash recognises its own pending claims.

use adflow_domain::EventView;
use adflow_store::StoredEvent;
use adflow_store::redis_conn::{RedisConn, Target, connect};
use adflow_store::resilient::ReplayGuard;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

/// Claims every absent id for this gateway; answers per id 1 new, 3 already pending for
/// this gateway, 2 pending for another, 0 stored.
const CLAIM: &str = r#"
local out = {}
for i, k in ipairs(KEYS) do
  local v = redis.call('GET', k)
  if not v then
    redis.call('SET', k, ARGV[1], 'PX', ARGV[2])
    out[i] = 1
  elseif v == ARGV[1] then
    out[i] = 3
  elseif string.sub(v, 1, 2) == 'p:' then
    out[i] = 2
  else
    out[i] = 0
  end
end
return out
"#;

/// ARGV[3] = "s": every id becomes stored. "h": ids absent or pending for this gateway are
/// held (pending, ARGV[1]) for ARGV[2] ms; ids stored or pending elsewhere are left alone.
const SETTLE: &str = r#"
for _, k in ipairs(KEYS) do
  if ARGV[3] == 's' then
    redis.call('SET', k, 's', 'PX', ARGV[2])
  else
    local v = redis.call('GET', k)
    if (not v) or v == ARGV[1] then
      redis.call('SET', k, ARGV[1], 'PX', ARGV[2])
    end
  end
end
return #KEYS
"#;

/// Deletes the ids still pending for this gateway.
const FORGET: &str = r#"
local n = 0
for _, k in ipairs(KEYS) do
  if redis.call('GET', k) == ARGV[1] then
    redis.call('DEL', k)
    n = n + 1
  end
end
return n
"#;

/// Most ids kept for recording while Redis is down; beyond it the oldest are dropped (and
/// counted): their events are stored, only their dedup entry is lost.
const BACKLOG_MAX: usize = 1_000_000;

/// Why a request's ids could not be checked.
#[derive(Debug, thiserror::Error)]
pub enum AdmitError {
    /// Redis did not answer.
    #[error("shared dedup: {0}")]
    Redis(#[from] redis::RedisError),
    /// Ids stayed pending for another commit past the claim expiry.
    #[error("{0} ids are still being committed elsewhere")]
    StillPending(usize),
}

/// The Redis-backed dedup set.
pub struct SharedDedup {
    con: RedisConn,
    prefix: String,
    ttl_ms: u64,
    claim_ms: u64,
    /// `p:<token>`: this gateway's pending mark.
    mine: String,
    claim: redis::Script,
    settle: redis::Script,
    forget: redis::Script,
    backlog: Mutex<VecDeque<String>>,
    /// After a failed call, calls fail at once until this time (ms): a dead or
    /// partitioned Redis must not add a timeout to every request and commit.
    open_until_ms: std::sync::atomic::AtomicI64,
}

/// How long the breaker stays open after a failed call.
const BREAKER_MS: i64 = 500;

impl SharedDedup {
    /// Connects to `target`; ids are kept for `ttl_secs`. On a cluster the prefix must
    /// carry a hash tag so one request's ids stay in one slot. The gateway's token is random.
    pub async fn connect(target: &Target, prefix: &str, ttl_secs: u64) -> Result<Self, redis::RedisError> {
        let con = connect(target).await?;
        Ok(Self {
            con,
            prefix: prefix.to_owned(),
            ttl_ms: ttl_secs.max(1) * 1000,
            claim_ms: 30_000,
            mine: format!("p:{}", uuid::Uuid::new_v4().simple()),
            claim: redis::Script::new(CLAIM),
            settle: redis::Script::new(SETTLE),
            forget: redis::Script::new(FORGET),
            backlog: Mutex::new(VecDeque::new()),
            open_until_ms: std::sync::atomic::AtomicI64::new(0),
        })
    }

    /// Uses `token` (stable across restarts) to mark this gateway's pending claims.
    pub fn with_token(mut self, token: &str) -> Self {
        self.mine = format!("p:{token}");
        self
    }

    /// How long a pending claim lives without being settled, in seconds (default 30).
    pub fn with_claim_secs(mut self, secs: u64) -> Self {
        self.claim_ms = secs.max(1) * 1000;
        self
    }

    fn keys<'a>(&self, ids: impl IntoIterator<Item = &'a str>) -> Vec<String> {
        ids.into_iter().map(|id| format!("{}{id}", self.prefix)).collect()
    }

    /// Runs `script` on `keys` with `args` through the breaker.
    async fn call<T: redis::FromRedisValue>(
        &self,
        script: &redis::Script,
        keys: &[String],
        args: &[String],
    ) -> Result<T, redis::RedisError> {
        use std::sync::atomic::Ordering;
        if self.open_until_ms.load(Ordering::Relaxed) > adflow_domain::now_ms() {
            return Err(redis::RedisError::from((
                redis::ErrorKind::Io,
                "shared dedup breaker open after a recent failure",
            )));
        }
        let mut inv = script.prepare_invoke();
        keys.iter().for_each(|k| {
            inv.key(k);
        });
        for a in args {
            inv.arg(a);
        }
        let mut con = self.con.clone();
        let res = inv.invoke_async(&mut con).await;
        if res.is_err() {
            self.open_until_ms.store(adflow_domain::now_ms() + BREAKER_MS, Ordering::Relaxed);
        }
        res
    }

    async fn run_claim(&self, keys: &[String]) -> Result<Vec<i64>, redis::RedisError> {
        self.call(&self.claim, keys, &[self.mine.clone(), self.claim_ms.to_string()]).await
    }

    /// For each id, true when it is new (and now claimed for this gateway), false for a
    /// duplicate of a stored event. Pending first copies are waited for when `durable`.
    pub async fn admit(&self, ids: &[String], durable: bool) -> Result<Vec<bool>, AdmitError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys = self.keys(ids.iter().map(String::as_str));
        let codes = self.run_claim(&keys).await?;
        let mut out = vec![false; ids.len()];
        let mut first: HashMap<&str, usize> = HashMap::with_capacity(ids.len());
        let mut wait = Vec::new();
        for (i, code) in codes.into_iter().enumerate() {
            let repeat = first.insert(ids[i].as_str(), i).is_some();
            match code {
                1 => out[i] = true,
                // A repeat inside this request shares the request's own commit.
                3 | 2 if repeat => {}
                3 | 2 if durable => wait.push(i),
                _ => {}
            }
        }
        if !wait.is_empty() {
            for (i, new) in self.wait_settled(&keys, wait).await? {
                out[i] = new;
            }
        }
        Ok(out)
    }

    /// Polls pending ids until each is stored (false) or free and claimed by us (true).
    async fn wait_settled(
        &self,
        keys: &[String],
        mut wait: Vec<usize>,
    ) -> Result<Vec<(usize, bool)>, AdmitError> {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(self.claim_ms + 1000);
        let mut done = Vec::with_capacity(wait.len());
        let mut delay = Duration::from_millis(5);
        while !wait.is_empty() {
            if tokio::time::Instant::now() >= deadline {
                return Err(AdmitError::StillPending(wait.len()));
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(100));
            let ks: Vec<String> = wait.iter().map(|&i| keys[i].clone()).collect();
            let codes = self.run_claim(&ks).await?;
            let mut still = Vec::new();
            for (&i, code) in wait.iter().zip(codes) {
                match code {
                    1 => done.push((i, true)),
                    0 => done.push((i, false)),
                    _ => still.push(i),
                }
            }
            wait = still;
        }
        Ok(done)
    }

    /// For each id, true when it was not seen before (and is now claimed); a pending id
    /// counts as seen. (The accepted-mode view of `admit`.)
    pub async fn claim(&self, ids: &[String]) -> Result<Vec<bool>, redis::RedisError> {
        match self.admit(ids, false).await {
            Ok(v) => Ok(v),
            Err(AdmitError::Redis(e)) => Err(e),
            Err(AdmitError::StillPending(_)) => unreachable!("accepted mode never waits"),
        }
    }

    async fn run_settle(&self, keys: &[String], mode: &str) -> Result<(), redis::RedisError> {
        let ttl = if mode == "s" { self.ttl_ms } else { self.ttl_ms.max(self.claim_ms) };
        self.call::<i64>(&self.settle, keys, &[self.mine.clone(), ttl.to_string(), mode.to_owned()])
            .await
            .map(|_| ())
    }

    /// Marks the ids of a committed batch stored, or held for the spill replay when the
    /// batch went to the spill. When Redis does not answer, stored ids go to the backlog.
    pub async fn settle(&self, ids: &[&str], spilled: bool) {
        if ids.is_empty() {
            return;
        }
        self.flush_backlog().await;
        let keys = self.keys(ids.iter().copied());
        let res = self.run_settle(&keys, if spilled { "h" } else { "s" }).await;
        match res {
            Ok(()) => {}
            // The replay checks spilled ids itself.
            Err(_) if spilled => {}
            Err(e) => {
                tracing::warn!(error = %e, ids = ids.len(), "could not record stored ids; kept for later");
                self.push_backlog(ids.iter().map(|s| (*s).to_owned()));
            }
        }
    }

    fn push_backlog(&self, ids: impl Iterator<Item = String>) {
        let mut b = self.backlog.lock().unwrap_or_else(|p| p.into_inner());
        b.extend(ids);
        let over = b.len().saturating_sub(BACKLOG_MAX);
        if over > 0 {
            b.drain(..over);
            metrics::counter!("dedup_backlog_dropped_total").increment(over as u64);
            tracing::error!(dropped = over, "dedup backlog full: the oldest unrecorded ids were dropped");
        }
    }

    /// Ids of stored events waiting to be recorded in Redis.
    pub fn backlog(&self) -> usize {
        self.backlog.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Writes the backlog to Redis (a page at a time) while it answers.
    pub async fn flush_backlog(&self) {
        loop {
            let page: Vec<String> = {
                let b = self.backlog.lock().unwrap_or_else(|p| p.into_inner());
                b.iter().take(1000).cloned().collect()
            };
            if page.is_empty() {
                return;
            }
            let keys = self.keys(page.iter().map(String::as_str));
            if self.run_settle(&keys, "s").await.is_err() {
                return;
            }
            let mut b = self.backlog.lock().unwrap_or_else(|p| p.into_inner());
            let n = page.len().min(b.len());
            b.drain(..n);
            tracing::info!(ids = n, left = b.len(), "recorded ids accepted while the shared dedup was down");
        }
    }

    /// Forgets ids whose write failed, so a client's retry is accepted.
    pub async fn forget(&self, ids: &[String]) {
        if ids.is_empty() {
            return;
        }
        let keys = self.keys(ids.iter().map(String::as_str));
        if let Err(e) = self.call::<i64>(&self.forget, &keys, std::slice::from_ref(&self.mine)).await {
            tracing::warn!(error = %e, ids = ids.len(), "could not forget dedup ids after a failed write");
        }
    }
}

fn event_id(e: &StoredEvent) -> String {
    EventView::parse(&e.raw).map(|v| v.event_id.to_owned()).unwrap_or_default()
}

#[adflow_store::async_trait]
impl ReplayGuard for SharedDedup {
    async fn admit(&self, events: &[StoredEvent]) -> adflow_store::Result<Vec<bool>> {
        let ids: Vec<String> = events.iter().map(event_id).collect();
        let keys = self.keys(ids.iter().map(String::as_str));
        let to_store = |e: AdmitError| adflow_store::StoreError::Backend {
            backend: "redis",
            op: "dedup check of the spill replay",
            message: e.to_string(),
        };
        let codes = self.run_claim(&keys).await.map_err(|e| to_store(e.into()))?;
        let mut keep = vec![false; ids.len()];
        let mut first: HashMap<&str, usize> = HashMap::new();
        let mut wait = Vec::new();
        for (i, code) in codes.into_iter().enumerate() {
            if first.insert(ids[i].as_str(), i).is_some() {
                continue; // a second copy inside the spill: written once
            }
            match code {
                1 | 3 => keep[i] = true,
                2 => wait.push(i),
                _ => {}
            }
        }
        if !wait.is_empty() {
            for (i, new) in self.wait_settled(&keys, wait).await.map_err(to_store)? {
                keep[i] = new;
            }
        }
        Ok(keep)
    }

    async fn written(&self, events: &[StoredEvent]) {
        let ids: Vec<String> = events.iter().map(event_id).collect();
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        self.settle(&refs, false).await;
    }
}
