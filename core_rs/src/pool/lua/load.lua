-- ARGV: mode ('L' load, 'R' rebuild: clear the shard first), issued count (rebuild only),
-- then per bucket: bucket "<priority>|<batch>", n, then n pairs (entry id, packed entry)
-- in increasing id order. An entry whose id is not above the bucket's high-water mark
-- was loaded before (it is available, held or issued) and is skipped.
-- Reply: the number of entries added.
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
  redis.call('DEL', KQ, KW, KC, KH, KHX, KI, KIX)
end

if ARGV[1] == 'R' then
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
  local last
  local new = {}
  for j = k, k + 2 * n - 1, 2 do
    local id = tonumber(ARGV[j])
    if id > top then
      top = id
      last = ARGV[j]
      new[#new + 1] = ARGV[j + 1]
    end
  end
  k = k + 2 * n
  if #new > 0 then
    local lk = P .. ':l:' .. m
    -- unpack() is bounded by the Lua C stack: push in slices.
    for s = 1, #new, 1000 do
      redis.call('RPUSH', lk, unpack(new, s, math.min(s + 999, #new)))
    end
    redis.call('ZADD', KQ, prio, m)
    redis.call('ZADD', KQ .. ':' .. batch, prio, m)
    redis.call('HSET', KW, m, last)
    redis.call('HINCRBY', KC, 'a', #new)
    redis.call('HINCRBY', KC, 'a:' .. batch, #new)
    added = added + #new
  end
end
return added
