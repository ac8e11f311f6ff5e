-- ARGV: now, limit. Returns {ad id, lease, dead-lettered (1/0), trace} per expired lease.
-- Also drops the oldest listing-index entries whose ads expired (finished-ad retention).
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
    settle_retry(id, true, 'lease ' .. lid .. ' expired after ' .. (pol.lease_ms / 1000) .. ' s', now, pol)
    local k = adk(id)
    out[#out + 1] = { id, lid, redis.call('HGET', k, 'st') == '4' and 1 or 0, redis.call('HGET', k, 'trace') or '' }
  else
    redis.call('ZREM', P .. ':leases', lid)
  end
end
return out
