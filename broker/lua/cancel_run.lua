#!lua
--@include _checks.lua
-- Cancel a run, at most once: a RUNNING run becomes CANCELLED (finished now, a run event
-- for waiters, its keys expiring after the retention), and its `open` count drops by
-- CANCELLED_OPEN (ARGV[3], a huge negative number) so that every later settle of one of its
-- states sees a count far below zero: settle.lua then acks and deletes the state without
-- emitting anything (no successors, retries, results, history; no unite fires; the run is
-- never finished again). One extra HINCRBY here instead of a status read per settled state.
--
-- KEYS: run hash, events stream, history, results, store, states (per-state records).
-- ARGV: run id, retention s (0: keep), CANCELLED_OPEN.
-- Returns the run's status after the call: 'CANCELLED' (now or before), 'SUCCEEDED' /
-- 'FAILED' (it had finished: nothing changed), or 'MISSING'.
local run, events = KEYS[1], KEYS[2]
local status = redis.call('HGET', run, 'status')
if not status then
  return 'MISSING'
end
if status ~= 'RUNNING' then
  return status
end
local problem = key_problem(events, 'stream', true)
if problem then
  return redis.error_reply('cancel_run: ' .. problem)
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', run, 'status', 'CANCELLED', 'finished_ms', now)
redis.call('HINCRBY', run, 'open', ARGV[3])
redis.call('XADD', events, 'MAXLEN', '~', 10000, '*', 'run', ARGV[1], 'status', 'CANCELLED')
local retention = tonumber(ARGV[2])
if retention > 0 then
  for i = 1, #KEYS do
    if i ~= 2 then redis.call('EXPIRE', KEYS[i], retention) end
  end
end
return 'CANCELLED'
