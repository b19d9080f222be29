-- Shared prelude of every pool script. KEYS[1] is the pool shard's hash tag,
-- "{<namespace>:pool:<sku>:<shard>}"; every key below is derived from it, so a script only
-- ever touches one cluster slot.
--
--   P:c          HASH  counters: a (available), h (held), i (issued), a:<batch>
--   P:q          ZSET  buckets "<priority>|<batch>" scored by priority (lowest goes first)
--   P:q:<batch>  ZSET  the same buckets, for one batch (pinned reserve/take)
--   P:l:<bucket> LIST  packed entries (8-byte big-endian id + ciphertext), oldest first
--   P:w          HASH  bucket -> highest entry id ever loaded (load idempotency)
--   P:h / P:hx   HASH holder -> cmsgpack{bucket, entry, ...} / ZSET holder -> expiry ms
--   P:i / P:ix   the same for issued holders (dedup of retried take/confirm), kept `keep` ms
local P = KEYS[1]
local KC, KQ, KW = P .. ':c', P .. ':q', P .. ':w'
local KH, KHX, KI, KIX = P .. ':h', P .. ':hx', P .. ':i', P .. ':ix'

local function split_bucket(m)
  local k = string.find(m, '|', 1, true)
  return string.sub(m, 1, k - 1), string.sub(m, k + 1)
end

local function clock(arg)
  if arg ~= nil and arg ~= '' then
    return tonumber(arg)
  end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Put entries of a record {bucket, entry, ...} back at the front of their buckets.
local function push_back(rec)
  local groups, order = {}, {}
  -- Backwards, because LPUSH a b leaves b first: the entries keep their order.
  for k = #rec - 1, 1, -2 do
    local m = rec[k]
    local g = groups[m]
    if not g then
      g = {}
      groups[m] = g
      order[#order + 1] = m
    end
    g[#g + 1] = rec[k + 1]
  end
  for _, m in ipairs(order) do
    local g = groups[m]
    local prio, batch = split_bucket(m)
    redis.call('LPUSH', P .. ':l:' .. m, unpack(g))
    redis.call('ZADD', KQ, prio, m)
    redis.call('ZADD', KQ .. ':' .. batch, prio, m)
    redis.call('HINCRBY', KC, 'a:' .. batch, #g)
  end
  local n = #rec / 2
  redis.call('HINCRBY', KC, 'a', n)
  return n
end

local function release_holder(holder)
  local s = redis.call('HGET', KH, holder)
  if not s then
    return nil
  end
  redis.call('HDEL', KH, holder)
  redis.call('ZREM', KHX, holder)
  local n = push_back(cmsgpack.unpack(s))
  redis.call('HINCRBY', KC, 'h', -n)
  return n
end

-- Return up to `limit` expired holds to the pool and forget up to `limit` stale issued
-- records; returns the number of holds returned.
local function sweep(now, limit)
  local ex = redis.call('ZRANGEBYSCORE', KHX, '-inf', now, 'LIMIT', 0, limit)
  for _, h in ipairs(ex) do
    release_holder(h)
  end
  local ix = redis.call('ZRANGEBYSCORE', KIX, '-inf', now, 'LIMIT', 0, limit)
  if #ix > 0 then
    redis.call('HDEL', KI, unpack(ix))
    redis.call('ZREM', KIX, unpack(ix))
  end
  return #ex
end

-- The live hold of `holder` (decoded record and packed string), or nil. A hold past its
-- TTL that the bounded sweep has not reached yet is returned to the pool here.
local function live_hold(holder, now)
  local s = redis.call('HGET', KH, holder)
  if not s then
    return nil
  end
  local exp = tonumber(redis.call('ZSCORE', KHX, holder))
  if exp and exp <= now then
    release_holder(holder)
    return nil
  end
  return cmsgpack.unpack(s), s
end

local function issued(holder)
  local s = redis.call('HGET', KI, holder)
  if s then
    return cmsgpack.unpack(s)
  end
  return nil
end

-- Take `q` entries, lowest priority first (only from `batch` if given). Returns the record,
-- or nil and the number available. Nothing is touched unless all `q` can be taken.
local function pop(q, batch)
  local idx, avail
  if batch then
    idx = KQ .. ':' .. batch
    avail = tonumber(redis.call('HGET', KC, 'a:' .. batch) or '0')
  else
    idx = KQ
    avail = tonumber(redis.call('HGET', KC, 'a') or '0')
  end
  if avail < q then
    return nil, avail
  end
  local rec, need = {}, q
  while need > 0 do
    local m = redis.call('ZRANGE', idx, 0, 0)[1]
    if not m then
      return error('kami: pool index empty while counter says ' .. avail .. ' available')
    end
    local lk = P .. ':l:' .. m
    local got = redis.call('LPOP', lk, need)
    local _, b = split_bucket(m)
    if got then
      for _, e in ipairs(got) do
        rec[#rec + 1] = m
        rec[#rec + 1] = e
      end
      need = need - #got
      redis.call('HINCRBY', KC, 'a:' .. b, -#got)
    end
    if redis.call('EXISTS', lk) == 0 then
      redis.call('ZREM', KQ, m)
      redis.call('ZREM', KQ .. ':' .. b, m)
    end
  end
  redis.call('HINCRBY', KC, 'a', -q)
  return rec, avail
end

local function entries_reply(rec)
  local out = { 0 }
  for k = 2, #rec, 2 do
    out[#out + 1] = rec[k]
  end
  return out
end
