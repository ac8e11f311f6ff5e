//! Dedup shared by every gateway: accepted event ids live in Redis, so a retry that
//! reaches another gateway is still a duplicate.
//!
//! "Duplicate" means "stored", so a claim has two states (the protocol):
//! 1. **claim** (one script call per request): an absent id becomes pending, owned by this
//!    gateway until a deadline (`claim_secs`); the id is new. Stored: a duplicate. Pending
//!    for another gateway: another commit holds the first copy: a durable request polls
//!    until it turns stored (duplicate), or its claim goes (that commit failed or its
//!    gateway died; the id is claimed again), and answers UNAVAILABLE if it stays pending
//!    past the claim's deadline. An accepted-mode request counts a pending id as a
//!    duplicate at once (it was only promised "queued").
//! 2. **settle** (one script call per commit, before any client hears "stored"): the
//!    batch's ids become stored. A batch parked in the local spill buffer (backend down)
//!    has its ids held by this gateway for the whole window instead, and the spill replay
//!    (`ReplayGuard`) turns them into stored once they are in the backend.
//! 3. **forget** (failed commit): ids still pending for this gateway are dropped, so the
//!    retry is new.
//!
//! **Layout** (`<prefix>` is e.g. `{adflow}:dedup:`; one hash tag, so one cluster slot):
//! an id is known by a 12-byte fingerprint (xxh3-128 of the id; a false match needs ~10^14
//! ids in one window), a field of one hash per window-long generation,
//! `<prefix><now / window>`. Its value is `s` once stored, `p:<gateway>|<deadline ms>`
//! while pending (past the deadline it counts as absent), `p:<gateway>` while held. A
//! claim looks in the current and the previous generation, so an id is remembered for at
//! least the window and at most two (a generation's hash expires after two windows).
//! Every step handles a whole request or commit with variadic HMGET / HSET / HDEL inside
//! one script: no key and no command per id, which is what made the shared dedup cost
//! three times the event write itself (BENCHMARKS.md, issue 15).
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

/// Shared by the scripts: KEYS = the current and the previous generation's hash; ARGV[1]
/// = now (ms). `state(v)` reads a value: "s" stored, or the gateway that holds the id
/// (pending until the deadline after '|', held without one), or nil (absent or expired).
const PRELUDE: &str = r#"
local now = tonumber(ARGV[1])
local function state(v)
  if not v or v == 's' then return v or nil end
  local bar = string.find(v, '|', 1, true)
  if not bar then return v end
  if tonumber(string.sub(v, bar + 1)) > now then return string.sub(v, 1, bar - 1) end
  return nil
end
local function lookup(first)
  local a = redis.call('HMGET', KEYS[1], unpack(ARGV, first))
  local b = redis.call('HMGET', KEYS[2], unpack(ARGV, first))
  local out = {}
  for i = 1, #ARGV - first + 1 do
    local x, y = state(a[i]), state(b[i])
    if x == 's' or y == 's' then out[i] = 's' else out[i] = x or y end
  end
  return out
end
"#;

/// ARGV: now, mine, deadline, ttl, fingerprints. Claims every absent id for this gateway;
/// answers one character per id: 1 new, 3 already pending for this gateway (or repeated
/// in this call), 2 pending for another, 0 stored.
const CLAIM: &str = r#"
local F = 5
local st, mine, out, new, seen = lookup(F), ARGV[2], {}, {}, {}
local pending = mine .. '|' .. ARGV[3]
for i = 1, #ARGV - F + 1 do
  local fp, s = ARGV[F + i - 1], st[i]
  if s == 's' then
    out[i] = '0'
  elseif s == mine or seen[fp] then
    out[i] = '3'
  elseif s then
    out[i] = '2'
  else
    out[i] = '1'
    seen[fp] = true
    new[#new + 1] = fp
    new[#new + 1] = pending
  end
end
if #new > 0 then
  redis.call('HSET', KEYS[1], unpack(new))
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
end
return table.concat(out)
"#;

/// ARGV: now, mine, mode, ttl, fingerprints. Mode "s": every id becomes stored. "h": ids
/// absent or pending for this gateway are held for it (no deadline: for the window); ids
/// stored or pending elsewhere are left alone.
const SETTLE: &str = r#"
local F = 5
local set, mine = {}, ARGV[2]
if ARGV[3] == 's' then
  for i = F, #ARGV do
    set[#set + 1] = ARGV[i]
    set[#set + 1] = 's'
  end
else
  local st = lookup(F)
  for i = 1, #ARGV - F + 1 do
    if not st[i] or st[i] == mine then
      set[#set + 1] = ARGV[F + i - 1]
      set[#set + 1] = mine
    end
  end
end
if #set > 0 then
  redis.call('HSET', KEYS[1], unpack(set))
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
end
return #set / 2
"#;

/// ARGV: now, mine, fingerprints. Drops the ids still pending or held for this gateway.
const FORGET: &str = r#"
local F = 3
local mine, n = ARGV[2], 0
for k = 1, 2 do
  local v = redis.call('HMGET', KEYS[k], unpack(ARGV, F))
  local gone = {}
  for i = 1, #ARGV - F + 1 do
    if v[i] and v[i] ~= 's' and state(v[i]) == mine then gone[#gone + 1] = ARGV[F + i - 1] end
  end
  if #gone > 0 then n = n + redis.call('HDEL', KEYS[k], unpack(gone)) end
end
return n
"#;

/// Most ids per script call (Lua's `unpack` limit is 8000 values).
const CHUNK: usize = 2000;

/// The 12-byte fingerprint an id is known by in Redis.
type Fp = [u8; 12];

/// The fingerprint of each id (xxh3-128, first 12 bytes).
fn fps<'a>(ids: impl IntoIterator<Item = &'a str>) -> Vec<Fp> {
    ids.into_iter()
        .map(|id| {
            let h = xxhash_rust::xxh3::xxh3_128(id.as_bytes()).to_le_bytes();
            let mut f = [0u8; 12];
            f.copy_from_slice(&h[..12]);
            f
        })
        .collect()
}

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
    /// Connects to `target`; ids are kept for `ttl_secs` (to twice that). On a cluster the
    /// prefix must carry a hash tag so the keys share one slot. The gateway's token is random.
    pub async fn connect(target: &Target, prefix: &str, ttl_secs: u64) -> Result<Self, redis::RedisError> {
        let con = connect(target).await?;
        let script = |body: &str| redis::Script::new(&format!("{PRELUDE}{body}"));
        Ok(Self {
            con,
            prefix: prefix.to_owned(),
            ttl_ms: ttl_secs.max(1) * 1000,
            claim_ms: 30_000,
            mine: format!("p:{}", &uuid::Uuid::new_v4().simple().to_string()[..16]),
            claim: script(CLAIM),
            settle: script(SETTLE),
            forget: script(FORGET),
            backlog: Mutex::new(VecDeque::new()),
            open_until_ms: std::sync::atomic::AtomicI64::new(0),
        })
    }

    /// Uses `token` (stable across restarts) to mark this gateway's pending claims.
    pub fn with_token(mut self, token: &str) -> Self {
        // Stored with every pending id: 16 characters tell gateways apart.
        self.mine = format!("p:{}", token.get(..16).unwrap_or(token));
        self
    }

    /// How long a pending claim lives without being settled, in seconds (default 30).
    pub fn with_claim_secs(mut self, secs: u64) -> Self {
        self.claim_ms = secs.max(1) * 1000;
        self
    }

    /// The keys the scripts work on at `now`: the current and the previous generation.
    fn keys_at(&self, now: i64) -> [String; 2] {
        let g = now.div_euclid(self.ttl_ms as i64);
        [format!("{}{g}", self.prefix), format!("{}{}", self.prefix, g - 1)]
    }

    /// A generation's hash lives two windows (it is looked up during the next one) and a
    /// minute of clock slack between gateways.
    fn generation_ttl_ms(&self) -> u64 {
        2 * self.ttl_ms + 60_000
    }

    /// Runs `script` with `args` (after `now`) and the fingerprints, through the breaker.
    async fn call<T: redis::FromRedisValue>(
        &self,
        script: &redis::Script,
        args: &[String],
        fps: &[Fp],
    ) -> Result<T, redis::RedisError> {
        use std::sync::atomic::Ordering;
        let now = adflow_domain::now_ms();
        if self.open_until_ms.load(Ordering::Relaxed) > now {
            return Err(redis::RedisError::from((
                redis::ErrorKind::Io,
                "shared dedup breaker open after a recent failure",
            )));
        }
        let mut inv = script.prepare_invoke();
        for k in self.keys_at(now) {
            inv.key(k);
        }
        inv.arg(now);
        for a in args {
            inv.arg(a);
        }
        for f in fps {
            inv.arg(&f[..]);
        }
        let mut con = self.con.clone();
        let res = inv.invoke_async(&mut con).await;
        if res.is_err() {
            self.open_until_ms.store(adflow_domain::now_ms() + BREAKER_MS, Ordering::Relaxed);
        }
        res
    }

    /// Claim codes per fingerprint (see `CLAIM`), a chunk of ids per script call.
    async fn run_claim(&self, fps: &[Fp]) -> Result<Vec<u8>, redis::RedisError> {
        let mut codes = Vec::with_capacity(fps.len());
        for chunk in fps.chunks(CHUNK) {
            let deadline = adflow_domain::now_ms() + self.claim_ms as i64;
            let args = [self.mine.clone(), deadline.to_string(), self.generation_ttl_ms().to_string()];
            let reply: Vec<u8> = self.call(&self.claim, &args, chunk).await?;
            if reply.len() != chunk.len() {
                return Err(redis::RedisError::from((
                    redis::ErrorKind::Parse,
                    "shared dedup: claim reply of the wrong length",
                )));
            }
            codes.extend(reply.iter().map(|c| c.wrapping_sub(b'0')));
        }
        Ok(codes)
    }

    /// For each id, true when it is new (and now claimed for this gateway), false for a
    /// duplicate of a stored event. Pending first copies are waited for when `durable`.
    pub async fn admit(&self, ids: &[String], durable: bool) -> Result<Vec<bool>, AdmitError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let fps = fps(ids.iter().map(String::as_str));
        let codes = self.run_claim(&fps).await?;
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
            for (i, new) in self.wait_settled(&fps, wait).await? {
                out[i] = new;
            }
        }
        Ok(out)
    }

    /// Polls pending ids until each is stored (false) or free and claimed by us (true).
    async fn wait_settled(&self, fps: &[Fp], mut wait: Vec<usize>) -> Result<Vec<(usize, bool)>, AdmitError> {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(self.claim_ms + 1000);
        let mut done = Vec::with_capacity(wait.len());
        let mut delay = Duration::from_millis(5);
        while !wait.is_empty() {
            if tokio::time::Instant::now() >= deadline {
                return Err(AdmitError::StillPending(wait.len()));
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(100));
            let ks: Vec<Fp> = wait.iter().map(|&i| fps[i]).collect();
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

    async fn run_settle(&self, fps: &[Fp], mode: &str) -> Result<(), redis::RedisError> {
        for chunk in fps.chunks(CHUNK) {
            let args = [self.mine.clone(), mode.to_owned(), self.generation_ttl_ms().to_string()];
            self.call::<i64>(&self.settle, &args, chunk).await?;
        }
        Ok(())
    }

    /// Marks the ids of a committed batch stored, or held for the spill replay when the
    /// batch went to the spill. When Redis does not answer, stored ids go to the backlog.
    pub async fn settle(&self, ids: &[&str], spilled: bool) {
        if ids.is_empty() {
            return;
        }
        self.flush_backlog().await;
        let fps = fps(ids.iter().copied());
        let res = self.run_settle(&fps, if spilled { "h" } else { "s" }).await;
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
            let fps = fps(page.iter().map(String::as_str));
            if self.run_settle(&fps, "s").await.is_err() {
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
        let fps = fps(ids.iter().map(String::as_str));
        for chunk in fps.chunks(CHUNK) {
            if let Err(e) = self.call::<i64>(&self.forget, std::slice::from_ref(&self.mine), chunk).await {
                tracing::warn!(error = %e, ids = ids.len(), "could not forget dedup ids after a failed write");
                return;
            }
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
        let fps = fps(ids.iter().map(String::as_str));
        let to_store = |e: AdmitError| adflow_store::StoreError::Backend {
            backend: "redis",
            op: "dedup check of the spill replay",
            message: e.to_string(),
        };
        let codes = self.run_claim(&fps).await.map_err(|e| to_store(e.into()))?;
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
            for (i, new) in self.wait_settled(&fps, wait).await.map_err(to_store)? {
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
