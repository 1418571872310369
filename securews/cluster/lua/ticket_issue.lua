-- KEYS: the ticket, the principal's outstanding tickets.  ARGV: now, ttl
-- (ms), max_outstanding, ticket digest, what the ticket stands for
-- (sealed: only the ticket opens it).  A principal holds at most
-- max_outstanding tickets minted within ttl, spent or not.  An entry
-- outlives its expiry by one ttl, so a late ticket is told "expired",
-- not "unknown".
local now, ttl = now_ms(), tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[3]) then return 0 end
redis.call('HSET', KEYS[1], 'expires', tostring(now + ttl), 'spent', '0',
           'sealed', ARGV[5])
redis.call('PEXPIRE', KEYS[1], 2 * ttl)
redis.call('ZADD', KEYS[2], now + ttl, ARGV[4])
redis.call('PEXPIRE', KEYS[2], ttl)
return 1
