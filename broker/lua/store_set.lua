-- Write keys of a run's store, only while the run exists. A late write (a state executed
-- again after its run finished) keeps the store expiring with the run, so no store ever
-- outlives its run.
--
-- KEYS: run hash, run store.  ARGV: key, msgpack value, ...
-- Returns 1 written, 0 the run does not exist (unknown or expired).

local run, store = KEYS[1], KEYS[2]
if redis.call('EXISTS', run) == 0 then
  return 0
end
redis.call('HSET', store, unpack(ARGV))
local ttl = redis.call('PTTL', run)
if ttl > 0 then
  redis.call('PEXPIRE', store, ttl)
end
return 1
