-- ARGV: mode ('L' load, 'R' rebuild: clear the shard first), issued count (rebuild only),
-- then per bucket: bucket "<priority>|<batch>", n, the n entry ids in increasing order, then
-- the n packed entries in the same order. An entry whose id is not above the bucket's
-- high-water mark was loaded before (it is available, held or issued) and is skipped.
-- Ids and entries travel apart so the new entries are pushed straight from ARGV: no Lua
-- work per entry (a million-key import is a few hundred of these calls).
-- Reply: the number of entries added.
--
-- Parking (an import loads its keys while PostgreSQL is still committing them):
--   'P' park: ARGV[2] = 1 on the first call of a park (drops what an earlier attempt left),
--       ARGV[3] = seconds a parked list lives unclaimed, ARGV[4] = bucket, then the packed
--       entries, pushed to P:p:<bucket> where no take can see them. Reply: the list length.
--   'A' activate: ARGV[3] = bucket, ARGV[4] = its highest entry id: the parked list
--       becomes the bucket's live list, counted and queued. Reply: entries made available;
--       -1 if the bucket is live already or the shard is gone (the parked list is dropped;
--       the caller loads the usual way).
--   'U' unpark: ARGV[3] = bucket: drop the parked list (the import did not commit).
local function clear()
  local buckets = redis.call('ZRANGE', KQ, 0, -1)
  local seen = {}
  for _, m in ipairs(buckets) do
    local _, b = split_bucket(m)
    redis.call('DEL', P .. ':l:' .. m)
    if not seen[b] then
      seen[b] = true
      redis.call('DEL', KQ .. ':' .. b)
    end
  end
  redis.call('DEL', KQ, KW, KC, KH, KHX, KI0, KI1, KG)
end

if ARGV[1] == 'P' then
  local parked = P .. ':p:' .. ARGV[4]
  if ARGV[2] == '1' then
    redis.call('DEL', parked)
  end
  for s = 5, #ARGV, 1000 do
    redis.call('RPUSH', parked, unpack(ARGV, s, math.min(s + 999, #ARGV)))
  end
  redis.call('EXPIRE', parked, tonumber(ARGV[3]))
  return redis.call('LLEN', parked)
elseif ARGV[1] == 'A' or ARGV[1] == 'U' then
  local m = ARGV[3]
  local parked, live = P .. ':p:' .. m, P .. ':l:' .. m
  if ARGV[1] == 'U' then
    return redis.call('DEL', parked)
  end
  local n = redis.call('LLEN', parked)
  if redis.call('EXISTS', KC) == 0 or redis.call('EXISTS', live) == 1
      or redis.call('HEXISTS', KW, m) == 1 then
    redis.call('DEL', parked)
    return -1
  end
  if n == 0 then
    return 0
  end
  local prio, batch = split_bucket(m)
  redis.call('RENAME', parked, live)
  redis.call('PERSIST', live)
  redis.call('ZADD', KQ, prio, m)
  redis.call('ZADD', KQ .. ':' .. batch, prio, m)
  redis.call('HSET', KW, m, ARGV[4])
  redis.call('HINCRBY', KC, 'a', n)
  redis.call('HINCRBY', KC, 'a:' .. batch, n)
  return n
elseif ARGV[1] == 'R' then
  clear()
  redis.call('HSET', KC, 'a', 0, 'h', 0, 'i', tonumber(ARGV[2]))
elseif ARGV[1] == 'D' then
  local n = tonumber(redis.call('HGET', KC, 'a') or '0')
  clear()
  return n
end

local added = 0
local k = 3
while k <= #ARGV do
  local m, n = ARGV[k], tonumber(ARGV[k + 1])
  k = k + 2
  local prio, batch = split_bucket(m)
  local hw = redis.call('HGET', KW, m)
  local top = hw and tonumber(hw) or -1
  -- Ids increase, so the entries loaded before are a prefix.
  local skip = 0
  while skip < n and tonumber(ARGV[k + skip]) <= top do
    skip = skip + 1
  end
  local fresh = n - skip
  if fresh > 0 then
    local lk = P .. ':l:' .. m
    local last = k + 2 * n - 1
    -- unpack() is bounded by the Lua C stack: push in slices.
    for s = k + n + skip, last, 1000 do
      redis.call('RPUSH', lk, unpack(ARGV, s, math.min(s + 999, last)))
    end
    redis.call('ZADD', KQ, prio, m)
    redis.call('ZADD', KQ .. ':' .. batch, prio, m)
    redis.call('HSET', KW, m, ARGV[k + n - 1])
    redis.call('HINCRBY', KC, 'a', fresh)
    redis.call('HINCRBY', KC, 'a:' .. batch, fresh)
    added = added + fresh
  end
  k = k + 2 * n
end
return added
