-- Keep the claim of long-running entries alive: reset their idle time (XCLAIM JUSTID does
-- not count a delivery) so other workers do not reclaim a healthy slow execution. Only
-- entries still owned by this consumer are touched; one already reclaimed elsewhere is
-- left alone (its late settle will find its ack failing and emit nothing).
--
-- KEYS[1]: stream.  ARGV: group, consumer, id...
-- Returns the ids this consumer no longer owns.

local stream, group, consumer = KEYS[1], ARGV[1], ARGV[2]
local lost = {}
for i = 3, #ARGV do
  local id = ARGV[i]
  local owned = redis.pcall('XPENDING', stream, group, id, id, 1, consumer)
  if not owned.err and owned[1] then
    redis.call('XCLAIM', stream, group, consumer, 0, id, 'JUSTID')
  else
    lost[#lost + 1] = id
  end
end
return lost
