-- The writes that start a run, shared by start_run.lua and cron_fire.lua (put where a
-- script says `--@include _runstart.lua`, by exospherehost.broker.streams._lua). ARGV from
-- index `a` on is RunStart.script_args(): run id, created ms, index size, envelope,
-- due_ms, n run fields, run field/value x n, store key/value ...

local function hset_chunks(key, first, last)  -- bounded unpack: Lua's C stack holds ~8000
  for i = first, last, 2000 do
    redis.call('HSET', key, unpack(ARGV, i, math.min(i + 1999, last)))
  end
end

local function write_run(run, store, index, target, a)
  local run_id, created, size, envelope = ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3]
  local due_ms = tonumber(ARGV[a + 4])
  local first_field = a + 6
  local first_store = first_field + 2 * tonumber(ARGV[a + 5])
  hset_chunks(run, first_field, first_store - 1)
  if #ARGV >= first_store then
    hset_chunks(store, first_store, #ARGV)
  end
  redis.call('ZADD', index, created, run_id)
  redis.call('ZREMRANGEBYRANK', index, 0, -tonumber(size) - 1)
  if due_ms > 0 then
    redis.call('ZADD', target, due_ms, envelope)
  else
    redis.call('XADD', target, '*', '_exo', envelope)
  end
end
