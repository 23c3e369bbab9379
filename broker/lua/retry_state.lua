#!lua
-- Re-run one settled state of a run (StateManager.retry_state), at most once: the state
-- gets a new incarnation with the same inputs and context under a new state id, queued
-- now, and its run is re-opened. A state already retried (field `><state>` of the run's
-- states hash) is not retried again; the caller gets the incarnation that was made
-- instead. Concurrent calls therefore make one.
--
-- The caller read the state's record and built the new envelope from it; the record must
-- be unchanged (byte for byte) when this runs, else nothing is written and the caller
-- reads again: a settle, a redrive or another retry may have come in between.
--
-- What the retried state had counted is undone, so the run's counters stay coherent (the
-- new incarnation replaces it): its outcome counter, the run's `failed` for a failure,
-- and in each fan-in group it is a member of: an undecided group gets a member back
-- (`open` + 1; `bad` - 1 for a failed or pruned state); a group whose ALL_SUCCESS unite
-- did not fire because of failures is re-opened the same way (its `fired` guard removed,
-- the run's skip counter and note undone), so the unite fires once every retried branch
-- succeeded; a group whose unite fired is left as it is (the re-run branch does not fire
-- it again: its `fired` guard holds).
--
-- Nothing may fail after the first write (Redis does not roll back a script): every check
-- comes first (key types, and the counters it steps being integers). The `#!lua`
-- shebang makes Redis refuse the call up front when over
-- maxmemory.
--
-- KEYS: run hash, states hash, node stream, history, results, store, dead stream, then
--       per fan-in group of the state: group hash, collected list.
-- ARGV: state id, its record as read, new state id, new envelope, outcome counter field,
--       1 if the state failed (the run's `failed` is undone) else 0, 1 if it counts as a
--       bad member of its groups (failed or pruned) else 0, parent pointer of the new
--       state ('' none), dead-letter id to delete ('' none), then per group: the uniting
--       identifier.
-- Returns {1, new id} when retried, {0, id} when the state had been retried already as
-- `id`, 'CHANGED' when the record changed, 'MISSING' when the run does not exist, or a
-- reason it is refused (nothing written).
local run, states, queue, history, results, store, dead =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local state, seen, new_id, envelope, counter = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local failed, bad, pointer, dead_id = ARGV[6] == '1', ARGV[7] == '1', ARGV[8], ARGV[9]
local FIRST_GROUP_KEY, FIRST_UNITE = 8, 10

if redis.call('EXISTS', run) == 0 then
  return 'MISSING'
end
-- key_problem: broker/lua/_checks.lua
local problem = key_problem(run, 'hash') or key_problem(states, 'hash') or
                key_problem(queue, 'stream', true) or key_problem(dead, 'stream')
if problem then return problem end
if redis.call('HGET', run, 'status') == 'CANCELLED' then
  return 'its run was cancelled: a cancelled run re-runs nothing'
end
local retried = redis.call('HGET', states, '>' .. state)
if retried then
  return {0, retried}
end
if redis.call('HGET', states, state) ~= seen then
  return 'CHANGED'
end
for i = FIRST_GROUP_KEY, #KEYS, 2 do
  problem = key_problem(KEYS[i], 'hash') or key_problem(KEYS[i + 1], 'list')
  if problem then return problem end
end
-- The counters the writes below step must be integers (HINCRBY would fail half-way on a
-- field another client overwrote).
local function not_counter(key, field)
  local v = redis.call('HGET', key, field)
  if v and not string.match(v, '^%-?%d+$') then
    return 'field ' .. field .. ' of ' .. key .. ' holds ' .. v .. ', not a count'
  end
  return nil
end
problem = not_counter(run, 'open') or not_counter(run, counter) or not_counter(run, 'failed')
if problem then return problem end
for i = FIRST_GROUP_KEY, #KEYS, 2 do
  local unite = ARGV[FIRST_UNITE + (i - FIRST_GROUP_KEY) / 2]
  problem = not_counter(KEYS[i], 'open') or not_counter(KEYS[i], 'bad') or
            not_counter(run, 'k:' .. unite)
  if problem then return problem end
end

redis.call('XADD', queue, '*', '_exo', envelope)
redis.call('HSET', states, '>' .. state, new_id, '<' .. new_id, state)
if pointer ~= '' then
  redis.call('HSET', states, '^' .. new_id, pointer)
end
if dead_id ~= '' then
  redis.call('XDEL', dead, dead_id)  -- superseded: a redrive of it would run it twice
end
redis.call('HINCRBY', run, 'open', 1)
redis.call('HINCRBY', run, counter, -1)
if failed then
  redis.call('HINCRBY', run, 'failed', -1)
end
redis.call('HSET', run, 'status', 'RUNNING')
redis.call('HDEL', run, 'finished_ms')
for _, key in ipairs({run, history, results, store, states}) do
  redis.call('PERSIST', key)
end
for i = FIRST_GROUP_KEY, #KEYS, 2 do
  local g, c = KEYS[i], KEYS[i + 1]
  local unite = ARGV[FIRST_UNITE + (i - FIRST_GROUP_KEY) / 2]
  if redis.call('EXISTS', g) == 1 then
    local reopen = false
    if redis.call('HEXISTS', g, 'fired') == 0 then
      reopen = true  -- undecided: one member more
    elseif redis.call('HGET', g, 'strategy') == 'ALL_SUCCESS' and
           tonumber(redis.call('HGET', g, 'bad') or '0') > 0 then
      -- It did not fire because of failed or pruned members: decide it again.
      reopen = true
      redis.call('HDEL', g, 'fired')
      redis.call('HINCRBY', run, 'k:' .. unite, -1)
      redis.call('HDEL', run, 'why:' .. unite)
      redis.call('PERSIST', g)
      redis.call('PERSIST', c)
    end
    if reopen then
      redis.call('HINCRBY', g, 'open', 1)
      if bad then redis.call('HINCRBY', g, 'bad', -1) end
    end
  end
end
return {1, new_id}
