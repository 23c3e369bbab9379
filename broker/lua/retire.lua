-- Remove a stopping worker's consumer from a stream's group, but only when it holds no
-- pending entries: XGROUP DELCONSUMER drops the consumer's pending entries from the group,
-- and a pending entry must never be dropped (it would be lost to reclamation).
-- KEYS[1]: stream.  ARGV: group, consumer.  Returns 1 removed, 0 kept.
local pending = redis.pcall('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2])
if pending.err or pending[1] then
  return 0
end
redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
return 1
