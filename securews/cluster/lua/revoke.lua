-- KEYS: the revocation key, the control stream.  ARGV: now, kind
-- ('principal'/'jti'), digest, until (ms), stream length.  A principal's
-- key holds when it was revoked (credentials issued later are not); each
-- entry lives until what it revoked would have expired anyway (the later
-- of two revocations wins).  Every node reads the stream and closes its
-- sessions of what was revoked.
local now, until_ms = now_ms(), tonumber(ARGV[4])
if until_ms <= now then return 0 end
local held = redis.call('PEXPIRETIME', KEYS[1])
if held > until_ms then until_ms = held end
local value = '1'
if ARGV[2] == 'principal' then value = tostring(now) end
redis.call('SET', KEYS[1], value, 'PXAT', until_ms)
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], '*',
           'kind', ARGV[2], 'digest', ARGV[3], 'at', tostring(now))
return 1
