-- Settle a batch of stream entries atomically. For each entry: XACK it, and ONLY if the ack
-- succeeded (the entry was still pending, i.e. nobody settled it before) XDEL it and apply
-- its ops. A late duplicate settle (a reclaimed state executed twice) therefore emits
-- nothing: stage transitions happen exactly once.
--
-- KEYS:    every key the plan touches (ops refer to them by index).
-- ARGV[1]: consumer group.  ARGV[2]: msgpack plan = { {src, entry_id, ops}, ... }
-- ops:
--   {1, k, maxlen, f1, v1, ...}    XADD KEYS[k] [MAXLEN ~ maxlen] * f1 v1 ...
--   {2, k, delay_ms, member}       ZADD KEYS[k] (now + delay_ms) member
--   {3, k, value}                  RPUSH KEYS[k] value
--   {4, run_k, events_k, results_k, run_id, open_delta, failed_delta, retention_s,
--       field1, incr1, ...}        run bookkeeping; finishes the run when no state is open
-- Returns one flag per entry: 1 applied, 0 skipped (was not pending any more).

local group = ARGV[1]
local plan = cmsgpack.unpack(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local function run_step(op)
  local run = KEYS[op[2]]
  if redis.call('EXISTS', run) == 0 then
    -- Unknown run (a forged entry) or one that expired: do not create a stray hash.
    return
  end
  for i = 9, #op, 2 do
    redis.call('HINCRBY', run, op[i], op[i + 1])
  end
  if op[7] ~= 0 then
    redis.call('HINCRBY', run, 'failed', op[7])
  end
  local open = redis.call('HINCRBY', run, 'open', op[6])
  if open == 0 then
    -- The last open state of the run settled. This branch runs once per run: `open`
    -- only changes inside acked settles, and nothing is open afterwards.
    local failed = tonumber(redis.call('HGET', run, 'failed') or '0')
    local status = 'SUCCEEDED'
    if failed > 0 then status = 'FAILED' end
    redis.call('HSET', run, 'status', status, 'finished_ms', now)
    redis.call('XADD', KEYS[op[3]], 'MAXLEN', '~', 10000, '*', 'run', op[5], 'status', status)
    if op[8] > 0 then
      redis.call('EXPIRE', run, op[8])
      redis.call('EXPIRE', KEYS[op[4]], op[8])
    end
  end
end

local flags = {}
for n, item in ipairs(plan) do
  local src, id = KEYS[item[1]], item[2]
  if redis.call('XACK', src, group, id) == 1 then
    redis.call('XDEL', src, id)
    flags[n] = 1
    for _, op in ipairs(item[3]) do
      local code = op[1]
      if code == 1 then
        if op[3] > 0 then
          redis.call('XADD', KEYS[op[2]], 'MAXLEN', '~', op[3], '*', unpack(op, 4))
        else
          redis.call('XADD', KEYS[op[2]], '*', unpack(op, 4))
        end
      elseif code == 2 then
        redis.call('ZADD', KEYS[op[2]], now + op[3], op[4])
      elseif code == 3 then
        redis.call('RPUSH', KEYS[op[2]], op[3])
      elseif code == 4 then
        run_step(op)
      else
        return redis.error_reply('settle: unknown op code ' .. tostring(code))
      end
    end
  else
    flags[n] = 0
  end
end
return flags
