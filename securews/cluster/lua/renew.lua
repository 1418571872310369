-- KEYS: epoch, this node's registration, then (count, leases) pairs.
-- ARGV: now, node, lease (ms), this process's instance token, then the
-- node's exact number of places for each pair.  Sets the node's share of
-- each count to what it really holds (so a lost release or a lapsed
-- share is corrected) and extends it.  Answers {epoch, owner}: owner is
-- the instance token another process registered under this node id, if
-- one did (two live nodes with one id would overwrite each other).
local now, node, lease = now_ms(), ARGV[2], tonumber(ARGV[3])
local owner = redis.call('GET', KEYS[2])
if owner and owner ~= ARGV[4] then
  return {redis.call('GET', KEYS[1]), owner}
end
redis.call('SET', KEYS[2], ARGV[4], 'PX', lease)
for i = 3, #KEYS, 2 do
  local count, leases = KEYS[i], KEYS[i + 1]
  local held = tonumber(ARGV[4 + (i - 1) / 2])
  if held > 0 then
    redis.call('HSET', count, node, held)
    redis.call('ZADD', leases, now + lease, node)
    extend(count, lease)
    extend(leases, lease)
  else
    redis.call('HDEL', count, node)
    redis.call('ZREM', leases, node)
  end
end
return {redis.call('GET', KEYS[1]), false}
