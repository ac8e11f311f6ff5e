-- ARGV: priority, dry run (1/0), current priority (0 any), family ('' any), min wait ms,
-- now. Returns {changed, matched}.
local target, dry, cur, fam, minw, now = ARGV[1], ARGV[2] == '1', num(ARGV[3]), ARGV[4], num(ARGV[5]), num(ARGV[6])
local matched, move = 0, {}
for p = 1, MAX_PRIORITY do
  if cur == 0 or cur == p then
    for _, id in ipairs(redis.call('ZRANGE', P .. ':q:' .. p, 0, -1)) do
      local h = redis.call('HMGET', adk(id), 'enq', 'fam')
      if now - num(h[1]) >= minw and (fam == '' or h[2] == fam) then
        matched = matched + 1
        if tostring(p) ~= target then move[#move + 1] = id end
      end
    end
  end
end
if not dry and #move > 0 then
  local pol = policy()
  for _, id in ipairs(move) do
    dequeue(id)
    redis.call('HSET', adk(id), 'pr', target)
    enqueue(id, pol)
    notify(id)
  end
  wake()
end
return { #move, matched }
