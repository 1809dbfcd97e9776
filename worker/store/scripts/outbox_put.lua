-- Keep a published message in the outbox, stamped with Redis server time, in one round trip.
-- KEYS: 1 outbox 2 idx:outbox. ARGV: 1 task id 2 the message (JSON). Returns the stamp (seconds, as a string).
local t = redis.call('TIME')
local now = string.format('%d.%06d', tonumber(t[1]), tonumber(t[2]))
redis.call('HSET', KEYS[1], ARGV[1], '{"message":' .. ARGV[2] .. ',"published":' .. now .. ',"republished":0}')
redis.call('ZADD', KEYS[2], now, ARGV[1])
return now
