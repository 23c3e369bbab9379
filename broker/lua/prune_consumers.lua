-- Remove the consumers of KEYS[1]'s group that hold nothing and look dead: workers killed
-- with `kill -9` never leave the group themselves. XGROUP DELCONSUMER drops a consumer's
-- pending entries, so pending == 0 is checked here, in the same atomic script: a consumer
-- that reads meanwhile cannot slip in between.
--
-- Dead = idle in the group (XINFO) for min_idle_ms AND not seen alive for as long. The
-- second record is needed: Redis 7.0 refreshes a consumer's idle time only when a read or
-- claim hands it something, so a live worker on an empty stream looks idle. Every caller
-- records itself in KEYS[2] (consumer -> Redis time ms), and does so more often than
-- min_idle_ms (it calls this every min_idle_ms / 2 per stream). A consumer removed anyway
-- (e.g. its event loop hung that long) comes back by itself at its next read or claim.
--
-- KEYS[1]: stream, KEYS[2]: the namespace's liveness zset.
-- ARGV: group, min_idle_ms, the calling consumer (recorded alive, never removed).
-- Returns the names of the consumers removed.

local stream, alive = KEYS[1], KEYS[2]
local group, min_idle, caller = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local consumers = redis.pcall('XINFO', 'CONSUMERS', stream, group)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', alive, now, caller)
-- Not seen for min_idle_ms: dead by the rule above; forgetting them keeps the set small.
redis.call('ZREMRANGEBYSCORE', alive, '-inf', '(' .. (now - min_idle))
if consumers.err then
  return {}  -- the stream or its group was deleted: nobody to remove
end
local removed = {}
for _, c in ipairs(consumers) do
  local info = {}
  for i = 1, #c, 2 do
    info[c[i]] = c[i + 1]
  end
  local name = info['name']
  if name ~= caller and info['pending'] == 0 and (info['idle'] or -1) >= min_idle
      and not redis.call('ZSCORE', alive, name) then
    redis.call('XGROUP', 'DELCONSUMER', stream, group, name)
    removed[#removed + 1] = name
  end
end
return removed
