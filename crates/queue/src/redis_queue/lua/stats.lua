-- ARGV: now. Returns {{queued, paused, oldest enqueue or -1} for 5..1, in flight, dead,
-- sum of enqueue offsets, completed total, completed in the last minute}.
local now = num(ARGV[1])
local parts = {}
for p = MAX_PRIORITY, 1, -1 do
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
