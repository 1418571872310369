-- KEYS: epoch, then (count, leases) pairs.  ARGV: now, node, lease (ms),
-- then node's exact number of places for each pair.  Sets node's share of
-- each count to what the node really holds (so a lost release or a lapsed
-- share is corrected) and extends it; answers the engine's epoch.
local now, node, lease = now_ms(), ARGV[2], tonumber(ARGV[3])
for i = 2, #KEYS, 2 do
  local count, leases = KEYS[i], KEYS[i + 1]
  local held = tonumber(ARGV[3 + i / 2])
  if held > 0 then
    redis.call('HSET', count, node, held)
    redis.call('ZADD', leases, now + lease, node)
    redis.call('PEXPIRE', count, lease)
    redis.call('PEXPIRE', leases, lease)
  else
    redis.call('HDEL', count, node)
    redis.call('ZREM', leases, node)
  end
end
return redis.call('GET', KEYS[1])
