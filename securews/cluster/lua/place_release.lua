-- KEYS: count, leases.  ARGV: now, node.  Gives back one of node's places.
local left = redis.call('HINCRBY', KEYS[1], ARGV[2], -1)
if left <= 0 then
  redis.call('HDEL', KEYS[1], ARGV[2])
  redis.call('ZREM', KEYS[2], ARGV[2])
end
return left
