-- Take over entries of KEYS[1] that have been pending (delivered, unsettled) longer than the
-- visibility timeout: their worker died or hung. Uses XPENDING + XCLAIM rather than
-- XAUTOCLAIM because the delivery count is needed, atomically with the claim, to stop a
-- poison message (one that kills every worker that runs it) from looping forever.
--
-- KEYS[1]: stream.  ARGV: group, consumer, min_idle_ms, count
-- Returns { {id, deliveries_before_claim, {field, value, ...}}, ... }; entries deleted
-- meanwhile are dropped from the pending list (XCLAIM of a missing entry returns nothing).

local stream, group, consumer = KEYS[1], ARGV[1], ARGV[2]
local min_idle, count = tonumber(ARGV[3]), tonumber(ARGV[4])
local pending = redis.pcall('XPENDING', stream, group, 'IDLE', min_idle, '-', '+', count)
if pending.err then
  return {}  -- the stream or its group was deleted: nothing to reclaim
end
local out = {}
for _, p in ipairs(pending) do
  local id, deliveries = p[1], p[4]
  local claimed = redis.call('XCLAIM', stream, group, consumer, min_idle, id)
  if claimed[1] and claimed[1] ~= false then
    out[#out + 1] = {id, deliveries, claimed[1][2]}
  else
    -- The entry is gone (deleted while pending): nothing to run; clear the PEL slot.
    redis.call('XACK', stream, group, id)
  end
end
return out
