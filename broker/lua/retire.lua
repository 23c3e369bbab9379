-- Remove a stopping worker's consumer from a stream's group, but only when it holds no
-- pending entries: XGROUP DELCONSUMER drops the consumer's pending entries from the group,
-- and a pending entry must never be dropped (it would be lost to reclamation). Either way
-- it is no longer recorded alive (see prune_consumers.lua): a consumer kept for its pending
-- entries is removed by other workers once those are reclaimed.
-- KEYS[1]: stream, KEYS[2]: the namespace's liveness zset.  ARGV: group, consumer.
-- Returns 1 removed, 0 kept.
local pending = redis.pcall('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2])
redis.call('ZREM', KEYS[2], ARGV[2])
if pending.err or pending[1] then
  return 0
end
redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
return 1
