-- One attempt asks to go out: the shared circuit breaker first (open: nothing is sent, no token is taken), then the
-- lane's token bucket. One round trip; Redis's clock is the only clock.
-- KEYS[1] breaker hash {state, failures, open_until, probe_until, opened, changed_at}
-- KEYS[2] the lane's bucket hash {tokens, ts}
-- KEYS[3] the merchant's attempts in flight (the bulkhead), a sorted set of attempt ids scored by their deadline
-- ARGV: rate (tokens/s, 0: no limit), burst (bucket size), breaker on ("1"/"0"), probe lease (s), cooldown (s),
--       cap of attempts in flight (0: none), this attempt's lease (s), this attempt's id
-- Returns {verdict, seconds, state}: verdict ok | probe | throttled | busy | open; seconds: failures so far (ok), or
-- how long to wait (throttled, open; busy: until the oldest place must be free, its holder answered or not).
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local breaker_on, probe_lease, cooldown = ARGV[3] == '1', tonumber(ARGV[4]), tonumber(ARGV[5])
local probe, failures = false, 0
if breaker_on then
  local b = redis.call('HMGET', KEYS[1], 'state', 'open_until', 'probe_until', 'failures')
  local state = b[1] or 'closed'
  failures = tonumber(b[4] or '0') or 0
  if state == 'open' then
    local open_until = tonumber(b[2] or '0') or 0
    if now < open_until then
      return {'open', string.format('%.3f', open_until - now), 'open'}
    end
    state = 'half_open'  -- the cooldown is over: one probe at a time may go
  end
  if state == 'half_open' then
    local probe_until = tonumber(b[3] or '0') or 0
    if now < probe_until then  -- another worker's probe is out: look again when it must have answered, or sooner
      return {'open', string.format('%.3f', math.min(probe_until - now, cooldown)), 'half_open'}
    end
    probe = true
  end
end
-- The bulkhead: checked before a token is taken (a busy attempt spends none); a place whose deadline passed is
-- an attempt whose process died mid-request (its settle never came): it is free again.
local cap = tonumber(ARGV[6] or '0') or 0
if cap > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', string.format('%.6f', now))
  if redis.call('ZCARD', KEYS[3]) >= cap then
    local oldest = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
    return {'busy', string.format('%.3f', tonumber(oldest[2]) - now), probe and 'half_open' or 'closed'}
  end
end
if rate > 0 then
  local k = redis.call('HMGET', KEYS[2], 'tokens', 'ts')
  local tokens = tonumber(k[1] or '') or burst
  local ts = tonumber(k[2] or '') or now
  if now > ts then
    tokens = math.min(burst, tokens + (now - ts) * rate)
    ts = now
  end
  if tokens < 1 then
    return {'throttled', string.format('%.3f', (1 - tokens) / rate), probe and 'half_open' or 'closed'}
  end
  redis.call('HSET', KEYS[2], 'tokens', string.format('%.6f', tokens - 1), 'ts', string.format('%.6f', ts))
  redis.call('PEXPIRE', KEYS[2], math.ceil(burst / rate * 1000) + 60000)
end
if cap > 0 then
  local lease = tonumber(ARGV[7])
  redis.call('ZADD', KEYS[3], string.format('%.6f', now + lease), ARGV[8])
  redis.call('PEXPIRE', KEYS[3], math.ceil(lease * 1000) + 60000)
end
if probe then
  redis.call('HSET', KEYS[1], 'state', 'half_open', 'probe_until', string.format('%.6f', now + probe_lease),
             'changed_at', string.format('%.6f', now))
  return {'probe', '0', 'half_open'}
end
return {'ok', tostring(failures), 'closed'}
