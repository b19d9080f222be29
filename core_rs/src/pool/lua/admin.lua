-- ARGV: op ('S' stock, 'E' expire, 'H' holders, 'X' exists, 'R' restore), now_ms,
-- sweep limit, keep_ms, then for 'R' the holder and the ids (8-byte big-endian) of entries
-- to drop, not put back.
-- S (after a bounded sweep) -> {available, held, issued}; E -> holds returned;
-- H -> holder names (held, then issued); X -> 1 if the shard exists;
-- R -> entries of the holder's issued record put back.
local op = ARGV[1]
if op == 'S' then
  sweep(clock(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]))
  local c = redis.call('HMGET', KC, 'a', 'h', 'i')
  return { tonumber(c[1] or '0'), tonumber(c[2] or '0'), tonumber(c[3] or '0') }
elseif op == 'E' then
  return sweep(clock(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]))
elseif op == 'H' then
  local out = redis.call('HKEYS', KH)
  for _, key in ipairs({ KI0, KI1 }) do
    for _, h in ipairs(redis.call('HKEYS', key)) do
      out[#out + 1] = h
    end
  end
  return out
elseif op == 'X' then
  return redis.call('EXISTS', KC)
elseif op == 'R' then
  -- Un-issue: only for a take the database never committed (a rejected debit, a failed
  -- commit, a crash before it). Without a record there is nothing to give back.
  -- Entries named after the holder are issued elsewhere (the database said so): they are
  -- dropped, so a retry under the same holder takes fresh ones instead.
  local holder = ARGV[5]
  local s = redis.call('HGET', KI0, holder) or redis.call('HGET', KI1, holder)
  if not s then
    return 0
  end
  local drop = {}
  for k = 6, #ARGV do
    drop[ARGV[k]] = true
  end
  local rec, back = cmsgpack.unpack(s), {}
  for k = 1, #rec - 1, 2 do
    if not drop[string.sub(rec[k + 1], 1, 8)] then
      back[#back + 1] = rec[k]
      back[#back + 1] = rec[k + 1]
    end
  end
  redis.call('HDEL', KI0, holder)
  redis.call('HDEL', KI1, holder)
  redis.call('HINCRBY', KC, 'i', -(#rec / 2))
  if #back == 0 then
    return 0
  end
  return push_back(back)
end
return error('kami: unknown admin op ' .. tostring(op))
