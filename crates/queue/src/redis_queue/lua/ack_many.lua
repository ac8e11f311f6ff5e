-- ARGV: session, now, retention s, then (lease, encoded analysis) pairs.
-- Returns {0, trace} or {code} per pair. The lease map is read in one HMGET and the
-- lease sets are cleared in one call each, so an ad costs three calls (its fields, its
-- new state, its retention). A completed ad keeps its last `lease`/`sess` fields: they
-- are only read while it is leased.
local sess, now, ttl = ARGV[1], num(ARGV[2]), ARGV[3]
local lids = {}
for i = 4, #ARGV, 2 do lids[#lids + 1] = ARGV[i] end
local ads = {}
for i = 1, #lids, 4000 do
  local part = redis.call('HMGET', P .. ':lmap', unpack(lids, i, math.min(#lids, i + 3999)))
  for _, v in ipairs(part) do ads[#ads + 1] = v end
end
local out, done, famd, ended, seen = {}, {}, {}, {}, {}
local lseq
for j, lid in ipairs(lids) do
  local id = ads[j]
  local h
  if id and not seen[lid] then
    h = redis.call('HMGET', adk(id), 'sess', 'fam', 'trace')
    if h[1] ~= sess then h = nil end
  end
  if not id or seen[lid] or not h then
    -- Unknown, another session's, or settled earlier in this batch.
    local code = 2
    if not id and not seen[lid] then
      lseq = lseq or num(redis.call('GET', P .. ':lseq'))
      if not (num(lid) > 0 and num(lid) <= lseq) then code = 1 end
    end
    out[j] = { code }
  else
    seen[lid] = true
    local k = adk(id)
    redis.call('HSET', k, 'st', 3, 'fin', now, 'an', ARGV[3 + 2 * j])
    redis.call('EXPIRE', k, ttl)
    notify(id)
    ended[#ended + 1] = lid
    famd[h[2] or ''] = (famd[h[2] or ''] or 0) + 1
    out[j] = { 0, h[3] or '' }
  end
end
if #ended > 0 then
  bulk('ZREM', P .. ':leases', ended)
  bulk('HDEL', P .. ':lmap', ended)
  bulk('SREM', P .. ':sess:' .. sess, ended)
  for fam, n in pairs(famd) do fam_add(fam, 'p', -n) end
  redis.call('INCRBY', P .. ':done', #ended)
  local sec = P .. ':done:' .. math.floor(now / 1000)
  redis.call('INCRBY', sec, #ended)
  redis.call('EXPIRE', sec, 120)
end
return out
