-- Note a money-moving send before it is made (the attempt journal). ARGV: 1 owner 2 lease_seconds
-- Returns {ok (0/1), now}; 0 when this worker no longer holds the operation: it must not send.
local owner, lease_seconds = ARGV[1], tonumber(ARGV[2])
local now = server_now()
local r = redis.call('HMGET', REC, 'status', 'lease_owner', 'sends', 'operation', 'payment_id', 'trans_id')
if r[1] ~= 'PENDING' or r[2] ~= owner then return {0, ts(now)} end
local n = (tonumber(r[3] or '0') or 0) + 1
redis.call('HSET', REC, 'sends', tostring(n), 'attempt_ts', ts(now), 'in_flight', '1',
           'lease_until', ts(now + lease_seconds))
record_event(REC, r[5], r[4] or '', 'PENDING', 'PENDING', 'attempt ' .. n, iso(now), r[6] or '')
return {1, ts(now)}
