#!lua
-- Move one dead letter back to its node's stream, atomically and at most once: only a call
-- that finds the dead letter re-adds the state and deletes it (a second redrive finds it
-- gone). For a state of a graph run, the run is re-opened: the failure it counted is undone.
--
-- Nothing may fail after the first write (Redis does not roll a script back): every check
-- comes first, and the re-add (XADD) goes before the delete (XDEL), so a refused XADD loses
-- nothing. The `#!lua` shebang makes Redis refuse the call up front when over maxmemory.
--
-- KEYS: dead stream, node stream, run hash, run results, run store, run history, run
--       states (per-state records) (the last five: any keys of the namespace when no run).
-- ARGV: dead entry id, identifier ('' when no run), state id, field, value, ...
-- A state of a run that StateManager.retry_state re-ran (field `><state>` of its records)
-- is not redriven: its retry runs it already. A redriven state's record is removed: the
-- state is in flight again (retry_state refuses it until it settles and writes a new one).
-- Returns 1 when redriven, 0 when the dead letter was not there, -1 when its run expired,
-- '<reason>' when refused (nothing written), '1 <error>' when redriven but re-opening its
-- run failed part-way (a corrupted run hash).

local dead, queue, run, results, store, history, states =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local id, ident, state = ARGV[1], ARGV[2], ARGV[3]
local FIRST_FIELD = 4
local n_values = #ARGV - FIRST_FIELD + 1
if n_values < 2 or n_values % 2 ~= 0 then
  return 'the state to redrive needs fields and values'
end
if n_values > 7000 then  -- unpack below: Lua's C stack holds ~8000 values
  return 'the state has ' .. (n_values / 2) .. ' fields, more than a script can re-add'
end

-- key_problem: broker/lua/_checks.lua
local problem = key_problem(dead, 'stream')
if problem then return problem end
if #redis.call('XRANGE', dead, id, id) == 0 then
  return 0
end
if ident ~= '' then
  if redis.call('EXISTS', run) == 0 then
    return -1
  end
  problem = key_problem(run, 'hash')
  if problem then return problem end
  if redis.call('HGET', run, 'status') == 'CANCELLED' then
    -- Re-opening it would undo the cancel; its states are dropped anyway.
    return 'its run was cancelled: a cancelled run takes no state back'
  end
  problem = key_problem(states, 'hash')
  if problem then return problem end
  local retried = redis.call('HGET', states, '>' .. state)
  if retried then
    return 'state ' .. state .. ' was retried (retry_state) as state ' .. retried ..
           ': redriving it too would run it twice'
  end
end
problem = key_problem(queue, 'stream', true)
if problem then return problem end

redis.call('XADD', queue, '*', unpack(ARGV, FIRST_FIELD))
redis.call('XDEL', dead, id)
if ident ~= '' then
  local ok, err = pcall(function()
    redis.call('HINCRBY', run, 'open', 1)
    redis.call('HINCRBY', run, 'failed', -1)
    redis.call('HINCRBY', run, 'f:' .. ident, -1)
    redis.call('HSET', run, 'status', 'RUNNING')
    redis.call('HDEL', run, 'finished_ms')
    redis.call('PERSIST', run)
    redis.call('PERSIST', results)
    redis.call('PERSIST', store)
    redis.call('PERSIST', history)
    redis.call('PERSIST', states)
    redis.call('HDEL', states, state)
  end)
  if not ok then
    if type(err) == 'table' then err = err['err'] end
    return '1 ' .. tostring(err)
  end
end
return 1
