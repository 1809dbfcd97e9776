-- ARGV: 1 owner 2 lease_seconds 3 payment_id 4 operation 5 dead_owner 6 message_id 7 mode
--       8 journal ('1': note attempt 1 in the same round trip; 'prior': the message was delivered before,
--       so an earlier delivery may have sent it until now) 9 fence window ('': none; seconds: a new record
--       journaled '1' is also fenced for its first attempt, as fence.lua would be right after: fence_until = now +
--       the window, and the reply's 5th element is the stamp) 10 n_fingerprints, fingerprints...,
--       then field/value pairs for a new record.
-- mode: run (claim to work on it), retry_failed (run; a final ERROR that provably charged nothing is reopened:
--       common.lua charged_nothing), create_only (record only if absent: a delivery that cannot run),
--       reconcile (the sweep: never creates).
-- Returns {kind, previous_status, now, record pairs[, fence stamp]}; 'claimed' answers {created_at, lease_until[,
-- fence_until]} in place of the pairs (ResultsStore.claim builds the rest of the record from its arguments).
local owner, lease_seconds, pid, op, dead_owner, message_id, mode, journal, fence_window =
  ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8], tonumber(ARGV[9])
local n_fp = tonumber(ARGV[10])
local fps = {}
for i = 11, 10 + n_fp do fps[ARGV[i]] = true end
local first_field = 11 + n_fp
-- An ERROR that provably charged nothing (retry_failed may reopen it): closed as not charged (stq proved the
-- absence past the commit horizon, or it was never sent), or refused as invalid input (a card sealed with another
-- PAYMENTS_CARD_KEY included) before any attempt was noted.
local function refused_unsent(rec)
  local r = redis.call('HMGET', rec, 'error_class', 'sends', 'sent_ts', 'trans_id')
  return r[1] == 'InvalidInput' and (r[2] or '0') == '0' and (r[3] or '') == '' and (r[4] or '') == ''
end
local function charged_nothing(rec)
  return redis.call('HGET', rec, 'not_charged') == '1' or refused_unsent(rec)
end
local clock = server_clock()
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local now_iso, now_ts = iso(now), ts(now)
-- The message's outbox entry goes, whatever the claim says; a stamp the sweep gave it is the sweep's to drop.
if message_id ~= '' then redis.call('HDEL', OUTBOX, message_id) end
local status = redis.call('HGET', REC, 'status')
if not status then
  if mode == 'reconcile' then return {'missing', '', now_ts, {}} end
  -- A record that left Redis (retention) left its key index entry: the key is still bound to its request and
  -- answered with its final outcome (never run again); a different request is a mismatch, as for a live record.
  -- (EXISTS first: a new key, the common case, costs one command and reads nothing)
  if redis.call('EXISTS', KEPT) == 1 then
    local kept = redis.call('HGETALL', KEPT)
    local k = to_table(kept)
    local kept_fp = k['fingerprint'] or ''
    if k['operation'] ~= op or (n_fp > 0 and kept_fp ~= '' and not fps[kept_fp]) then
      return {'mismatch', k['status'] or '', now_ts, kept}
    end
    if mode == 'create_only' then return {'exists', k['status'] or '', now_ts, kept} end
    return {'final', k['status'] or '', now_ts, kept}
  end
  -- Ours, then the caller's fields (none of ours: records.py _RESERVED), read on the way for the three a new
  -- record's indexes depend on. One table constructor and no copy loop: the fields go to HSET as they came.
  local merchant, trans_id, needs_human = '', '', nil
  for i = first_field, #ARGV - 1, 2 do
    local f = ARGV[i]
    if f == 'merchant' then merchant = ARGV[i + 1] elseif f == 'trans_id' then trans_id = ARGV[i + 1]
    elseif f == 'needs_human' then needs_human = ARGV[i + 1] end
  end
  local lease_until = ts(now + lease_seconds)
  local note = 'claimed by ' .. owner
  local args = {'payment_id', pid, 'operation', op, 'status', 'PENDING', 'attempts', '1', 'created_at', now_iso,
                'updated_at', now_iso, 'created_ts', now_ts, 'updated_ts', now_ts, 'lease_owner', owner,
                'lease_until', lease_until, 'fingerprint', n_fp > 0 and ARGV[11] or '', 'history', false}
  local n = 24
  local fence_until, stamp = nil, nil
  if journal == '1' then
    args[25], args[26], args[27], args[28], args[29], args[30], n =
      'sends', '1', 'attempt_ts', now_ts, 'in_flight', '1', 30
    note = note .. '; attempt 1'
    if fence_window then
      -- The first attempt's fence (fence.lua) in the same call: this lease was taken just now.
      fence_until = string.format('%.3f', math.ceil((now + fence_window) * 1000) / 1000)
      args[31], args[32], n = 'fence_until', fence_until, 32
      stamp = string.format('%d.%06d', tonumber(clock[1]), tonumber(clock[2]))
    end
  elseif journal == 'prior' then
    args[25], args[26], n = 'sent_ts', now_ts, 26
    note = note .. '; delivered before: an earlier delivery may have sent it'
  end
  args[24] = with_history(nil, now_iso, 'PENDING', note)
  for i = first_field, #ARGV do
    n = n + 1
    args[n] = ARGV[i]
  end
  redis.call('HSET', REC, unpack(args, 1, n))
  redis.call('ZADD', IDX_TIME, now_ts, pid)
  -- Another account's record is also in its account's time index (a `default` record: no command more).
  -- idx:merchant:since: when the first was (records of older versions, before it, are not in any: list() filters
  -- those from idx:time until `payments metrics --recount` has indexed them and set it to 0).
  if merchant ~= '' then
    redis.call('ZADD', merchant_key(merchant .. ':time'), now_ts, pid)
    redis.call('SET', merchant_key('since'), now_ts, 'NX')
  end
  -- A new record is in no index yet and is PENDING: by the rules of memberships() it is in non_final, and
  -- needs_human and its trans id if its fields say so.
  redis.call('ZADD', IDX_NF, second_of(now_ts), pid)  -- (whole seconds: common.lua second_of)
  if needs_human == '1' then redis.call('ZADD', IDX_HUMAN, now_ts, pid) end
  if trans_id ~= '' then redis.call('HSETNX', IDX_TRANS, trans_id, pid) end
  log_event(pid, op, '', 'PENDING', note, now_iso, trans_id, merchant)
  -- A small reply: the caller knows the fields it gave and the ones written from its arguments (ResultsStore.claim
  -- adds them); only the times go back.
  return {'claimed', '', now_ts, {now_iso, lease_until, fence_until}, stamp}
end
-- retry_failed of a request refused as invalid input (never sent): the producer fixed the input, so the key is
-- bound again, to this request. A request that was sent and closed not charged stays bound to itself.
local rebind = mode == 'retry_failed' and status == 'ERROR' and refused_unsent(REC)
if mode ~= 'reconcile' then
  local r = redis.call('HMGET', REC, 'operation', 'fingerprint')
  local stored_fp = r[2] or ''
  if r[1] ~= op or (n_fp > 0 and stored_fp ~= '' and not fps[stored_fp] and not rebind) then
    return {'mismatch', status, now_ts, record_reply(REC)}
  end
end
if mode == 'create_only' then return {'exists', status, now_ts, record_reply(REC)} end
local reopened = false
if not NON_FINAL[status] then
  if not (mode == 'retry_failed' and status == 'ERROR' and charged_nothing(REC)) then
    return {'final', status, now_ts, record_reply(REC)}
  end
  reopened = true
end
local r = redis.call('HMGET', REC, 'lease_owner', 'lease_until', 'in_flight', 'sent_ts', 'fence_until')
local cur_owner, until_ = r[1] or '', tonumber(r[2] or '0') or 0
if until_ > now and cur_owner ~= owner and (dead_owner == '' or cur_owner ~= dead_owner) then
  return {'busy', status, now_ts, record_reply(REC)}
end
local updates = {'status', 'PENDING', 'lease_owner', owner, 'lease_until', ts(now + lease_seconds),
                 'updated_at', now_iso, 'updated_ts', now_ts}
local note = 'resumed by ' .. owner .. ' from ' .. status
if reopened then
  -- retry_failed: an ERROR that provably charged nothing runs again under its key. This request's fields replace
  -- the refused one's (its outcome fields are reset), and it binds the key when the refusal had no fingerprint.
  for i = first_field, #ARGV do updates[#updates + 1] = ARGV[i] end
  local stored_fp = redis.call('HGET', REC, 'fingerprint') or ''
  if (stored_fp == '' or rebind) and n_fp > 0 then
    updates[#updates + 1] = 'fingerprint'
    updates[#updates + 1] = ARGV[11]
  end
  redis.call('HDEL', REC, 'error_class', 'not_charged', 'needs_human', 'next_check_ts')
  note = 'retry_failed: reopened by ' .. owner .. ' from ERROR (nothing was charged)'
end
if r[3] == '1' then
  -- The last holder noted an attempt and never said how it ended: it may have been sent until its
  -- lease ran out (or until now, if its process is known dead). A holder that is not known dead may only be
  -- stalled: its fenced attempts can still be accepted by the gateway until fence_until (fence.lua).
  local sent = math.max(tonumber(r[4] or '0') or 0, math.min(until_, now))
  if dead_owner == '' or cur_owner ~= dead_owner then sent = math.max(sent, tonumber(r[5] or '0') or 0) end
  for _, v in ipairs({'in_flight', '0', 'sent_ts', ts(sent)}) do updates[#updates + 1] = v end
  note = note .. '; its attempt may have been sent'
end
redis.call('HSET', REC, unpack(updates))
redis.call('HINCRBY', REC, 'attempts', 1)
local cur_op = redis.call('HGET', REC, 'operation') or op
local trans_id = reindex(REC, pid, nil)
record_event(REC, pid, cur_op, status, 'PENDING', note, now_iso, trans_id)
return {'resumed', status, now_ts, record_reply(REC)}
