-- KEYS: the channel's meta (epoch, offset), its history stream.  ARGV:
-- now, data (JSON text), history size, history ttl (ms), a fresh epoch
-- (used when the channel has no history left), the pub/sub channel.
-- Appends to the history (the stream id is the offset: reads by offset
-- need no index) and publishes "epoch:offset:data", in one step, so a
-- message is either in both or in neither.  Answers {epoch, offset}.
local ttl = tonumber(ARGV[4])
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  epoch = ARGV[5]
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'offset', 0)
  redis.call('DEL', KEYS[2])
end
local offset = redis.call('HINCRBY', KEYS[1], 'offset', 1)
redis.call('XADD', KEYS[2], 'MAXLEN', '=', ARGV[3], offset .. '-0', 'd', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('PEXPIRE', KEYS[2], ttl)
redis.call('PUBLISH', ARGV[6], epoch .. ':' .. offset .. ':' .. ARGV[2])
return {epoch, offset}
