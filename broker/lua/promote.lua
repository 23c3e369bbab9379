-- Move due delayed states to their streams, atomically (a state is never both delayed and
-- queued, never lost in between). Any Runtime may run it; no single scheduler to lose.
--
-- KEYS:    pairs {delayed zset, stream} (the stream receives entries `_exo <member>`).
-- ARGV[1]: max entries moved per zset in this call.
-- Returns {moved, next_due_ms} (next_due_ms = -1 when nothing else is delayed).

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local limit = tonumber(ARGV[1])
local moved = 0
local next_due = -1
for i = 1, #KEYS, 2 do
  local due = redis.call('ZRANGEBYSCORE', KEYS[i], '-inf', now, 'LIMIT', 0, limit)
  for _, member in ipairs(due) do
    redis.call('XADD', KEYS[i + 1], '*', '_exo', member)
    redis.call('ZREM', KEYS[i], member)
  end
  moved = moved + #due
  local head = redis.call('ZRANGE', KEYS[i], 0, 0, 'WITHSCORES')
  if head[2] then
    local score = tonumber(head[2])
    if next_due < 0 or score < next_due then
      next_due = score
    end
  end
end
return {moved, next_due}
