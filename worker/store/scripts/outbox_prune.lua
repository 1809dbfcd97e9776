-- Drop the stamps of messages claimed since they were stamped (the claim removes only the outbox entry).
-- KEYS: 1 outbox 2 idx:outbox. ARGV: 1 ZSCAN cursor 2 COUNT. Returns {next cursor, stamps dropped}.
local r = redis.call('ZSCAN', KEYS[2], ARGV[1], 'COUNT', ARGV[2])
local dropped = 0
for i = 1, #r[2], 2 do
  if redis.call('HEXISTS', KEYS[1], r[2][i]) == 0 then
    dropped = dropped + redis.call('ZREM', KEYS[2], r[2][i])
  end
end
return {r[1], dropped}
