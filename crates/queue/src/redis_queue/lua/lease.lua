-- ARGV: now, n, partition mask, session, then the bar: class, level, time (class 0: no
-- bar). Leases up to n ads of this shard, in its serving order, while the next one is
-- at least as good as the bar (the best head of the other shards, see `shards.rs`):
-- a higher class (2 overdue, 1 waiting), or the same class and a higher effective
-- level, or the same level and a time (deadline when overdue, else enqueue time) not
-- after the bar's time (which carries the slack). n = 0 leases nothing.
-- Returns {rows, head}: a row is {lease id, deadline, ad id, fields, class, level,
-- time} per lease; head is {class, level, time, priority, ad id} of the ad this shard
-- would serve next, or {} when it has none for this mask.
-- The choice repeats `Index::choose` (index.rs): overdue ads first by deadline, then the
-- partition heads by effective priority (aging: one level per step, capped), longest wait,
-- higher priority. conformance/scheduling.rs checks the two against each other.
-- Each partition's first n + 1 members are read once; the sorted sets, the lease map and
-- the session's set get one call per claim, not one per ad.
local now, n, mask, sess = num(ARGV[1]), num(ARGV[2]), num(ARGV[3]), ARGV[4]
local bc, be, bt = num(ARGV[5]), num(ARGV[6]), num(ARGV[7])
local paused = {}
for _, p in ipairs(redis.call('SMEMBERS', P .. ':paused')) do paused[num(p)] = true end
local allowed, heads, cur = {}, {}, {}
local any = false
for p = 1, MAX_PRIORITY do
  allowed[p] = math.floor(mask / 2 ^ (p - 1)) % 2 == 1 and not paused[p]
  if allowed[p] then
    heads[p] = redis.call('ZRANGE', P .. ':q:' .. p, 0, n)
    cur[p] = 1
    any = any or #heads[p] > 0
  end
end
-- Nothing queued for this mask (every overdue ad is in a partition too): done.
if not any then return { {}, {} } end
local pol = policy()
local over, oi = {}, 1
if pol.anti_starvation then
  over = redis.call('ZRANGEBYSCORE', P .. ':due', '-inf', now, 'WITHSCORES', 'LIMIT', 0, n + 64)
end
local taken, enqs, prs = {}, {}, {}
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
-- The next ad to serve: id, class, level, time, priority.
local function choose()
  while pol.anti_starvation and oi <= #over do
    local id = over[oi]
    if not taken[id] then
      local pr = prs[id]
      if not pr then
        pr = num(redis.call('HGET', adk(id), 'pr'))
        prs[id] = pr
      end
      if allowed[pr] then return id, 2, MAX_PRIORITY, num(over[oi + 1]), pr end
    end
    oi = oi + 2
  end
  local pick, be_, bq, bp
  for p = 1, MAX_PRIORITY do
    local h = allowed[p] and head(p)
    if h then
      local enq = enq_of(h)
      local eff = p
      if pol.anti_starvation and pol.aging_ms > 0 then eff = math.min(MAX_PRIORITY, p + math.floor(math.max(0, now - enq) / pol.aging_ms)) end
      if not pick or eff > be_ or (eff == be_ and (enq < bq or (enq == bq and p > bp))) then
        pick, be_, bq, bp = h, eff, enq, p
      end
    end
  end
  if pick then return pick, 1, be_, bq, bp end
end
local picks = {}
while #picks < n do
  local id, c, e, t, pr = choose()
  if not id then break end
  if not (c > bc or (c == bc and (e > be or (e == be and t <= bt)))) then break end
  taken[id] = true
  picks[#picks + 1] = { id, c, e, t, pr }
end
local out = {}
if #picks > 0 then
  local lid = redis.call('INCRBY', P .. ':lseq', #picks) - #picks
  local dl = now + pol.lease_ms
  local famd, sumd, due, leases, lmap, lids, parts = {}, 0, {}, {}, {}, {}, {}
  for _, x in ipairs(picks) do
    local id = x[1]
    local k = adk(id)
    -- The fields the reply carries (as `fields()` orders them), plus the family.
    local f = redis.call('HMGET', k, unpack(AD_FIELDS_FAM))
    local fam = f[11] or ''
    local d = famd[fam] or { 0, 0 }
    d[1], d[2] = d[1] + 1, d[2] + num(f[4]) - BASE
    famd[fam] = d
    sumd = sumd + num(f[4]) - BASE
    lid = lid + 1
    local att = num(f[7]) + 1
    redis.call('HSET', k, 'st', 2, 'start', now, 'lease', lid, 'sess', sess, 'att', att)
    local q = parts[x[5]] or {}
    q[#q + 1] = id
    parts[x[5]] = q
    due[#due + 1] = id
    leases[#leases + 1] = dl
    leases[#leases + 1] = lid
    lmap[#lmap + 1] = lid
    lmap[#lmap + 1] = id
    lids[#lids + 1] = lid
    notify(id)
    f[2], f[5], f[7], f[11] = 2, now, att, nil
    out[#out + 1] = { lid, dl, id, f, x[2], x[3], x[4] }
  end
  for p, q in pairs(parts) do bulk('ZREM', P .. ':q:' .. p, q) end
  bulk('ZREM', P .. ':due', due)
  bulk('ZADD', P .. ':leases', leases)
  bulk('HSET', P .. ':lmap', lmap)
  bulk('SADD', P .. ':sess:' .. sess, lids)
  redis.call('INCRBY', P .. ':sumenq', -sumd)
  for fam, d in pairs(famd) do
    fam_add(fam, 'q', -d[1])
    fam_add(fam, 's', -d[2])
    fam_add(fam, 'p', d[1])
  end
end
local nid, nc, ne, nt, npr = choose()
local nxt = {}
if nid then nxt = { nc, ne, nt, npr, nid } end
return { out, nxt }
