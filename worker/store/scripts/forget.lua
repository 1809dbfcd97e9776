-- Retention: remove records the archive holds now, each only if it is unchanged since it was copied (same status,
-- same updated_ts: every change of a record moves updated_ts) and is still one retention may remove. A record that
-- changed in between stays (the next sweep copies it again). The cutoff is never later than Redis TIME.
-- Each record removed leaves its key index entry (P key:<payment_id>, a hash of the kept fields that are not empty:
-- the fingerprint its key is bound to and its outcome), expiring key_retention seconds after the record's last
-- change: claim.lua answers the key from it, so a key sent again is never charged again.
-- A record of an account other than `default` also leaves P idx:merchant:<name>:time and its count.
-- KEYS: 1 idx:trans 2 idx:time 3 idx:non_final 4 idx:open_auths 5 idx:voids_due 6 idx:reflect_due
--   7 idx:status_counts (records by status: one fewer of its status)
-- ARGV: 1 prefix 2 cutoff 3 key_retention (seconds) 4 n (kept fields), the n field names, then
--   (payment_id, status, updated_ts) triples. Returns the ids removed.
local prefix = ARGV[1]
local t = server_clock()
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local cutoff = math.min(tonumber(ARGV[2]), now)
local key_retention = tonumber(ARGV[3])
local n_kept = tonumber(ARGV[4])
local kept_fields = {}
for i = 5, 4 + n_kept do kept_fields[#kept_fields + 1] = ARGV[i] end
local FINAL = {APPROVED = true, DECLINED = true, ERROR = true, SKIPPED = true, VOIDED = true, CAPTURED = true,
               REFUNDED = true, PARTIALLY_REFUNDED = true}
local FOLLOW_UPS = {capture = true, refund = true, void = true, update = true}

local function keep_key(rec, pid, updated)
  local expires_ms = math.floor((updated + key_retention) * 1000)
  if expires_ms <= math.floor(now * 1000) then return end
  local values = redis.call('HMGET', rec, unpack(kept_fields))
  local args = {}
  for i, name in ipairs(kept_fields) do
    if values[i] and values[i] ~= '' then
      args[#args + 1] = name
      args[#args + 1] = values[i]
    end
  end
  local entry = prefix .. 'key:' .. pid
  redis.call('DEL', entry)
  if #args > 0 then
    redis.call('HSET', entry, unpack(args))
    redis.call('PEXPIREAT', entry, string.format('%d', expires_ms))
  end
end

local removed = {}
for i = 5 + n_kept, #ARGV - 2, 3 do
  local pid, status, updated = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local rec = prefix .. 'op:' .. pid
  local r = redis.call('HMGET', rec, 'status', 'updated_ts', 'operation', 'needs_human', 'then_void', 'reflected',
                       'trans_id', 'merchant')
  local op, approved = r[3], status == 'APPROVED'
  if r[1] == status and r[2] == updated and FINAL[status] and (tonumber(updated) or cutoff + 1) <= cutoff
      and r[4] ~= '1'                                            -- a human must look at it first
      and not (op == 'auth' and approved)                        -- an open auth (to capture or void)
      and not (op == 'sale' and approved and r[5] == '1')        -- its chained void is still due
      and not (FOLLOW_UPS[op] and approved and r[6] ~= '1') then -- not yet reflected on its original
    keep_key(rec, pid, tonumber(updated))
    redis.call('DEL', rec, prefix .. 'hist:' .. pid)
    for k = 2, 6 do redis.call('ZREM', KEYS[k], pid) end
    local trans = r[7] or ''
    if trans ~= '' and redis.call('HGET', KEYS[1], trans) == pid then redis.call('HDEL', KEYS[1], trans) end
    redis.call('HINCRBY', KEYS[7], status, -1)
    -- Another account's record leaves its account's time index too (claim.lua wrote it there).
    if (r[8] or '') ~= '' then
      redis.call('ZREM', prefix .. 'idx:merchant:' .. r[8] .. ':time', pid)
      redis.call('HINCRBY', prefix .. 'idx:merchant:' .. r[8] .. ':counts', status, -1)
    end
    removed[#removed + 1] = pid
  end
end
return removed
