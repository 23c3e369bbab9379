#!lua
-- Fire one cron trigger of a graph for one fire time, exactly once across every Runtime:
-- only the call that sets the fire marker (SET NX) starts the run, writing what
-- StateManager.trigger writes (run hash, run store, runs index, the root state; only
-- `created_ms` differs: Redis's clock here, the caller's there).
-- Every key is checked before the marker is set (types; the target stream has entry ids
-- left), and hashes are written in bounded chunks: nothing can fail after the first write,
-- so a fire is never marked done without its run. The `#!lua` shebang makes Redis refuse
-- the call up front when over maxmemory.
--
-- The fire time is checked against Redis's own clock (TIME), the one clock every Runtime
-- shares: a fire time is fired no earlier than it is due, and (given a bound) no later than
-- `late` seconds after, whatever the calling host's clock says. With `late` below the
-- marker's ttl, the marker (set at or after the fire time, and expiring by Redis's clock
-- too) outlives every attempt, so no fire time can be fired twice. A fired run's
-- `created_ms` (and its runs-index score) is Redis's clock when it was fired.
--
-- KEYS: marker, graphs hash, run hash, run store, runs index, target (the root node's
--       stream, or its delayed set when due_ms > 0).
-- ARGV: marker ttl (s), graph name, graph version, fire time (epoch s), late bound (s; -1:
--       none), run id, created ms, index size, envelope, due_ms, n run fields, run
--       field/value x n, store key/value ...
-- Returns 1 fired, 0 already fired (marker taken), -1 the graph's current version is not
-- ARGV[3] any more (the caller reloads the graph and tries again), -2 not due yet by
-- Redis's clock, -3 more than the late bound late by Redis's clock (nothing written for
-- -1..-3); an error when a key holds the wrong type (nothing written).
--@include _runstart.lua

local marker, graphs, run, store, index, target =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local A = 6  -- where RunStart.script_args() begin
local due_ms = tonumber(ARGV[A + 4])

local function check(key, want)
  local problem = key_problem(key, want, want == 'stream')  -- broker/lua/_checks.lua
  if problem then return redis.error_reply('cron_fire: ' .. problem) end
  return nil
end

local bad = check(graphs, 'hash') or check(marker, 'string') or check(run, 'hash')
            or check(store, 'hash') or check(index, 'zset')
            or check(target, due_ms > 0 and 'zset' or 'stream')
if bad then return bad end
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local fire_ms, late = tonumber(ARGV[4]) * 1000, tonumber(ARGV[5])
if now_ms < fire_ms then
  return -2
end
if late >= 0 and now_ms > fire_ms + late * 1000 then
  return -3
end
if redis.call('HGET', graphs, ARGV[2]) ~= ARGV[3] then
  return -1
end
local run_id = ARGV[A]
if not redis.call('SET', marker, run_id, 'NX', 'EX', ARGV[1]) then
  return 0
end

write_run(run, store, index, target, A)  -- broker/lua/_runstart.lua
-- When it was fired, by Redis's clock (the caller's clock planned it).
redis.call('HSET', run, 'created_ms', now_ms)
redis.call('ZADD', index, 'XX', now_ms, run_id)
return 1
