-- Append many envelopes to one stream in one call: the client sends one command instead
-- of one XADD per state (command building dominates the producer's cost otherwise).
-- KEYS[1]: stream.  ARGV: envelope... ; returns the entry ids.
local ids = {}
for i = 1, #ARGV do
  ids[i] = redis.call('XADD', KEYS[1], '*', '_exo', ARGV[i])
end
return ids
