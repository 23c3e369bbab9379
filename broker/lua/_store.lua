-- Shared by the run-store scripts (store_set, store_incr, store_cas; put where a script
-- says `--@include _store.lua`): a store written to keeps expiring with its run, so no
-- store ever outlives its run, also after a late write.
local function expire_with_run(run, store)
  local ttl = redis.call('PTTL', run)
  if ttl > 0 then
    redis.call('PEXPIRE', store, ttl)
  end
end
