-- ARGV: lease, session, new deadline. Returns {0} or {code}.
local id, code = current(ARGV[1], ARGV[2])
if not id then return { code } end
redis.call('ZADD', P .. ':leases', ARGV[3], ARGV[1])
return { 0 }
