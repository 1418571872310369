-- A handshake's principal check, in one round trip.  KEYS: revoked
-- principal, revoked token, count, leases.  ARGV: now, node, limit,
-- lease (ms), issued_at (ms or ''), has_jti ('1'/'0').  Answers
-- {revoked 1/0, placed 1/0}: a revoked credential takes no place.
local now = now_ms()
if is_revoked(KEYS[1], KEYS[2], ARGV[5], ARGV[6]) then return {1, 0} end
return {0, acquire(KEYS[3], KEYS[4], ARGV[2], now, tonumber(ARGV[3]), tonumber(ARGV[4]))}
