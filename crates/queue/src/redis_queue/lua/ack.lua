-- ARGV: lease, session, now, encoded analysis, retention s. Returns {0, trace} or {code}.
local id, h = current(ARGV[1], ARGV[2])
if not id then return { h } end
local now = num(ARGV[3])
drop_lease(id, ARGV[1], h)
local k = adk(id)
redis.call('HSET', k, 'st', 3, 'fin', now, 'an', ARGV[4])
redis.call('EXPIRE', k, ARGV[5])
redis.call('INCR', P .. ':done')
local sec = P .. ':done:' .. math.floor(now / 1000)
redis.call('INCR', sec)
redis.call('EXPIRE', sec, 120)
notify(id)
return { 0, h[3] or '' }
