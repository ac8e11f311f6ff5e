-- ARGV: now, then (id, pb, priority, own max wait, family, trace) per ad (none: only
-- the counts). Returns {queued per partition 1..5 before this call, paused partitions};
-- the gateway turns them into queue positions (over every shard). Every key gets one
-- call per batch (one HSET per ad, one ZADD per sorted set), counters one per call.
local now = num(ARGV[1])
local count = (#ARGV - 1) / 6
local queued = {}
for p = 1, MAX_PRIORITY do queued[p] = redis.call('ZCARD', P .. ':q:' .. p) end
local paused = redis.call('SMEMBERS', P .. ':paused')
if count == 0 then return { queued, paused } end
local pol = policy()
local seq = redis.call('INCRBY', P .. ':seq', count) - count
local all, due, parts, fams = {}, {}, {}, {}
for i = 2, #ARGV, 6 do
  local id, pr, mw, fam = ARGV[i], num(ARGV[i + 2]), num(ARGV[i + 3]), ARGV[i + 4]
  seq = seq + 1
  local wait = mw
  if wait == 0 then wait = pol.max_wait_s end
  local dl = now + wait * 1000
  -- Zero and empty fields (attempts, start, finish, own max wait, trace) are left out:
  -- every reader takes a missing one as 0 or empty, and each field costs the hash an entry.
  if mw ~= 0 then
    if ARGV[i + 5] ~= '' then
      redis.call('HSET', adk(id), 'pb', ARGV[i + 1], 'st', 1, 'pr', pr, 'fam', fam, 'seq', seq, 'enq', now, 'dl', dl,
        'mw', mw, 'trace', ARGV[i + 5])
    else
      redis.call('HSET', adk(id), 'pb', ARGV[i + 1], 'st', 1, 'pr', pr, 'fam', fam, 'seq', seq, 'enq', now, 'dl', dl,
        'mw', mw)
    end
  elseif ARGV[i + 5] ~= '' then
    redis.call('HSET', adk(id), 'pb', ARGV[i + 1], 'st', 1, 'pr', pr, 'fam', fam, 'seq', seq, 'enq', now, 'dl', dl,
      'trace', ARGV[i + 5])
  else
    redis.call('HSET', adk(id), 'pb', ARGV[i + 1], 'st', 1, 'pr', pr, 'fam', fam, 'seq', seq, 'enq', now, 'dl', dl)
  end
  all[#all + 1] = seq
  all[#all + 1] = id
  due[#due + 1] = dl
  due[#due + 1] = id
  local q = parts[pr] or {}
  q[#q + 1] = seq
  q[#q + 1] = id
  parts[pr] = q
  fams[fam] = (fams[fam] or 0) + 1
end
bulk('ZADD', P .. ':all', all)
for pr, q in pairs(parts) do bulk('ZADD', P .. ':q:' .. pr, q) end
bulk('ZADD', P .. ':due', due)
redis.call('INCRBY', P .. ':sumenq', count * (now - BASE))
for fam, n in pairs(fams) do
  fam_add(fam, 'q', n)
  fam_add(fam, 's', n * (now - BASE))
end
wake()
return { queued, paused }
