-- ARGV: command id, encoded entry. Appends an audit entry.
local seq = redis.call('INCR', P .. ':auditseq')
redis.call('ZADD', P .. ':audit', seq, ARGV[1])
redis.call('HSET', P .. ':auditdata', ARGV[1], ARGV[2])
return seq
