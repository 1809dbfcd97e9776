-- ARGV: 1 status 2 is_final 3 owner 4 note 5 sent ('1' the attempt in flight may have been sent,
--       '0' it provably was not, '' none in flight) 6 check_in (seconds until the next check, or '')
--       7 prefix (for reflecting a follow-up on its original) 8 n_expect, expect..., field/value pairs.
-- Only the lease holder writes a non-final record (owner must match); a final record is changed only
-- through ``expect``. Returns {status written or false, now, record pairs}.
local new_status, is_final, owner, note, sent, check_in, prefix =
  ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local n_expect = tonumber(ARGV[8])
local now = server_now()
local now_iso, now_ts = iso(now), ts(now)
local cur = redis.call('HMGET', REC, 'status', 'lease_owner', 'operation', 'payment_id', 'trans_id', 'in_flight',
                       'sent_ts')
local status = cur[1]
if not status then return {false, now_ts, {}} end
if n_expect > 0 then
  local ok = false
  for i = 9, 8 + n_expect do
    if ARGV[i] == status then ok = true break end
  end
  if not ok then return {false, now_ts, redis.call('HGETALL', REC)} end
end
if NON_FINAL[status] and (owner == '' or (cur[2] or '') ~= owner) then
  return {false, now_ts, redis.call('HGETALL', REC)}
end
if not NON_FINAL[status] and n_expect == 0 then
  -- A final record has no lease to check: a holder that stalled past its lease must not overwrite the outcome
  -- another worker recorded meanwhile. Only a caller naming the final status it expects may change it.
  return {false, now_ts, redis.call('HGETALL', REC)}
end
local sent_ts = cur[7] or ''
local args = {}
for i = 9 + n_expect, #ARGV do args[#args + 1] = ARGV[i] end
if cur[6] == '1' then
  if sent ~= '0' then sent_ts = now_ts end  -- unsaid counts as "may have been sent"
  for _, v in ipairs({'in_flight', '0', 'sent_ts', sent_ts}) do args[#args + 1] = v end
end
if new_status == 'RETRYING' and sent_ts ~= '' then new_status = 'UNKNOWN' end
for _, v in ipairs({'status', new_status, 'updated_at', now_iso, 'updated_ts', now_ts}) do
  args[#args + 1] = v
end
if check_in ~= '' then
  args[#args + 1] = 'next_check_ts'
  args[#args + 1] = ts(now + tonumber(check_in))
end
if is_final ~= '1' and new_status ~= 'PENDING' then
  args[#args + 1] = 'lease_until'  -- parked: free for the next delivery or the sweep
  args[#args + 1] = '0'
end
redis.call('HSET', REC, unpack(args))
if is_final == '1' then redis.call('HDEL', REC, 'lease_owner', 'lease_until', 'in_flight', 'next_check_ts') end
local pid = cur[4]
local trans_id = reindex(REC, pid, cur[5])
record_event(REC, HIST, pid, cur[3] or '', status, new_status, note, now_iso, trans_id)
if prefix ~= '' then reflect(prefix, REC, pid, now_iso, now) end
return {new_status, now_ts, redis.call('HGETALL', REC)}
