-- Heartbeat: extend the lease while a call is in flight. ARGV: 1 owner 2 lease_seconds
local r = redis.call('HMGET', KEYS[1], 'status', 'lease_owner')
if r[1] ~= 'PENDING' or r[2] ~= ARGV[1] then return 0 end
local t = server_clock()
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('HSET', KEYS[1], 'lease_until', string.format('%.3f', now + tonumber(ARGV[2])))
return 1
