-- Several pools (KEYS, one shard each, all on one server) for one holder, all or nothing.
-- ARGV: now_ms ('' = Redis TIME), keep_ms, sweep_limit, holder, then one quantity per key.
-- Reply (flat): 0, then per key: n, entry x n | 1, key index (1-based), available.
-- A holder already issued in these pools gets its entries again; a live hold of the holder
-- in a pool (from `reserve`) is issued as that pool's part.
local now = clock(ARGV[1])
local keep, limit, h = tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]

local found, live = {}, {}
for i, p in ipairs(KEYS) do
  use_pool(p)
  sweep(now, limit, keep)
  found[i] = redis.call('HGET', KI0, h) or redis.call('HGET', KI1, h)
  if not found[i] then
    local s = redis.call('HGET', KH, h)
    local exp = tonumber(redis.call('ZSCORE', KHX, h))
    if s and exp and exp > now then
      live[i] = s
    end
  end
end

local function answer(records)
  local out = { 0 }
  for _, s in ipairs(records) do
    local rec = cmsgpack.unpack(s)
    out[#out + 1] = #rec / 2
    for k = 2, #rec, 2 do
      out[#out + 1] = rec[k]
    end
  end
  return out
end

local issued = 0
for i = 1, #KEYS do
  if found[i] then
    issued = issued + 1
  end
end
if issued == #KEYS then
  return answer(found)
elseif issued > 0 then
  return error('kami: holder ' .. h .. ' is issued in some pools of the bundle only')
end

for i, p in ipairs(KEYS) do
  if not live[i] then
    use_pool(p)
    local avail = tonumber(redis.call('HGET', KC, 'a') or '0')
    if avail < tonumber(ARGV[4 + i]) then
      return { 1, i, avail }
    end
  end
end

local records = {}
for i, p in ipairs(KEYS) do
  use_pool(p)
  local s, n = live[i], 0
  if s then
    n = #cmsgpack.unpack(s) / 2
    redis.call('HDEL', KH, h)
    redis.call('ZREM', KHX, h)
    redis.call('HINCRBY', KC, 'h', -n)
  else
    n = tonumber(ARGV[4 + i])
    s = cmsgpack.pack((pop_now(n)))
  end
  redis.call('HSET', KI0, h, s)
  redis.call('HINCRBY', KC, 'i', n)
  records[i] = s
end
return answer(records)
