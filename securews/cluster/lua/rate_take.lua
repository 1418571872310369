-- KEYS: rate.  ARGV: now, interval (ms), burst.
return take_token(KEYS[1], now_ms(), tonumber(ARGV[2]), tonumber(ARGV[3]))
