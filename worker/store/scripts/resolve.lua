-- An operator's decision on a record that needs a human (``payments resolve``), atomically with its history,
-- indexes and audit entry. ARGV: 1 status 2 who 3 reason 4 trans_id ('' keeps the record's) 5 prefix (reflect
-- an APPROVED follow-up on its original; '' for none) 6 what the decision was checked against.
-- Refused unless the record needs a human and is final. Returns {result, record pairs}.
local new_status, who, reason, trans_id, prefix, checked = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local cur = redis.call('HMGET', REC, 'status', 'needs_human', 'operation', 'payment_id', 'trans_id')
local status = cur[1]
if not status then return {'missing', {}} end
if cur[2] ~= '1' then return {'not_needs_human', record_reply(REC)} end
if NON_FINAL[status] then return {'not_final', record_reply(REC)} end
local now = server_now()
local at = iso(now)
local old_trans = cur[5] or ''
local message = 'resolved by ' .. who .. ': ' .. reason
local fields = {'status', new_status, 'needs_human', '', 'resolved_by', who, 'resolved_at', at,
                'resolution', reason, 'message', message, 'updated_at', at, 'updated_ts', ts(now)}
if trans_id ~= '' then
  fields[#fields + 1] = 'trans_id'
  fields[#fields + 1] = trans_id
end
redis.call('HSET', REC, unpack(fields))
local pid = cur[4]
local trans = reindex(REC, pid, old_trans)
record_event(REC, pid, cur[3] or '', status, new_status, message .. ' (' .. checked .. ')', at, trans)
if prefix ~= '' then reflect(prefix, REC, pid, at, now) end
return {'resolved', record_reply(REC)}
