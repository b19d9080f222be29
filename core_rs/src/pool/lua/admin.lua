-- ARGV: op ('S' stock, 'E' expire, 'H' holders, 'X' exists), now_ms, sweep limit.
-- S (after a bounded sweep) -> {available, held, issued}; E -> holds returned; H -> holder names (held, then
-- issued); X -> 1 if the shard exists.
local op = ARGV[1]
if op == 'S' then
  sweep(clock(ARGV[2]), tonumber(ARGV[3]))
  local c = redis.call('HMGET', KC, 'a', 'h', 'i')
  return { tonumber(c[1] or '0'), tonumber(c[2] or '0'), tonumber(c[3] or '0') }
elseif op == 'E' then
  return sweep(clock(ARGV[2]), tonumber(ARGV[3]))
elseif op == 'H' then
  local out = redis.call('HKEYS', KH)
  for _, h in ipairs(redis.call('HKEYS', KI)) do
    out[#out + 1] = h
  end
  return out
elseif op == 'X' then
  return redis.call('EXISTS', KC)
end
return error('kami: unknown admin op ' .. tostring(op))
