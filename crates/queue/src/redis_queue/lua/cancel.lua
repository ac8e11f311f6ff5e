-- ARGV: id, now, retention s. Returns {0, fields}, {1} unknown or {2, status}.
local id, now = ARGV[1], num(ARGV[2])
local k = adk(id)
local st = redis.call('HGET', k, 'st')
if not st then return { 1 } end
if st == '3' or st == '5' then return { 2, st } end
if st == '1' then
  dequeue(id)
elseif st == '2' then
  local lid = redis.call('HGET', k, 'lease')
  if lid then drop_lease(id, lid) end
elseif st == '4' then
  redis.call('ZREM', P .. ':dead', id)
  fam_add(redis.call('HGET', k, 'fam'), 'd', -1)
end
redis.call('HSET', k, 'st', 5, 'fin', now)
redis.call('EXPIRE', k, ARGV[3])
notify(id)
return { 0, fields(id) }
