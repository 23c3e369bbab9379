#!lua
-- Add to a number in a run's store, atomically (RunStore.incr): read, add and write in one
-- script, so concurrent increments are never lost. Only while the run exists; the store
-- keeps expiring with its run. A missing key counts as 0. Checks come before the write.
--
-- KEYS: run hash, run store.  ARGV: key, amount (a number).
-- Returns the new value msgpack-encoded (a Lua number returned as such would lose its
-- fraction), or 0 when the run does not exist; an error when the value is not a number
-- or the store holds another type (nothing written).

--@include _store.lua

local run, store, key = KEYS[1], KEYS[2], ARGV[1]
local amount = tonumber(ARGV[2])
if amount == nil then
  return redis.error_reply('store_incr: the amount must be a number')
end
if redis.call('EXISTS', run) == 0 then
  return 0
end
local problem = key_problem(store, 'hash')  -- broker/lua/_checks.lua
if problem then
  return redis.error_reply('store_incr: ' .. problem)
end
local raw = redis.call('HGET', store, key)
local current = 0
if raw then
  local ok, value = pcall(cmsgpack.unpack, raw)
  if not ok or type(value) ~= 'number' then
    return redis.error_reply('store_incr: the value of store key ' .. key .. ' is not a number')
  end
  current = value
end
local packed = cmsgpack.pack(current + amount)
redis.call('HSET', store, key, packed)
expire_with_run(run, store)  -- broker/lua/_store.lua
return packed
