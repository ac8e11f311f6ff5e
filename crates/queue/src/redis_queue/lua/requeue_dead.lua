-- ARGV: now, ids (none: every dead letter). Returns how many were requeued.
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
