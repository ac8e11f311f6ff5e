-- ARGV: priority, now, retention s. Cancels every queued ad of the partition.
local ids = redis.call('ZRANGE', P .. ':q:' .. ARGV[1], 0, -1)
for _, id in ipairs(ids) do
  dequeue(id)
  local k = adk(id)
  redis.call('HSET', k, 'st', 5, 'fin', ARGV[2], 'err', 'purged from partition ' .. ARGV[1])
  redis.call('EXPIRE', k, ARGV[3])
  notify(id)
end
return #ids
