-- A handshake's network check, in one round trip.  KEYS: rate, count,
-- leases.  ARGV: now, node, limit, lease (ms), with_rate ('1'/'0'),
-- interval (ms), burst.  Answers {wait ms or -1, placed 1/0}: a refused
-- token takes no place.
local now = now_ms()
if ARGV[5] == '1' then
  local wait = take_token(KEYS[1], now, tonumber(ARGV[6]), tonumber(ARGV[7]))
  if wait >= 0 then return {wait, 0} end
end
return {-1, acquire(KEYS[2], KEYS[3], ARGV[2], now, tonumber(ARGV[3]), tonumber(ARGV[4]))}
