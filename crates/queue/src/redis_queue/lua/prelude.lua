-- Helpers every script starts with.
local function adk(id) return P .. ':ad:' .. id end
local function num(x) return tonumber(x) or 0 end
-- `cmd key args...` in calls of at most 4000 arguments (Lua's unpack limit is ~8000);
-- one call for many ads costs far less than one call per ad.
local function bulk(cmd, key, args)
  local i = 1
  while i <= #args do
    local j = math.min(#args, i + 3999)
    redis.call(cmd, key, unpack(args, i, j))
    i = j + 1
  end
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
local function enqueue(id, pol)
  local k = adk(id)
  local h = redis.call('HMGET', k, 'pr', 'seq', 'enq', 'mw', 'fam')
  local mw = num(h[4])
  if mw == 0 then mw = pol.max_wait_s end
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
-- Ads ahead of `id` in this shard, and its rank in its partition (-1, -1: not queued).
local function position(id)
  local pr = num(redis.call('HGET', adk(id), 'pr'))
  local r = redis.call('ZRANK', P .. ':q:' .. pr, id)
  if not r then return -1, -1 end
  local n = r
  -- In a paused partition, every ad of every unpaused one is served first.
  local first = pr + 1
  if redis.call('SISMEMBER', P .. ':paused', pr) == 1 then first = 1 end
  for p = first, MAX_PRIORITY do
    if p ~= pr and redis.call('SISMEMBER', P .. ':paused', p) == 0 then n = n + redis.call('ZCARD', P .. ':q:' .. p) end
  end
  return n, r
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
  if retry and num(redis.call('HGET', k, 'att')) < pol.max_attempts then
    enqueue(id, pol)
    wake()
  else
    redis.call('HSET', k, 'st', 4, 'fin', now)
    redis.call('ZADD', P .. ':dead', now, id)
    fam_add(redis.call('HGET', k, 'fam'), 'd', 1)
  end
  notify(id)
end
