#!lua
-- Append many envelopes to one stream in one call: the client sends one command instead
-- of one XADD per state (command building dominates the producer's cost otherwise).
-- All-or-nothing: the stream is checked first (type, entry ids left), so an XADD cannot
-- fail half-way through the call; the `#!lua` shebang makes Redis refuse the call up
-- front when over maxmemory.
-- KEYS[1]: stream.  ARGV: envelope... ; returns the entry ids, or an error (nothing added).
local stream = KEYS[1]
local problem = key_problem(stream, 'stream', true)  -- broker/lua/_checks.lua
if problem then
  return redis.error_reply('publish: ' .. problem)
end
local ids = {}
for i = 1, #ARGV do
  ids[i] = redis.call('XADD', stream, '*', '_exo', ARGV[i])
end
return ids
