#!lua
-- Append many envelopes to one stream in one call: the client sends one command instead
-- of one XADD per state (command building dominates the producer's cost otherwise).
-- All-or-nothing: the stream is checked first (type, entry ids left), so an XADD cannot
-- fail half-way through the call; the `#!lua` shebang makes Redis refuse the call up
-- front when over maxmemory.
-- KEYS[1]: stream.  ARGV: envelope... ; returns the entry ids, or an error (nothing added).
local stream = KEYS[1]
local ty = redis.call('TYPE', stream)['ok']
if ty ~= 'none' and ty ~= 'stream' then
  return redis.error_reply('publish: key ' .. stream .. ' holds a ' .. ty .. ', not a stream')
end
if ty == 'stream' then
  local info = redis.call('XINFO', 'STREAM', stream)
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then
      local ms, seq = string.match(info[i + 1], '^(%d+)-(%d+)$')
      if ms == '18446744073709551615' and #seq >= 19 then
        return redis.error_reply('publish: stream ' .. stream ..
                                 ' has used up its entry ids: it cannot take another entry')
      end
    end
  end
end
local ids = {}
for i = 1, #ARGV do
  ids[i] = redis.call('XADD', stream, '*', '_exo', ARGV[i])
end
return ids
