-- KEYS: count, leases.  ARGV: now, node, limit, lease (ms).
return acquire(KEYS[1], KEYS[2], ARGV[2], now_ms(), tonumber(ARGV[3]), tonumber(ARGV[4]))
