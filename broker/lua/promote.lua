#!lua
-- Move due delayed states to their streams, atomically (a state is never both delayed and
-- queued, never lost in between). Any Runtime may run it; no single scheduler to lose.
-- Each member is XADDed before it is ZREMed, and each pair is checked first (the zset and
-- the stream hold their types, the stream has entry ids left): a bad pair is skipped and
-- reported, so it neither fails the call half-way nor blocks the other nodes' promotions.
--
-- KEYS:    pairs {delayed zset, stream} (the stream receives entries `_exo <member>`).
-- ARGV[1]: max entries moved per zset in this call.
-- Returns {moved, next_due_ms, problem...} (next_due_ms = -1 when nothing else is delayed;
-- one text per skipped pair).

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local limit = tonumber(ARGV[1])
local moved = 0
local next_due = -1
local problems = {}

-- key_problem: broker/lua/_checks.lua

for i = 1, #KEYS, 2 do
  local p = key_problem(KEYS[i], 'zset')
  local due = {}
  if not p then
    due = redis.call('ZRANGEBYSCORE', KEYS[i], '-inf', now, 'LIMIT', 0, limit)
    if #due > 0 then p = key_problem(KEYS[i + 1], 'stream', true) end  -- checked only when there is work
  end
  if p then
    problems[#problems + 1] = p
  else
    for _, member in ipairs(due) do
      redis.call('XADD', KEYS[i + 1], '*', '_exo', member)
      redis.call('ZREM', KEYS[i], member)
    end
    moved = moved + #due
  end
  if not p then  -- a skipped pair's due members would only wake the promoter at once again
    local head = redis.call('ZRANGE', KEYS[i], 0, 0, 'WITHSCORES')
    if head[2] then
      local score = tonumber(head[2])
      if next_due < 0 or score < next_due then
        next_due = score
      end
    end
  end
end
local out = {moved, next_due}
for _, p in ipairs(problems) do out[#out + 1] = p end
return out
