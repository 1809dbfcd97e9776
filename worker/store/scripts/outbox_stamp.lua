-- The sweep's first sighting of published messages: each outbox entry not yet in idx:outbox gets Redis server
-- time there (ZADD NX: a stamp, once set, moves only when the entry is published again). A producer's put is a
-- plain HSET with no clock, so a message's age counts from the first sweep that saw it.
-- KEYS: 1 outbox 2 idx:outbox. ARGV: 1 HSCAN cursor 2 COUNT. Returns {next cursor, entries stamped}.
local t = server_clock()
local now = string.format('%d.%06d', tonumber(t[1]), tonumber(t[2]))
local r = redis.call('HSCAN', KEYS[1], ARGV[1], 'COUNT', ARGV[2])
local stamped = 0
for i = 1, #r[2], 2 do
  stamped = stamped + redis.call('ZADD', KEYS[2], 'NX', now, r[2][i])
end
return {r[1], stamped}
