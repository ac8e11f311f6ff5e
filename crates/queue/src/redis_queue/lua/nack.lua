-- ARGV: lease, session, retry (1/0), error, now. Returns {0} or {code}.
local id, h = current(ARGV[1], ARGV[2])
if not id then return { h } end
drop_lease(id, ARGV[1], h)
settle_retry(id, ARGV[3] == '1', ARGV[4], num(ARGV[5]), policy())
return { 0 }
