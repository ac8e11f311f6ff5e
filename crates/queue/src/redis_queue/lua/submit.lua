-- ARGV: now, then (id, pb, priority, own max wait, family, trace) per ad.
-- Returns each ad's queue position. Counters are updated once per call, not per ad.
local now = num(ARGV[1])
local pol = policy()
local count = (#ARGV - 1) / 6
local seq = redis.call('INCRBY', P .. ':seq', count) - count
local queued, paused = {}, {}
for p = 1, MAX_PRIORITY do
  queued[p] = redis.call('ZCARD', P .. ':q:' .. p)
  paused[p] = redis.call('SISMEMBER', P .. ':paused', p) == 1
end
local fams, out = {}, {}
for i = 2, #ARGV, 6 do
  local id, pr, mw, fam = ARGV[i], num(ARGV[i + 2]), num(ARGV[i + 3]), ARGV[i + 4]
  seq = seq + 1
  local wait = mw
  if wait == 0 then wait = pol.max_wait_s end
  local dl = now + wait * 1000
  redis.call('HSET', adk(id), 'pb', ARGV[i + 1], 'st', 1, 'pr', pr, 'mw', mw, 'fam', fam, 'trace', ARGV[i + 5],
    'seq', seq, 'enq', now, 'dl', dl, 'att', 0, 'start', 0, 'fin', 0)
  redis.call('ZADD', P .. ':all', seq, id)
  redis.call('ZADD', P .. ':q:' .. pr, seq, id)
  redis.call('ZADD', P .. ':due', dl, id)
  local pos = queued[pr]
  local first = pr + 1
  if paused[pr] then first = 1 end
  for p = first, MAX_PRIORITY do
    if p ~= pr and not paused[p] then pos = pos + queued[p] end
  end
  queued[pr] = queued[pr] + 1
  out[#out + 1] = pos
  fams[fam] = (fams[fam] or 0) + 1
end
redis.call('INCRBY', P .. ':sumenq', count * (now - BASE))
for fam, n in pairs(fams) do
  fam_add(fam, 'q', n)
  fam_add(fam, 's', n * (now - BASE))
end
wake()
return out
