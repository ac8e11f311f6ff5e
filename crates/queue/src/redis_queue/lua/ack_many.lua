-- ARGV: session, now, retention s, then (lease, encoded analysis) pairs.
-- Returns {0, trace} or {code} per pair.
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
