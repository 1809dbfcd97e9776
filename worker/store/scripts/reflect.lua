-- Reflect an APPROVED follow-up on its original (the sweep's repair). ARGV: 1 prefix
local now = server_now()
local pid = redis.call('HGET', REC, 'payment_id')
if not pid then return 'nothing' end
return reflect(ARGV[1], REC, pid, iso(now), now)
