-- ARGV: version, then the policy's (code, value) pairs, then '|', then the paused
-- partitions: shard 0's policy and pauses, copied onto this shard unless it already
-- holds a newer version. Returns 1 when the max wait changed (the caller recomputes the
-- deadlines), else 0.
local ver = num(ARGV[1])
local key = P .. ':policy'
local cur = redis.call('HGET', key, 'ver')
if cur and num(cur) > ver then return 0 end
local kv, i = {}, 2
while ARGV[i] ~= '|' do
  kv[#kv + 1] = ARGV[i]
  kv[#kv + 1] = ARGV[i + 1]
  i = i + 2
end
local before = redis.call('HGET', key, MAX_WAIT_CODE)
redis.call('HSET', key, 'ver', ver, unpack(kv))
redis.call('DEL', P .. ':paused')
if i < #ARGV then redis.call('SADD', P .. ':paused', unpack(ARGV, i + 1, #ARGV)) end
wake()
if before ~= redis.call('HGET', key, MAX_WAIT_CODE) then return 1 end
return 0
