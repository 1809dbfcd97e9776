-- How an admitted attempt went: "up" (the gateway answered) closes the breaker and clears the failures; "down"
-- (refused, timed out, reset, 5xx) counts one more consecutive failure and opens the breaker at the threshold, or
-- at once when it was the half-open probe; "neutral" only frees the probe's place.
-- KEYS[1] breaker hash; ARGV: verdict, threshold, cooldown (s), "1" when the attempt was the probe
-- KEYS[2], ARGV[5] (the bulkhead, when on): the merchant's attempts in flight and this attempt's id, whose place is
-- freed first (with the breaker off the verdict is "neutral": only that)
-- Returns what changed: closed | reset | opened | counted | same
if KEYS[2] then
  redis.call('ZREM', KEYS[2], ARGV[5])
end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local verdict, threshold, cooldown, probe = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4] == '1'
local b = redis.call('HMGET', KEYS[1], 'state', 'failures')
local state = b[1] or 'closed'
if verdict == 'up' then
  if state ~= 'closed' then
    redis.call('HSET', KEYS[1], 'state', 'closed', 'failures', '0', 'changed_at', string.format('%.6f', now))
    redis.call('HDEL', KEYS[1], 'open_until', 'probe_until')
    return 'closed'
  end
  if (tonumber(b[2] or '0') or 0) > 0 then
    redis.call('HSET', KEYS[1], 'failures', '0')
    return 'reset'
  end
  return 'same'
end
if verdict == 'down' then
  local failures = redis.call('HINCRBY', KEYS[1], 'failures', 1)
  if (state == 'half_open' and probe) or (state == 'closed' and failures >= threshold) then
    redis.call('HSET', KEYS[1], 'state', 'open', 'open_until', string.format('%.6f', now + cooldown),
               'changed_at', string.format('%.6f', now))
    redis.call('HDEL', KEYS[1], 'probe_until')
    redis.call('HINCRBY', KEYS[1], 'opened', 1)
    return 'opened'
  end
  return 'counted'
end
if probe and state == 'half_open' then
  redis.call('HDEL', KEYS[1], 'probe_until')
end
return 'same'
