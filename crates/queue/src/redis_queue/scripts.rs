//! The Lua scripts of the Redis queue. Every state change of an ad is one script, so it
//! is atomic across gateways. `KEYS[1]` is the key prefix (it carries the hash tag, so
//! on a cluster every key a script touches is in the slot `KEYS[1]` routes to).
//!
//! Layout under prefix `P` (default `{adflow:q}`):
//! - `P:ad:<id>` hash: `pb` (the encoded Ad: id, spec, created), `st` status, `pr`
//!   priority, `seq` FIFO sequence, `enq` enqueue ms, `mw` own max wait s (0 = policy),
//!   `dl` max-wait deadline ms, `att` attempts, `start`, `fin`, `err`, `an` (encoded
//!   AnalysisResult), `lease`, `sess`, `trace`, `fam` (lower-case family). Finished ads
//!   expire after the retention.
//! - `P:q:<1..5>` zsets (score seq): the queued ads of each partition, FIFO.
//! - `P:due` zset (score deadline): every queued ad, for max-wait jumping.
//! - `P:leases` zset (score deadline, member lease id), `P:lmap` hash lease -> ad,
//!   `P:sess:<session>` set of a worker session's leases, `P:lseq` lease counter.
//! - `P:dead` zset (score dead-at ms), `P:all` zset (score seq) of every ad for listing,
//!   `P:paused` set, `P:policy` hash, `P:fam` hash of per-family counters,
//!   `P:sumenq` sum of queued enqueue times, `P:done` and `P:done:<sec>` completions,
//!   `P:audit` zset + `P:auditdata` hash, `P:watch:<id>` while a gateway watches an ad,
//!   `P:watching` while any ad is watched (scripts skip the per-ad check without it).
//! - Channels: `P:wake` (new work), `P:ad` (`<id>:<status>` when a watched ad changed).

/// Helpers every script starts with.
pub const PRELUDE: &str = r#"
local P = KEYS[1]
local function adk(id) return P .. ':ad:' .. id end
local function num(x) return tonumber(x) or 0 end
local function policy()
  local v = redis.call('HMGET', P .. ':policy', 'as', 'mw', 'ag', 'ma', 'ls')
  return { as = v[1] == '1', mw = num(v[2]), ag = num(v[3]) * 1000, ma = num(v[4]), ls = num(v[5]) * 1000 }
end
local function fam_add(fam, kind, n)
  redis.call('HINCRBY', P .. ':fam', kind .. ':' .. (fam or ''), n)
end
local watching = nil
local function notify(id)
  -- `P:watching` lives as long as the newest watch: without it, no per-ad check.
  if watching == nil then watching = redis.call('EXISTS', P .. ':watching') == 1 end
  if watching and redis.call('EXISTS', P .. ':watch:' .. id) == 1 then
    redis.call('PUBLISH', P .. ':ad', id .. ':' .. (redis.call('HGET', adk(id), 'st') or '0'))
  end
end
local function wake() redis.call('PUBLISH', P .. ':wake', '1') end
local function fields(id)
  return redis.call('HMGET', adk(id), 'pb', 'st', 'pr', 'enq', 'start', 'fin', 'att', 'err', 'an', 'trace')
end
local function enqueue(id, pol)
  local k = adk(id)
  local h = redis.call('HMGET', k, 'pr', 'seq', 'enq', 'mw', 'fam')
  local mw = num(h[4])
  if mw == 0 then mw = pol.mw end
  local dl = num(h[3]) + mw * 1000
  redis.call('HSET', k, 'st', 1, 'dl', dl)
  redis.call('ZADD', P .. ':q:' .. h[1], h[2], id)
  redis.call('ZADD', P .. ':due', dl, id)
  redis.call('INCRBY', P .. ':sumenq', num(h[3]) - BASE)
  fam_add(h[5], 'q', 1)
  fam_add(h[5], 's', num(h[3]) - BASE)
end
local function dequeue(id)
  local h = redis.call('HMGET', adk(id), 'pr', 'enq', 'fam')
  if not h[1] or redis.call('ZREM', P .. ':q:' .. h[1], id) == 0 then return false end
  redis.call('ZREM', P .. ':due', id)
  redis.call('INCRBY', P .. ':sumenq', BASE - num(h[2]))
  fam_add(h[3], 'q', -1)
  fam_add(h[3], 's', BASE - num(h[2]))
  return true
end
local function position(id)
  local pr = num(redis.call('HGET', adk(id), 'pr'))
  local r = redis.call('ZRANK', P .. ':q:' .. pr, id)
  if not r then return -1 end
  local n = r
  -- In a paused partition, every ad of every unpaused one is served first.
  local first = pr + 1
  if redis.call('SISMEMBER', P .. ':paused', pr) == 1 then first = 1 end
  for p = first, 5 do
    if p ~= pr and redis.call('SISMEMBER', P .. ':paused', p) == 0 then n = n + redis.call('ZCARD', P .. ':q:' .. p) end
  end
  return n
end
-- The ad of live lease `lid` held by `sess` and its {sess, fam, trace}, or nil and a
-- refusal code (1 unknown, 2 stale).
local function current(lid, sess)
  local id = redis.call('HGET', P .. ':lmap', lid)
  if not id then
    if num(lid) > 0 and num(lid) <= num(redis.call('GET', P .. ':lseq')) then return nil, 2 end
    return nil, 1
  end
  local h = redis.call('HMGET', adk(id), 'sess', 'fam', 'trace')
  if h[1] ~= sess then return nil, 2 end
  return id, h
end
-- Ends lease `lid` of ad `id`; `h` = {sess, fam} when the caller has read them.
local function drop_lease(id, lid, h)
  local k = adk(id)
  h = h or redis.call('HMGET', k, 'sess', 'fam')
  redis.call('ZREM', P .. ':leases', lid)
  redis.call('HDEL', P .. ':lmap', lid)
  if h[1] then redis.call('SREM', P .. ':sess:' .. h[1], lid) end
  redis.call('HDEL', k, 'lease', 'sess')
  fam_add(h[2], 'p', -1)
end
local function settle_retry(id, retry, err, now, pol)
  local k = adk(id)
  redis.call('HSET', k, 'err', err)
  if retry and num(redis.call('HGET', k, 'att')) < pol.ma then
    enqueue(id, pol)
    wake()
  else
    redis.call('HSET', k, 'st', 4, 'fin', now)
    redis.call('ZADD', P .. ':dead', now, id)
    fam_add(redis.call('HGET', k, 'fam'), 'd', 1)
  end
  notify(id)
end
"#;

/// ARGV: now, then (id, pb, priority, own max wait, family, trace) per ad.
/// Returns each ad's queue position. Counters are updated once per call, not per ad.
pub const SUBMIT: &str = r#"
local now = num(ARGV[1])
local pol = policy()
local count = (#ARGV - 1) / 6
local seq = redis.call('INCRBY', P .. ':seq', count) - count
local queued, paused = {}, {}
for p = 1, 5 do
  queued[p] = redis.call('ZCARD', P .. ':q:' .. p)
  paused[p] = redis.call('SISMEMBER', P .. ':paused', p) == 1
end
local fams, out = {}, {}
for i = 2, #ARGV, 6 do
  local id, pr, mw, fam = ARGV[i], num(ARGV[i + 2]), num(ARGV[i + 3]), ARGV[i + 4]
  seq = seq + 1
  local wait = mw
  if wait == 0 then wait = pol.mw end
  local dl = now + wait * 1000
  redis.call('HSET', adk(id), 'pb', ARGV[i + 1], 'st', 1, 'pr', pr, 'mw', mw, 'fam', fam, 'trace', ARGV[i + 5],
    'seq', seq, 'enq', now, 'dl', dl, 'att', 0, 'start', 0, 'fin', 0)
  redis.call('ZADD', P .. ':all', seq, id)
  redis.call('ZADD', P .. ':q:' .. pr, seq, id)
  redis.call('ZADD', P .. ':due', dl, id)
  local pos = queued[pr]
  local first = pr + 1
  if paused[pr] then first = 1 end
  for p = first, 5 do
    if p ~= pr and not paused[p] then pos = pos + queued[p] end
  end
  queued[pr] = queued[pr] + 1
  out[#out + 1] = pos
  fams[fam] = (fams[fam] or 0) + 1
end
redis.call('INCRBY', P .. ':sumenq', count * (now - BASE))
for fam, n in pairs(fams) do
  fam_add(fam, 'q', n)
  fam_add(fam, 's', n * (now - BASE))
end
wake()
return out
"#;

/// ARGV: now, n, partition mask, session. Returns {lease id, deadline, ad id, fields} per
/// lease. Reads each partition's first n members once and walks them; counters are
/// updated once per call.
pub const LEASE: &str = r#"
local now, n, mask, sess = num(ARGV[1]), num(ARGV[2]), num(ARGV[3]), ARGV[4]
local pol = policy()
local allowed, heads, cur = {}, {}, {}
for p = 1, 5 do
  allowed[p] = math.floor(mask / 2 ^ (p - 1)) % 2 == 1 and redis.call('SISMEMBER', P .. ':paused', p) == 0
  if allowed[p] then
    heads[p] = redis.call('ZRANGE', P .. ':q:' .. p, 0, n - 1)
    cur[p] = 1
  end
end
local over, oi = {}, 1
if pol.as then over = redis.call('ZRANGEBYSCORE', P .. ':due', '-inf', now, 'LIMIT', 0, n + 64) end
local taken, enqs = {}, {}
local function enq_of(id)
  local e = enqs[id]
  if not e then
    e = num(redis.call('HGET', adk(id), 'enq'))
    enqs[id] = e
  end
  return e
end
local function head(p)
  local h = heads[p]
  while cur[p] <= #h and taken[h[cur[p]]] do cur[p] = cur[p] + 1 end
  return h[cur[p]]
end
local out, famd, sumd = {}, {}, 0
local lid = redis.call('INCRBY', P .. ':lseq', n) - n
while #out < n do
  local pick
  while pol.as and not pick and oi <= #over do
    local id = over[oi]
    oi = oi + 1
    if not taken[id] and allowed[num(redis.call('HGET', adk(id), 'pr'))] then pick = id end
  end
  if not pick then
    local be, bq, bp
    for p = 1, 5 do
      local h = allowed[p] and head(p)
      if h then
        local enq = enq_of(h)
        local eff = p
        if pol.as and pol.ag > 0 then eff = math.min(5, p + math.floor(math.max(0, now - enq) / pol.ag)) end
        if not pick or eff > be or (eff == be and (enq < bq or (enq == bq and p > bp))) then
          pick, be, bq, bp = h, eff, enq, p
        end
      end
    end
  end
  if not pick then break end
  taken[pick] = true
  local k = adk(pick)
  -- The fields the reply carries (as `fields()` orders them), plus the family.
  local f = redis.call('HMGET', k, 'pb', 'st', 'pr', 'enq', 'start', 'fin', 'att', 'err', 'an', 'trace', 'fam')
  redis.call('ZREM', P .. ':q:' .. f[3], pick)
  redis.call('ZREM', P .. ':due', pick)
  local fam = f[11] or ''
  local d = famd[fam] or { 0, 0 }
  d[1], d[2] = d[1] + 1, d[2] + num(f[4]) - BASE
  famd[fam] = d
  sumd = sumd + num(f[4]) - BASE
  lid = lid + 1
  local dl = now + pol.ls
  local att = num(f[7]) + 1
  redis.call('HSET', k, 'st', 2, 'start', now, 'lease', lid, 'sess', sess, 'att', att)
  redis.call('ZADD', P .. ':leases', dl, lid)
  redis.call('HSET', P .. ':lmap', lid, pick)
  redis.call('SADD', P .. ':sess:' .. sess, lid)
  notify(pick)
  f[2], f[5], f[7], f[11] = 2, now, att, nil
  out[#out + 1] = { lid, dl, pick, f }
end
if #out > 0 then
  redis.call('INCRBY', P .. ':sumenq', -sumd)
  for fam, d in pairs(famd) do
    fam_add(fam, 'q', -d[1])
    fam_add(fam, 's', -d[2])
    fam_add(fam, 'p', d[1])
  end
end
return out
"#;

/// ARGV: session, now, retention s, then (lease, encoded analysis) pairs.
/// Returns {0, trace} or {code} per pair.
pub const ACK_MANY: &str = r#"
local sess, now, ttl = ARGV[1], num(ARGV[2]), ARGV[3]
local out, done = {}, 0
for i = 4, #ARGV, 2 do
  local id, h = current(ARGV[i], sess)
  if not id then
    out[#out + 1] = { h }
  else
    drop_lease(id, ARGV[i], h)
    local k = adk(id)
    redis.call('HSET', k, 'st', 3, 'fin', now, 'an', ARGV[i + 1])
    redis.call('EXPIRE', k, ttl)
    notify(id)
    done = done + 1
    out[#out + 1] = { 0, h[3] or '' }
  end
end
if done > 0 then
  redis.call('INCRBY', P .. ':done', done)
  local sec = P .. ':done:' .. math.floor(now / 1000)
  redis.call('INCRBY', sec, done)
  redis.call('EXPIRE', sec, 120)
end
return out
"#;

/// ARGV: lease, session, now, encoded analysis, retention s. Returns {0, trace} or {code}.
pub const ACK: &str = r#"
local id, h = current(ARGV[1], ARGV[2])
if not id then return { h } end
local now = num(ARGV[3])
drop_lease(id, ARGV[1], h)
local k = adk(id)
redis.call('HSET', k, 'st', 3, 'fin', now, 'an', ARGV[4])
redis.call('EXPIRE', k, ARGV[5])
redis.call('INCR', P .. ':done')
local sec = P .. ':done:' .. math.floor(now / 1000)
redis.call('INCR', sec)
redis.call('EXPIRE', sec, 120)
notify(id)
return { 0, h[3] or '' }
"#;

/// ARGV: lease, session, retry (1/0), error, now. Returns {0} or {code}.
pub const NACK: &str = r#"
local id, h = current(ARGV[1], ARGV[2])
if not id then return { h } end
drop_lease(id, ARGV[1], h)
settle_retry(id, ARGV[3] == '1', ARGV[4], num(ARGV[5]), policy())
return { 0 }
"#;

/// ARGV: lease, session, new deadline. Returns {0} or {code}.
pub const EXTEND: &str = r#"
local id, code = current(ARGV[1], ARGV[2])
if not id then return { code } end
redis.call('ZADD', P .. ':leases', ARGV[3], ARGV[1])
return { 0 }
"#;

/// ARGV: session, now. Requeues the session's leases; returns how many.
pub const RELEASE: &str = r#"
local pol = policy()
local n = 0
for _, lid in ipairs(redis.call('SMEMBERS', P .. ':sess:' .. ARGV[1])) do
  local id = redis.call('HGET', P .. ':lmap', lid)
  if id then
    drop_lease(id, lid)
    settle_retry(id, true, 'worker disconnected while holding the lease', num(ARGV[2]), pol)
    n = n + 1
  end
end
redis.call('DEL', P .. ':sess:' .. ARGV[1])
return n
"#;

/// ARGV: now, limit. Returns {ad id, lease, dead-lettered (1/0), trace} per expired lease.
/// Also drops the oldest listing-index entries whose ads expired (finished-ad retention).
pub const EXPIRE: &str = r#"
local now = num(ARGV[1])
local pol = policy()
local out = {}
for _, id in ipairs(redis.call('ZRANGE', P .. ':all', 0, 99)) do
  if redis.call('EXISTS', adk(id)) == 0 then redis.call('ZREM', P .. ':all', id) else break end
end
for _, lid in ipairs(redis.call('ZRANGEBYSCORE', P .. ':leases', '-inf', now, 'LIMIT', 0, num(ARGV[2]))) do
  local id = redis.call('HGET', P .. ':lmap', lid)
  if id then
    drop_lease(id, lid)
    settle_retry(id, true, 'lease ' .. lid .. ' expired after ' .. (pol.ls / 1000) .. ' s', now, pol)
    local k = adk(id)
    out[#out + 1] = { id, lid, redis.call('HGET', k, 'st') == '4' and 1 or 0, redis.call('HGET', k, 'trace') or '' }
  else
    redis.call('ZREM', P .. ':leases', lid)
  end
end
return out
"#;

/// ARGV: id. Returns {fields, position} or {} when unknown.
pub const GET: &str = r#"
if redis.call('EXISTS', adk(ARGV[1])) == 0 then return {} end
return { fields(ARGV[1]), position(ARGV[1]) }
"#;

/// ARGV: ids. Returns the fields of each (nil fields when gone).
pub const FETCH: &str = r#"
local out = {}
for i = 1, #ARGV do out[i] = fields(ARGV[i]) end
return out
"#;

/// ARGV: id, now, retention s. Returns {0, fields}, {1} unknown or {2, status}.
pub const CANCEL: &str = r#"
local id, now = ARGV[1], num(ARGV[2])
local k = adk(id)
local st = redis.call('HGET', k, 'st')
if not st then return { 1 } end
if st == '3' or st == '5' then return { 2, st } end
if st == '1' then
  dequeue(id)
elseif st == '2' then
  local lid = redis.call('HGET', k, 'lease')
  if lid then drop_lease(id, lid) end
elseif st == '4' then
  redis.call('ZREM', P .. ':dead', id)
  fam_add(redis.call('HGET', k, 'fam'), 'd', -1)
end
redis.call('HSET', k, 'st', 5, 'fin', now)
redis.call('EXPIRE', k, ARGV[3])
notify(id)
return { 0, fields(id) }
"#;

/// ARGV: id, priority. Returns {0, old}, {1} unknown or {2, status}.
pub const SET_PRIORITY: &str = r#"
local id = ARGV[1]
local k = adk(id)
local st = redis.call('HGET', k, 'st')
if not st then return { 1 } end
if st ~= '1' then return { 2, st } end
local old = redis.call('HGET', k, 'pr')
dequeue(id)
redis.call('HSET', k, 'pr', ARGV[2])
enqueue(id, policy())
notify(id)
wake()
return { 0, old }
"#;

/// ARGV: priority, dry run (1/0), current priority (0 any), family ('' any), min wait ms,
/// now. Returns {changed, matched}.
pub const REPRIORITIZE: &str = r#"
local target, dry, cur, fam, minw, now = ARGV[1], ARGV[2] == '1', num(ARGV[3]), ARGV[4], num(ARGV[5]), num(ARGV[6])
local matched, move = 0, {}
for p = 1, 5 do
  if cur == 0 or cur == p then
    for _, id in ipairs(redis.call('ZRANGE', P .. ':q:' .. p, 0, -1)) do
      local h = redis.call('HMGET', adk(id), 'enq', 'fam')
      if now - num(h[1]) >= minw and (fam == '' or h[2] == fam) then
        matched = matched + 1
        if tostring(p) ~= target then move[#move + 1] = id end
      end
    end
  end
end
if not dry and #move > 0 then
  local pol = policy()
  for _, id in ipairs(move) do
    dequeue(id)
    redis.call('HSET', adk(id), 'pr', target)
    enqueue(id, pol)
    notify(id)
  end
  wake()
end
return { #move, matched }
"#;

/// ARGV: now, ids (none: every dead letter). Returns how many were requeued.
pub const REQUEUE_DEAD: &str = r#"
local now = num(ARGV[1])
local pol = policy()
local ids = {}
if #ARGV == 1 then
  ids = redis.call('ZRANGE', P .. ':dead', 0, -1)
else
  for i = 2, #ARGV do ids[#ids + 1] = ARGV[i] end
end
local n = 0
for _, id in ipairs(ids) do
  if redis.call('ZREM', P .. ':dead', id) == 1 then
    local k = adk(id)
    fam_add(redis.call('HGET', k, 'fam'), 'd', -1)
    redis.call('HSET', k, 'att', 0, 'enq', now, 'fin', 0, 'seq', redis.call('INCR', P .. ':seq'))
    enqueue(id, pol)
    notify(id)
    n = n + 1
  end
end
if n > 0 then wake() end
return n
"#;

/// ARGV: priority, now, retention s. Cancels every queued ad of the partition.
pub const PURGE: &str = r#"
local ids = redis.call('ZRANGE', P .. ':q:' .. ARGV[1], 0, -1)
for _, id in ipairs(ids) do
  dequeue(id)
  local k = adk(id)
  redis.call('HSET', k, 'st', 5, 'fin', ARGV[2], 'err', 'purged from partition ' .. ARGV[1])
  redis.call('EXPIRE', k, ARGV[3])
  notify(id)
end
return #ids
"#;

/// ARGV: now. Returns {{queued, paused, oldest enqueue or -1} for 5..1, in flight, dead,
/// sum of enqueue offsets, completed total, completed in the last minute}.
pub const STATS: &str = r#"
local now = num(ARGV[1])
local parts = {}
for p = 5, 1, -1 do
  local head = redis.call('ZRANGE', P .. ':q:' .. p, 0, 0)[1]
  local oldest = -1
  if head then oldest = num(redis.call('HGET', adk(head), 'enq')) end
  parts[#parts + 1] = { redis.call('ZCARD', P .. ':q:' .. p), redis.call('SISMEMBER', P .. ':paused', p), oldest }
end
local sec = math.floor(now / 1000)
local keys = {}
for s = sec - 59, sec do keys[#keys + 1] = P .. ':done:' .. s end
local minute = 0
for _, v in ipairs(redis.call('MGET', unpack(keys))) do minute = minute + num(v) end
return { parts, redis.call('ZCARD', P .. ':leases'), redis.call('ZCARD', P .. ':dead'),
  redis.call('GET', P .. ':sumenq') or '0', redis.call('GET', P .. ':done') or '0', minute }
"#;

/// ARGV: n, now. Returns {paused priorities, entries} where an entry is {id, priority,
/// seq, enqueued, deadline, pb}: the first n of every partition and the 2n most overdue.
pub const PEEK: &str = r#"
local n, now = num(ARGV[1]), num(ARGV[2])
local seen, out = {}, {}
local function add(id)
  if seen[id] then return end
  seen[id] = true
  local h = redis.call('HMGET', adk(id), 'pr', 'seq', 'enq', 'dl', 'pb')
  out[#out + 1] = { id, h[1], h[2], h[3], h[4], h[5] }
end
for _, id in ipairs(redis.call('ZRANGEBYSCORE', P .. ':due', '-inf', now, 'LIMIT', 0, 2 * n)) do add(id) end
for p = 1, 5 do
  for _, id in ipairs(redis.call('ZRANGE', P .. ':q:' .. p, 0, n - 1)) do add(id) end
end
return { redis.call('SMEMBERS', P .. ':paused'), out }
"#;

/// ARGV: none. Recomputes the deadline of queued ads that follow the policy's max wait.
pub const REDEADLINE: &str = r#"
local pol = policy()
for p = 1, 5 do
  for _, id in ipairs(redis.call('ZRANGE', P .. ':q:' .. p, 0, -1)) do
    local h = redis.call('HMGET', adk(id), 'mw', 'enq')
    if num(h[1]) == 0 then
      local dl = num(h[2]) + pol.mw * 1000
      redis.call('HSET', adk(id), 'dl', dl)
      redis.call('ZADD', P .. ':due', dl, id)
    end
  end
end
wake()
return 0
"#;

/// ARGV: command id, encoded entry. Appends an audit entry.
pub const AUDIT: &str = r#"
local seq = redis.call('INCR', P .. ':auditseq')
redis.call('ZADD', P .. ':audit', seq, ARGV[1])
redis.call('HSET', P .. ':auditdata', ARGV[1], ARGV[2])
return seq
"#;
