-- ARGV: now_ms ('' = Redis TIME), keep_ms, sweep_limit, then 5 per request:
-- kind (R reserve, C confirm, X release, T take), holder, quantity, ttl_ms, batch ('' = any).
-- Reply: one array per request: {0, entry...} | {0, n} (release) | {1, available} | {2}.
local now = clock(ARGV[1])
local keep = tonumber(ARGV[2])
sweep(now, tonumber(ARGV[3]))

local function issue(holder, s, n)
  redis.call('HSET', KI, holder, s)
  redis.call('ZADD', KIX, now + keep, holder)
  redis.call('HINCRBY', KC, 'i', n)
end

local out = {}
for k = 4, #ARGV, 5 do
  local kind, holder = ARGV[k], ARGV[k + 1]
  local q, ttl = tonumber(ARGV[k + 2]), tonumber(ARGV[k + 3])
  local batch = ARGV[k + 4]
  if batch == '' then
    batch = nil
  end
  local r
  if kind == 'R' or kind == 'T' then
    local rec = issued(holder)
    if rec then
      r = entries_reply(rec)
    else
      local s
      rec, s = live_hold(holder, now)
      if rec and kind == 'T' then
        redis.call('HDEL', KH, holder)
        redis.call('ZREM', KHX, holder)
        redis.call('HINCRBY', KC, 'h', -(#rec / 2))
        issue(holder, s, #rec / 2)
        r = entries_reply(rec)
      elseif rec then
        r = entries_reply(rec)
      else
        local avail
        rec, avail = pop(q, batch)
        if not rec then
          r = { 1, avail }
        else
          s = cmsgpack.pack(rec)
          if kind == 'T' then
            issue(holder, s, q)
          else
            redis.call('HSET', KH, holder, s)
            redis.call('ZADD', KHX, now + ttl, holder)
            redis.call('HINCRBY', KC, 'h', q)
          end
          r = entries_reply(rec)
        end
      end
    end
  elseif kind == 'C' then
    local rec, s = live_hold(holder, now)
    if rec then
      redis.call('HDEL', KH, holder)
      redis.call('ZREM', KHX, holder)
      redis.call('HINCRBY', KC, 'h', -(#rec / 2))
      issue(holder, s, #rec / 2)
      r = entries_reply(rec)
    else
      rec = issued(holder)
      if rec then
        r = entries_reply(rec)
      else
        r = { 2 }
      end
    end
  elseif kind == 'X' then
    local rec = live_hold(holder, now)
    if rec then
      r = { 0, release_holder(holder) }
    else
      r = { 2 }
    end
  else
    return error('kami: unknown request kind ' .. tostring(kind))
  end
  out[#out + 1] = r
end
return out
