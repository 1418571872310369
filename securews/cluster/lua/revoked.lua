-- KEYS: revoked principal, revoked token.  ARGV: now, issued_at (ms or
-- ''), has_jti.  1 when revoked.
if is_revoked(KEYS[1], KEYS[2], ARGV[2], ARGV[3]) then return 1 end
return 0
