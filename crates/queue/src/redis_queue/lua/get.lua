-- ARGV: id. Returns {fields, position} or {} when unknown.
if redis.call('EXISTS', adk(ARGV[1])) == 0 then return {} end
return { fields(ARGV[1]), position(ARGV[1]) }
