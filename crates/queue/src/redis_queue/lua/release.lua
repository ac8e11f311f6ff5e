-- ARGV: session, now. Requeues the session's leases; returns how many.
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
