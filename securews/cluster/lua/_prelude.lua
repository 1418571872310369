-- Prepended to every securews script.  ARGV[1] is the time in
-- milliseconds, or '' for the engine's own clock (TIME): nodes' clocks
-- never matter; only tests pass a clock of their own.
local function now_ms()
  if ARGV[1] ~= '' then return tonumber(ARGV[1]) end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- A count is a hash node -> places held, with a sorted set node -> until
-- when that share counts.  A node renews its shares; a crashed node's
-- lapse, and are purged by the next reader.
local function purge(count, leases, now)
  local lapsed = redis.call('ZRANGEBYSCORE', leases, '-inf', now)
  for _, node in ipairs(lapsed) do
    redis.call('HDEL', count, node)
    redis.call('ZREM', leases, node)
  end
end

local function total(count)
  local sum = 0
  for _, held in ipairs(redis.call('HVALS', count)) do
    sum = sum + tonumber(held)
  end
  return sum
end

-- A key lives at least `ms` more: never shortened (a node with a shorter
-- lease must not expire another node's longer share).
local function extend(key, ms)
  if redis.call('PTTL', key) < ms then redis.call('PEXPIRE', key, ms) end
end

local function hold(count, leases, node, now, lease)
  redis.call('HINCRBY', count, node, 1)
  redis.call('ZADD', leases, now + lease, node)
  extend(count, lease)
  extend(leases, lease)
end

-- A place for node if the key holds fewer than limit: 1, else 0.
local function acquire(count, leases, node, now, limit, lease)
  purge(count, leases, now)
  if total(count) >= limit then return 0 end
  hold(count, leases, node, now, lease)
  return 1
end

-- GCRA, a token bucket of `burst` tokens refilled every `interval` ms, in
-- one timestamp (the theoretical arrival time): -1 when a token is taken,
-- else the milliseconds until one would be.
local function take_token(key, now, interval, burst)
  local tat = tonumber(redis.call('GET', key)) or now
  if tat < now then tat = now end
  local next_tat = tat + interval
  local allowed_at = next_tat - burst * interval
  if allowed_at > now then return math.ceil(allowed_at - now) end
  redis.call('SET', key, tostring(next_tat), 'PX', math.max(1, math.ceil(next_tat - now)))
  return -1
end

-- Whether a credential is revoked: its principal after it was issued
-- (issued_at '' counts as before), or its token (has_jti '1').
local function is_revoked(principal_key, jti_key, issued_at, has_jti)
  local revoked_at = redis.call('GET', principal_key)
  if revoked_at and (issued_at == '' or tonumber(issued_at) <= tonumber(revoked_at)) then
    return true
  end
  return has_jti == '1' and redis.call('EXISTS', jti_key) == 1
end
