-- ARGV: none. Recomputes the deadline of queued ads that follow the policy's max wait.
local pol = policy()
for p = 1, MAX_PRIORITY do
  for _, id in ipairs(redis.call('ZRANGE', P .. ':q:' .. p, 0, -1)) do
    local h = redis.call('HMGET', adk(id), 'mw', 'enq')
    if num(h[1]) == 0 then
      local dl = num(h[2]) + pol.max_wait_s * 1000
      redis.call('HSET', adk(id), 'dl', dl)
      redis.call('ZADD', P .. ':due', dl, id)
    end
  end
end
wake()
return 0
