-- ARGV: now_ms ('' = Redis TIME), keep_ms, sweep_limit, then 5 per request:
-- kind (R reserve, C confirm, X release, T take), holder, quantity, ttl_ms, batch ('' = any).
-- Reply: one flat array, per request: status, count, then `count` values:
--   0, n, entry x n (reserve/confirm/take) | 0, 1, n (release) | 1, 1, available | 2, 0.
-- (Flat, because Redis converts every nested Lua table of a reply at a noticeable cost.)
--
-- Requests are served in order, as if one script call each, but the work is batched: the
-- holders' records are read with three calls up front, every decision is made on local
-- state, and the writes (records, TTLs, counters) go out in a handful of calls at the end.
-- What remains per request is one LPOP; that is what makes a coalesced call cheap.
local now = clock(ARGV[1])
local keep = tonumber(ARGV[2])
sweep(now, tonumber(ARGV[3]), keep)

local names = {}
for k = 5, #ARGV, 5 do
  names[#names + 1] = ARGV[k]
end
if #names == 0 then
  return {}
end
local iv0 = redis.call('HMGET', KI0, unpack(names))
local iv1 = redis.call('HMGET', KI1, unpack(names))
local hv = redis.call('HMGET', KH, unpack(names))
local hx = redis.call('ZMSCORE', KHX, unpack(names))

-- Local view. issued_s / hold_s: packed record, or false when there is none.
local issued_s, hold_s, hold_exp = {}, {}, {}
local hold_dirty, issued_new = {}, {}
local d_a, d_h, d_i, d_ab = 0, 0, 0, {}
local cache_all, cache_b = nil, {}
local head_m, head_len = nil, nil

local function invalidate()
  -- push_back wrote counters and buckets directly: re-read them on next use.
  cache_all, cache_b, head_m, head_len = nil, {}, nil, nil
end

for r, h in ipairs(names) do
  if issued_s[h] == nil then
    issued_s[h] = iv0[r] or iv1[r]
  end
  if hold_s[h] == nil then
    hold_s[h] = hv[r]
    hold_exp[h] = tonumber(hx[r])
    if hold_s[h] and hold_exp[h] and hold_exp[h] <= now then
      -- Past its TTL but not swept yet: it goes back before anyone asks.
      local n = push_back(cmsgpack.unpack(hold_s[h]))
      d_h = d_h - n
      hold_s[h] = false
      hold_dirty[h] = true
      invalidate()
    end
  end
end

local function available(batch)
  if batch then
    if cache_b[batch] == nil then
      cache_b[batch] = tonumber(redis.call('HGET', KC, 'a:' .. batch) or '0') + (d_ab[batch] or 0)
    end
    return cache_b[batch]
  end
  if cache_all == nil then
    cache_all = tonumber(redis.call('HGET', KC, 'a') or '0') + d_a
  end
  return cache_all
end

-- Take `q` entries, lowest priority first (only from `batch` if given). Returns the record,
-- or nil and the number available; nothing is touched unless all `q` can be taken.
local function take_entries(q, batch)
  local avail = available(batch)
  if avail < q then
    return nil, avail
  end
  local rec, need = {}, q
  while need > 0 do
    local m, len
    if batch then
      m = redis.call('ZRANGE', KQ .. ':' .. batch, 0, 0)[1]
      head_m, head_len = nil, nil
    else
      if not head_m then
        head_m = redis.call('ZRANGE', KQ, 0, 0)[1]
        if head_m then
          head_len = redis.call('LLEN', P .. ':l:' .. head_m)
        end
      end
      m, len = head_m, head_len
    end
    if not m then
      return error('kami: pool index empty while counter says ' .. avail .. ' available')
    end
    local lk = P .. ':l:' .. m
    local got = redis.call('LPOP', lk, need) or {}
    local _, b = split_bucket(m)
    for _, e in ipairs(got) do
      rec[#rec + 1] = m
      rec[#rec + 1] = e
    end
    need = need - #got
    d_ab[b] = (d_ab[b] or 0) - #got
    if cache_b[b] ~= nil then
      cache_b[b] = cache_b[b] - #got
    end
    local empty
    if len then
      head_len = len - #got
      empty = head_len <= 0
    else
      empty = redis.call('EXISTS', lk) == 0
    end
    if empty then
      redis.call('ZREM', KQ, m)
      redis.call('ZREM', KQ .. ':' .. b, m)
      head_m, head_len = nil, nil
    end
  end
  d_a = d_a - q
  if cache_all ~= nil then
    cache_all = cache_all - q
  end
  return rec, avail
end

local function issue_hold(h)
  local n = #cmsgpack.unpack(hold_s[h]) / 2
  issued_s[h] = hold_s[h]
  issued_new[h] = true
  hold_s[h] = false
  hold_dirty[h] = true
  d_h = d_h - n
  d_i = d_i + n
end

local out = {}

local function reply_rec(rec)
  out[#out + 1] = 0
  out[#out + 1] = #rec / 2
  for k = 2, #rec, 2 do
    out[#out + 1] = rec[k]
  end
end

local function reply_of(s)
  reply_rec(cmsgpack.unpack(s))
end

local function reply(status, ...)
  local values = { ... }
  out[#out + 1] = status
  out[#out + 1] = #values
  for _, v in ipairs(values) do
    out[#out + 1] = v
  end
end

for k = 4, #ARGV, 5 do
  local kind, h = ARGV[k], ARGV[k + 1]
  local q, ttl = tonumber(ARGV[k + 2]), tonumber(ARGV[k + 3])
  local batch = ARGV[k + 4]
  if batch == '' then
    batch = nil
  end
  if kind == 'R' or kind == 'T' then
    if issued_s[h] then
      reply_of(issued_s[h])
    elseif hold_s[h] then
      reply_of(hold_s[h])
      if kind == 'T' then
        issue_hold(h)
      end
    else
      local rec, avail = take_entries(q, batch)
      if not rec then
        reply(1, avail)
      else
        local s = cmsgpack.pack(rec)
        if kind == 'T' then
          issued_s[h] = s
          issued_new[h] = true
          d_i = d_i + q
        else
          hold_s[h] = s
          hold_exp[h] = now + ttl
          hold_dirty[h] = true
          d_h = d_h + q
        end
        reply_rec(rec)
      end
    end
  elseif kind == 'C' then
    if hold_s[h] then
      reply_of(hold_s[h])
      issue_hold(h)
    elseif issued_s[h] then
      reply_of(issued_s[h])
    else
      reply(2)
    end
  elseif kind == 'X' then
    if hold_s[h] then
      local n = push_back(cmsgpack.unpack(hold_s[h]))
      d_h = d_h - n
      hold_s[h] = false
      hold_dirty[h] = true
      invalidate()
      reply(0, n)
    else
      reply(2)
    end
  else
    return error('kami: unknown request kind ' .. tostring(kind))
  end
end

-- Write back.
local hset, hexp, hdel = {}, {}, {}
for h in pairs(hold_dirty) do
  if hold_s[h] then
    hset[#hset + 1] = h
    hset[#hset + 1] = hold_s[h]
    hexp[#hexp + 1] = hold_exp[h]
    hexp[#hexp + 1] = h
  else
    hdel[#hdel + 1] = h
  end
end
if #hset > 0 then
  redis.call('HSET', KH, unpack(hset))
  redis.call('ZADD', KHX, unpack(hexp))
end
if #hdel > 0 then
  redis.call('HDEL', KH, unpack(hdel))
  redis.call('ZREM', KHX, unpack(hdel))
end
local iset = {}
for h in pairs(issued_new) do
  iset[#iset + 1] = h
  iset[#iset + 1] = issued_s[h]
end
if #iset > 0 then
  redis.call('HSET', KI0, unpack(iset))
end
if d_a ~= 0 then
  redis.call('HINCRBY', KC, 'a', d_a)
end
if d_h ~= 0 then
  redis.call('HINCRBY', KC, 'h', d_h)
end
if d_i ~= 0 then
  redis.call('HINCRBY', KC, 'i', d_i)
end
for b, d in pairs(d_ab) do
  if d ~= 0 then
    redis.call('HINCRBY', KC, 'a:' .. b, d)
  end
end
return out
