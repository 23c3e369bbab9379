#!lua
-- Start one run (StateManager.trigger / trigger_many), at most once: a run whose hash
-- exists already was started by an earlier call with the same run id (a client's retry
-- after a lost reply re-sends the same ids), and is left as it is.
-- The run's own keys are checked before the first write; the keys its runs share (runs
-- index, root stream or delayed set) were checked for the whole batch by the caller
-- (Broker.start_runs). The `#!lua` shebang makes Redis refuse the call up front when over
-- maxmemory or read-only, so a refused start writes nothing.
--
-- KEYS: run hash, run store, runs index, target (the root node's stream, or its delayed
--       set when due_ms > 0).
-- ARGV: RunStart.script_args() (see _runstart.lua).
-- Returns 1 started, 0 already started; an error when a key holds the wrong type.
--@include _runstart.lua

local run, store, index, target = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
if redis.call('EXISTS', run) == 1 then
  return 0
end
local problem = key_problem(store, 'hash', false)  -- broker/lua/_checks.lua
if problem then return redis.error_reply('start_run: ' .. problem) end
write_run(run, store, index, target, 1)
return 1
