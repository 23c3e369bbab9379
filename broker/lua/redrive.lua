-- Move one dead letter back to its node's stream, atomically and at most once: only the
-- call that deletes the dead letter re-adds the state (a second redrive finds it gone).
-- For a state of a graph run, the run is re-opened: the failure it counted is undone.
--
-- KEYS: dead stream, node stream, run hash, run results, run store, run history (the last
--       four: any keys of the namespace when no run).
-- ARGV: dead entry id, identifier ('' when no run), field, value, ...
-- Returns 1 when redriven, 0 when the dead letter was not there, -1 when its run expired.

local dead, queue, run, results, store, history = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local id, ident = ARGV[1], ARGV[2]
if ident ~= '' and redis.call('EXISTS', run) == 0 then
  return -1
end
if redis.call('XDEL', dead, id) == 0 then
  return 0
end
redis.call('XADD', queue, '*', unpack(ARGV, 3))
if ident ~= '' then
  redis.call('HINCRBY', run, 'open', 1)
  redis.call('HINCRBY', run, 'failed', -1)
  redis.call('HINCRBY', run, 'f:' .. ident, -1)
  redis.call('HSET', run, 'status', 'RUNNING')
  redis.call('HDEL', run, 'finished_ms')
  redis.call('PERSIST', run)
  redis.call('PERSIST', results)
  redis.call('PERSIST', store)
  redis.call('PERSIST', history)
end
return 1
