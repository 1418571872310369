-- KEYS: count, leases.  ARGV: now.  The places held by every node whose
-- share has not lapsed.
purge(KEYS[1], KEYS[2], now_ms())
return total(KEYS[1])
