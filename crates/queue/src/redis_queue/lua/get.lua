-- ARGV: id. Returns {fields, position in this shard, rank in its partition} or {} when
-- unknown.
if redis.call('EXISTS', adk(ARGV[1])) == 0 then return {} end
local pos, rank = position(ARGV[1])
return { fields(ARGV[1]), pos, rank }
