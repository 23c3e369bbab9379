#!lua
-- Compare-and-set one key of a run's store (RunStore.compare_and_set / modify): write the
-- new value only if the key still holds the expected one, compared as the msgpack bytes
-- the SDK wrote. Only while the run exists; the store keeps expiring with its run.
--
-- KEYS: run hash, run store.  ARGV: key, expected ('' = the key must be absent, with
--       ARGV[4] == '1'), new value, expect-absent flag.
-- Returns 1 written, 0 the value was not the expected one, -1 the run does not exist; an
-- error when the store holds another type (nothing written).

--@include _store.lua

local run, store, key, expected, value = KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3]
local absent = ARGV[4] == '1'
if redis.call('EXISTS', run) == 0 then
  return -1
end
local problem = key_problem(store, 'hash')  -- broker/lua/_checks.lua
if problem then
  return redis.error_reply('store_cas: ' .. problem)
end
local current = redis.call('HGET', store, key)
if absent then
  if current then return 0 end
elseif current ~= expected then
  return 0
end
redis.call('HSET', store, key, value)
expire_with_run(run, store)  -- broker/lua/_store.lua
return 1
