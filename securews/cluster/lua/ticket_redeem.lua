-- KEYS: the ticket.  ARGV: now.  The first presentation spends it,
-- whatever comes of it (a stolen ticket tried from the wrong place is
-- burnt).  Answers {'bad_ticket'}, {'reused'}, {'expired'}, or
-- {'ok', sealed}.
local entry = redis.call('HMGET', KEYS[1], 'expires', 'spent', 'sealed')
if not entry[1] then return {'bad_ticket'} end
if entry[2] == '1' then return {'reused'} end
redis.call('HSET', KEYS[1], 'spent', '1')
if tonumber(entry[1]) <= now_ms() then return {'expired'} end
return {'ok', entry[3]}
