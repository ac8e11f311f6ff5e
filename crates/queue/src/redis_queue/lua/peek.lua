-- ARGV: n, now. Returns {paused priorities, entries} where an entry is {id, priority,
-- seq, enqueued, deadline, pb}: the first n of every partition and the 2n most overdue.
local n, now = num(ARGV[1]), num(ARGV[2])
local seen, out = {}, {}
local function add(id)
  if seen[id] then return end
  seen[id] = true
  local h = redis.call('HMGET', adk(id), 'pr', 'seq', 'enq', 'dl', 'pb')
  out[#out + 1] = { id, h[1], h[2], h[3], h[4], h[5] }
end
for _, id in ipairs(redis.call('ZRANGEBYSCORE', P .. ':due', '-inf', now, 'LIMIT', 0, 2 * n)) do add(id) end
for p = 1, MAX_PRIORITY do
  for _, id in ipairs(redis.call('ZRANGE', P .. ':q:' .. p, 0, n - 1)) do add(id) end
end
return { redis.call('SMEMBERS', P .. ':paused'), out }
