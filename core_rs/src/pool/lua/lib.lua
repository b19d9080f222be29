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
--   P:i0 / P:i1  HASH issued holder -> the same record (dedup of retried take/confirm), in
--                two generations: every `keep` ms i0 becomes i1 and the old i1 is dropped,
--                so a record lives between `keep` and 2 x `keep` ms. (A ZSET of expiry
--                times per issued holder cost more than the rest of a take together.)
--   P:g          STRING start (ms) of the current generation
local P, KC, KQ, KW, KH, KHX, KI0, KI1, KG

-- Point every helper at pool shard `p` (a script over several pools switches between them).
local function use_pool(p)
  P = p
  KC, KQ, KW = P .. ':c', P .. ':q', P .. ':w'
  KH, KHX, KI0, KI1, KG = P .. ':h', P .. ':hx', P .. ':i0', P .. ':i1', P .. ':g'
end
use_pool(KEYS[1])

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

-- Return up to `limit` expired holds to the pool, and start a new generation of issued
-- records when the current one is `keep` ms old; returns the number of holds returned.
local function sweep(now, limit, keep)
  local ex = redis.call('ZRANGEBYSCORE', KHX, '-inf', now, 'LIMIT', 0, limit)
  for _, h in ipairs(ex) do
    release_holder(h)
  end
  local gen = tonumber(redis.call('GET', KG))
  if not gen then
    if redis.call('EXISTS', KC) == 1 then
      redis.call('SET', KG, now)
    end
  elseif now - gen >= keep then
    -- UNLINK frees a big old generation off the main thread.
    redis.call('UNLINK', KI1)
    if redis.call('EXISTS', KI0) == 1 then
      redis.call('RENAME', KI0, KI1)
    end
    redis.call('SET', KG, now)
  end
  return #ex
end

-- Take `q` entries, lowest priority first, writing as it goes (for scripts that are not on
-- the hot path; ops.lua batches the same work). Returns the record {bucket, entry, ...},
-- or nil and the number available; nothing is touched unless all `q` can be taken.
local function pop_now(q)
  local avail = tonumber(redis.call('HGET', KC, 'a') or '0')
  if avail < q then
    return nil, avail
  end
  local rec, need = {}, q
  while need > 0 do
    local m = redis.call('ZRANGE', KQ, 0, 0)[1]
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
    redis.call('HINCRBY', KC, 'a:' .. b, -#got)
    if redis.call('EXISTS', lk) == 0 then
      redis.call('ZREM', KQ, m)
      redis.call('ZREM', KQ .. ':' .. b, m)
    end
  end
  redis.call('HINCRBY', KC, 'a', -q)
  return rec, avail
end
