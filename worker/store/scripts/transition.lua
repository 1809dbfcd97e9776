-- ARGV: 1 status 2 is_final 3 owner 4 note 5 sent ('1' the attempt in flight may have been sent,
--       '0' it provably was not, '' none in flight) 6 check_in (seconds until the next check, or '')
--       7 prefix (for reflecting a follow-up on its original) 8 the final write's Celery result meta ('' none)
--       9 its expiry (seconds) 10 the broker message's delivery tag to ack ('' none: common.lua finish_task)
--       11 n_expect, expect..., field/value pairs.
-- Only the lease holder writes a non-final record (owner must match); a final record is changed only
-- through ``expect``; the result and the ack are written only with the record. Returns {status written or false,
-- now, record pairs} (with a result or an ack to write: the record's public outcome as JSON, common.lua finish_task).
local new_status, is_final, owner, note, sent, check_in, prefix =
  ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local meta, expires, tag = ARGV[8], ARGV[9], ARGV[10]
local n_expect = tonumber(ARGV[11])
local now = server_now()
local now_iso, now_ts = iso(now), ts(now)
-- The whole record, read once: the checks, the indexes it was in and the record returned all come from it.
local flat = redis.call('HGETALL', REC)
if #flat == 0 then return {false, now_ts, {}} end
local cur = to_table(flat)
local status = cur.status
if n_expect > 0 then
  local ok = false
  for i = 12, 11 + n_expect do
    if ARGV[i] == status then ok = true break end
  end
  if not ok then return {false, now_ts, flat} end
end
if NON_FINAL[status] and (owner == '' or (cur.lease_owner or '') ~= owner) then
  return {false, now_ts, flat}
end
if not NON_FINAL[status] and n_expect == 0 then
  -- A final record has no lease to check: a holder that stalled past its lease must not overwrite the outcome
  -- another worker recorded meanwhile. Only a caller naming the final status it expects may change it.
  return {false, now_ts, flat}
end
local sent_ts = cur.sent_ts or ''
local was_in_flight = cur.in_flight == '1'
if was_in_flight and sent ~= '0' then sent_ts = now_ts end  -- unsaid counts as "may have been sent"
if new_status == 'RETRYING' and sent_ts ~= '' then new_status = 'UNKNOWN' end
-- Ours, then the caller's fields (none of ours: records.py _RESERVED): one table constructor, no copy of a list.
local args = {'status', new_status, 'updated_at', now_iso, 'updated_ts', now_ts,
              'history', with_history(cur.history, now_iso, new_status, note)}
local n = 8
if was_in_flight then args[9], args[10], args[11], args[12], n = 'in_flight', '0', 'sent_ts', sent_ts, 12 end
if check_in ~= '' then
  args[n + 1], args[n + 2], n = 'next_check_ts', ts(now + tonumber(check_in)), n + 2
end
if is_final ~= '1' and new_status ~= 'PENDING' then
  args[n + 1], args[n + 2], n = 'lease_until', '0', n + 2  -- parked: free for the next delivery or the sweep
end
for i = 12 + n_expect, #ARGV do
  n = n + 1
  args[n] = ARGV[i]
end
redis.call('HSET', REC, unpack(args, 1, n))
-- The old state's indexes, trans id, id, operation and account, taken before ``cur`` becomes the record written (one
-- table of ~45 fields per call, not two).
local before, old_trans, pid, op = memberships(cur), cur.trans_id or '', cur.payment_id, cur.operation or ''
local merchant = cur.merchant
local rec = to_table(args, 1, cur)
rec.history = nil  -- not in the reply (ResultsStore.get reads it)
if is_final == '1' then
  redis.call('HDEL', REC, 'lease_owner', 'lease_until', 'in_flight', 'next_check_ts')
  rec.lease_owner, rec.lease_until, rec.in_flight, rec.next_check_ts = nil, nil, nil, nil
end
local trans_id = reindex_moved(pid, before, old_trans, rec)
log_event(pid, op, status, new_status, note, now_iso, trans_id, merchant)
local final_write = meta ~= '' or tag ~= ''
if prefix ~= '' then
  reflect(prefix, REC, pid, now_iso, now)
  local written = record_reply(REC)  -- reflect() may have written to the record
  if not final_write then return {new_status, now_ts, written} end
  rec = to_table(written)
end
if final_write then return {new_status, now_ts, finish_task(KEYS, rec, meta, expires, tag)} end
return {new_status, now_ts, to_pairs(rec)}
