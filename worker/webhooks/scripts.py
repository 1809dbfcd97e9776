"""The wing's Lua: each step of a delivery's life is one atomic script, so a process that dies between two of them
leaves the delivery either before or after the step, never half-way. Times are passed in (the deliverer's clock:
Redis TIME unless a test injects one)."""
from __future__ import annotations

#: Record one event and schedule its deliveries, once. KEYS: 1 ev:<id> 2 seq:<payment> 3 events 4 due 5 pending
#: 6 stats. ARGV: 1 event id 2 type 3 payment id 4 event ts 5 body before the sequence 6 body after it
#: 7 retention (s) 8 now 9.. endpoint ids. Returns the event's sequence number (0: it was recorded before).
RECORD = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local retention = math.floor(tonumber(ARGV[7]))
local seq = redis.call('INCR', KEYS[2])
redis.call('EXPIRE', KEYS[2], retention)
redis.call('HSET', KEYS[1], 'type', ARGV[2], 'payment_id', ARGV[3], 'ts', ARGV[4], 'sequence', seq,
           'body', ARGV[5] .. seq .. ARGV[6])
redis.call('EXPIRE', KEYS[1], retention)
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[1])
for i = 9, #ARGV do
  local member = ARGV[1] .. ' ' .. ARGV[i]
  redis.call('ZADD', KEYS[4], ARGV[8], member)
  redis.call('ZADD', KEYS[5], 'NX', ARGV[4], member)
end
redis.call('HINCRBY', KEYS[6], 'events', 1)
return seq
"""

#: Claim what is due: each claimed delivery is pushed out to ``until`` (due again then, if its drain died).
#: KEYS: 1 due. ARGV: 1 now 2 until 3 limit. Returns {member, claimed score, ...}.
CLAIM = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
local out = {}
for _, m in ipairs(due) do
  redis.call('ZADD', KEYS[1], 'XX', ARGV[2], m)
  out[#out + 1] = m
  out[#out + 1] = redis.call('ZSCORE', KEYS[1], m)
end
return out
"""

#: How an attempt ended. Only the drain whose claim is still the delivery's score writes (a drain that outlived its
#: claim finds the score moved and changes nothing).
#: KEYS: 1 due 2 pending 3 attempts 4 failed 5 failed_why 6 stats 7 state:<endpoint>.
#: ARGV: 1 member 2 claimed score 3 result (ok, fail, abandon) 4 now 5 error 6 disable after (s) 7.. schedule.
#: Returns delivered, retry, exhausted, abandoned or stale; and whether the endpoint was disabled now.
DONE = """
local member, claimed, result, now, err = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5]
local score = redis.call('ZSCORE', KEYS[1], member)
if not score or score ~= claimed then return {'stale', 0} end
local function finish()
  redis.call('ZREM', KEYS[1], member)
  redis.call('ZREM', KEYS[2], member)
  redis.call('HDEL', KEYS[3], member)
end
if result == 'ok' then
  finish()
  redis.call('HDEL', KEYS[5], member)
  redis.call('HINCRBY', KEYS[6], 'delivered', 1)
  redis.call('HDEL', KEYS[7], 'failing_since')
  redis.call('HSET', KEYS[7], 'last_success', ARGV[4])
  return {'delivered', 0}
end
if result == 'abandon' then
  finish()
  redis.call('ZADD', KEYS[4], now, member)
  redis.call('HSET', KEYS[5], member, err)
  redis.call('HINCRBY', KEYS[6], 'abandoned', 1)
  return {'abandoned', 0}
end
local n = redis.call('HINCRBY', KEYS[3], member, 1)
redis.call('HINCRBY', KEYS[6], 'failed_attempts', 1)
redis.call('HSETNX', KEYS[7], 'failing_since', ARGV[4])
redis.call('HSET', KEYS[7], 'last_error', err)
local disabled = 0
local since = tonumber(redis.call('HGET', KEYS[7], 'failing_since'))
if now - since >= tonumber(ARGV[6]) and redis.call('HGET', KEYS[7], 'disabled') ~= '1' then
  redis.call('HSET', KEYS[7], 'disabled', '1', 'disabled_reason',
             string.format('failing for %.0f s (WEBHOOK_DISABLE_AFTER); last error: %s', now - since, err))
  redis.call('HINCRBY', KEYS[6], 'endpoints_disabled', 1)
  disabled = 1
end
local delays = #ARGV - 6
if n > delays then
  finish()
  redis.call('ZADD', KEYS[4], now, member)
  redis.call('HSET', KEYS[5], member, err)
  redis.call('HINCRBY', KEYS[6], 'exhausted', 1)
  return {'exhausted', disabled}
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[6 + n]), member)
return {'retry', disabled}
"""
