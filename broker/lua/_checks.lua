-- Checks shared by the scripts, put after each script's `#!lua` line by exospherehost.broker.streams._lua
-- (a Redis script cannot import). Redis does not roll back a script that fails half-way,
-- so each script asks these before its first write.

-- Nil when `key` can take writes of type `want` (it holds that type or nothing), else
-- why not. With `adds`, a stream to XADD to must also have ids left: the id space is spent once the
-- last id's ms part is 2^64-1 and its sequence near the top (a foreign client's
-- `XADD key 18446744073709551615-18446744073709551615`), and XADD * then fails.
-- XINFO STREAM is the one read that shows last-generated-id (~4 us).
local function key_problem(key, want, adds)
  local ty = redis.call('TYPE', key)['ok']
  if ty ~= 'none' and ty ~= want then
    return 'key ' .. key .. ' holds a ' .. ty .. ', not a ' .. want
  end
  if adds and ty == 'stream' then
    local info = redis.call('XINFO', 'STREAM', key)
    for i = 1, #info, 2 do
      if info[i] == 'last-generated-id' then
        local ms, seq = string.match(info[i + 1], '^(%d+)-(%d+)$')
        if ms == '18446744073709551615' and #seq >= 19 then
          return 'stream ' .. key .. ' has used up its entry ids (a client added id ' ..
                 '18446744073709551615-...): it cannot take another entry'
        end
      end
    end
  end
  return nil
end
