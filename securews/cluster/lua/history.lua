-- KEYS: the channel's meta, its history stream.  ARGV: now, after (an
-- offset), at most how many entries, history ttl (ms), a fresh epoch (for
-- a channel with no history: it starts one, kept by its next publish).
-- Answers {epoch, offset, offset1, data1, offset2, data2, ...}: the
-- channel's position and the kept entries after `after`.
local meta = redis.call('HMGET', KEYS[1], 'epoch', 'offset')
local epoch, offset = meta[1], tonumber(meta[2])
if not epoch then
  epoch, offset = ARGV[5], 0
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'offset', 0)
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[4]))
end
local answer = {epoch, offset}
local after = tonumber(ARGV[2])
if after < offset then
  local entries = redis.call('XRANGE', KEYS[2], (after + 1) .. '-0', '+',
                             'COUNT', tonumber(ARGV[3]))
  for _, entry in ipairs(entries) do
    local id = entry[1]
    table.insert(answer, tonumber(string.sub(id, 1, string.find(id, '-') - 1)))
    table.insert(answer, entry[2][2])
  end
end
return answer
