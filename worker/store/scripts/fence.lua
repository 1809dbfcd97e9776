-- The fence before every money-moving attempt (the first and each in-process retry): the caller sends only if it
-- still holds a live lease. The attempt is stamped with the TIME returned here (the gateway's
-- TRANS_SUBMIT_TIMESTAMP) and expires at the gateway ARGV[3] seconds later at most; fence_until keeps the latest
-- such moment, so a takeover of an attempt that never reported (claim.lua) waits until no stamped attempt of the
-- stalled holder can still be accepted. Renews the lease.
-- KEYS: 1 record. ARGV: 1 owner 2 lease_seconds 3 seconds a request stamped now may still be accepted.
-- Returns {ok (0/1), now (seconds, 6 decimals)}.
local r = redis.call('HMGET', KEYS[1], 'status', 'lease_owner', 'lease_until', 'fence_until')
local t = server_clock()
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local now_text = string.format('%d.%06d', tonumber(t[1]), tonumber(t[2]))
if r[1] ~= 'PENDING' or r[2] ~= ARGV[1] or (tonumber(r[3] or '0') or 0) <= now then return {0, now_text} end
local fence_until = math.max(now + tonumber(ARGV[3]), tonumber(r[4] or '0') or 0)
redis.call('HSET', KEYS[1], 'lease_until', string.format('%.3f', now + tonumber(ARGV[2])), 'in_flight', '1',
           'fence_until', string.format('%.3f', math.ceil(fence_until * 1000) / 1000))
return {1, now_text}
