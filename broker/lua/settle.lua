#!lua
-- Settle a batch of stream entries atomically. For each entry: XACK it, and ONLY if the ack
-- succeeded (the entry was still pending, i.e. nobody settled it before) apply its ops and
-- XDEL it. A late duplicate settle (a reclaimed state executed twice) therefore emits
-- nothing: stage transitions, fan-in counts and run bookkeeping happen exactly once.
--
-- Redis does not roll back a script that errors part-way, so nothing may fail after the
-- first XACK. Three layers see to that:
--   * the `#!lua` shebang (no `allow-oom`): over maxmemory Redis refuses the whole call up
--     front instead of failing its first write half-way;
--   * a pre-pass, before any write, checks the plan's shape and each DISTINCT key the ops
--     write (its type is the expected one or none; a stream to XADD to still has ids
--     left). An entry whose own ops fail a check is REFUSED: not acked, nothing of it
--     written, its reason returned; the rest of the batch settles;
--   * the ops of each acked entry run under pcall: an error nobody foresaw stops that
--     entry's remaining ops (it is acked, and what ran stays), its reason is returned so
--     the caller can dead-letter it, and the batch goes on.
--
-- KEYS:    every key the plan touches (ops refer to them by index).
-- ARGV[1]: consumer group.  ARGV[2]: msgpack plan = { {src, entry_id, ops}, ... }
--          entry_id '' = no source entry to ack: apply the ops unconditionally (a dead
--          letter written for an entry acked by an earlier call that failed half-way).
-- ops:
--   {1, k, maxlen, f1, v1, ...}     XADD KEYS[k] [MAXLEN ~ maxlen] * f1 v1 ...
--   {2, k, delay_ms, member}        ZADD KEYS[k] (now + delay_ms) member
--   {3, k, value}                   RPUSH KEYS[k] value
--   {7, run_k, open_delta}          a graph state's change to its run's open count, before
--                                   its other run ops; if the run does not exist (expired,
--                                   or a forged entry) the entry's remaining ops are
--                                   skipped (flag 2); ops before it (a dead letter) stay
--   {4, run_k, events_k, run_id, open_delta, failed_delta, retention_s, hist_k, record,
--       n, exp_k1..exp_kn, field1, incr1, ...}
--                                   run bookkeeping (+ a history record, '' for none);
--                                   finishes the run when no state is open (only a
--                                   negative open_delta can; exp_k are sent only then)
--   {5, g_k, open, strategy, env, unite_ident}
--                                   open a fan-in group (unites) when its target settles
--   {6, g_k, c_k, q_k, run_k, open_delta, bad_delta, retention_s,
--       n_outer, outer_k..., item...}
--                                   count a group member's settle; fire the uniting state
--                                   (XADD env to q_k) when the group's last member is done
-- Ops of one entry run in order; group ops come before the run op, so a firing unite
-- re-opens the run before the run could be seen as finished.
-- Returns one result per entry: 1 applied, 0 skipped (was not pending any more), 2 acked
-- but nothing emitted (its run does not exist), '3 <error>' acked but its ops failed
-- part-way, '4 <reason>' refused by the pre-pass (not acked: still pending).

local group = ARGV[1]
local plan = cmsgpack.unpack(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local MAX_VALUES = 7000  -- per unpack: Lua's C stack holds ~8000 values

-- ---------------------------------------------------------------- pre-pass (no writes)
local types = {}   -- key index -> TYPE reply, once per call
local full = {}    -- key index -> true when the stream cannot take another entry

local function key_type(k)
  local ty = types[k]
  if ty == nil then
    ty = redis.call('TYPE', KEYS[k])['ok']
    types[k] = ty
  end
  return ty
end

-- The id space is spent once the last id's ms part is 2^64-1 and its sequence near the
-- top (a foreign client's `XADD key 18446744073709551615-18446744073709551615`); XADD *
-- then fails. XINFO STREAM is the one read that shows last-generated-id (~4 us), paid
-- once per distinct stream per call.
local function exhausted(k)
  local f = full[k]
  if f == nil then
    f = false
    local info = redis.call('XINFO', 'STREAM', KEYS[k])
    for i = 1, #info, 2 do
      if info[i] == 'last-generated-id' then
        local ms, seq = string.match(info[i + 1], '^(%d+)-(%d+)$')
        f = ms == '18446744073709551615' and #seq >= 19
      end
    end
    full[k] = f
  end
  return f
end

local function key_problem(k, want, xadd)
  if type(k) ~= 'number' or KEYS[k] == nil then
    return 'op refers to KEYS[' .. tostring(k) .. '], which the call did not pass'
  end
  if want == nil then return nil end
  local ty = key_type(k)
  if ty ~= 'none' and ty ~= want then
    return 'key ' .. KEYS[k] .. ' holds a ' .. ty .. ', not a ' .. want
  end
  if xadd and ty == 'stream' and exhausted(k) then
    return 'stream ' .. KEYS[k] .. ' has used up its entry ids (a client added id ' ..
           '18446744073709551615-...): it cannot take another entry'
  end
  return nil
end

local function is_num(v) return type(v) == 'number' end
local function is_arg(v) return type(v) == 'string' or type(v) == 'number' end

local function id_ok(id)
  if type(id) ~= 'string' then return false end
  if id == '' then return true end
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  if ms == nil then return false end
  local function u64(d) return #d < 20 or (#d == 20 and d <= '18446744073709551615') end
  return u64(ms) and u64(seq)
end

-- Checks of one op: nil when fine, else why not. `need` = least length of the op.
local function op_problem(op)
  if type(op) ~= 'table' then return 'op is not an array' end
  local code = op[1]
  local p
  if code == 1 then
    if #op < 5 or (#op - 3) % 2 ~= 0 or not is_num(op[3]) then
      return 'XADD op needs {1, key, maxlen, field, value, ...}'
    end
    if #op - 3 > MAX_VALUES then
      return 'XADD op has ' .. ((#op - 3) / 2) .. ' fields, more than a script can pass (' ..
             (MAX_VALUES / 2) .. ')'
    end
    for i = 4, #op do
      if not is_arg(op[i]) then return 'XADD op field ' .. (i - 3) .. ' is not a string' end
    end
    return key_problem(op[2], 'stream', true)
  elseif code == 2 then
    if #op ~= 4 or not is_num(op[3]) or not is_arg(op[4]) then
      return 'ZADD op needs {2, key, delay_ms, member}'
    end
    return key_problem(op[2], 'zset')
  elseif code == 3 then
    if #op ~= 3 or not is_arg(op[3]) then return 'RPUSH op needs {3, key, value}' end
    return key_problem(op[2], 'list')
  elseif code == 7 then
    if #op ~= 3 or not is_num(op[3]) then return 'run-open op needs {7, key, delta}' end
    return key_problem(op[2], 'hash')
  elseif code == 4 then
    local n = op[10]
    if #op < 10 or not is_num(n) or n < 0 or 10 + n > #op or (#op - 10 - n) % 2 ~= 0
       or not is_arg(op[4]) or not is_num(op[5]) or not is_num(op[6]) or not is_num(op[7])
       or not is_arg(op[9]) then
      return 'run op has the wrong shape'
    end
    for i = 11 + n, #op, 2 do
      if not is_arg(op[i]) or not is_num(op[i + 1]) then
        return 'run op counter ' .. tostring(op[i]) .. ' is not a field and an increment'
      end
    end
    p = key_problem(op[2], 'hash') or key_problem(op[3], 'stream', true)
        or key_problem(op[8], 'list')
    if p then return p end
    for i = 11, 10 + n do  -- expired with the run: EXPIRE takes any type
      p = key_problem(op[i], nil)
      if p then return p end
    end
    return nil
  elseif code == 5 then
    if #op ~= 6 or not is_num(op[3]) or not is_arg(op[4]) or not is_arg(op[5])
       or not is_arg(op[6]) then
      return 'group-open op needs {5, key, open, strategy, envelope, unite}'
    end
    return key_problem(op[2], 'hash')
  elseif code == 6 then
    local n = op[9]
    if #op < 9 or not is_num(n) or n < 0 or 9 + n > #op or not is_num(op[6])
       or not is_num(op[7]) or not is_num(op[8]) then
      return 'group op has the wrong shape'
    end
    for i = 10 + n, #op do
      if not is_arg(op[i]) then return 'group op item is not a string' end
    end
    p = key_problem(op[2], 'hash') or key_problem(op[3], 'list')
        or key_problem(op[4], 'stream', true) or key_problem(op[5], 'hash')
    if p then return p end
    for i = 10, 9 + n do
      p = key_problem(op[i], 'hash')
      if p then return p end
    end
    return nil
  end
  return 'unknown op code ' .. tostring(code)
end

local function item_problem(item)
  if type(item) ~= 'table' or type(item[3]) ~= 'table' then
    return 'plan item needs {source key, entry id, ops}'
  end
  if not id_ok(item[2]) then return 'entry id ' .. tostring(item[2]) .. ' is not a stream id' end
  local p = key_problem(item[1], 'stream')
  if p then return p end
  for _, op in ipairs(item[3]) do
    p = op_problem(op)
    if p then return p end
  end
  return nil
end

if type(plan) ~= 'table' then
  return redis.error_reply('settle: the plan is not an array')
end
local results = {}
for n, item in ipairs(plan) do
  local p = item_problem(item)
  if p then results[n] = '4 ' .. p end
end

-- ---------------------------------------------------------------- apply
-- The run's `open` count as of the entry being applied: set by its run-open op (7), kept
-- current by a unite it fires, read by its run step (4).
local run_open = nil

local function run_open_op(op)
  -- `open` first: its reply also tells whether the run exists. Only a missing hash (an
  -- expired run, or a forged entry) comes back as exactly the delta without a status:
  -- that stray hash is removed again and the entry's remaining ops are skipped.
  local run = KEYS[op[2]]
  run_open = redis.call('HINCRBY', run, 'open', op[3])
  if run_open == op[3] and redis.call('HEXISTS', run, 'status') == 0 then
    redis.call('DEL', run)
    return false
  end
  return true
end

local function run_step(op)
  local run = KEYS[op[2]]
  if op[9] ~= '' then
    redis.call('RPUSH', KEYS[op[8]], op[9])
  end
  local n = op[10]
  for i = 11 + n, #op, 2 do
    redis.call('HINCRBY', run, op[i], op[i + 1])
  end
  if op[6] ~= 0 then
    redis.call('HINCRBY', run, 'failed', op[6])
  end
  if run_open == 0 and op[5] < 0 then
    -- The last open state of the run settled. This branch runs once per run: `open`
    -- only changes inside acked settles, and nothing is open afterwards. (A step that
    -- opens as many states as it closes cannot end a run: the settling state was open.)
    local failed = tonumber(redis.call('HGET', run, 'failed') or '0')
    local status = 'SUCCEEDED'
    if failed > 0 then status = 'FAILED' end
    redis.call('HSET', run, 'status', status, 'finished_ms', now)
    redis.call('XADD', KEYS[op[3]], 'MAXLEN', '~', 10000, '*', 'run', op[4], 'status', status)
    if op[7] > 0 then
      redis.call('EXPIRE', run, op[7])
      redis.call('EXPIRE', KEYS[op[8]], op[7])
      for i = 11, 10 + n do
        redis.call('EXPIRE', KEYS[op[i]], op[7])
      end
    end
  end
end

local function group_init(op)
  redis.call('HSET', KEYS[op[2]], 'open', op[3], 'bad', 0, 'strategy', op[4], 'env', op[5],
             'unite', op[6])
end

local function group_step(op)
  local g, c, q, run = KEYS[op[2]], KEYS[op[3]], KEYS[op[4]], KEYS[op[5]]
  if redis.call('EXISTS', g) == 0 then
    return
  end
  if op[7] ~= 0 then
    redis.call('HINCRBY', g, 'bad', op[7])
  end
  local n_outer = op[9]
  for i = 10 + n_outer, #op do
    redis.call('RPUSH', c, op[i])
  end
  local open = redis.call('HINCRBY', g, 'open', op[6])
  if open ~= 0 or redis.call('HSETNX', g, 'fired', 1) == 0 then
    return
  end
  -- Every member of the group has settled: decide the unite, exactly once.
  local unite = redis.call('HGET', g, 'unite')
  local bad = tonumber(redis.call('HGET', g, 'bad'))
  if redis.call('HGET', g, 'strategy') == 'ALL_DONE' or bad == 0 then
    redis.call('XADD', q, '*', '_exo', redis.call('HGET', g, 'env'))
    run_open = redis.call('HINCRBY', run, 'open', 1)
    redis.call('HINCRBY', run, 'c:' .. unite, 1)
    for i = 10, 9 + n_outer do
      redis.call('HINCRBY', KEYS[op[i]], 'open', 1)
    end
  else
    redis.call('HINCRBY', run, 'k:' .. unite, 1)
    redis.call('HSET', run, 'why:' .. unite, 'unite ' .. unite .. ' did not fire: ' .. bad ..
               ' branch state(s) failed or were pruned (strategy ALL_SUCCESS)')
  end
  if op[8] > 0 then
    redis.call('EXPIRE', g, op[8])
    redis.call('EXPIRE', c, op[8])
  end
end

-- Applies one entry's ops: 1, or 2 when its run does not exist.
local function apply(ops)
  run_open = nil
  for _, op in ipairs(ops) do
    local code = op[1]
    if code == 7 then
      if not run_open_op(op) then
        return 2
      end
    elseif code == 1 then
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
    elseif code == 5 then
      group_init(op)
    elseif code == 6 then
      group_step(op)
    end
  end
  return 1
end

-- pcall hands back what redis.call raised: a string, or (in some Redis versions) a table.
local function why(err)
  if type(err) == 'table' then return tostring(err['err'] or err['message']) end
  return tostring(err)
end

local acked = {}  -- source stream index -> acked ids: deleted in one XDEL per stream
for n, item in ipairs(plan) do
  if results[n] == nil then
    local id = item[2]
    if id == '' then
      local ok, flag = pcall(apply, item[3])
      results[n] = ok and flag or ('3 ' .. why(flag))
    elseif redis.call('XACK', KEYS[item[1]], group, id) == 1 then
      local ids = acked[item[1]]
      if ids == nil then
        ids = {}
        acked[item[1]] = ids
      end
      ids[#ids + 1] = id
      local ok, flag = pcall(apply, item[3])
      results[n] = ok and flag or ('3 ' .. why(flag))
    else
      results[n] = 0
    end
  end
end

-- Settled entries leave their streams (memory stays bounded by backlog + in flight).
-- Everything below the stream's floor (its oldest entry a group still needs: the lowest
-- pending or, if lower, not yet delivered id) is settled, so one exact XTRIM MINID drops
-- it, whole listpack nodes at a time; only acked ids at or above the floor (settled ahead
-- of an older entry still in flight elsewhere) need XDEL. Per id, XDEL costs a seek into
-- its node (~2 us); the trim costs a fraction of that.
local function id_lt(a, b)  -- a < b for stream ids 'ms-seq' (exact for any 64-bit parts)
  local am, as = string.match(a, '^(%d+)-(%d+)$')
  local bm, bs = string.match(b, '^(%d+)-(%d+)$')
  if #am ~= #bm then return #am < #bm end
  if am ~= bm then return am < bm end
  if #as ~= #bs then return #as < #bs end
  return as < bs
end

local function floor_of(src)
  local floor = nil
  for _, g in ipairs(redis.call('XINFO', 'GROUPS', src)) do
    local name, pending, last
    for i = 1, #g, 2 do
      if g[i] == 'name' then name = g[i + 1]
      elseif g[i] == 'pending' then pending = g[i + 1]
      elseif g[i] == 'last-delivered-id' then last = g[i + 1] end
    end
    local low = last
    if pending > 0 then
      local oldest = redis.call('XPENDING', src, name)[2]
      if id_lt(oldest, low) then low = oldest end
    end
    if floor == nil or id_lt(low, floor) then floor = low end
  end
  return floor
end

local function clean(src, ids)
  local floor = floor_of(src)
  redis.call('XTRIM', src, 'MINID', floor)
  local above = {}
  for _, id in ipairs(ids) do
    if not id_lt(id, floor) then above[#above + 1] = id end
  end
  for i = 1, #above, 1000 do  -- bounded unpack
    redis.call('XDEL', src, unpack(above, i, math.min(i + 999, #above)))
  end
end

for k, ids in pairs(acked) do
  -- Only housekeeping: every state is settled by now. Should it fail, the entries stay
  -- in the stream (acked) and the next settle's trim takes them.
  pcall(clean, KEYS[k], ids)
end
return results
