//! Dedup shared by every gateway: accepted event ids live in Redis, so a retry that
//! reaches another gateway is still a duplicate.
//!
//! "Duplicate" means "stored", so a claim has two states (the protocol):
//! 1. **claim** (one script call per request): an absent id becomes pending, owned by this
//!    gateway's claim until a deadline (`claim_secs`); the id is new. Stored: a duplicate.
//!    Pending for another gateway: another commit holds the first copy: a durable request
//!    polls until it turns stored (duplicate), or its claim goes (that commit failed or its
//!    gateway died; the id is claimed again), and answers UNAVAILABLE if it stays pending
//!    past the claim's deadline. An accepted-mode request counts a pending id as a
//!    duplicate at once (it was only promised "queued").
//! 2. **settle** (one script call per commit, before any client hears "stored"): the
//!    commit's claims become stored. A batch parked in the local spill buffer (backend
//!    down) has its claims held by this gateway for the whole window instead, and the
//!    spill replay (`ReplayGuard`) records its ids as stored once they are in the backend.
//! 3. **drop** (failed commit): the commit's claims are dropped, so the retry is new.
//!
//! **Layout** (`<prefix>` is e.g. `{adflow}:dedup:`; one hash tag, so one cluster slot).
//! An id is known by a 12-byte fingerprint (xxh3-128 of the id; a false match needs ~10^14
//! ids in one window), a field of one hash per window-long generation,
//! `<prefix><now / window>`, valued with the claim that took it: `<gateway>.<claim>`. A
//! claim's state is one field of `<prefix>r:<generation>`: its deadline while pending, `s`
//! stored, `h` held, `x` dropped. So settling or dropping a request's ids writes one field,
//! not one per id, and only the claim itself writes per id (one HSET with all of them). A
//! claim looks in the current and the previous generation, so an id is remembered for at
//! least the window and at most two (a generation's hashes expire after two windows).
//! Every step handles a whole request or commit with variadic HMGET / HSET inside one
//! script: no key and no command per id, which is what made the shared dedup cost three
//! times the event write itself (BENCHMARKS.md, issue 15).
//!
//! While Redis cannot answer, events are accepted unchecked (availability first). Their ids
//! are settled after the commit like any others; if Redis is still down then, they are kept
//! in a bounded backlog and written as soon as it answers. Spilled events are checked when
//! the spill replays: an id some gateway stored meanwhile is skipped, never written twice.
//! The token is stable across restarts of a gateway (kept beside its spill buffer), so a
//! replay after a crash recognises its own held claims; claim names carry a random part
//! per start, so a claim of the previous run is never taken for a new one.

use adflow_domain::EventView;
use adflow_store::StoredEvent;
use adflow_store::redis_conn::{RedisConn, Target, connect};
use adflow_store::resilient::ReplayGuard;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Where every script starts (`CLOCK`, then `PRELUDE` or `TX_MARK`). Time comes from the Redis server (`TIME`), so every gateway
/// agrees on generations and deadlines whatever its own clock says. KEYS = ids of
/// generations G0..G0+3, then claims of the same four; ARGV[1] = window ms, ARGV[2] = G0
/// (the caller's generation minus 2). `fetch` reads the ids' values (ARGV from `first`)
/// in both generations; `lookup` answers per id "s" (stored), the gateway
/// whose live claim holds it, or false (absent: never claimed, dropped, or past its
/// deadline).
const CLOCK: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ci = math.floor(now / tonumber(ARGV[1])) - tonumber(ARGV[2]) + 1
"#;

/// After `CLOCK`: refuses a clock mismatch, and the helpers the scripts share.
const PRELUDE: &str = r#"
if ci < 2 or ci > 4 then
  return redis.error_reply('ERR adflow dedup: this gateway clock and the Redis clock differ by more than a window')
end
local CUR, PREV, RCUR, RPREV = KEYS[ci], KEYS[ci - 1], KEYS[ci + 4], KEYS[ci + 3]
local function status(x, y)
  if x == 's' or y == 's' then return 's' end
  if x == 'h' or y == 'h' then return 'h' end
  if x == 'x' or y == 'x' then return nil end
  local d = tonumber(x or y)
  if d and d > now then return 'p' end
  return nil
end
local function fetch(first)
  return redis.call('HMGET', CUR, unpack(ARGV, first)), redis.call('HMGET', PREV, unpack(ARGV, first))
end
local function lookup(a, b)
  local refs, known, st = {}, {}, {}
  local function add(v)
    if v and not known[v] then
      known[v] = true
      refs[#refs + 1] = v
    end
  end
  for i = 1, #a do
    add(a[i])
    add(b[i])
  end
  if #refs > 0 then
    local x = redis.call('HMGET', RCUR, unpack(refs))
    local y = redis.call('HMGET', RPREV, unpack(refs))
    for j, r in ipairs(refs) do st[r] = status(x[j], y[j]) end
  end
  local out = {}
  for i = 1, #a do
    local sa, sb = a[i] and st[a[i]], b[i] and st[b[i]]
    if sa == 's' or sb == 's' then
      out[i] = 's'
    else
      local v = (sa and a[i]) or (sb and b[i])
      out[i] = v and string.match(v, '^(.*)%.') or false
    end
  end
  return out
end
"#;

/// ARGV (after the prelude's): mine, claim, claim ms, ttl, fingerprints. Claims every
/// absent id for this gateway under `claim`; answers one character per id: 1 new, 3
/// already held by this gateway (or repeated in this call), 2 held by another, 0 stored;
/// "A" when no id was known (all claimed: the common case, without the per-id states and
/// the reply string; the caller codes repeats inside the call 3 itself); or "E" when the
/// claim name is already in use (the caller picks another).
const CLAIM: &str = r#"
local F = 7
local mine, ref, new = ARGV[3], ARGV[4], {}
if redis.call('HEXISTS', RCUR, ref) == 1 or redis.call('HEXISTS', RPREV, ref) == 1 then return 'E' end
local a, b = fetch(F)
local known = false
for i = 1, #a do
  if a[i] or b[i] then
    known = true
    break
  end
end
local out
if known then
  local st, seen = lookup(a, b), {}
  out = {}
  for i = 1, #a do
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
      new[#new + 1] = ref
    end
  end
else
  for i = 1, #a do
    new[2 * i - 1] = ARGV[F + i - 1]
    new[2 * i] = ref
  end
end
if #new > 0 then
  redis.call('HSET', CUR, unpack(new))
  redis.call('PEXPIRE', CUR, ARGV[6])
  redis.call('HSET', RCUR, ref, now + tonumber(ARGV[5]))
  redis.call('PEXPIRE', RCUR, ARGV[6])
end
if not out then return 'A' end
return table.concat(out)
"#;

/// ARGV (after the prelude's): state ("s", "h" or "x"), ttl, claims. Sets the state of
/// whole claims, except that a stored claim stays stored: its commit may have landed
/// (and settled it in its own transaction) even though its gateway heard an error.
const MARK: &str = r#"
local set, claims = {}, {}
for i = 5, #ARGV do claims[#claims + 1] = ARGV[i] end
if #claims == 0 then return 0 end
local cur = {}
if ARGV[3] ~= 's' then cur = redis.call('HMGET', RCUR, unpack(claims)) end
for j, c in ipairs(claims) do
  if cur[j] ~= 's' then
    set[#set + 1] = c
    set[#set + 1] = ARGV[3]
  end
end
if #set > 0 then
  redis.call('HSET', RCUR, unpack(set))
  redis.call('PEXPIRE', RCUR, ARGV[4])
end
return #set / 2
"#;

/// ARGV (after the prelude's): mine, claim, mode, ttl, fingerprints. Records ids one by
/// one under a new claim in state `mode`: "s" every id becomes stored; "h" ids absent or
/// held by this gateway are held for it; ids stored or held elsewhere are left alone.
const SETTLE: &str = r#"
local F = 7
local mine, ref, mode, set = ARGV[3], ARGV[4], ARGV[5], {}
local st = {}
if mode ~= 's' then st = lookup(fetch(F)) end
for i = 1, #ARGV - F + 1 do
  if mode == 's' or not st[i] or st[i] == mine then
    set[#set + 1] = ARGV[F + i - 1]
    set[#set + 1] = ref
  end
end
if #set > 0 then
  redis.call('HSET', CUR, unpack(set))
  redis.call('PEXPIRE', CUR, ARGV[6])
  redis.call('HSET', RCUR, ref, mode)
  redis.call('PEXPIRE', RCUR, ARGV[6])
end
return #set / 2
"#;

/// ARGV (after the prelude's): mine, fingerprints. Drops the ids held by this gateway
/// (and not stored).
const FORGET: &str = r#"
local F = 4
local st, gone = lookup(fetch(F)), {}
for i = 1, #ARGV - F + 1 do
  if st[i] == ARGV[3] then gone[#gone + 1] = ARGV[F + i - 1] end
end
if #gone == 0 then return 0 end
return redis.call('HDEL', CUR, unpack(gone)) + redis.call('HDEL', PREV, unpack(gone))
"#;

/// After `CLOCK`, run inside the commit's MULTI/EXEC (`CommitScript`): ARGV[3] = ttl;
/// marks the claims in ARGV[4..] stored. KEYS and ARGV[1..2] as for the other scripts. It
/// never returns an error (an error reply would fail a commit that landed): on a clock
/// mismatch it does nothing, and the settle after the commit reports it as it does today.
const TX_MARK: &str = r#"
if ci < 2 or ci > 4 or #ARGV < 4 then return 0 end
local RCUR, set = KEYS[ci + 4], {}
for i = 4, #ARGV do
  set[#set + 1] = ARGV[i]
  set[#set + 1] = 's'
end
redis.call('HSET', RCUR, unpack(set))
redis.call('PEXPIRE', RCUR, ARGV[3])
return #set / 2
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

/// The claims a request's new ids were taken under (usually one; more when it waited).
#[derive(Debug, Default, Clone)]
pub struct Claims(Vec<String>);

impl Claims {
    /// Whether no id was claimed.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Adds another request's claims.
    pub fn extend(&mut self, other: &Claims) {
        self.0.extend(other.0.iter().cloned());
    }
}

/// The Redis-backed dedup set.
pub struct SharedDedup {
    con: RedisConn,
    prefix: String,
    ttl_ms: u64,
    claim_ms: u64,
    /// This gateway's name in claims (12 characters of its token).
    mine: String,
    /// Random per start: claim names never repeat across restarts.
    boot: String,
    next_claim: AtomicU64,
    /// Added to this gateway's clock (a testing aid: clocks of gateways differ).
    skew_ms: i64,
    claim: redis::Script,
    mark: redis::Script,
    settle: redis::Script,
    forget: redis::Script,
    /// Ids of stored events, and claims of stored commits, not yet recorded in Redis.
    backlog: Mutex<(VecDeque<String>, Vec<String>)>,
    /// Whether the events stream shares the dedup keys' hash slot (see `commit_script`).
    in_events_slot: bool,
    /// The body of the in-transaction mark (built once; sent with every commit).
    tx_mark: std::sync::Arc<str>,
    /// After a failed call, calls fail at once until this time (ms): a dead or
    /// partitioned Redis must not add a timeout to every request and commit.
    open_until_ms: std::sync::atomic::AtomicI64,
}

/// How long the breaker stays open after a failed call.
const BREAKER_MS: i64 = 500;

/// A random lowercase hex string of `n` characters.
fn random_hex(n: usize) -> String {
    uuid::Uuid::new_v4().simple().to_string()[..n].to_owned()
}

impl SharedDedup {
    /// Connects to `target`; ids are kept for `ttl_secs` (to twice that). On a cluster the
    /// prefix must carry a hash tag so the keys share one slot. The gateway's token is random.
    pub async fn connect(target: &Target, prefix: &str, ttl_secs: u64) -> Result<Self, redis::RedisError> {
        let con = connect(target).await?;
        let script = |body: &str| redis::Script::new(&format!("{CLOCK}{PRELUDE}{body}"));
        Ok(Self {
            con,
            prefix: prefix.to_owned(),
            ttl_ms: ttl_secs.max(1) * 1000,
            claim_ms: 30_000,
            mine: random_hex(12),
            boot: random_hex(8),
            next_claim: AtomicU64::new(0),
            skew_ms: 0,
            claim: script(CLAIM),
            mark: script(MARK),
            settle: script(SETTLE),
            forget: script(FORGET),
            backlog: Mutex::new((VecDeque::new(), Vec::new())),
            in_events_slot: false,
            tx_mark: format!("{CLOCK}{TX_MARK}").into(),
            open_until_ms: std::sync::atomic::AtomicI64::new(0),
        })
    }

    /// Uses `token` (stable across restarts) to name this gateway in its claims.
    pub fn with_token(mut self, token: &str) -> Self {
        // Stored with every claimed id: 12 characters tell gateways apart; no '.'.
        let t: String = token.chars().filter(|c| *c != '.').take(12).collect();
        self.mine = t;
        self
    }

    /// Testing aid: pretend this gateway's clock is `ms` ahead (negative: behind).
    #[doc(hidden)]
    pub fn with_clock_skew_ms(mut self, ms: i64) -> Self {
        self.skew_ms = ms;
        self
    }

    /// Testing aid: use `tag` as the start tag of claim names (a restart that drew the
    /// same random tag as an earlier run).
    #[doc(hidden)]
    pub fn with_start_tag(mut self, tag: &str) -> Self {
        self.boot = tag.to_owned();
        self
    }

    /// How long a pending claim lives without being settled, in seconds (default 30).
    pub fn with_claim_secs(mut self, secs: u64) -> Self {
        self.claim_ms = secs.max(1) * 1000;
        self
    }

    /// A new claim name: `<gateway>.<start><sequence>`.
    fn new_claim(&self) -> String {
        format!("{}.{}{:x}", self.mine, self.boot, self.next_claim.fetch_add(1, Ordering::Relaxed))
    }

    /// The first of the four generations the scripts may use at `now` (this gateway's
    /// clock), and their keys: ids of generations g0..g0+3, then their claims. The script
    /// picks the current one by the Redis clock, so clocks may differ by up to a window.
    fn keys_at(&self, now: i64) -> (i64, Vec<String>) {
        let g0 = now.div_euclid(self.ttl_ms as i64) - 2;
        let p = &self.prefix;
        let ids = (g0..g0 + 4).map(|g| format!("{p}{g}"));
        let claims = (g0..g0 + 4).map(|g| format!("{p}r:{g}"));
        (g0, ids.chain(claims).collect())
    }

    /// A generation's hashes live two windows (they are looked up during the next one) and
    /// a minute of slack.
    fn generation_ttl_ms(&self) -> u64 {
        2 * self.ttl_ms + 60_000
    }

    /// Runs `script` with `args` (after the window and the first generation) and the
    /// fingerprints, through the breaker.
    async fn call<T: redis::FromRedisValue>(
        &self,
        script: &redis::Script,
        args: &[String],
        fps: &[Fp],
    ) -> Result<T, redis::RedisError> {
        let now = adflow_domain::now_ms();
        if self.open_until_ms.load(Ordering::Relaxed) > now {
            return Err(redis::RedisError::from((
                redis::ErrorKind::Io,
                "shared dedup breaker open after a recent failure",
            )));
        }
        let mut inv = script.prepare_invoke();
        let (g0, keys) = self.keys_at(now + self.skew_ms);
        for k in keys {
            inv.key(k);
        }
        inv.arg(self.ttl_ms).arg(g0);
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

    /// Claim codes per fingerprint (see `CLAIM`), a chunk of ids per script call, each
    /// under a new claim added to `claims`.
    async fn run_claim(&self, fps: &[Fp], claims: &mut Claims) -> Result<Vec<u8>, redis::RedisError> {
        let mut codes = Vec::with_capacity(fps.len());
        for chunk in fps.chunks(CHUNK) {
            let mut tries = 0;
            let (name, reply) = loop {
                let name = self.new_claim();
                let args = [
                    self.mine.clone(),
                    name.clone(),
                    self.claim_ms.to_string(),
                    self.generation_ttl_ms().to_string(),
                ];
                let reply: Vec<u8> = self.call(&self.claim, &args, chunk).await?;
                tries += 1;
                // A name still in use (a restart that drew the same start tag): another one.
                if reply != b"E" {
                    break (name, reply);
                }
                if tries == 8 {
                    return Err(redis::RedisError::from((
                        redis::ErrorKind::Client,
                        "shared dedup: no free claim name after 8 tries",
                    )));
                }
            };
            if reply == b"A" {
                // Every id was absent and is now claimed; a repeat inside the call is 3.
                claims.0.push(name);
                let mut seen = std::collections::HashSet::with_capacity(chunk.len());
                codes.extend(chunk.iter().map(|f| if seen.insert(f) { 1 } else { 3 }));
                continue;
            }
            if reply.len() != chunk.len() {
                return Err(redis::RedisError::from((
                    redis::ErrorKind::Parse,
                    "shared dedup: claim reply of the wrong length",
                )));
            }
            if reply.contains(&b'1') {
                claims.0.push(name);
            }
            codes.extend(reply.iter().map(|c| c.wrapping_sub(b'0')));
        }
        Ok(codes)
    }

    /// For each id, true when it is new (and now claimed for this gateway), false for a
    /// duplicate of a stored event, and the claims the new ids were taken under (settle or
    /// drop them with the commit). Pending first copies are waited for when `durable`.
    pub async fn claim_request(
        &self,
        ids: &[String],
        durable: bool,
    ) -> Result<(Vec<bool>, Claims), AdmitError> {
        let mut claims = Claims::default();
        match self.claim_into(ids, durable, &mut claims).await {
            Ok(new) => Ok((new, claims)),
            Err(e) => {
                // The request goes on without these answers: free what it already took.
                self.drop_claims(&claims).await;
                Err(e)
            }
        }
    }

    async fn claim_into(
        &self,
        ids: &[String],
        durable: bool,
        claims: &mut Claims,
    ) -> Result<Vec<bool>, AdmitError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let fps = fps(ids.iter().map(String::as_str));
        let codes = self.run_claim(&fps, claims).await?;
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
            for (i, new) in self.wait_settled(&fps, wait, claims).await? {
                out[i] = new;
            }
        }
        Ok(out)
    }

    /// `claim_request` without the claims: they stay pending until settled by id
    /// (`settle`), forgotten (`forget`) or past their deadline.
    pub async fn admit(&self, ids: &[String], durable: bool) -> Result<Vec<bool>, AdmitError> {
        Ok(self.claim_request(ids, durable).await?.0)
    }

    /// Polls pending ids until each is stored (false) or free and claimed by us (true).
    async fn wait_settled(
        &self,
        fps: &[Fp],
        mut wait: Vec<usize>,
        claims: &mut Claims,
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
            let ks: Vec<Fp> = wait.iter().map(|&i| fps[i]).collect();
            let codes = self.run_claim(&ks, claims).await?;
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

    /// The script that marks `claims` stored inside the commit's own transaction (see
    /// `CommitScript`), or None when there is nothing to mark or the dedup keys are not in
    /// the events' hash slot (`with_events_stream`).
    pub fn commit_script(&self, claims: &Claims) -> Option<adflow_store::redis_store::CommitScript> {
        if claims.is_empty() || !self.in_events_slot || claims.0.len() > CHUNK {
            return None;
        }
        let (g0, keys) = self.keys_at(adflow_domain::now_ms() + self.skew_ms);
        let mut args = vec![self.ttl_ms.to_string(), g0.to_string(), self.generation_ttl_ms().to_string()];
        args.extend(claims.0.iter().cloned());
        Some(adflow_store::redis_store::CommitScript { body: self.tx_mark.clone(), keys, args })
    }

    /// The events live in the Redis stream `key`: when it shares the dedup keys' hash slot,
    /// commits settle their claims in their own transaction (`commit_script`).
    pub fn with_events_stream(mut self, key: &str) -> Self {
        self.in_events_slot =
            adflow_store::counters::hash_tag(key) == adflow_store::counters::hash_tag(&self.prefix);
        self
    }

    /// Sets the state of whole claims: one field per claim.
    async fn run_mark(&self, claims: &[String], state: &str) -> Result<(), redis::RedisError> {
        for chunk in claims.chunks(CHUNK) {
            let mut args = vec![state.to_owned(), self.generation_ttl_ms().to_string()];
            args.extend(chunk.iter().cloned());
            self.call::<i64>(&self.mark, &args, &[]).await?;
        }
        Ok(())
    }

    /// Marks the claims of a committed batch stored, or held for the spill replay when the
    /// batch went to the spill. When Redis does not answer, stored claims go to the backlog.
    pub async fn settle_claims(&self, claims: &Claims, spilled: bool) {
        if claims.is_empty() {
            return;
        }
        self.flush_backlog().await;
        match self.run_mark(&claims.0, if spilled { "h" } else { "s" }).await {
            Ok(()) => {}
            // The replay checks spilled ids itself.
            Err(_) if spilled => {}
            Err(e) => {
                tracing::warn!(error = %e, claims = claims.0.len(), "could not record stored claims; kept for later");
                let mut b = self.backlog.lock().unwrap_or_else(|p| p.into_inner());
                b.1.extend(claims.0.iter().cloned());
            }
        }
    }

    /// Drops the claims of a failed commit, so the clients' retries are new.
    pub async fn drop_claims(&self, claims: &Claims) {
        if claims.is_empty() {
            return;
        }
        // If this fails the claims still end at their deadline.
        if let Err(e) = self.run_mark(&claims.0, "x").await {
            tracing::warn!(error = %e, "could not drop dedup claims after a failed write; they expire");
        }
    }

    async fn run_settle(&self, fps: &[Fp], mode: &str) -> Result<(), redis::RedisError> {
        for chunk in fps.chunks(CHUNK) {
            let args =
                [self.mine.clone(), self.new_claim(), mode.to_owned(), self.generation_ttl_ms().to_string()];
            self.call::<i64>(&self.settle, &args, chunk).await?;
        }
        Ok(())
    }

    /// Records ids one by one as stored, or held for the spill replay when their batch went
    /// to the spill (ids taken while Redis could not be asked). When Redis does not answer,
    /// stored ids go to the backlog.
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
        b.0.extend(ids);
        let over = b.0.len().saturating_sub(BACKLOG_MAX);
        if over > 0 {
            b.0.drain(..over);
            metrics::counter!("dedup_backlog_dropped_total").increment(over as u64);
            tracing::error!(dropped = over, "dedup backlog full: the oldest unrecorded ids were dropped");
        }
    }

    /// Ids of stored events (and claims of stored commits) waiting to be recorded in Redis.
    pub fn backlog(&self) -> usize {
        let b = self.backlog.lock().unwrap_or_else(|p| p.into_inner());
        b.0.len() + b.1.len()
    }

    /// Writes the backlog to Redis (a page at a time) while it answers. Each page is taken
    /// out under the lock and put back if Redis refuses it, so concurrent flushes (the
    /// batcher, the spill replay, the idle flusher) never record or drop a page twice.
    pub async fn flush_backlog(&self) {
        let claims = std::mem::take(&mut self.backlog.lock().unwrap_or_else(|p| p.into_inner()).1);
        if !claims.is_empty() {
            if self.run_mark(&claims, "s").await.is_err() {
                self.backlog.lock().unwrap_or_else(|p| p.into_inner()).1.extend(claims);
                return;
            }
            tracing::info!(claims = claims.len(), "recorded commits stored while the shared dedup was down");
        }
        loop {
            let page: Vec<String> = {
                let mut b = self.backlog.lock().unwrap_or_else(|p| p.into_inner());
                let n = b.0.len().min(1000);
                b.0.drain(..n).collect()
            };
            if page.is_empty() {
                return;
            }
            let fps = fps(page.iter().map(String::as_str));
            if self.run_settle(&fps, "s").await.is_err() {
                let mut b = self.backlog.lock().unwrap_or_else(|p| p.into_inner());
                for id in page.into_iter().rev() {
                    b.0.push_front(id);
                }
                return;
            }
            let left = self.backlog.lock().unwrap_or_else(|p| p.into_inner()).0.len();
            tracing::info!(ids = page.len(), left, "recorded ids accepted while the shared dedup was down");
        }
    }

    /// Flushes the backlog once a second in the background, so it is written even when no
    /// commit comes (until the last handle on this set is gone).
    pub fn start_flusher(self: &std::sync::Arc<Self>) {
        let me = std::sync::Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let Some(d) = me.upgrade() else { return };
                if d.backlog() > 0 {
                    d.flush_backlog().await;
                }
            }
        });
    }

    /// Forgets ids this gateway holds (not stored), so a client's retry is accepted.
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
        // The replay's own claims stay pending until `written` records the ids stored.
        let mut claims = Claims::default();
        let codes = self.run_claim(&fps, &mut claims).await.map_err(|e| to_store(e.into()))?;
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
            for (i, new) in self.wait_settled(&fps, wait, &mut claims).await.map_err(to_store)? {
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
