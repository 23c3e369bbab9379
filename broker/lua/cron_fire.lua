#!lua
-- Fire one cron trigger of a graph for one fire time, exactly once across every Runtime:
-- only the call that sets the fire marker (SET NX) starts the run, writing exactly what
-- StateManager.trigger writes (run hash, run store, runs index, the root state).
-- Every key is checked before the marker is set (types; the target stream has entry ids
-- left), and hashes are written in bounded chunks: nothing can fail after the first write,
-- so a fire is never marked done without its run. The `#!lua` shebang makes Redis refuse
-- the call up front when over maxmemory.
--
-- KEYS: marker, graphs hash, run hash, run store, runs index, target (the root node's
--       stream, or its delayed set when due_ms > 0).
-- ARGV: marker ttl (s), graph name, graph version, run id, created ms, index size,
--       envelope, due_ms, n run fields, run field/value x n, store key/value ...
-- Returns 1 fired, 0 already fired (marker taken), -1 the graph's current version is not
-- ARGV[3] any more (the caller reloads the graph and tries again); an error when a key
-- holds the wrong type (nothing written).
--@include _runstart.lua

local marker, graphs, run, store, index, target =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local due_ms = tonumber(ARGV[8])

local function check(key, want)
  local problem = key_problem(key, want, want == 'stream')  -- broker/lua/_checks.lua
  if problem then return redis.error_reply('cron_fire: ' .. problem) end
  return nil
end

local bad = check(graphs, 'hash') or check(marker, 'string') or check(run, 'hash')
            or check(store, 'hash') or check(index, 'zset')
            or check(target, due_ms > 0 and 'zset' or 'stream')
if bad then return bad end
if redis.call('HGET', graphs, ARGV[2]) ~= ARGV[3] then
  return -1
end
local run_id = ARGV[4]
if not redis.call('SET', marker, run_id, 'NX', 'EX', ARGV[1]) then
  return 0
end

write_run(run, store, index, target, 4)  -- broker/lua/_runstart.lua
return 1
