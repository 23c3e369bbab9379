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
--   * a pre-pass, before any write, checks each DISTINCT stream and zset the ops write
--     (its type is the expected one or none; a stream to XADD to still has ids left) and
--     the XADDs' field counts. An entry whose own ops fail a check is REFUSED: not acked,
--     nothing of it written, its reason returned; the rest of the batch settles;
--   * each entry's XACK and ops run under pcall: an error nobody foresaw stops that
--     entry's remaining ops (it is acked, and what ran stays), its reason is returned so
--     the caller can dead-letter it, and the batch goes on.
--
-- KEYS:    every key the plan touches (ops refer to them by index).
-- ARGV[1]: consumer group.  ARGV[2]: msgpack plan = { {src, entry_id, ops}, ... }
--          entry_id '' = no source entry to ack: apply the ops unconditionally (a dead
--          letter written for an entry acked by an earlier call that failed part-way).
-- An op is a flat array: its code (OP_*), then its fields at the positions named below
-- (`k` fields are KEYS indices). exospherehost.broker.plan builds them, and
-- tests/unit/test_plan_wire.py holds its builder and these constants in agreement.
-- Ops of one entry run in order; group ops come before the run op, so a firing unite
-- re-opens the run before the run could be seen as finished.
-- Returns one result per entry: 1 applied, 0 skipped (was not pending any more), 2 acked
-- but nothing emitted (its run does not exist, or was cancelled), '3 <error>' acked but its ops failed
-- part-way, '4 <reason>' refused by the pre-pass (not acked: still pending).

-- A plan item: {src k, entry_id, ops}.
local ITEM_SOURCE, ITEM_ENTRY_ID, ITEM_OPS = 1, 2, 3
local OP_CODE = 1
local OP_XADD, OP_ZADD_DELAYED, OP_RPUSH, OP_RUN_STEP, OP_GROUP_INIT, OP_GROUP_STEP,
      OP_RUN_OPEN, OP_HSET = 1, 2, 3, 4, 5, 6, 7, 8
-- OP_XADD: XADD KEYS[stream] [MAXLEN ~ maxlen (if > 0)] * f1 v1 ... (the pairs, to the end)
local XADD_STREAM, XADD_MAXLEN, XADD_PAIRS = 2, 3, 4
-- OP_ZADD_DELAYED: ZADD KEYS[zset] (now + delay_ms) member
local ZADD_ZSET, ZADD_DELAY_MS, ZADD_MEMBER = 2, 3, 4
-- OP_RPUSH: RPUSH KEYS[key] value
local RPUSH_KEY, RPUSH_VALUE = 2, 3
-- OP_HSET: HSET KEYS[key] f1 v1 ... (the pairs, to the end; per-state records of a run)
local HSET_KEY, HSET_PAIRS = 2, 3
-- OP_RUN_OPEN: a graph state's change to its run's open count, before its other run ops;
-- if the run does not exist (expired, or a forged entry) the entry's remaining ops are
-- skipped (flag 2); ops before it (a dead letter) stay.
local RO_RUN_KEY, RO_OPEN_DELTA = 2, 3
-- OP_RUN_STEP: run bookkeeping (+ a history record, '' for none); finishes the run when no
-- state is open (only a negative open_delta can; the n expire keys are sent only then).
-- After the n expire keys: field1, incr1, ... (run hash counters), to the end.
local RS_RUN_KEY, RS_EVENTS_KEY, RS_RUN_ID, RS_OPEN_DELTA, RS_FAILED_DELTA, RS_RETENTION_S,
      RS_HISTORY_KEY, RS_HISTORY, RS_N_EXPIRE_WITH_RUN, RS_EXPIRE_WITH_RUN =
      2, 3, 4, 5, 6, 7, 8, 9, 10, 11
-- OP_GROUP_INIT: open a fan-in group (unites) when its target settles.
local GI_GROUP_KEY, GI_OPEN, GI_STRATEGY, GI_ENV, GI_UNITE_IDENTIFIER = 2, 3, 4, 5, 6
-- OP_GROUP_STEP: count a group member's settle; fire the uniting state (XADD env to the
-- unite queue) when the group's last member is done. After the n outer group keys: the
-- items collected for the unite, to the end.
local GS_GROUP_KEY, GS_COLLECTED_KEY, GS_UNITE_QUEUE, GS_RUN_KEY, GS_OPEN_DELTA,
      GS_BAD_DELTA, GS_RETENTION_S, GS_N_OUTER_GROUPS, GS_OUTER_GROUPS =
      2, 3, 4, 5, 6, 7, 8, 9, 10

-- cancel_run.lua lowers a cancelled run's `open` by 2^50: a count below this is a
-- cancelled run (broker/fields.py CANCELLED_OPEN; test_plan_wire.py holds them in step).
local CANCELLED_BELOW = -562949953421312

local group = ARGV[1]
local plan = cmsgpack.unpack(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local MAX_VALUES = 7000  -- per unpack: Lua's C stack holds ~8000 values

-- ---------------------------------------------------------------- pre-pass (no writes)
-- What can make a write fail after an entry's XACK is checked first, once per DISTINCT
-- key per call, never per state: a stream the entry XADDs to (its queue successors, its
-- output, a dead letter, the run-finished event, a fired unite) that holds another type
-- or has used up its ids; a delayed zset of another type; an XADD with more fields than
-- one script call can pass. The plan itself is the SDK's own (exospherehost.broker.plan), so its shape
-- is not re-checked here. Keys only the SDK writes, one per run (run hash, history, states,
-- results, fan-in groups), are not checked either (a TYPE each would cost ~30 % of a
-- graph state's Redis time): should a foreign client have broken one, the pcall below
-- stops that entry and the worker dead-letters it; that run was broken already.
local checked = {}  -- key index -> false (fine) or why not

-- key_problem (broker/lua/_checks.lua) once per key and call; streams here all get XADDs.
local function index_problem(k, want)
  local p = checked[k]
  if p == nil then
    p = key_problem(KEYS[k], want, true) or false
    checked[k] = p
  end
  return p
end

local function item_problem(ops)
  for _, op in ipairs(ops) do
    local code, p = op[OP_CODE], false
    if code == OP_XADD then
      local values = #op - XADD_PAIRS + 1
      if values > MAX_VALUES then
        return 'XADD of ' .. (values / 2) .. ' fields, more than a script can pass (' ..
               (MAX_VALUES / 2) .. ')'
      end
      p = index_problem(op[XADD_STREAM], 'stream')
    elseif code == OP_ZADD_DELAYED then
      p = index_problem(op[ZADD_ZSET], 'zset')
    elseif code == OP_RUN_STEP then
      -- the events stream, written when the run ends
      p = index_problem(op[RS_EVENTS_KEY], 'stream')
    elseif code == OP_GROUP_STEP then
      -- the uniting node's queue, when the unite fires
      p = index_problem(op[GS_UNITE_QUEUE], 'stream')
    end
    if p then return p end
  end
  return nil
end

if type(plan) ~= 'table' then
  return redis.error_reply('settle: the plan is not an array')
end
local results = {}
for n, item in ipairs(plan) do
  local p = item_problem(item[ITEM_OPS])
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
  local run, delta = KEYS[op[RO_RUN_KEY]], op[RO_OPEN_DELTA]
  run_open = redis.call('HINCRBY', run, 'open', delta)
  if run_open == delta and redis.call('HEXISTS', run, 'status') == 0 then
    redis.call('DEL', run)
    return 'missing'
  end
  if run_open < CANCELLED_BELOW then
    -- Dropped: it closes and opens nothing (the delta counted what it would have opened).
    run_open = redis.call('HINCRBY', run, 'open', -delta - 1)
    return 'cancelled'
  end
  return nil
end

local function run_step(op)
  local run, history = KEYS[op[RS_RUN_KEY]], op[RS_HISTORY]
  if history ~= '' then
    redis.call('RPUSH', KEYS[op[RS_HISTORY_KEY]], history)
  end
  local n = op[RS_N_EXPIRE_WITH_RUN]
  for i = RS_EXPIRE_WITH_RUN + n, #op, 2 do
    redis.call('HINCRBY', run, op[i], op[i + 1])
  end
  if op[RS_FAILED_DELTA] ~= 0 then
    redis.call('HINCRBY', run, 'failed', op[RS_FAILED_DELTA])
  end
  if run_open == 0 and op[RS_OPEN_DELTA] < 0 then
    -- The last open state of the run settled. This branch runs once per run: `open`
    -- only changes inside acked settles, and nothing is open afterwards. (A step that
    -- opens as many states as it closes cannot end a run: the settling state was open.)
    local failed = tonumber(redis.call('HGET', run, 'failed') or '0')
    local status = 'SUCCEEDED'
    if failed > 0 then status = 'FAILED' end
    redis.call('HSET', run, 'status', status, 'finished_ms', now)
    redis.call('XADD', KEYS[op[RS_EVENTS_KEY]], 'MAXLEN', '~', 10000, '*', 'run',
               op[RS_RUN_ID], 'status', status)
    local retention = op[RS_RETENTION_S]
    if op[RS_RETENTION_S] > 0 then
      redis.call('EXPIRE', run, retention)
      redis.call('EXPIRE', KEYS[op[RS_HISTORY_KEY]], retention)
      for i = RS_EXPIRE_WITH_RUN, RS_EXPIRE_WITH_RUN + n - 1 do
        redis.call('EXPIRE', KEYS[op[i]], retention)
      end
    end
  end
end

local function group_init(op)
  redis.call('HSET', KEYS[op[GI_GROUP_KEY]], 'open', op[GI_OPEN], 'bad', 0,
             'strategy', op[GI_STRATEGY], 'env', op[GI_ENV], 'unite', op[GI_UNITE_IDENTIFIER])
end

local function group_step(op)
  local g, c = KEYS[op[GS_GROUP_KEY]], KEYS[op[GS_COLLECTED_KEY]]
  local q, run = KEYS[op[GS_UNITE_QUEUE]], KEYS[op[GS_RUN_KEY]]
  if redis.call('EXISTS', g) == 0 then
    return
  end
  if op[GS_BAD_DELTA] ~= 0 then
    redis.call('HINCRBY', g, 'bad', op[GS_BAD_DELTA])
  end
  local n_outer = op[GS_N_OUTER_GROUPS]
  for i = GS_OUTER_GROUPS + n_outer, #op do
    redis.call('RPUSH', c, op[i])
  end
  local open = redis.call('HINCRBY', g, 'open', op[GS_OPEN_DELTA])
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
    for i = GS_OUTER_GROUPS, GS_OUTER_GROUPS + n_outer - 1 do
      redis.call('HINCRBY', KEYS[op[i]], 'open', 1)
    end
  else
    redis.call('HINCRBY', run, 'k:' .. unite, 1)
    redis.call('HSET', run, 'why:' .. unite, 'unite ' .. unite .. ' did not fire: ' .. bad ..
               ' branch state(s) failed or were pruned (strategy ALL_SUCCESS)')
  end
  local retention = op[GS_RETENTION_S]
  if retention > 0 then
    redis.call('EXPIRE', g, retention)
    redis.call('EXPIRE', c, retention)
  end
end

-- A fan-in group of a cancelled run: its members are dropped as they are reached, so
-- the group never fires; each one that is reached gives it the run's expiry.
local function group_expire(op)
  local retention = op[GS_RETENTION_S]
  if retention > 0 then
    redis.call('EXPIRE', KEYS[op[GS_GROUP_KEY]], retention)
    redis.call('EXPIRE', KEYS[op[GS_COLLECTED_KEY]], retention)
  end
end

-- Applies one entry's ops: 1, or 2 when its run does not exist or was cancelled (the ops
-- from its run-open op on are skipped).
local function apply(ops)
  run_open = nil
  local skip = nil
  for _, op in ipairs(ops) do
    local code = op[OP_CODE]
    if skip then
      if skip == 'cancelled' and code == OP_GROUP_STEP then group_expire(op) end
    elseif code == OP_RUN_OPEN then
      skip = run_open_op(op)
    elseif code == OP_XADD then
      local stream, maxlen = KEYS[op[XADD_STREAM]], op[XADD_MAXLEN]
      if maxlen > 0 then
        redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*', unpack(op, XADD_PAIRS))
      else
        redis.call('XADD', stream, '*', unpack(op, XADD_PAIRS))
      end
    elseif code == OP_ZADD_DELAYED then
      redis.call('ZADD', KEYS[op[ZADD_ZSET]], now + op[ZADD_DELAY_MS], op[ZADD_MEMBER])
    elseif code == OP_RPUSH then
      redis.call('RPUSH', KEYS[op[RPUSH_KEY]], op[RPUSH_VALUE])
    elseif code == OP_HSET then
      local key, last = KEYS[op[HSET_KEY]], #op
      for i = HSET_PAIRS, last, 2000 do  -- bounded unpack (a wide fan-out's pointers)
        redis.call('HSET', key, unpack(op, i, math.min(i + 1999, last)))
      end
    elseif code == OP_RUN_STEP then
      run_step(op)
    elseif code == OP_GROUP_INIT then
      group_init(op)
    elseif code == OP_GROUP_STEP then
      group_step(op)
    end
  end
  if skip then return 2 end
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
    local src, id = item[ITEM_SOURCE], item[ITEM_ENTRY_ID]
    local ok, got = true, 1
    if id ~= '' then
      -- Refused (not acked, nothing written) if XACK itself fails, e.g. a malformed id.
      ok, got = pcall(redis.call, 'XACK', KEYS[src], group, id)
    end
    if not ok then
      results[n] = '4 ' .. why(got)
    elseif got ~= 1 then
      results[n] = 0
    else
      if id ~= '' then
        local ids = acked[src]
        if ids == nil then
          ids = {}
          acked[src] = ids
        end
        ids[#ids + 1] = id
      end
      local fine, flag = pcall(apply, item[ITEM_OPS])
      results[n] = fine and flag or ('3 ' .. why(flag))
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
