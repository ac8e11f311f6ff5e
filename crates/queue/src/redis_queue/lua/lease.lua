-- ARGV: now, n, partition mask, session. Returns {lease id, deadline, ad id, fields} per
-- lease. Reads each partition's first n members once and walks them; counters are
-- updated once per call.
-- The choice repeats `Index::choose` (index.rs): overdue ads first by deadline, then the
-- partition heads by effective priority (aging: one level per step, capped), longest wait,
-- higher priority. conformance/scheduling.rs checks the two against each other.
local now, n, mask, sess = num(ARGV[1]), num(ARGV[2]), num(ARGV[3]), ARGV[4]
local pol = policy()
local allowed, heads, cur = {}, {}, {}
for p = 1, MAX_PRIORITY do
  allowed[p] = math.floor(mask / 2 ^ (p - 1)) % 2 == 1 and redis.call('SISMEMBER', P .. ':paused', p) == 0
  if allowed[p] then
    heads[p] = redis.call('ZRANGE', P .. ':q:' .. p, 0, n - 1)
    cur[p] = 1
  end
end
local over, oi = {}, 1
if pol.anti_starvation then over = redis.call('ZRANGEBYSCORE', P .. ':due', '-inf', now, 'LIMIT', 0, n + 64) end
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
  while pol.anti_starvation and not pick and oi <= #over do
    local id = over[oi]
    oi = oi + 1
    if not taken[id] and allowed[num(redis.call('HGET', adk(id), 'pr'))] then pick = id end
  end
  if not pick then
    local be, bq, bp
    for p = 1, MAX_PRIORITY do
      local h = allowed[p] and head(p)
      if h then
        local enq = enq_of(h)
        local eff = p
        if pol.anti_starvation and pol.aging_ms > 0 then eff = math.min(MAX_PRIORITY, p + math.floor(math.max(0, now - enq) / pol.aging_ms)) end
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
  local f = redis.call('HMGET', k, unpack(AD_FIELDS_FAM))
  redis.call('ZREM', P .. ':q:' .. f[3], pick)
  redis.call('ZREM', P .. ':due', pick)
  local fam = f[11] or ''
  local d = famd[fam] or { 0, 0 }
  d[1], d[2] = d[1] + 1, d[2] + num(f[4]) - BASE
  famd[fam] = d
  sumd = sumd + num(f[4]) - BASE
  lid = lid + 1
  local dl = now + pol.lease_ms
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
