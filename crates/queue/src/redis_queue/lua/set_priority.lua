-- ARGV: id, priority. Returns {0, old}, {1} unknown or {2, status}.
local id = ARGV[1]
local k = adk(id)
local st = redis.call('HGET', k, 'st')
if not st then return { 1 } end
if st ~= '1' then return { 2, st } end
local old = redis.call('HGET', k, 'pr')
dequeue(id)
redis.call('HSET', k, 'pr', ARGV[2])
enqueue(id, policy())
notify(id)
wake()
return { 0, old }
