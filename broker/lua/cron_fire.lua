-- Fire one cron trigger of a graph for one fire time, exactly once across every Runtime:
-- only the call that sets the fire marker (SET NX) starts the run, writing exactly what
-- StateManager.trigger writes (run hash, run store, runs index, the root state).
--
-- KEYS: marker, graphs hash, run hash, run store, runs index, target (the root node's
--       stream, or its delayed set when due_ms > 0).
-- ARGV: marker ttl (s), graph name, graph version, run id, created ms, index size,
--       envelope, due_ms, n run fields, run field/value x n, store key/value ...
-- Returns 1 fired, 0 already fired (marker taken), -1 the graph's current version is not
-- ARGV[3] any more (the caller reloads the graph and tries again).

local marker, graphs, run, store, index, target =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
if redis.call('HGET', graphs, ARGV[2]) ~= ARGV[3] then
  return -1
end
local run_id = ARGV[4]
if not redis.call('SET', marker, run_id, 'NX', 'EX', ARGV[1]) then
  return 0
end
local n = tonumber(ARGV[9])
local first_store = 10 + 2 * n
redis.call('HSET', run, unpack(ARGV, 10, first_store - 1))
if #ARGV >= first_store then
  redis.call('HSET', store, unpack(ARGV, first_store))
end
redis.call('ZADD', index, ARGV[5], run_id)
redis.call('ZREMRANGEBYRANK', index, 0, -tonumber(ARGV[6]) - 1)
if tonumber(ARGV[8]) > 0 then
  redis.call('ZADD', target, ARGV[8], ARGV[7])
else
  redis.call('XADD', target, '*', '_exo', ARGV[7])
end
return 1
