#!lua
-- Write keys of a run's store, only while the run exists. A late write (a state executed
-- again after its run finished) keeps the store expiring with the run, so no store ever
-- outlives its run. The store's type is checked before the first write and values go in
-- bounded chunks (Lua's unpack holds ~8000 values), so a call writes all or nothing.
--
-- KEYS: run hash, run store.  ARGV: key, msgpack value, ...
-- Returns 1 written, 0 the run does not exist (unknown or expired); an error when the
-- store key holds another type (nothing written).

--@include _store.lua

local run, store = KEYS[1], KEYS[2]
if #ARGV == 0 or #ARGV % 2 ~= 0 then
  return redis.error_reply('store_set: needs key, value pairs')
end
if redis.call('EXISTS', run) == 0 then
  return 0
end
local problem = key_problem(store, 'hash')  -- broker/lua/_checks.lua
if problem then
  return redis.error_reply('store_set: ' .. problem)
end
for i = 1, #ARGV, 2000 do
  redis.call('HSET', store, unpack(ARGV, i, math.min(i + 1999, #ARGV)))
end
expire_with_run(run, store)  -- broker/lua/_store.lua
return 1
