-- KEYS: this node's registration.  ARGV: now (unused), this process's
-- instance token.  A node stopping gives its id back, if it still holds
-- it, so that its successor under the same id need not wait a lease.
if redis.call('GET', KEYS[1]) == ARGV[2] then
  return redis.call('DEL', KEYS[1])
end
return 0
