-- Take over entries of KEYS[1] that have been pending (delivered, unsettled) longer than the
-- visibility timeout: their worker died or hung. Uses XPENDING + XCLAIM rather than
-- XAUTOCLAIM because the delivery count is needed, atomically with the claim, to tell
-- suspects (entries whose earlier owners all died or hung: maybe what killed them) from
-- entries delivered once (mostly innocent read-ahead of one dead worker), and to stop a
-- poison message (one that kills every worker that runs it) from looping forever.
--
-- KEYS[1]: stream.
-- ARGV: group, consumer, min_idle_ms, count (claim at most this many), suspects (at most
--   this many of them suspects), suspect_from (deliveries so far from which an entry is a
--   suspect), poison_at (deliveries so far from which an entry is claimed whatever the
--   suspect budget: it is dead-lettered, not run), scan (examine at most this many idle
--   pending entries: suspects skipped for want of budget must not hide the others).
-- Returns { {id, deliveries_before_claim, {field, value, ...}}, ... } in id order; entries
-- deleted meanwhile are dropped from the pending list (XCLAIM of a missing entry returns
-- nothing). Nothing here can fail after the first write: XPENDING is checked for a missing
-- group before anything else, and XCLAIM/XACK of a group that exists cannot fail.

local stream, group, consumer = KEYS[1], ARGV[1], ARGV[2]
local min_idle, count = tonumber(ARGV[3]), tonumber(ARGV[4])
local suspects, suspect_from = tonumber(ARGV[5]), tonumber(ARGV[6])
local poison_at, scan = tonumber(ARGV[7]), tonumber(ARGV[8])
local out = {}
local start = '-'
while #out < count and scan > 0 do
  local page = math.min(scan, 200)
  local pending = redis.pcall('XPENDING', stream, group, 'IDLE', min_idle, start, '+', page)
  if pending.err then
    return out  -- the stream or its group was deleted: nothing (more) to reclaim
  end
  scan = scan - #pending
  for _, p in ipairs(pending) do
    local id, deliveries = p[1], p[4]
    local take = deliveries < suspect_from or deliveries >= poison_at
    if not take and suspects > 0 then
      suspects = suspects - 1
      take = true
    end
    if take then
      local claimed = redis.call('XCLAIM', stream, group, consumer, min_idle, id)
      if claimed[1] and claimed[1] ~= false then
        out[#out + 1] = {id, deliveries, claimed[1][2]}
        if #out >= count then
          break
        end
      else
        -- The entry is gone (deleted while pending): nothing to run; clear the PEL slot.
        redis.call('XACK', stream, group, id)
      end
    end
  end
  if #pending < page then
    break  -- no more idle entries
  end
  start = '(' .. pending[#pending][1]
end
return out
